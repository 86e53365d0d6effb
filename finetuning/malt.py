"""MALT end to end: sample G->V->R trees -> per-role data -> train the three roles -> MV@3 on held-out questions.

    python finetuning/malt.py --config configs/finetuning/malt_tiny.yaml [--tree_n 3 ...]

Motwani et al. (training.md section 2). One YAML config drives everything; every step writes into ``<exp_dir>``
and is skipped only when its outputs exist and validate (``finetuning.steps.run_steps``), so a killed run
resumes at the step it was in, and tree sampling resumes per tree inside its results store::

    splits/          train.jsonl (trees are sampled on it), heldout.jsonl (evaluation), splits.json
    trees/           generate_verify_refine records, passes = branching = tree_n (tree_n^3 leaves per question)
    data/<role>/<sft|dpo>/   coral.synthesis.malt datasets (TRL and fairseq2), counts.json says why one is empty
    train/<role>/sft/        SFT on the role's positive nodes, from the starting model
    train/<role>/dpo/        DPO on sibling pairs, from the role's SFT model (verifier and refiner by default)
    train/<role>/<stage>/untrained.json   instead of a checkpoint when the stage had no data: why, with the counts
    eval/single_agent/       the starting model alone (the chain-of-thought config)
    eval/untrained_trio/     MV@k with the starting model in every role
    eval/trained_trio/       MV@k with each role's final checkpoint (``--model.agents``)
    summary.md / summary.json / summary.png (systems) / roles.png (nodes per role)

DPO's reference is the SFT model: the DPO step starts from the SFT checkpoint, and TRL's reference is the
starting weights (with LoRA, the policy with its adapter disabled), i.e. exactly that checkpoint, without
loading a second copy.

A stage without data (no positive node: no SFT examples; no sibling with the other label: no DPO pairs) is not
trained: a tiny model may get every refinement of a question wrong. The step logs why, with the node counts, and
writes ``untrained.json``; the role keeps the model it had (the starting model, or its SFT checkpoint) and the run
goes on. The summary's ``trained`` column says which stages of each role ran.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from coral.atomic import write_atomic
from coral.seeding import derive_seed
from coral.synthesis.formats import KINDS, dataset_is_complete
from coral.synthesis.malt import ROLES, MaltSettings, dataset_folder, write_malt_datasets
from finetuning.data_creation import read_results
from finetuning.iterative_training import RunSettings, conversations_done, run_conversations
from finetuning.steps import Launcher, Step, StepFailed, parse_config, run_steps
from finetuning.trainers.trl_trainer import TrainSettings, checkpoint_is_complete, train

log = logging.getLogger("coral.malt")
SYSTEMS = ("single_agent", "untrained_trio", "trained_trio")
UNTRAINED = "untrained.json"
ROLE_METRICS = ("generator_accuracy", "refiner_accuracy", "self_correction_rate", "self_corruption_rate")


@dataclass
class SplitSettings:
    """The training questions (trees are sampled on them) and the held-out questions (the trios are scored on).

    Args:
        train_file: a JSONL file of the task, one question a line.
        eval_file: a held-out JSONL file; None: held-out questions come from ``train_file`` too, never the same
            lines as the training ones.
        train_size: training questions (None: every line left).
        eval_size: held-out questions.
        seed: seeds the shuffle that deals lines to the splits (recorded in ``splits/splits.json``).
    """

    train_file: str = "data/gsm8k/test.jsonl"
    eval_file: str | None = None
    train_size: int | None = 8
    eval_size: int = 8
    seed: int = 0


@dataclass
class MaltConfig:
    """The whole method.

    Args:
        exp_dir: where every step's outputs go.
        model: the starting model, every role's in tree sampling (a packaged name or a checkpoint dir).
        seed: seeds sampling, evaluation and training.
        splits: the training and held-out questions.
        tree_n: the tree's n: n generator answers, n critiques each, n refinements each (paper: 3, 27 leaves).
        mv_at: passes voted on at evaluation (MV@3 in the paper).
        sampling: the tree-sampling run (a generate_verify_refine config; the driver sets passes and branching).
        evaluation: the trios' run (a generate_verify_refine config; the driver sets passes and the agents).
        baseline: the single-agent run (a chain-of-thought config).
        data: credit assignment and pair selection.
        sft: SFT settings for every role (``method`` is forced to sft).
        dpo: DPO settings (``method`` is forced to dpo; paper: beta 0.2).
        dpo_roles: roles that get DPO after SFT (the paper: verifier and refiner; the generator only for a base
            model).
        launcher: where steps run.
    """

    exp_dir: str = "results/malt"
    model: str = "SmolLM2-135M-Instruct"
    seed: int = 333
    splits: SplitSettings = field(default_factory=SplitSettings)
    tree_n: int = 3
    mv_at: int = 3
    sampling: RunSettings = field(default_factory=lambda: RunSettings("configs/gvr/gvr_gsm8k.yaml"))
    evaluation: RunSettings = field(default_factory=lambda: RunSettings("configs/gvr/gvr_gsm8k.yaml"))
    baseline: RunSettings = field(default_factory=lambda: RunSettings("configs/cot/cot_gsm8k.yaml"))
    data: MaltSettings = field(default_factory=MaltSettings)
    sft: TrainSettings = field(default_factory=lambda: TrainSettings(method="sft"))
    dpo: TrainSettings = field(default_factory=lambda: TrainSettings(method="dpo", beta=0.2))
    dpo_roles: list[str] = field(default_factory=lambda: ["verifier", "refiner"])
    launcher: Launcher = field(default_factory=Launcher)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.dpo_roles) - set(ROLES))
        if unknown:
            raise ValueError(f"dpo_roles must be among {', '.join(ROLES)}, got {unknown}")
        if self.tree_n < 1 or self.mv_at < 1:
            raise ValueError(f"tree_n and mv_at must be >= 1, got {self.tree_n} and {self.mv_at}")


# ---- splits --------------------------------------------------------------------------------------------------


def _lines(path: str) -> list[str]:
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_splits(settings: SplitSettings, folder: Path) -> None:
    """Deal questions to ``train.jsonl`` and ``heldout.jsonl`` with a seeded shuffle; ``splits.json`` goes last."""
    rng = random.Random(derive_seed(settings.seed, "malt splits"))
    train = _lines(settings.train_file)
    rng.shuffle(train)
    if settings.eval_file is None:
        heldout, train = train[: settings.eval_size], train[settings.eval_size:]
    else:
        heldout = _lines(settings.eval_file)
        rng.shuffle(heldout)
        heldout = heldout[: settings.eval_size]
    train = train[: settings.train_size]
    if not train or not heldout:
        raise StepFailed(f"splits: {len(train)} training and {len(heldout)} held-out questions from {settings}")
    for name, lines in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        _write(folder / name, "".join(line + "\n" for line in lines))
    _write(folder / "splits.json", _dumps({"settings": asdict(settings), "train": len(train), "heldout": len(heldout)}))


def splits_done(settings: SplitSettings, folder: Path) -> bool:
    """Written with these settings and both files whole."""
    try:
        info = json.loads((folder / "splits.json").read_text(encoding="utf-8"))
        return info["settings"] == asdict(settings) and all(
            len(_lines(str(folder / f"{name}.jsonl"))) == info[name] for name in ("train", "heldout"))
    except (OSError, ValueError, KeyError):
        return False


# ---- the driver ----------------------------------------------------------------------------------------------


class MaltTraining:
    """The plan of steps for one config, the steps themselves and the summary."""

    def __init__(self, config: MaltConfig) -> None:
        self.config = config
        self.root = Path(config.exp_dir)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def stages(self, role: str) -> list[str]:
        """The training stages of a role, in order: SFT, then DPO for the ``dpo_roles``."""
        return ["sft", "dpo"] if role in self.config.dpo_roles else ["sft"]

    def role_model(self, role: str, stages: list[str] | None = None) -> str:
        """A role's model after ``stages`` (all of its stages): the last one not left untrained, else the start."""
        for stage in reversed(self.stages(role) if stages is None else stages):
            if self.untrained_because(role, stage) is None:
                return str(self.path("train", role, stage, "checkpoint"))
        return self.config.model

    def model_before(self, role: str, stage: str) -> str:
        """The model a stage starts from: the starting model for SFT, the role's SFT model for DPO."""
        stages = self.stages(role)
        return self.role_model(role, stages[:stages.index(stage)])

    def untrained_because(self, role: str, stage: str) -> str | None:
        """Why a stage was left untrained (its marker says), or None: it was trained or is still to run."""
        marker = _json(self.path("train", role, stage, UNTRAINED))
        return None if marker is None else str(marker["reason"])

    def steps(self) -> list[Step]:
        cfg, splits, data = self.config, self.path("splits"), self.path("data")
        plan = [
            Step("split questions", splits, partial(write_splits, cfg.splits, splits),
                 partial(splits_done, cfg.splits, splits)),
            Step("sample trees", self.path("trees"), self._sample, partial(conversations_done, self.path("trees"))),
            Step("build role data", data, self._build_data, self._data_done),
        ]
        for role in ROLES:
            for stage in self.stages(role):
                out = self.path("train", role, stage)
                plan.append(Step(f"train {role} {stage}", out, partial(self._train, role, stage),
                                 partial(self._trained, role, stage)))
        for system in SYSTEMS:
            out = self.path("eval", system)
            plan.append(Step(f"evaluate {system}", out, partial(self._evaluate, system),
                             partial(conversations_done, out)))
        return plan

    def _questions(self, split: str) -> list[str]:
        """Overrides pointing a run at one split file, all of it."""
        return [f"--data.val_set_init_args.file_path={self.path('splits', f'{split}.jsonl')}",
                "--data.val_max_instances=null"]

    def _sample(self) -> None:
        cfg, n = self.config, self.config.tree_n
        extra = [*self._questions("train"), f"--model.protocol.init_args.passes={n}",
                 f"--model.protocol.init_args.branching={n}"]
        run_conversations(cfg.sampling, cfg.model, self.path("trees"), cfg.seed, extra)

    def _build_data(self) -> None:
        records, sources, _ = read_results([self.path("trees")])
        written = write_malt_datasets(records, self.path("data"), self.config.data, self.config.model, sources)
        log.info("role data: %s", {name: counts.get(KINDS[name.split("/")[1]]) for name, counts in written.items()})

    def _data_done(self) -> bool:
        return all(dataset_is_complete(dataset_folder(self.path("data"), role, kind), self.config.data)
                   for role in ROLES for kind in KINDS)

    def _no_data(self, role: str, stage: str) -> str | None:
        """Why a stage's dataset is empty (its counts say), or None when it has examples or pairs."""
        counts = json.loads((dataset_folder(self.path("data"), role, stage) / "counts.json").read_text())
        if counts.get(KINDS[stage]):
            return None
        return str(counts.get("no_examples_because") or counts.get("no_pairs_because"))

    def _trained(self, role: str, stage: str) -> bool:
        """Done: a complete checkpoint, or a stage left untrained whose data is still empty."""
        out = self.path("train", role, stage)
        if checkpoint_is_complete(out / "checkpoint"):
            return True
        return self.untrained_because(role, stage) is not None and self._no_data(role, stage) is not None

    def _train(self, role: str, stage: str) -> None:
        cfg, out = self.config, self.path("train", role, stage)
        reason = self._no_data(role, stage)
        if reason is not None:
            log.warning("train %s %s: no training data, the role keeps %s: %s", role, stage,
                        self.model_before(role, stage), reason)
            _write(out / UNTRAINED, _dumps({"role": role, "stage": stage, "reason": reason}))
            return
        (out / UNTRAINED).unlink(missing_ok=True)
        base = self.model_before(role, stage)
        settings = replace(cfg.sft if stage == "sft" else cfg.dpo, method=stage, seed=cfg.seed, reference_model=None)
        train(base, dataset_folder(self.path("data"), role, stage), out, settings)

    def _evaluate(self, system: str) -> None:
        cfg, out = self.config, self.path("eval", system)
        if system == "single_agent":
            run_conversations(cfg.baseline, cfg.model, out, cfg.seed, self._questions("heldout"))
            return
        extra = [*self._questions("heldout"), f"--model.protocol.init_args.passes={cfg.mv_at}",
                 "--model.protocol.init_args.branching=1"]
        if system == "trained_trio":
            agents = {role: {"model": self.role_model(role)} for role in ROLES}
            extra.append(f"--model.agents={json.dumps(agents)}")
        run_conversations(cfg.evaluation, cfg.model, out, cfg.seed, extra)

    def run(self) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        _write(self.root / "settings.json", _dumps(asdict(self.config)))
        run_steps(self.steps(), self.config.launcher, self.write_summary)
        return self.write_summary()

    # ---- summary ---------------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Overall: each system's held-out accuracy; per role: its nodes, data, training losses and model."""
        systems = []
        for system in SYSTEMS:
            metrics = _json(self.path("eval", system, "metrics.json"))
            if metrics is None:
                continue
            accuracy = metrics.get("final_answer_accuracy" if system == "single_agent" else "mv_accuracy")
            systems.append({"system": system, "accuracy": accuracy, "n": metrics.get("n_conversations"),
                            **{name: metrics.get(name) for name in ROLE_METRICS}})
        roles = []
        for role in ROLES:
            sft_counts = _json(dataset_folder(self.path("data"), role, "sft") / "counts.json") or {}
            dpo_counts = _json(dataset_folder(self.path("data"), role, "dpo") / "counts.json") or {}
            row: dict[str, Any] = {"role": role, "nodes": sft_counts.get("nodes"),
                                   "sft_examples": sft_counts.get("examples"), "dpo_pairs": dpo_counts.get("pairs")}
            row["trained"], row["untrained"] = [], {}
            for stage in self.stages(role):
                marker = _json(self.path("train", role, stage, "checkpoint", "coral_train.json"))
                row[f"{stage}_loss"] = marker["metrics"]["final_loss"] if marker else None
                row[f"{stage}_steps"] = marker["metrics"]["steps"] if marker else None
                if marker:
                    row["trained"].append(stage)
                elif (reason := self.untrained_because(role, stage)) is not None:
                    row["untrained"][stage] = reason
            row["model"] = self.role_model(role)
            roles.append(row)
        return {"systems": systems, "roles": roles}

    def write_summary(self) -> dict[str, Any]:
        summary = self.summary()
        _write(self.root / "summary.json", _dumps(summary))
        _write(self.root / "summary.md", markdown(summary))
        _plot(summary, self.root)
        return summary


