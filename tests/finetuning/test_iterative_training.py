"""The iterative driver's control flow: step order, skipping only what validates, resuming after a crash,
failing loudly, and the summary. Steps are replaced by fast fakes that write real, validating outputs (the real
steps are tested in their own modules and by ``configs/finetuning/iterative_tiny.yaml``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetuning import iterative_training as it


class FakeSteps:
    """Writes outputs the driver's validators accept, records the calls, and can crash once in a chosen step."""

    def __init__(self, crash_in: str | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.crash_in = crash_in

    def _maybe_crash(self, step: str) -> None:
        if self.crash_in == step:
            self.crash_in = None
            raise RuntimeError(f"simulated crash in {step}")

    def conversations(self, run, model, out: Path, seed, extra) -> None:
        kind = "sample" if out.name == "sample" else "eval"
        self.calls.append((kind, model))
        self._maybe_crash(kind)
        out.mkdir(parents=True, exist_ok=True)
        accuracy = 0.25 if model == "base" else 0.5
        (out / "metrics.json").write_text(json.dumps({"n_conversations": 2, "agreement_correctness": accuracy,
                                                      "final_answer_accuracy": accuracy}))

    def build(self, sources, out: Path, settings, model) -> dict:
        self.calls.append(("data", model))
        self._maybe_crash("data")
        out.mkdir(parents=True, exist_ok=True)
        (out / "counts.json").write_text(json.dumps({"pairs": 3, "seed": settings.seed}))
        return {"pairs": 3}

    def train(self, base, data_dir: Path, out: Path, settings) -> Path:
        self.calls.append(("train", f"{base}|ref={settings.reference_model}|seed={settings.seed}"))
        self._maybe_crash("train")
        checkpoint = out / "checkpoint"
        checkpoint.mkdir(parents=True, exist_ok=True)
        (checkpoint / "coral_train.json").write_text(json.dumps({"metrics": {"loss": 0.6}}))
        return checkpoint


@pytest.fixture
def fake(monkeypatch):
    steps = FakeSteps()
    monkeypatch.setattr(it, "run_conversations", steps.conversations)
    monkeypatch.setattr(it, "conversations_done", lambda out: (out / "metrics.json").is_file())
    monkeypatch.setattr(it, "build_dpo", steps.build)
    monkeypatch.setattr(it, "dataset_is_complete", lambda out, settings: (out / "counts.json").is_file())
    monkeypatch.setattr(it, "checkpoint_is_complete", lambda d: (d / "coral_train.json").is_file())
    monkeypatch.setattr(it, "train", steps.train)
    return steps


def config(tmp_path, *args: str) -> it.IterativeConfig:
    return it.parse(["--exp_dir", str(tmp_path / "exp"), "--model", "base", "--iterations", "2", *args])


def test_rounds_run_in_order_and_each_trains_on_the_previous_models_samples(tmp_path, fake):
    rows = it.IterativeTraining(config(tmp_path)).run()
    ckpt1 = str(tmp_path / "exp" / "iter_1" / "train" / "checkpoint")
    assert fake.calls == [
        ("eval", "base"),
        ("sample", "base"), ("data", "base"), ("train", "base|ref=None|seed=334"), ("eval", ckpt1),
        ("sample", ckpt1), ("data", ckpt1), ("train", "base|ref=None|seed=335"),
        ("eval", str(tmp_path / "exp" / "iter_2" / "train" / "checkpoint")),
    ]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["agreement_correctness"] for r in rows] == [0.25, 0.5, 0.5]
    assert rows[1]["data"] == {"pairs": 3, "seed": 334} and rows[1]["train"]["metrics"]["loss"] == 0.6
    summary = (tmp_path / "exp" / "summary.md").read_text().splitlines()
    assert summary[2].startswith("| 0 | 0.250 |") and len(summary) == 5
    assert (tmp_path / "exp" / "summary.png").stat().st_size > 0


def test_continuous_training_and_reference_updates_use_the_previous_model(tmp_path, fake):
    it.IterativeTraining(config(tmp_path, "--continuous_training", "true", "--update_reference_model", "true")).run()
    ckpt1 = str(tmp_path / "exp" / "iter_1" / "train" / "checkpoint")
    trains = [c for c in fake.calls if c[0] == "train"]
    assert trains == [("train", "base|ref=base|seed=334"), ("train", f"{ckpt1}|ref={ckpt1}|seed=335")]


