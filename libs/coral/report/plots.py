"""The project's figures, drawn with matplotlib's Agg renderer into PNG bytes.

The HTML report, ``figures/*.png``, W&B and the iterative driver's summary all use these.

Three generic charts take plain data keyed by series label, one series per run, so one run and a comparison of
runs are the same call: ``line_chart`` (a value over an axis: turn today; round or role for other protocols),
``bar_chart`` (shares per category) and ``histogram``. ``report_figures`` says which figures a report has.
matplotlib is imported inside the functions (no pyplot, no global figure state): importing this module is free.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from coral.report.model import (
    SOCIAL_KINDS,
    Run,
    accuracy_by_role,
    accuracy_by_turn,
    agreement_by_turn,
    numbered,
    social_split,
    turns_to_agreement,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SIZE = (6.0, 3.6)
"""Inches at 100 dpi: readable in the report and small as a PNG (tens of kB)."""


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE, dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=11)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def line_chart(
    series: Mapping[str, Mapping[int, float]] | Mapping[str, Mapping[float, float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str = "share",
    ylim: tuple[float, float] | None = (0.0, 1.05),
) -> Figure:
    """One line per series (label -> {x: y}), markers on the points, integer x ticks when every x is whole."""
    figure, axes = _figure(title, xlabel, ylabel)
    xs = sorted({x for points in series.values() for x in points})
    for label, points in series.items():
        ordered = sorted(points.items())
        axes.plot([x for x, _ in ordered], [y for _, y in ordered], marker="o", label=label)
    if xs and all(float(x).is_integer() for x in xs) and len(xs) <= 30:
        axes.set_xticks(xs)
    if ylim is not None:
        axes.set_ylim(*ylim)
    _legend(axes, series)
    figure.tight_layout()
    return figure


def bar_chart(
    series: Mapping[str, Mapping[str, float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str = "share",
    ylim: tuple[float, float] | None = (0.0, 1.05),
) -> Figure:
    """Grouped bars: categories on the x axis (in first-seen order), one bar per series in each group."""
    figure, axes = _figure(title, xlabel, ylabel)
    categories = list(dict.fromkeys(category for values in series.values() for category in values))
    width = 0.8 / max(len(series), 1)
    for number, (label, values) in enumerate(series.items()):
        positions = [i + (number - (len(series) - 1) / 2) * width for i in range(len(categories))]
        axes.bar(positions, [values.get(category, 0.0) for category in categories], width, label=label)
    axes.set_xticks(range(len(categories)), categories)
    if ylim is not None:
        axes.set_ylim(*ylim)
    _legend(axes, series)
    figure.tight_layout()
    return figure


def histogram(series: Mapping[str, Sequence[float]], *, title: str, xlabel: str, bins: int = 30) -> Figure:
    """Step histograms on shared bins, as shares of each series' count so runs of different sizes compare."""
    figure, axes = _figure(title, xlabel, "share of conversations")
    values = [value for points in series.values() for value in points]
    if values:
        low, high = min(values), max(values)
        edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else [low - 0.5, low + 0.5]
        for label, points in series.items():
            if points:
                weights = [1 / len(points)] * len(points)
                axes.hist(points, bins=edges, weights=weights, histtype="step", linewidth=1.5, label=label)
    _legend(axes, series)
    figure.tight_layout()
    return figure


def _legend(axes: Axes, series: Mapping[str, object]) -> None:
    """A legend when runs are compared; a note when no run has anything to show (e.g. no assertive turn)."""
    if not any(series.values()):
        axes.text(0.5, 0.5, "nothing to show", transform=axes.transAxes, ha="center", color="gray")
    elif len(series) > 1:
        axes.legend(fontsize=8)


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def save_png(figure: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG file (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(figure))
    return path


def report_figures(runs: Sequence[Run]) -> dict[str, bytes]:
    """The report's figures as PNG bytes by file stem, each overlaying every run that has the series.

    Every run gets the token cost; Coral runs the turn, agreement and social figures; debate runs accuracy by
    round; generate-verify-refine runs accuracy by role.
    """
    figures = {
        "token_cost": histogram(
            {run.label: [c.tokens for c in run.conversations] for run in runs},
            title="Token cost per conversation",
            xlabel="tokens (prompt + completion + judge)",
        ),
    }
    coral = [run for run in runs if any(c.record.protocol == "coral" for c in run.conversations)]
    if coral:
        figures.update(_coral_figures(coral))
    by_round = {f"{run.label} {series}": numbered(run, f"{prefix}_round_")
                for run in runs for series, prefix in (("vote", "mv_accuracy"), ("agents", "agent_accuracy"))}
    if any(by_round.values()):
        figures["accuracy_by_round"] = line_chart(
            {label: values for label, values in by_round.items() if values},
            title="Debate accuracy by round: majority vote and mean of agents",
            xlabel="round",
            ylabel="accuracy",
        )
    by_role = {run.label: accuracy_by_role(run) for run in runs}
    if any(by_role.values()):
        figures["accuracy_by_role"] = bar_chart(
            {label: values for label, values in by_role.items() if values},
            title="Accuracy after each role and after the vote",
            xlabel="",
            ylabel="accuracy",
        )
    return {name: png(figure) for name, figure in figures.items()}


def _coral_figures(runs: Sequence[Run]) -> dict[str, Figure]:
    """Accuracy and agreement by turn, turns to agreement, and the social behaviour split, of Coral runs."""
    figures = {
        "accuracy_by_turn": line_chart(
            {run.label: accuracy_by_turn(run) for run in runs},
            title="Accuracy by turn",
            xlabel="turn",
            ylabel="share of turns correct",
        ),
        "agreement_by_turn": line_chart(
            {run.label: agreement_by_turn(run) for run in runs},
            title="Agreement by turn (cumulative)",
            xlabel="turn",
            ylabel="share of conversations agreed",
        ),
        "turns_to_agreement": bar_chart(
            {run.label: turns_to_agreement(run) for run in runs},
            title="Turns to agreement",
            xlabel="turn of first agreement",
            ylabel="share of conversations",
        ),
    }
    for kind, adjective in SOCIAL_KINDS.items():
        figures[f"{kind}_by_correctness"] = bar_chart(
            {run.label: social_split(run, kind) for run in runs},
            title=f"{adjective.capitalize()} turns by their own correctness",
            xlabel="the turn's belief",
            ylabel=f"share of {adjective} turns",
        )
    return figures