def markdown(summary: dict[str, Any]) -> str:
    """Two tables: the systems on the held-out questions, then what each role was trained on and how."""
    lines = ["## Held-out evaluation", "", "| system | accuracy | " + " | ".join(ROLE_METRICS) + " | n |",
             "|---" * (len(ROLE_METRICS) + 3) + "|"]
    for row in summary["systems"]:
        cells = [_fmt(row[name]) for name in ("accuracy", *ROLE_METRICS)]
        lines.append(f"| {row['system']} | " + " | ".join(cells) + f" | {row['n']} |")
    lines += ["", "## Roles", "", "| role | nodes | positive | negative | SFT examples | DPO pairs | trained | "
              "SFT loss | DPO loss |", "|---" * 9 + "|"]
    notes = []
    for row in summary["roles"]:
        nodes = row["nodes"] or {}
        counts = [nodes.get("valued"), nodes.get("positive"), nodes.get("negative"), row["sft_examples"],
                  row["dpo_pairs"]]
        cells = ["-" if c is None else str(c) for c in counts] + [" + ".join(row["trained"]) or "untrained"]
        cells += [_fmt(row.get(f"{s}_loss")) for s in KINDS]
        lines.append(f"| {row['role']} | " + " | ".join(cells) + " |")
        notes += [f"- {row['role']} {stage} not trained: {reason}" for stage, reason in row["untrained"].items()]
    if notes:
        lines += ["", "Stages left untrained (their role kept the model it had):", "", *notes]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"))


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _plot(summary: dict[str, Any], root: Path) -> None:
    """summary.png: accuracy by system; roles.png: the share of positive nodes per role."""
    from coral.report.plots import bar_chart, save_png

    if summary["systems"]:
        series = {name: {row["system"]: row[name] for row in summary["systems"] if row[name] is not None}
                  for name in ("accuracy", "generator_accuracy", "refiner_accuracy")}
        save_png(bar_chart(series, title="Held-out accuracy", xlabel="system"), root / "summary.png")
    shares = {row["role"]: row["nodes"]["positive"] / row["nodes"]["valued"] for row in summary["roles"]
              if row["nodes"] and row["nodes"]["valued"]}
    if shares:
        save_png(bar_chart({"positive share": shares}, title="Tree nodes by role", xlabel="role"),
                 root / "roles.png")


def parse(args: list[str] | None = None) -> MaltConfig:
    """The YAML config (``--config``) plus command-line overrides, typed and validated."""
    return parse_config(MaltConfig, args, __doc__)


def main(args: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    driver = MaltTraining(parse(args))
    summary = driver.run()
    print(f"\nsummary ({driver.root / 'summary.md'}):\n{markdown(summary)}")
    return summary


if __name__ == "__main__":
    main()
