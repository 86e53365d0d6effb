"""Loggers: CSV by default (configs/common), inside the run's folder; W&B when configured, offline without a key."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger


class CoralCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``save_dir`` may be left out: ``trainer.py`` then puts the logs in
    ``<trainer.default_root_dir>/logs``, so they follow ``--trainer.default_root_dir`` and ``EXP_NAME`` instead of
    landing under the current directory.
    """

    def __init__(self, save_dir: str | None = None, name: str = "coral", **kwargs: Any) -> None:
        if save_dir is None:
            raise ValueError("CoralCSVLogger needs a save_dir outside trainer.py (which fills in <results>/logs)")
        super().__init__(save_dir, name=name, **kwargs)


def wandb_offline() -> bool:
    """Log online only when this machine can authenticate: an API key in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = os.path.expanduser("~/.netrc")
    return not (os.path.exists(netrc) and "api.wandb.ai" in open(netrc, encoding="utf-8").read())


class CoralWandbLogger(WandbLogger):
    """``WandbLogger`` that goes offline by itself when there is no key (needs ``pip install -e .[wandb]``).

    Use with ``--trainer.logger lightning_modules.loggers.CoralWandbLogger --trainer.logger.project coral``.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("offline", wandb_offline())
        kwargs.setdefault("name", os.environ.get("EXP_NAME"))
        super().__init__(**kwargs)


def log_figures(loggers: Iterable[Logger], figures: Mapping[str, Path]) -> None:
    """Log the report's figures (name -> PNG file) to every W&B logger, as ``report/<name>``; others take no images."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            for name, path in figures.items():
                logger.log_image(key=f"report/{name}", images=[str(path)])
