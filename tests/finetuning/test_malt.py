"""MALT end to end in pieces: real generate-verify-refine trees on a scripted backend (resume, prompts that the
role data rebuilds), the driver's plan with fast fake steps (order, models per role, DPO on SFT, resume,
summary), the configs, and (slow) the tiny pipeline for real."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coral.backends import ScriptedBackend
from coral.beliefs import BeliefExtractor
from coral.conversation import Agent, ConversationRunner, RetryPolicy, RunSettings
from coral.conversation.protocols.generate_verify_refine import GenerateVerifyRefine
from coral.records import ConversationRecord
from coral.sampling import SamplingParams
from coral.store import ResultStore, read_records
from coral.synthesis.malt import MaltSettings, build_malt_data
from coral.tasks import Example, MMLUProTask
from finetuning import malt

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [Example(id=f"q{i}", task="mmlu_pro", question=f"Question {i}: pick B.", answer="B",
                     choices=("x", "y", "z")) for i in range(3)]


def letter_by_seed(messages: list[dict[str, str]], sampling: SamplingParams) -> str:
    """Answers C when the seed is a multiple of 3, else B (critiques say so too: the rules read no answer from them).

    Siblings come from one request with seeds s, s + 1, so by parity every pair of siblings would split one right,
    one wrong and every parent would be worth exactly 1/2; modulo 3 gives some parents two right children.
    """
    letter = "C" if (sampling.seed or 0) % 3 == 0 else "B"
    if "verifier" in messages[0]["content"]:
        return f"I think it should be {letter}."
    return f"The correct answer is ({letter}) [{sampling.seed}]"


def sample_trees(folder: Path, questions: list[Example], backend: ScriptedBackend) -> list[ConversationRecord]:
    protocol = GenerateVerifyRefine(passes=2, branching=2)
    agents = {name: Agent(name, backend, "m", protocol.instruction(name, MMLUProTask()) or "",
                          SamplingParams(max_tokens=20)) for name in protocol.speakers()}
    runner = ConversationRunner(protocol=protocol, task=MMLUProTask(), agents=agents,
                                extractor=BeliefExtractor("rules", backend), store=ResultStore(folder),
                                settings=RunSettings(run_seed=5, config_hash="t",
                                                     retry=RetryPolicy(attempts=1, backoff_s=0.0)))
    asyncio.run(runner.run(runner.pending(questions, 1)))  # what trainer.py validate runs: the unfinished trees
    return sorted(read_records(folder), key=lambda record: record.example_id)


def test_a_half_sampled_tree_set_resumes_without_regenerating_finished_trees(tmp_path: Path) -> None:
    first = ScriptedBackend(letter_by_seed)
    [half] = sample_trees(tmp_path, QUESTIONS[:1], first)
    assert len(first.calls) == 1 + 2 + 4  # one request per parent: the question's, 2 generators', 4 critiques'
    assert [call.n for call in first.calls] == [2] * 7  # each asks for the parent's n = 2 children
    rest = ScriptedBackend(letter_by_seed)
    records = sample_trees(tmp_path, QUESTIONS, rest)
    assert len(rest.calls) == 2 * 7  # only the two unfinished trees
    assert records[0] == half
    fresh = sample_trees(tmp_path / "fresh", QUESTIONS, ScriptedBackend(letter_by_seed))
    assert [r.turns for r in fresh] == [r.turns for r in records]  # seeds make a resumed set equal a fresh one


def test_role_data_from_real_trees_rebuilds_the_prompts_the_roles_were_asked(tmp_path: Path) -> None:
    backend = ScriptedBackend(letter_by_seed)
    records = sample_trees(tmp_path, QUESTIONS, backend)
    asked = {json.dumps(call.messages) for call in backend.calls}
    data = build_malt_data(records, MaltSettings())
    for role, role_data in data.items():
        assert role_data.nodes["nodes"] == {"generator": 6, "verifier": 12, "refiner": 24}[role]
        assert role_data.examples and role_data.pairs, role
        assert all(json.dumps(example.prompt) in asked for example in role_data.examples)
        assert all(json.dumps(pair.prompt) in asked for pair in role_data.pairs)


# ---- the driver, with fast fake steps ------------------------------------------------------------------------


class FakeSteps:
    """Real tree records for sampling, a marker for training, metrics for evaluation; records every call."""

    def __init__(self, crash_in: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.crash_in = crash_in
        self.script = letter_by_seed

    def _maybe_crash(self, step: str) -> None:
        if self.crash_in == step:
            self.crash_in = None
            raise RuntimeError(f"simulated crash in {step}")

    def conversations(self, run: Any, model: str, out: Path, seed: int, extra: list[str]) -> None:
        self.calls.append((out.name, extra))
        self._maybe_crash(out.name)
        if out.name == "trees":
            count = len(sample_trees(out, QUESTIONS, ScriptedBackend(self.script)))
            (out / "metrics.json").write_text(json.dumps({"n_conversations": count}))
            return
        accuracy = {"single_agent": 0.25, "untrained_trio": 0.5, "trained_trio": 0.75}[out.name]
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"n_conversations": 4, "mv_accuracy": accuracy,
                                                      "final_answer_accuracy": accuracy,
                                                      "generator_accuracy": 0.5}))
        for index in range(4):  # conversations_done counts the store's records
            ResultStore(out).append(ConversationRecord(f"e{index}", 0, "mmlu_pro", seed, "h", "x", {}, [],
                                                       "completed", 1))

    def train(self, base: str, data_dir: Path, out: Path, settings: Any) -> Path:
        self.calls.append(("train", (str(base), str(data_dir), settings.method, settings.beta,
                                     settings.reference_model)))
        self._maybe_crash("train")
        checkpoint = out / "checkpoint"
        checkpoint.mkdir(parents=True, exist_ok=True)
        (checkpoint / "coral_train.json").write_text(json.dumps({"metrics": {"final_loss": 0.5, "steps": 2}}))
        return checkpoint


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSteps:
    steps = FakeSteps()
    monkeypatch.setattr(malt, "run_conversations", steps.conversations)
    monkeypatch.setattr(malt, "train", steps.train)
    monkeypatch.setattr(malt, "checkpoint_is_complete", lambda d: (d / "coral_train.json").is_file())
    return steps


def split_source(tmp_path: Path) -> Path:
    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(10)))
    return source


def config(tmp_path: Path, *args: str) -> malt.MaltConfig:
    return malt.parse(["--exp_dir", str(tmp_path / "exp"), "--model", "SmolLM2-135M-Instruct",
                       "--splits.train_file", str(split_source(tmp_path)), "--splits.train_size", "4",
                       "--splits.eval_size", "3", *args])


def test_the_plan_trains_each_role_on_its_data_and_the_trained_trio_names_each_checkpoint(
        tmp_path: Path, fake: FakeSteps) -> None:
    summary = malt.MaltTraining(config(tmp_path)).run()
    exp = tmp_path / "exp"
    assert [name for name, _ in fake.calls] == ["trees", *["train"] * 5, "single_agent", "untrained_trio",
                                                "trained_trio"]
    trainings = [args for name, args in fake.calls if name == "train"]
    sft = {role: str(exp / "train" / role / "sft" / "checkpoint") for role in ("generator", "verifier", "refiner")}
    assert trainings == [
        ("SmolLM2-135M-Instruct", str(exp / "data" / "generator" / "sft"), "sft", 0.1, None),
        ("SmolLM2-135M-Instruct", str(exp / "data" / "verifier" / "sft"), "sft", 0.1, None),
        (sft["verifier"], str(exp / "data" / "verifier" / "dpo"), "dpo", 0.2, None),  # DPO on the SFT model
        ("SmolLM2-135M-Instruct", str(exp / "data" / "refiner" / "sft"), "sft", 0.1, None),
        (sft["refiner"], str(exp / "data" / "refiner" / "dpo"), "dpo", 0.2, None),
    ]
    runs = dict(fake.calls[-3:])
    assert f"--data.val_set_init_args.file_path={exp / 'splits' / 'heldout.jsonl'}" in runs["trained_trio"]
    assert "--model.protocol.init_args.passes=3" in runs["untrained_trio"]
    agents = json.loads(runs["trained_trio"][-1].removeprefix("--model.agents="))
    assert agents == {"generator": {"model": sft["generator"]},
                      "verifier": {"model": str(exp / "train" / "verifier" / "dpo" / "checkpoint")},
                      "refiner": {"model": str(exp / "train" / "refiner" / "dpo" / "checkpoint")}}
    assert [(row["system"], row["accuracy"]) for row in summary["systems"]] == [
        ("single_agent", 0.25), ("untrained_trio", 0.5), ("trained_trio", 0.75)]
    assert [row["nodes"]["nodes"] for row in summary["roles"]] == [6, 12, 24]
    assert (exp / "summary.png").is_file() and (exp / "roles.png").is_file()
    assert "| trained_trio | 0.750 |" in (exp / "summary.md").read_text()


def test_splits_are_disjoint_seeded_and_validated(tmp_path: Path) -> None:
    settings = malt.SplitSettings(train_file=str(split_source(tmp_path)), train_size=4, eval_size=3, seed=1)
    folder = tmp_path / "splits"
    malt.write_splits(settings, folder)
    train, heldout = ((folder / f"{name}.jsonl").read_text().splitlines() for name in ("train", "heldout"))
    assert (len(train), len(heldout), set(train) & set(heldout)) == (4, 3, set())
    assert malt.splits_done(settings, folder)
    assert not malt.splits_done(malt.SplitSettings(train_file=settings.train_file, seed=2), folder)
    again = tmp_path / "again"
    malt.write_splits(settings, again)
    assert (again / "train.jsonl").read_text() == (folder / "train.jsonl").read_text()


def test_a_crash_stops_the_run_and_a_rerun_resumes_at_the_failed_step(tmp_path: Path, fake: FakeSteps) -> None:
    fake.crash_in = "train"
    with pytest.raises(RuntimeError, match="simulated crash in train"):
        malt.MaltTraining(config(tmp_path)).run()
    fake.calls.clear()
    malt.MaltTraining(config(tmp_path)).run()
    assert [name for name, _ in fake.calls] == ["train"] * 5 + ["single_agent", "untrained_trio", "trained_trio"]
    fake.calls.clear()
    malt.MaltTraining(config(tmp_path)).run()
    assert fake.calls == []  # everything validates: nothing reruns


def refiner_right_on_even_seeds(messages: list[dict[str, str]], sampling: SamplingParams) -> str:
    """Generators wrong; of a critique's two refinements (seeds s, s + 1) exactly one right, so it is worth 1/2."""
    right = "refines" in messages[0]["content"] and (sampling.seed or 0) % 2 == 0
    return f"The correct answer is ({'B' if right else 'C'}) [{sampling.seed}]"