def test_a_crash_stops_the_loop_and_a_rerun_resumes_at_the_failed_step(tmp_path, fake):
    fake.crash_in = "train"
    with pytest.raises(RuntimeError, match="simulated crash in train"):
        it.IterativeTraining(config(tmp_path)).run()
    assert fake.calls[-1][0] == "train" and len(fake.calls) == 4
    fake.calls.clear()
    it.IterativeTraining(config(tmp_path)).run()
    assert [c[0] for c in fake.calls] == ["train", "eval", "sample", "data", "train", "eval"]


def test_outputs_that_do_not_validate_are_redone(tmp_path, fake):
    it.IterativeTraining(config(tmp_path, "--iterations", "1")).run()
    (tmp_path / "exp" / "iter_1" / "data" / "counts.json").unlink()  # a dataset left half-written
    fake.calls.clear()
    it.IterativeTraining(config(tmp_path, "--iterations", "1")).run()
    assert [c[0] for c in fake.calls] == ["data"]


def test_a_step_that_ends_without_valid_outputs_fails_with_its_name(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(it, "build_dpo", lambda *args: {"pairs": 0})  # writes nothing
    with pytest.raises(it.StepFailed, match="round 1: build dpo data finished but its outputs"):
        it.IterativeTraining(config(tmp_path)).run()


def test_bad_settings_fail_before_any_work(tmp_path, fake):
    with pytest.raises(ValueError, match="method must be 'dpo' or 'sft'"):
        it.IterativeTraining(config(tmp_path, "--method", "ppo"))
    with pytest.raises(ValueError, match="launcher.kind"):
        config(tmp_path, "--launcher.kind", "k8s")
    assert fake.calls == []


def test_the_tiny_config_parses_with_the_papers_pair_caps():
    cfg = it.parse(["--config", "configs/finetuning/iterative_tiny.yaml"])
    assert (cfg.iterations, cfg.method, cfg.training.lora) == (2, "dpo", True)
    assert (cfg.data.pairs.max_pairs_per_level, cfg.data.pairs.max_pairs_per_problem) == (2, 20)
    assert {"--model.beam_size=5", "--model.sampling_n=2"} <= set(cfg.sampling.overrides)  # the paper's beam
    # A 135M model's short turns seldom state "the answer is (X)": without the judge there are no pairs.
    assert "--model.extractor.mode=rules_then_judge" in cfg.sampling.overrides
    assert cfg.training.save_steps < cfg.training.max_steps  # a round killed while training can resume


def test_a_round_without_training_data_stops_with_what_the_samples_held(tmp_path, fake, monkeypatch):
    def no_pairs(sources, out, settings, model):
        out.mkdir(parents=True)
        (out / "counts.json").write_text(json.dumps({"pairs": 0, "candidates": {"correct": 0, "no_belief": 91}}))

    monkeypatch.setattr(it, "build_dpo", no_pairs)
    with pytest.raises(it.StepFailed, match=r"round 1: the samples gave no dpo training data .*'no_belief': 91"):
        it.IterativeTraining(config(tmp_path)).run()
    assert [c[0] for c in fake.calls] == ["eval", "sample"]


def test_slurm_launcher_options_are_typed_and_reach_submitit(tmp_path, monkeypatch):
    import submitit

    seen = {}

    class FakeExecutor:
        def __init__(self, folder, cluster):
            seen["cluster"] = cluster

        def update_parameters(self, **params):
            seen["params"] = params

        def submit(self, fn, *args):
            fn(*args)
            return type("Job", (), {"job_id": "1", "result": lambda self: None})()

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    cfg = config(tmp_path, "--launcher.kind", "slurm", "--launcher.slurm",
                 "{partition: gpu, gpus_per_node: 1, cpus_per_task: 8, timeout_min: 240}")
    ran = []
    cfg.launcher.run("step", tmp_path, ran.append, "done")
    assert ran == ["done"] and seen == {"cluster": "slurm", "params": {
        "name": "step", "slurm_partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 8, "timeout_min": 240}}
    with pytest.raises(ValueError, match="gpus_per_node: must be an integer >= 0, got -1"):
        config(tmp_path, "--launcher.slurm.gpus_per_node", "-1")
