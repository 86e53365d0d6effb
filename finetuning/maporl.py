"""MAPoRL end to end: verifier data -> verifier -> multi-agent PPO -> evaluation in debate.

    python finetuning/maporl.py --config configs/finetuning/maporl_tiny.yaml

Steps (each writes under ``exp_dir`` and is skipped only when its outputs exist and validate):

1. ``verifier_data/``: debates of the untrained model on the first ``verifier_questions`` training questions;
   every graded answer becomes a (question, answer, correct?) row, balanced per question (skipped with
   ``verifier: gold``, which scores answers with their gold correctness).
2. ``verifier/``: the learned verifier (``finetuning.trainers.verifier``).
3. ``ppo/``: each update plays debates with the current weights on ``questions_per_update`` questions drawn
   (seeded) from the next ``rl_questions`` training questions, rewards every answer (``coral.rewards``) and runs
   one PPO update of the scheduled turn (``finetuning.trainers.maporl_ppo``); rollout records in
   ``ppo/rollouts/update_<k>/``, ``ppo/ppo_log.jsonl``, a resumable ``ppo/checkpoint/``.
4. ``eval/<arm>/``: the trained agents in debate, the untrained agents in the same debate, and the single-agent
   baseline (1 agent x 1 round), on the first ``eval_questions`` test questions; majority vote with the
   configured tie rule (MAPoRL's ``expected``). Each arm's ``metrics.json`` is coral's (``coral.metrics``:
   ``mv_accuracy``, ``mv_accuracy_round_<r>``, ``agent_accuracy_round_<r>``, ``consensus``, ``w_to_r_round_<r>``,
   ``r_to_w_round_<r>``); ``summary.md``/``summary.json``/``summary.png`` compare the arms.

Every debate is played by ``PolicyBackend`` on the embedded engine serving the trainer's own model (live weights,
one adapter per round) and run in this process by ``coral.conversation.evaluate``, which also resumes a store left
half-written by a kill.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from coral.atomic import write_atomic
from coral.backends.embedded import EngineConfig
from coral.beliefs import BeliefExtractor
from coral.conversation import Agent, ConversationRunner, RetryPolicy, RunSettings, evaluate
from coral.conversation.protocols.debate import DebateProtocol, PeerScorer, PromptStyle
from coral.metrics.aggregate import format_metric
from coral.records import TieRule, Turn
from coral.rewards import RewardSettings
from coral.sampling import SamplingParams
from coral.store import ResultStore, read_records
from coral.tasks import TASKS, Example, Task
from finetuning.steps import Launcher, Step, parse_config, run_steps
from finetuning.trainers.maporl_ppo import MultiAgentPPO, TrainerSettings, checkpoint_update
from finetuning.trainers.maporl_rollouts import PolicyBackend, record_rollouts
from finetuning.trainers.verifier import (
    Scorer,
    VerifierRow,
    VerifierSettings,
    balance_rows,
    load_scorer,
    train_verifier,
    verifier_is_complete,
    verifier_rows,
)

log = logging.getLogger("coral.maporl")
ARMS = ("trained", "untrained", "single")


@dataclass(frozen=True)
class DebateSettings:
    """One debate setup.

    Args:
        agents: agents per debate.
        rounds: rounds (the paper's turns).
        prompts: the revise request's wording (``maporl`` or ``du``).
        tie_rule: how a tied vote is decided (MAPoRL: ``expected``).
        temperature: sampling temperature (official: 0.7).
        max_tokens: most tokens per answer (official: 300, forced as the minimum too; here answers may stop early).
    """

    agents: int = 2
    rounds: int = 3
    prompts: PromptStyle = "maporl"
    tie_rule: TieRule = "expected"
    temperature: float = 0.7
    max_tokens: int = 300


@dataclass
class MaporlConfig:
    """The whole MAPoRL run.

    Args:
        exp_dir: where every step's outputs go.
        model: a packaged model name or a Hugging Face checkpoint directory.
        task: the task name (``gsm8k``, ``anli``, ...).
        train_file: training questions: the first ``verifier_questions`` for the verifier, the next
            ``rl_questions`` for PPO (the paper's ANLI split).
        test_file: evaluation questions.
        seed: seeds debates, question draws, training.
        verifier: ``gold`` (correctness 0/1, the code's no-verifier variant) or ``learned``.
        verifier_questions: training questions whose debates make the verifier's data.
        verifier_samples: debates per verifier question (the official code: 5 per ANLI question).
        verifier_training: how the verifier is trained.
        rl_questions: the PPO question pool.
        questions_per_update: debates per PPO update.
        updates: PPO updates.
        save_every: a checkpoint every this many updates (and after the last).
        debate: the training debate (2 agents x 3 turns in the paper).
        eval_debate: the evaluation debate (3 agents x 3 turns in the paper).
        eval_questions: test questions evaluated (None: all).
        rewards: how each answer's reward is made (influence γ, shaping, penalty).
        trainer: the PPO trainer's settings.
        device: where the model runs (``cpu``, ``cuda``); on CUDA it runs in bfloat16.
        threads: torch's CPU threads (None: torch's default, one per core). On a CPU shared with other jobs, 1
            avoids oversubscription: SmolLM2-135M sampled 2.3 tokens/s with 1 thread and 0.2 with 2 on a loaded
            2-core machine.
    """

    exp_dir: str = "results/maporl"
    model: str = "SmolLM2-135M-Instruct"
    task: str = "gsm8k"
    train_file: str = "data/gsm8k/train.jsonl"
    test_file: str = "data/gsm8k/test.jsonl"
    seed: int = 0
    verifier: str = "gold"
    verifier_questions: int = 0
    verifier_samples: int = 5
    verifier_training: VerifierSettings = field(default_factory=VerifierSettings)
    rl_questions: int = 128
    questions_per_update: int = 8
    updates: int = 100
    save_every: int = 10
    debate: DebateSettings = field(default_factory=DebateSettings)
    eval_debate: DebateSettings = field(default_factory=lambda: DebateSettings(agents=3))
    eval_questions: int | None = None
    rewards: RewardSettings = field(default_factory=RewardSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.verifier not in ("gold", "learned"):
            raise ValueError(f"verifier must be 'gold' or 'learned', got {self.verifier!r}")


class Maporl:
    """The MAPoRL driver: builds the steps from a config and runs those whose outputs do not validate yet.

    Args:
        config: the run's configuration.
    """

    def __init__(self, config: MaporlConfig) -> None:
        self.config = config
        self.root = Path(config.exp_dir)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.task: Task = TASKS.get(config.task)()
        self._loaded: tuple[MultiAgentPPO, Any] | None = None

    def steps(self) -> list[Step]:
        """The steps in order; the verifier's two are left out with the gold verifier."""
        plan = []
        if self.config.verifier == "learned":
            counts = self.root / "verifier_data/counts.json"
            plan.append(Step("verifier data", counts.parent, self.verifier_data, counts.is_file))
            plan.append(Step("verifier", self.root / "verifier", self.train_verifier,
                             lambda: verifier_is_complete(self.root / "verifier")))
        checkpoint = self.root / "ppo/checkpoint"
        updated = lambda: checkpoint_update(checkpoint) == self.config.updates  # noqa: E731 - a one-line check
        plan.append(Step("ppo", checkpoint.parent, self.ppo, updated))
        for arm in ARMS:
            plan.append(Step(f"evaluate {arm}", self.root / "eval" / arm, partial(self.evaluate_arm, arm),
                             partial(self.evaluated, arm)))
        return plan

    def run(self) -> list[dict[str, Any]]:
        """Run every step not done yet, then write the summary."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / "settings.json", json.dumps(asdict(self.config), indent=2, default=str).encode())
        run_steps(self.steps(), Launcher(), self.write_summary)  # in this process: the model stays loaded
        return self.write_summary()

    # --------------------------------------------------------------------------------------------- pieces
    def trainer(self) -> tuple[MultiAgentPPO, Any]:
        """The model with its policy adapters (resumed from the latest checkpoint) and its tokenizer, loaded once."""
        if self._loaded is None:
            from coral.backends import models

            model, tokenizer = models.load(self.config.model)
            if self.config.device != "cpu":  # bf16 on an accelerator (the official runs' dtype), fp32 on a CPU
                model = model.to(self.config.device, dtype=torch.bfloat16)
            trainer = MultiAgentPPO(model, self.config.trainer, self.root / "ppo")
            if checkpoint_update(self.root / "ppo/checkpoint") is not None:
                trainer.resume(self.root / "ppo/checkpoint")
            self._loaded = (trainer, tokenizer)
        return self._loaded

    def questions(self, kind: str) -> list[Example]:
        """``verifier``, ``rl`` (consecutive slices of the training file) or ``eval`` questions."""
        cfg = self.config
        if kind == "eval":
            return list(self.task.load(cfg.test_file))[: cfg.eval_questions]
        train = list(self.task.load(cfg.train_file))
        if kind == "verifier":
            return train[: cfg.verifier_questions]
        pool = train[cfg.verifier_questions : cfg.verifier_questions + cfg.rl_questions]
        if not pool:
            raise ValueError(f"{cfg.train_file} has no questions left for PPO after {cfg.verifier_questions}")
        return pool

    def policy(self, trained: bool) -> PolicyBackend:
        """A backend answering from the trainer's model: its policy adapters (``trained``) or the base model."""
        trainer, tokenizer = self.trainer()
        return PolicyBackend(trainer, tokenizer, trained, "maporl", EngineConfig(threads=self.config.threads))

    def debates(
        self,
        backend: PolicyBackend,
        debate: DebateSettings,
        questions: list[Example],
        samples: int,
        out: Path,
        seed: int,
        scorer: Scorer | None = None,
    ) -> dict[str, float]:
        """Play ``samples`` debates per question with ``coral.conversation.evaluate``: records and ``metrics.json``
        go to ``out`` (what it holds already is not played again); returns the metrics.

        With a learned verifier (``scorer``) and MAPoRL's prompts, each agent sees the verifier's score beside the
        others' answers, as in the official configs (``reward_feedback=True``).
        """
        protocol = DebateProtocol(debate.agents, debate.rounds, debate.prompts, debate.tie_rule)
        if scorer is not None and debate.prompts == "maporl":
            protocol.peer_scores = self._peer_scorer(scorer)
        sampling = SamplingParams(temperature=debate.temperature, max_tokens=debate.max_tokens)
        agents = {name: Agent(name, backend, self.config.model, "", sampling) for name in protocol.speakers()}
        runner = ConversationRunner(
            protocol=protocol,
            task=self.task,
            agents=agents,
            extractor=BeliefExtractor("rules", backend),
            store=ResultStore(out),
            settings=RunSettings(seed, f"maporl-{seed}", retry=RetryPolicy(attempts=1, backoff_s=0.0)),
        )
        return evaluate(runner, questions, samples)

    def _peer_scorer(self, scorer: Scorer) -> PeerScorer:
        """The verifier as the debate protocol's async peer scorer, reading the question as the agents saw it."""

        async def score(example: Example, turn: Turn) -> float:
            return scorer(self.task.opening_message(example, posed=True), turn.text)

        return score

    # ---------------------------------------------------------------------------------------------- steps
    def verifier_data(self) -> None:
        """Debates of the untrained model on the verifier questions -> balanced (question, answer, correct?) rows."""
        cfg, out = self.config, self.root / "verifier_data"
        self.debates(self.policy(trained=False), cfg.debate, self.questions("verifier"), cfg.verifier_samples,
                     out / "debates", cfg.seed)
        rows = verifier_rows(read_records(out / "debates"))
        balanced = balance_rows(rows, cfg.seed)
        (out / "rows.jsonl").write_text("".join(json.dumps(asdict(row)) + "\n" for row in balanced))
        counts = {"answers": len(rows), "correct": sum(r.correct for r in rows), "balanced_rows": len(balanced)}
        write_atomic(out / "counts.json", json.dumps(counts).encode())

    def train_verifier(self) -> None:
        """The learned verifier on the balanced rows."""
        lines = (self.root / "verifier_data/rows.jsonl").read_text().splitlines()
        rows = [VerifierRow(**json.loads(line)) for line in lines]
        train_verifier(self.config.model, rows, self.root / "verifier", self.config.verifier_training)

    def ppo(self) -> None:
        """PPO updates from the checkpoint's counter to ``updates``: debate with the current weights, reward, update."""
        cfg = self.config
        trainer, _ = self.trainer()
        scorer = load_scorer(self.root / "verifier") if cfg.verifier == "learned" else None
        pool = self.questions("rl")
        while trainer.update_count < cfg.updates:
            k = trainer.update_count
            out = self.root / f"ppo/rollouts/update_{k}"
            shutil.rmtree(out, ignore_errors=True)  # a rerun regenerates: the token ids live only in the backend
            backend = self.policy(trained=True)
            questions = random.Random(cfg.seed * 1_000_003 + k).sample(pool, min(cfg.questions_per_update, len(pool)))
            self.debates(backend, cfg.debate, questions, 1, out, cfg.seed + k, scorer)
            rollouts = [
                rollout
                for record in read_records(out)
                for rollout in record_rollouts(record, self.task, backend.sampled, cfg.rewards, scorer)
            ]
            stats = trainer.update(rollouts)
            log.info(
                "update %d (turn %d): reward %.3f, kl %.4f, clip %.3f, value loss %.4f, sampler gap %s, %.1f s", k,
                stats["turn"], stats["reward"], stats["kl"], stats["clip_frac"], stats["value_loss"],
                stats["sampler_logprob_gap"], stats["seconds"],
            )
            if trainer.update_count % cfg.save_every == 0 or trainer.update_count == cfg.updates:
                trainer.save(self.root / "ppo/checkpoint")

    def arm_debate(self, arm: str) -> DebateSettings:
        """The evaluation debate of ``arm``: the single-agent baseline is 1 agent x 1 round."""
        return replace(self.config.eval_debate, agents=1, rounds=1) if arm == "single" else self.config.eval_debate

    def evaluate_arm(self, arm: str) -> None:
        """One evaluation arm's debates on the test questions and coral's metrics of them (``eval/<arm>/``)."""
        backend, out = self.policy(trained=arm == "trained"), self.root / "eval" / arm
        self.debates(backend, self.arm_debate(arm), self.questions("eval"), 1, out, self.config.seed)

    def evaluated(self, arm: str) -> bool:
        """Metrics written, over every evaluation question."""
        try:
            metrics = json.loads((self.root / "eval" / arm / "metrics.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(metrics.get("n_conversations") == len(self.questions("eval")))

    # -------------------------------------------------------------------------------------------- summary
    def write_summary(self) -> list[dict[str, Any]]:
        """``summary.json``/``.md``/``.png``: each evaluated arm's shape and coral metrics, vote accuracy by round."""
        rows = []
        for arm in ARMS:
            path = self.root / "eval" / arm / "metrics.json"
            if path.is_file():
                debate = self.arm_debate(arm)
                rows.append({"arm": arm, "agents": debate.agents, "rounds": debate.rounds,
                             **json.loads(path.read_text())})
        write_atomic(self.root / "summary.json", json.dumps(rows, indent=2).encode())
        write_atomic(self.root / "summary.md", summary_markdown(rows).encode())
        if rows:
            from coral.report.plots import line_chart, save_png

            series = {row["arm"]: _by_round(row, "mv_accuracy", range(row["rounds"])) for row in rows}
            chart = line_chart(series, title="Majority-vote accuracy by round", xlabel="round")
            save_png(chart, self.root / "summary.png")
        return rows


SUMMARY_COLUMNS = ("arm", "agents x rounds", "n", "mv_accuracy", "mv_accuracy by round", "agent_accuracy by round",
                   "consensus", "w_to_r / r_to_w by round")


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """The evaluation table, one line per arm; "by round" lists rounds 0, 1, ... (changes from round 1 on)."""
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    for row in rows:
        rounds = range(row["rounds"])
        changes = [f"{format_metric(row.get(f'w_to_r_round_{r}'))} / {format_metric(row.get(f'r_to_w_round_{r}'))}"
                   for r in rounds[1:]]
        cells = [
            row["arm"], f"{row['agents']} x {row['rounds']}", str(row["n_conversations"]),
            format_metric(row.get("mv_accuracy")),
            ", ".join(map(format_metric, _by_round(row, "mv_accuracy", rounds).values())),
            ", ".join(map(format_metric, _by_round(row, "agent_accuracy", rounds).values())),
            format_metric(row.get("consensus")), ", ".join(changes) or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _by_round(row: dict[str, Any], metric: str, rounds: range) -> dict[int, float]:
    """``<metric>_round_<r>`` of each round the metrics have, by round."""
    return {r: row[f"{metric}_round_{r}"] for r in rounds if row.get(f"{metric}_round_{r}") is not None}


def parse(args: list[str] | None = None) -> MaporlConfig:
    """The YAML config (``--config``) plus command-line overrides, typed and validated."""
    return parse_config(MaporlConfig, args, __doc__)


def main(args: list[str] | None = None) -> list[dict[str, Any]]:
    """Parse, run, print the summary table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    driver = Maporl(parse(args))
    rows = driver.run()
    print(f"\nsummary ({driver.root / 'summary.md'}):\n{summary_markdown(rows)}")
    return rows


if __name__ == "__main__":
    main()
