"""Writing a report: results folders -> ``report.html`` and ``figures/*.png`` beside it (the same PNG bytes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coral.atomic import write_atomic
from coral.report.model import load_runs
from coral.report.page import render_page
from coral.report.plots import report_figures

REPORT_FILE = "report.html"
FIGURES_DIR = "figures"


@dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote: the page and each figure's PNG file by name."""

    html: Path
    figures: dict[str, Path]


def write_report(folders: Sequence[str | Path], out: str | Path | None = None) -> Report:
    """Read the results folders and write the report (one folder: that run; several: compared to the first).

    Args:
        folders: results folders (each with ``conversations*.jsonl``; ``metrics.json`` and ``config.yaml`` when
            there).
        out: the HTML file to write; default ``<first folder>/report.html``. Figures go to ``figures/`` beside it.

    Raises:
        FileNotFoundError: a folder has no results file.
        ValueError: a results, metrics or config file does not parse (the file and line are named).
    """
    if not folders:
        raise ValueError("write_report needs at least one results folder")
    runs = load_runs(folders)
    html = Path(out) if out is not None else Path(folders[0]) / REPORT_FILE
    figures = report_figures(runs)
    paths = {}
    (html.parent / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    for name, data in figures.items():
        paths[name] = html.parent / FIGURES_DIR / f"{name}.png"
        write_atomic(paths[name], data)
    write_atomic(html, render_page(runs, figures).encode("utf-8"))
    return Report(html, paths)
