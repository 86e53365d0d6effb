"""Self-improvement loop: evaluate -> sample trees -> build training data -> train -> evaluate the new model -> ...

    python finetuning/iterative_training.py --config configs/finetuning/iterative_tiny.yaml [--iterations 3 ...]

One YAML config drives everything. Round k (1..iterations) samples conversation trees with model k-1, builds
SFT or DPO data from them, trains model k, and evaluates it; model 0 (the starting model) is evaluated first. Each
step writes into ``<exp_dir>/iter_<k>/<step>/`` and is skipped only when those outputs exist *and* validate
(metrics written with every conversation present, a dataset whose counts match its files, a checkpoint with its
completion marker), so a killed run resumes at the step it was in. A failed step stops the loop with its error.
Steps run in this process (local) or as Slurm jobs through submitit. ``summary.md``/``summary.json`` and
``summary.png`` give the evaluation metrics by round.
"""

from __future__ import annotations

import ctypes
import json
import logging
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from coral.store import read_records
from coral.synthesis.formats import KINDS, dataset_is_complete
from coral.synthesis.preferences import PairSettings
from coral.synthesis.sft import SFTSettings
from finetuning.data_creation.build_dpo import build_dpo
from finetuning.data_creation.build_sft import build_sft
from finetuning.steps import Launcher, Step, StepFailed, parse_config, run_steps
from finetuning.trainers.trl_trainer import TrainSettings, checkpoint_is_complete, train

log = logging.getLogger("coral.iterative")
ROOT = Path(__file__).resolve().parents[1]
TRAINER = ROOT / "lightning_modules" / "trainer.py"
SUMMARY_METRICS = ("agreement_correctness", "final_answer_accuracy", "ever_correct", "agreement", "conv_err")


@dataclass
class RunSettings:
    """One ``trainer.py validate`` run: a config plus overrides; the driver adds model, seed and folder.

    Args:
        config: the task config (``configs/ts_<task>.yaml``).
        overrides: further ``trainer.py`` arguments, e.g. ``--data.val_max_instances=8``.
    """

    config: str = "configs/ts_math.yaml"
    overrides: list[str] = field(default_factory=list)


