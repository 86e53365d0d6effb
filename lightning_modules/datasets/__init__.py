"""Data modules: thin wrappers that load a coral task's examples for ``trainer.py validate``."""

from lightning_modules.datasets.coral_datamodule import CoralDataModule, ValSetArgs

__all__ = ["CoralDataModule", "ValSetArgs"]