def test_a_stage_without_data_keeps_the_model_it_had_and_the_run_goes_on(
        tmp_path: Path, fake: FakeSteps, caplog: pytest.LogCaptureFixture) -> None:
    fake.script = refiner_right_on_even_seeds  # no generator or verifier node is positive (1/2 is not > 1/2)
    summary = malt.MaltTraining(config(tmp_path)).run()
    exp, start = tmp_path / "exp", "SmolLM2-135M-Instruct"
    refiner_sft = str(exp / "train" / "refiner" / "sft" / "checkpoint")
    assert [args for name, args in fake.calls if name == "train"] == [
        (start, str(exp / "data" / "refiner" / "sft"), "sft", 0.1, None),
        (refiner_sft, str(exp / "data" / "refiner" / "dpo"), "dpo", 0.2, None)]
    agents = json.loads(dict(fake.calls[-3:])["trained_trio"][-1].removeprefix("--model.agents="))
    assert agents == {"generator": {"model": start}, "verifier": {"model": start},
                      "refiner": {"model": str(exp / "train" / "refiner" / "dpo" / "checkpoint")}}
    assert [(row["trained"], sorted(row["untrained"])) for row in summary["roles"]] == [
        ([], ["sft"]), ([], ["dpo", "sft"]), (["sft", "dpo"], [])]
    why = "no generator node is positive: 0 positive, 6 negative of 6 valued generator nodes"
    assert summary["roles"][0]["untrained"]["sft"].startswith(why)
    assert f"train generator sft: no training data, the role keeps {start}: {why}" in caplog.text
    table = (exp / "summary.md").read_text()
    assert "| generator | 6 | 0 | 6 | 0 | 0 | untrained | - | - |" in table
    assert "| refiner | 24 | 12 | 12 | 12 | 12 | sft + dpo | 0.500 | 0.500 |" in table
    assert "- verifier dpo not trained: no verifier node is positive: 0 positive, 12 negative" in table
    fake.calls.clear()
    malt.MaltTraining(config(tmp_path)).run()
    assert fake.calls == []  # an untrained stage validates while its data stays empty


