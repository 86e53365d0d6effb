"""What every training driver is made of: steps that skip when their outputs validate, where they run, the config.

A driver (``iterative_training.py``, ``malt.py``, ``maporl.py``) is a list of ``Step``s run by ``run_steps``: each
step is skipped when its outputs already exist and validate, so a killed run resumes at the step it was in, and a
step that ends without valid outputs stops the run. ``Launcher`` runs a step in this process or as a Slurm job;
``parse_config`` reads a driver's YAML config and command-line overrides into its config dataclass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jsonargparse import ActionConfigFile, ArgumentParser

from coral.serving.cluster import SlurmJobOptions

log = logging.getLogger("coral.steps")
Config = TypeVar("Config")


@dataclass
class Launcher:
    """Where steps run.

    Args:
        kind: ``local`` (this process) or ``slurm`` (each step a submitit job).
        slurm: the jobs' resources (partition, account, qos, gpus_per_node, cpus_per_task, mem_gb, timeout_min, ...).
    """

    kind: str = "local"
    slurm: SlurmJobOptions = field(default_factory=SlurmJobOptions)

    def __post_init__(self) -> None:
        if self.kind not in ("local", "slurm"):
            raise ValueError(f"launcher.kind must be 'local' or 'slurm', got {self.kind!r}")

    def run(self, name: str, folder: Path, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` here or as a Slurm job (logs in ``folder/slurm``), waiting for it to end."""
        if self.kind == "local":
            fn(*args)
            return
        import submitit

        executor = submitit.AutoExecutor(folder=folder / "slurm", cluster="slurm")
        executor.update_parameters(name=name, **self.slurm.submitit_parameters())
        job = executor.submit(fn, *args)
        log.info("%s: Slurm job %s (logs in %s)", name, job.job_id, folder / "slurm")
        job.result()  # raises with the job's traceback when it fails: no silent endless polling


class StepFailed(RuntimeError):
    """A step could not run or ended without valid outputs; the message says which and why."""


@dataclass
class Step:
    """One step of a driver: its name, the folder it writes, how to run it and how to tell it is done."""

    name: str
    out: Path
    run: Callable[[], None]
    done: Callable[[], bool]


def run_steps(steps: list[Step], launcher: Launcher, after_step: Callable[[], object]) -> None:
    """Run each step unless its outputs already validate (so a rerun resumes where a killed run stopped).

    A step that ends without valid outputs stops the plan; ``after_step`` (the summary) runs after each step that ran.
    """
    for step in steps:
        if step.done():
            log.info("%s: done already (%s), skipped", step.name, step.out)
            continue
        log.info("%s -> %s", step.name, step.out)
        started = time.perf_counter()
        launcher.run(step.name.replace(" ", "_"), step.out, step.run)
        if not step.done():
            raise StepFailed(f"{step.name} finished but its outputs in {step.out} do not validate")
        log.info("%s: done in %.1f s", step.name, time.perf_counter() - started)
        after_step()


def parse_config(cls: type[Config], args: list[str] | None, doc: str | None) -> Config:
    """A driver's config: the YAML (``--config``) plus command-line overrides, typed and validated as ``cls``."""
    parser = ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(cls, None, as_group=False)
    values = parser.instantiate(parser.parse_args(args))
    return cls(**{name: getattr(values, name) for name in cls.__dataclass_fields__})  # type: ignore[attr-defined]
