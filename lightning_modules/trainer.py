"""Entry point: ``python lightning_modules/trainer.py validate --config configs/ts_math.yaml [--model.x ...]``.

LightningCLI parses the YAML configs and overrides into typed objects (a wrong key fails at parse time). The
trainer and interaction-model defaults in ``configs/common/`` are always loaded first, so a task config only
says what differs. ``EXP_NAME``, when set, names the results folder (as in the reference).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

COMMON = Path(__file__).resolve().parent.parent / "configs" / "common"
DEFAULT_CONFIGS = [str(COMMON / "api_inference_trainer.yaml"), str(COMMON / "ts_interaction_model.yaml")]


class CoralCLI(LightningCLI):
    def before_instantiate_classes(self) -> None:
        exp_name = os.environ.get("EXP_NAME")
        if exp_name:
            config = self.config[self.subcommand] if self.subcommand else self.config
            config.trainer.default_root_dir = exp_name

    def before_validate(self) -> None:
        """Save the resolved config beside the results, so every results folder says how it was made."""
        root = Path(self.trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        if self.trainer.global_rank == 0:
            text = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)
            (root / "config.yaml").write_text(text)


def main(args: list[str] | None = None, run: bool = True) -> CoralCLI:
    """Parse ``args`` (default: sys.argv) and run the subcommand; ``run=False`` only builds the objects."""
    defaults = {"default_config_files": DEFAULT_CONFIGS}
    return CoralCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=None,
        seed_everything_default=333,
        parser_kwargs={"validate": defaults} if run else defaults,
        args=args,
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main() and 0)
