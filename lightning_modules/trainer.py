"""Entry point: ``python lightning_modules/trainer.py validate --config configs/ts_math.yaml [--model.x ...]``.

LightningCLI parses the YAML configs and overrides into typed objects (a wrong key fails at parse time, with the
closest accepted option suggested). The trainer and interaction-model defaults in ``configs/common/`` are always
loaded first, so a task config only says what differs; the reference's ``--trainer <yaml> --model <yaml> --config
<yaml>`` form is accepted too. ``EXP_NAME``, when set, names the results folder (as in the reference). A data or
configuration mistake ends the command with one line naming the file and line or the option, and exit status 2.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from coral.errors import user_error

COMMON = Path(__file__).resolve().parent.parent / "configs" / "common"
DEFAULT_CONFIGS = [str(COMMON / "api_inference_trainer.yaml"), str(COMMON / "ts_interaction_model.yaml")]
SECTIONS = ("trainer", "model", "data")
"""Flags that take a section's config; the reference gave them whole config files (see ``reference_form``)."""


class CoralArgumentParser(LightningArgumentParser):
    """Reports an option that is not accepted in one line, with the closest accepted ones ("did you mean")."""

    def error(self, message: str, ex: Exception | None = None):  # NoReturn, as the parent's
        hint = unknown_option_hint(message, self) if self.exit_on_error else None
        if hint is not None:
            sys.stderr.write(f"error: {hint}\n")
            self.exit(2)
        super().error(message, ex)


class CoralCLI(LightningCLI):
    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | None) -> None:
        """Parse ``args`` (default: the command line) after rewriting the reference's three-file form."""
        self.config = parser.parse_args(reference_form(sys.argv[1:] if args is None else list(args)))

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        exp_name = os.environ.get("EXP_NAME")
        if exp_name:
            config.trainer.default_root_dir = exp_name
        _logs_inside_run(config.trainer)

    def before_validate(self) -> None:
        """Save the resolved config beside the results, so every results folder says how it was made."""
        root = Path(self.trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        if self.trainer.global_rank == 0:
            text = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)
            (root / "config.yaml").write_text(text)

    def validate(self, **kwargs: Any) -> None:
        """``Trainer.validate`` without Lightning's table of logged values: the module prints coral's summary."""
        self.trainer.validate(**{**kwargs, "verbose": False})

    def after_validate(self) -> None:
        """After SIGTERM, exit with status 143 (128 + SIGTERM), as if killed: the run stopped early on purpose,
        its finished conversations are stored and measured, and the same command finishes the rest."""
        if self.trainer.received_sigterm:
            sys.exit(128 + signal.SIGTERM)


def _no_tips(record: logging.LogRecord) -> bool:
    """Drops Lightning's advertisements ("💡 Tip: ... try installing litlogger"), which are no use here."""
    return not record.getMessage().startswith("💡 Tip")


def _logs_inside_run(trainer: Namespace) -> None:
    """A logger given no ``save_dir`` writes to ``<default_root_dir>/logs``: a run's logs live with its records."""
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    for logger in loggers:
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and "save_dir" in init_args and init_args.save_dir is None:
            init_args.save_dir = str(Path(trainer.default_root_dir) / "logs")


def reference_form(args: list[str]) -> list[str]:
    """``--trainer T.yaml`` / ``--model M.yaml`` read as ``--config`` when the file is a whole config with that key.

    The reference's README runs ``--trainer .../api_inference_trainer.yaml --model .../ts_interaction_model.yaml
    --config .../ts_mmlu_pro.yaml``; coral's files, like the reference's, start with the section's own key
    (``trainer:``, ``model:``), which jsonargparse would otherwise read as an option of that section.
    """
    out = list(args)
    for i, arg in enumerate(out):
        flag, _, value = arg.partition("=")
        if flag.removeprefix("--") not in SECTIONS or not flag.startswith("--"):
            continue
        if not value and i + 1 < len(out):
            value = out[i + 1]
        if _is_whole_config(value, flag.removeprefix("--")):
            out[i] = "--config" + arg[len(flag):]
    return out


def _is_whole_config(value: str, section: str) -> bool:
    path = Path(value)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False  # jsonargparse reports it
    return isinstance(document, dict) and section in document


def unknown_option_hint(message: str, parser: ArgumentParser) -> str | None:
    """A one-line report of an option jsonargparse did not accept, naming the closest accepted ones; else None."""
    nested = re.search(
        r"class_path '([\w.]+)':\s*(?:Option '([\w.]+)' is not accepted|unrecognized arguments: --([\w.]+))", message
    )
    if nested:
        class_path, option = nested.group(1), nested.group(2) or nested.group(3)
        section = re.search(r'Parser key "(\w+)"', message) or re.search(r"--(\w+)\.", message)
        prefix = f"{section.group(1)}." if section else ""
        see = f"--{prefix}help {class_path.rpartition('.')[2]}" if prefix else "--help"
        return _hint(prefix + option, [prefix + name for name in _class_options(class_path)], see)
    flat = re.search(r"unrecognized arguments: --([\w.]+)", message)
    if flat:
        return _hint(flat.group(1), [name.removeprefix("--") for name in _option_strings(parser)], "--help")
    return None


def _hint(option: str, accepted: list[str], see: str) -> str:
    close = difflib.get_close_matches(option, accepted, n=2, cutoff=0.7)
    suggestion = f"; did you mean {' or '.join(f'--{name}' for name in close)}?" if close else ""
    return f"option --{option} is not accepted{suggestion} (options: {see})"


def _class_options(class_path: str) -> list[str]:
    """Every option a class's constructor accepts, nested dataclass fields included (``extractor.mode``)."""
    module, _, name = class_path.rpartition(".")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(getattr(importlib.import_module(module), name))
    return [option.removeprefix("--") for option in _option_strings(parser)]


def _option_strings(parser: ArgumentParser) -> list[str]:
    """The long options of ``parser`` and of its subcommands' parsers."""
    options = [s for s in parser._option_string_actions if s.startswith("--")]
    subcommands = getattr(parser, "_subcommands_action", None)
    for subparser in (subcommands._name_parser_map.values() if subcommands else ()):
        options += _option_strings(subparser)
    return options


def main(args: list[str] | None = None, run: bool = True) -> CoralCLI:
    """Parse ``args`` (default: sys.argv) and run the subcommand; ``run=False`` only builds the objects."""
    defaults = {"default_config_files": DEFAULT_CONFIGS}
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_tips)
    return CoralCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=None,
        seed_everything_default=333,
        parser_class=CoralArgumentParser,
        parser_kwargs={"validate": defaults} if run else defaults,
        args=args,
        run=run,
    )


def cli(args: list[str] | None = None) -> int:
    """``main`` for people: a data or configuration error is one line on stderr and exit status 2, not a traceback."""
    try:
        main(args)
    except Exception as exc:
        problem = user_error(exc)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