@dataclass
class DataSettings:
    """How sampled trees become training data (see ``finetuning/data_creation``); seeds are set per round.

    Args:
        pairs: DPO pair selection (paper defaults: 2 pairs per level, 20 per problem).
        sft: SFT example selection.
        stack: build from the samples of every round so far, not only the latest.
    """

    pairs: PairSettings = field(default_factory=PairSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    stack: bool = False

    def for_round(self, method: str, seed: int) -> PairSettings | SFTSettings:
        return replace(self.pairs if method == "dpo" else self.sft, seed=seed)


# ---------------------------------------------------------------------------------------------- steps


def _die_with_parent() -> None:
    """A killed driver takes its evaluation runs with it, so a rerun never races an orphan on the same folder."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_conversations(run: RunSettings, model: str, out: Path, seed: int, extra: list[str]) -> None:
    """Evaluate or sample with ``trainer.py validate``; resumes inside ``out`` if it was interrupted."""
    command = [
        sys.executable, str(TRAINER), "validate", "--config", run.config,
        f"--model.teacher_model={model}", f"--model.student_model={model}",
        f"--trainer.default_root_dir={out}", f"--seed_everything={seed}",
        *extra, *run.overrides,
    ]
    log.info("running %s", " ".join(command))
    result = subprocess.run(command, cwd=ROOT, preexec_fn=_die_with_parent)
    if result.returncode != 0:
        raise StepFailed(f"{' '.join(command)} exited with {result.returncode} (its output is above)")


def conversations_done(out: Path) -> bool:
    """Metrics are written after the last conversation, and count them; the store must hold that many."""
    metrics = out / "metrics.json"
    if not metrics.is_file():
        return False
    try:
        expected = int(json.loads(metrics.read_text())["n_conversations"])
    except (ValueError, KeyError):
        return False
    return expected > 0 and len(read_records(out)) == expected


@dataclass
class IterativeConfig:
    """The whole loop.

    Args:
        exp_dir: where every round's outputs go.
        model: the starting model (a packaged name or a checkpoint dir).
        iterations: training rounds.
        seed: seeds evaluation (fixed across rounds) and sampling (``seed + round``) and training.
        method: ``dpo`` (pairs from trees: sampling needs ``--model.beam_size`` > 1) or ``sft``.
        evaluation: the evaluation run.
        sampling: the tree-sampling run.
        data: building training data from samples.
        training: the TRL trainer's settings (``method`` is set from ``method``).
        continuous_training: round k starts from model k-1 instead of the starting model.
        update_reference_model: DPO's reference is model k-1 instead of the starting model.
        launcher: where steps run.
    """

    exp_dir: str = "results/iterative"
    model: str = "SmolLM2-135M-Instruct"
    iterations: int = 2
    seed: int = 333
    method: str = "dpo"
    evaluation: RunSettings = field(default_factory=RunSettings)
    sampling: RunSettings = field(default_factory=RunSettings)
    data: DataSettings = field(default_factory=DataSettings)
    training: TrainSettings = field(default_factory=TrainSettings)
    continuous_training: bool = False
    update_reference_model: bool = False
    launcher: Launcher = field(default_factory=Launcher)


class IterativeTraining:
    def __init__(self, config: IterativeConfig) -> None:
        if config.method not in ("dpo", "sft"):
            raise ValueError(f"method must be 'dpo' or 'sft', got {config.method!r}")
        if config.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {config.iterations}")
        self.config = config
        self.root = Path(config.exp_dir)

    def folder(self, round_: int, step: str) -> Path:
        return self.root / f"iter_{round_}" / step

    def model_of(self, round_: int) -> str:
        """Model k is the checkpoint trained in round k; model 0 is the starting model."""
        return self.config.model if round_ == 0 else str(self.folder(round_, "train") / "checkpoint")

    def steps(self) -> list[Step]:
        cfg = self.config
        plan = [self._evaluate(0)]
        for k in range(1, cfg.iterations + 1):
            sample, data, trained = self.folder(k, "sample"), self.folder(k, "data"), self.folder(k, "train")
            plan.append(Step(f"round {k}: sample", sample, partial(self._sample, k),
                             partial(conversations_done, sample)))
            plan.append(Step(f"round {k}: build {cfg.method} data", data, partial(self._build_data, k),
                             partial(dataset_is_complete, data, cfg.data.for_round(cfg.method, cfg.seed + k))))
            plan.append(Step(f"round {k}: train", trained, partial(self._train, k),
                             partial(checkpoint_is_complete, trained / "checkpoint")))
            plan.append(self._evaluate(k))
        return plan

    def _evaluate(self, k: int) -> Step:
        out = self.folder(k, "eval")
        return Step(f"round {k}: evaluate", out, lambda: run_conversations(
            self.config.evaluation, self.model_of(k), out, self.config.seed, []), lambda: conversations_done(out))

    def _sample(self, k: int) -> None:
        cfg = self.config
        run_conversations(cfg.sampling, self.model_of(k - 1), self.folder(k, "sample"), cfg.seed + k, [])

    def _build_data(self, k: int) -> None:
        cfg = self.config
        rounds = range(1, k + 1) if cfg.data.stack else [k]
        sources = [self.folder(r, "sample") for r in rounds]
        settings = cfg.data.for_round(cfg.method, cfg.seed + k)
        if isinstance(settings, PairSettings):  # for_round gives pair settings exactly for dpo
            counts = build_dpo(sources, self.folder(k, "data"), settings, self.model_of(k - 1))
        else:
            counts = build_sft(sources, self.folder(k, "data"), settings, self.model_of(k - 1))
        log.info("round %d data: %s", k, counts)

    def _train(self, k: int) -> None:
        cfg = self.config
        base = self.model_of(k - 1) if cfg.continuous_training else cfg.model
        reference = self.model_of(k - 1) if cfg.update_reference_model else None
        settings = replace(cfg.training, method=cfg.method, seed=cfg.seed + k, reference_model=reference)
        counts = json.loads((self.folder(k, "data") / "counts.json").read_text())
        if not counts.get(KINDS[cfg.method]):
            raise StepFailed(
                f"round {k}: the samples gave no {cfg.method} training data ({counts.get('candidates')} candidates "
                f"by grade, in {self.folder(k, 'data') / 'counts.json'}); sample more (sampling --model.sampling_n, "
                "--model.beam_size, longer turns) or use a task the model sometimes gets right"
            )
        train(base, self.folder(k, "data"), self.folder(k, "train"), settings)

    def run(self) -> list[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "settings.json").write_text(json.dumps(asdict(self.config), indent=2, default=str))
        run_steps(self.steps(), self.config.launcher, self.write_summary)
        return self.write_summary()

    # ------------------------------------------------------------------------------------------ summary
    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for k in range(self.config.iterations + 1):
            metrics_file = self.folder(k, "eval") / "metrics.json"
            if not metrics_file.is_file():
                continue
            metrics = json.loads(metrics_file.read_text())
            row: dict[str, Any] = {"round": k, "model": self.model_of(k)}
            row.update({name: metrics.get(name) for name in SUMMARY_METRICS})
            for name, path in (("data", self.folder(k, "data") / "counts.json"),
                               ("train", self.folder(k, "train") / "checkpoint" / "coral_train.json")):
                if path.is_file():
                    row[name] = json.loads(path.read_text())
            rows.append(row)
        return rows

    def write_summary(self) -> list[dict[str, Any]]:
        rows = self.summary()
        (self.root / "summary.json").write_text(json.dumps(rows, indent=2, default=str))
        (self.root / "summary.md").write_text(_markdown(rows))
        if rows:
            _plot(rows, self.root / "summary.png")
        return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    header = ["round", *SUMMARY_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["round"])] + [_fmt(row.get(name)) for name in SUMMARY_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """The headline metrics by round, drawn by the report's plotting code (rounds without a value are left out)."""
    from coral.report.plots import line_chart, save_png

    series = {
        name: {row["round"]: row[name] for row in rows if row.get(name) is not None} for name in SUMMARY_METRICS[:3]
    }
    save_png(line_chart(series, title="Evaluation by round", xlabel="round (0 = starting model)"), path)


def parse(args: list[str] | None = None) -> IterativeConfig:
    """The YAML config (``--config``) plus command-line overrides, typed and validated."""
    return parse_config(IterativeConfig, args, __doc__)


def main(args: list[str] | None = None) -> list[dict[str, Any]]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    driver = IterativeTraining(parse(args))
    rows = driver.run()
    print(f"\nsummary ({driver.root / 'summary.md'}):\n{_markdown(rows)}")
    return rows


if __name__ == "__main__":
    main()