def test_generator_dpo_is_optional_and_unknown_roles_fail_before_any_work(tmp_path: Path, fake: FakeSteps) -> None:
    driver = malt.MaltTraining(config(tmp_path, "--dpo_roles", '["generator", "verifier", "refiner"]'))
    assert driver.role_model("generator").endswith("generator/dpo/checkpoint")
    with pytest.raises(ValueError, match="dpo_roles"):
        config(tmp_path, "--dpo_roles", '["critic"]')


@pytest.mark.parametrize("name", ["malt_tiny", "malt_paper"])
def test_configs_parse_with_the_papers_settings(name: str) -> None:
    cfg = malt.parse(["--config", str(ROOT / "configs" / "finetuning" / f"{name}.yaml")])
    assert (cfg.data.threshold, cfg.dpo.beta, cfg.dpo_roles, cfg.mv_at) == (0.5, 0.2, ["verifier", "refiner"], 3)
    assert cfg.sft.lora and cfg.dpo.lora
    assert cfg.tree_n == {"malt_tiny": 2, "malt_paper": 3}[name]
    header = (ROOT / "configs" / "finetuning" / f"{name}.yaml").read_text().splitlines()[1]
    assert f"python finetuning/malt.py --config configs/finetuning/{name}.yaml" in header


@pytest.mark.slow
def test_the_tiny_pipeline_runs_end_to_end(tmp_path: Path) -> None:
    """The real tiny config, shrunk: 4 training and 2 held-out questions, 1 training step per stage.

    On this machine the 4 trees give the generator and the verifier SFT examples and the refiner DPO pairs, but
    no verifier pair (counts.json): every stage runs or is left untrained with its reason, and the run goes on.
    """
    exp = tmp_path / "exp"
    command = [sys.executable, "finetuning/malt.py", "--config", "configs/finetuning/malt_tiny.yaml",
               "--exp_dir", str(exp), "--splits.train_size", "4", "--splits.eval_size", "2",
               "--sft.max_steps", "1", "--dpo.max_steps", "1"]
    subprocess.run(command, cwd=ROOT, check=True)
    summary = json.loads((exp / "summary.json").read_text())
    assert [row["system"] for row in summary["systems"]] == ["single_agent", "untrained_trio", "trained_trio"]
    assert all(row["n"] == 2 for row in summary["systems"])
    for row in summary["roles"]:
        assert sorted([*row["trained"], *row["untrained"]]) == sorted(malt.MaltTraining(malt.parse([
            "--config", "configs/finetuning/malt_tiny.yaml"])).stages(row["role"]))
        assert all(row[f"{stage}_steps"] == 1 for stage in row["trained"])
        assert row["model"] == "SmolLM2-135M-Instruct" or Path(row["model"]).is_dir()
    assert any(row["trained"] for row in summary["roles"])
    trained = read_records(exp / "eval" / "trained_trio")
    assert {turn.model for record in trained for turn in record.turns if turn.generated} == {
        row["model"] for row in summary["roles"]}
