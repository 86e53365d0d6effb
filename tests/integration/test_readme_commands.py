"""Every command README.md shows in a ```bash block is run (at tiny sizes) or, where it cannot run here, parsed.

A documented command must not break silently: ``RULES`` says how each command is checked, and a command that no
rule covers, or a rule that no longer matches a command, fails ``test_every_readme_command_has_a_rule``.
Commands run in a scratch workspace (configs linked, data copied), so nothing is written into the repository.
Sources the README names but that are not bundled are stood in for by the test fixtures of the same format.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from coral.records import ConversationRecord, Turn
from coral.store import ResultStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
MODEL = "SmolLM2-135M-Instruct"
TINY_EVAL = ["--data.val_max_instances", "1", "--model.max_turns", "2", "--model.max_turn_tokens", "8",
             "--model.extractor.max_tokens", "8"]
TINY_TRAIN = ["--settings.max_steps", "1", "--settings.batch_size", "1", "--settings.max_length", "96"]
PLACEHOLDERS = {
    "<a MATH training split, .jsonl>": "data/math/test.jsonl",
    "<checkpoint dir or model>": MODEL,
    "<GSM8K train.jsonl>": "data/gsm8k/test.jsonl",
    "<GSM8K test.jsonl>": "data/gsm8k/test.jsonl",
    "/path/to/MATH": str(FIXTURES / "math" / "MATH_sample"),
}
"""README placeholders -> something that exists here (written into the command before it is split)."""
SOURCES = {
    "math_splits/train.jsonl": None,  # made from the MATH fixture folder (see ``stage_sources``)
    "math_splits/test.jsonl": FIXTURES / "math" / "prm800k_test.jsonl",
    "mmlu_pro_test.jsonl": FIXTURES / "mmlu_pro" / "test.jsonl",
    "ExploreToM-data-sample.csv": FIXTURES / "explore_tom" / "synthetic_sample.csv",
    "gpqa_main.csv": FIXTURES / "gpqa" / "gpqa_synthetic.csv",
    "Hi-ToM_data.json": FIXTURES / "hi_tom" / "Hi-ToM_data_sample.json",
    "train.jsonl": FIXTURES / "gsm8k" / "train.jsonl",
    "test.jsonl": FIXTURES / "gsm8k" / "test.jsonl",
    "train_rand_split.jsonl": FIXTURES / "commonsense_qa" / "train_rand_split.sample.jsonl",
    "dev_rand_split.jsonl": FIXTURES / "commonsense_qa" / "dev_rand_split.sample.jsonl",
    "anli_v1.0": FIXTURES / "anli" / "anli_v1.0",
    "mbpp.jsonl": ROOT / "data" / "mbpp" / "mbpp.jsonl",
}
"""Source files named by the data-preparation commands -> bundled stand-ins in the same format."""


@dataclass(frozen=True)
class Rule:
    pattern: str  # a regular expression matched at the command's start
    how: str  # run | build (parse and construct, no model) | parse | skip
    reason: str


RULES = [
    Rule("bash tests/install_browser.sh", "skip", "installs Debian's chromium (root): the browser test needs it"),
    Rule("pip install", "skip", "installs packages: the environment running this test is that install"),
    Rule("python -m pytest", "skip", "the test suite itself"),
    Rule("ruff check", "skip", "the lint gate: CI runs it before the tests"),
    Rule("mypy", "skip", "the type gate: CI runs it before the tests"),
    Rule("python -m venv", "skip", "fairseq2's own environment needs the network; test_fairseq2_configs checks it"),
    Rule("~/fs2/bin/", "skip", "fairseq2's own environment (network install); test_fairseq2_configs checks it"),
    Rule(r"python lightning_modules/trainer.py validate --config configs/ts_math.yaml$", "run",
         "the quickstart, at tiny size, as a subprocess (the script's own entry point)"),
    Rule("python lightning_modules/trainer.py validate", "build",
         "needs checkpoints, a server or hours of sampling; parsed and built (no model is loaded)"),
    Rule("python -m coral.data prepare", "run", "on bundled samples of each source format"),
    Rule("python -m coral.synthesis.mbpp_cr_builder", "run", "one MBPP task, one 16-token sample"),
    Rule("python finetuning/data_creation/", "run", "on hand-made tree records (sampling trees takes minutes)"),
    Rule("python -m finetuning.trainers.trl_trainer", "run", "one DPO step"),
    Rule("python finetuning/iterative_training.py", "parse", "20 minutes on a CPU, or Slurm; config parsed"),
    Rule(r"python finetuning/maporl.py --config configs/finetuning/maporl_tiny.yaml$", "parse",
         "minutes of debates and PPO on a CPU; config parsed (tests/finetuning/test_maporl_driver.py runs the steps)"),
    Rule(r"python finetuning/maporl.py --config configs/finetuning/maporl_(gsm8k|anli).yaml --model", "parse",
         "MAPoRL at the paper's scale needs a GPU node and a 3.8B checkpoint; config and overrides parsed"),
    Rule(r"python finetuning/malt.py --config configs/finetuning/malt_tiny.yaml$", "parse",
         "about 20 minutes of trees, training and evaluation on a CPU; config parsed (tests/finetuning/test_malt.py "
         "runs the steps)"),
    Rule(r"python finetuning/malt.py --config configs/finetuning/malt_paper.yaml --model", "parse",
         "MALT at the paper's scale needs Slurm GPU nodes and an 8B checkpoint; config and overrides parsed"),
    Rule("coral-serve", "parse", "starts servers, Ray clusters, Slurm jobs or GPU apps; tests/serving runs them"),
    Rule("coral-report", "run", "on hand-made results folders (tests/report checks a real run's report in Chromium)"),
]


def readme_commands() -> list[str]:
    """Every command of README.md's bash blocks: continued lines joined, comments dropped, ``&&`` chains split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split(" && ")]
    return commands


def rule_for(command: str) -> Rule:
    return next(rule for rule in RULES if re.match(rule.pattern, command))


def argv(command: str) -> list[str]:
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    return shlex.split(command)


def commands(how: str, prefix: str = "") -> list[str]:
    return [c for c in readme_commands() if c.startswith(prefix) and rule_for(c).how == how]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A scratch repository: configs and code linked, data copied (commands write into data/ and results/)."""
    for name in ("configs", "lightning_modules", "finetuning"):
        (tmp_path / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EXP_NAME", raising=False)
    return tmp_path


def test_every_readme_command_has_a_rule():
    found = readme_commands()
    assert len(found) >= 30 and "python -m finetuning.trainers.trl_trainer" in " ".join(found)
    uncovered = [c for c in found if not any(re.match(rule.pattern, c) for rule in RULES)]
    assert not uncovered, f"README commands with no rule in RULES: {uncovered}"
    unused = [rule.pattern for rule in RULES if not any(rule_for(c) is rule for c in found)]
    assert not unused, f"RULES that match no README command (remove them): {unused}"


def test_the_quickstart_runs(workspace):
    (command,) = commands("run", "python lightning_modules/trainer.py")
    done = subprocess.run([sys.executable if arg == "python" else arg for arg in argv(command)] + TINY_EVAL,
                          cwd=workspace, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((workspace / "results" / "ts_math" / "metrics.json").read_text())
    assert metrics["n_conversations"] == 1 and metrics["conv_err"] == 0.0
    assert list((workspace / "results" / "ts_math" / "logs").glob("coral/version_*/metrics.csv"))


def test_data_preparation_commands_run(workspace):
    from coral.data import prepare_dataset
    from coral.data.__main__ import main as prepare
    from coral.synthesis.mbpp_cr_builder import main as mbpp_cr

    stage = workspace / "stage"
    for name, source in SOURCES.items():
        target = stage / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source is None:
            prepare_dataset("math", [FIXTURES / "math" / "MATH_sample"], workspace / "made")
            source = workspace / "made" / "train.jsonl"
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    shutil.rmtree(workspace / "data")  # each command writes data/<task> afresh
    for command in commands("run", "python -m coral.data prepare"):
        args = [str(stage / a) if a in SOURCES else a for a in argv(command)[3:]]
        assert prepare(args) == 0, command
        assert (workspace / args[args.index("--out") + 1] / "manifest.json").is_file(), command
    (command,) = commands("run", "python -m coral.synthesis.mbpp_cr_builder")
    args = [str(stage / a) if a in SOURCES else a for a in argv(command)[3:]]
    counts = mbpp_cr(args + ["--max-tasks", "1", "--samples", "1", "--max-tokens", "16"])
    assert counts.written == 1 and (workspace / "data" / "mbpp_cr" / "train.jsonl").is_file()


def candidate(index: int, text: str, belief: str, agreement: bool = False) -> Turn:
    speaker = "teacher" if index % 2 else "student"
    return Turn(index=index, speaker=speaker, text=text, seed=index * 10 + int(belief), belief=belief,
                correct=belief == "4", agreement=agreement)


def tree(example_id: str) -> ConversationRecord:
    """A stand-in for step 1's output: two levels, each a correct and an incorrect candidate; agreed on 4."""
    question = Turn(index=0, speaker="student", text=f"What is 2 + 2? ({example_id})", generated=False)
    first, second = candidate(1, "2 + 2 = 4. \\boxed{4}", "4"), candidate(2, "I agree: \\boxed{4}", "4", True)
    first.siblings = [candidate(1, "2 + 2 = 5. \\boxed{5}", "5")]
    second.siblings = [candidate(2, "No, it is \\boxed{5}", "5")]
    return ConversationRecord(example_id=example_id, sample_index=0, task="math", run_seed=1, config_hash="h",
                              protocol="coral", agents={"student": MODEL, "teacher": MODEL},
                              turns=[question, first, second], stop_reason="agreement", max_turns=2, gold="4",
                              system_prompts={"student": "Solve it.", "teacher": "Solve it."})


def test_the_training_steps_run(workspace):
    """Step by step: (1 built) trees -> (2) DPO and SFT data -> (3) one DPO step -> (4 built) its evaluation."""
    from finetuning.data_creation import build_dpo, build_sft
    from finetuning.trainers import trl_trainer
    from lightning_modules.trainer import main

    store = ResultStore(workspace / "results" / "trees")
    for example_id in ("p1", "p2"):
        store.append(tree(example_id))
    for command in commands("run", "python finetuning/data_creation/"):
        module = build_dpo if "build_dpo" in command else build_sft
        counts = module.main(argv(command)[2:])
        assert counts["pairs" if module is build_dpo else "examples"] > 0, command
    (command,) = commands("run", "python -m finetuning.trainers.trl_trainer")
    result = trl_trainer.main(argv(command)[3:] + TINY_TRAIN)
    assert trl_trainer.checkpoint_is_complete(result) and result == Path("results/dpo/checkpoint")
    for command in commands("build", "python lightning_modules/trainer.py"):
        built = main(argv(command)[3:], run=False)
        assert built.model.hparams.max_turns >= 1 and built.datamodule.task_name, command


def test_report_commands_run(workspace):
    from coral.report.__main__ import main as report

    for command in commands("run", "coral-report"):
        for folder in (arg for arg in argv(command)[1:] if arg.startswith("results/")):
            if not (workspace / folder).exists():
                ResultStore(workspace / folder).append(tree("p1"))
        assert report(argv(command)[1:]) == 0, command
    assert (workspace / "results" / "ts_mmlu_pro" / "report.html").is_file() and (workspace / "cmp.html").is_file()


def test_commands_that_need_a_cluster_parse(workspace):
    from coral.serving.cli import build_parser
    from finetuning.iterative_training import parse
    from finetuning.malt import parse as parse_malt
    from finetuning.maporl import parse as parse_maporl

    for command in commands("parse", "coral-serve"):
        assert build_parser().parse_args(argv(command)[1:]).verb, command
    for command in commands("parse", "python finetuning/iterative_training.py"):
        assert parse(argv(command)[2:]).iterations >= 1, command
    for command in commands("parse", "python finetuning/maporl.py"):
        config = parse_maporl(argv(command)[2:])
        assert config.updates >= 1 and config.exp_dir.startswith("results/maporl_"), command
        assert config.model == MODEL or "--model" not in command, command  # the placeholder's stand-in
    for command in commands("parse", "python finetuning/malt.py"):
        malt = parse_malt(argv(command)[2:])
        assert malt.tree_n >= 2 and malt.exp_dir.startswith("results/malt_"), command
        assert malt.model == MODEL and malt.splits.train_file.endswith(".jsonl"), command


def test_skipped_commands_say_why():
    skipped = [rule_for(c) for c in readme_commands() if rule_for(c).how == "skip"]
    assert skipped and all(len(rule.reason) > 20 for rule in skipped)


def test_the_documented_help_and_timeout(capsys, monkeypatch):
    """README: ``--model.help InteractionModule`` is the readable help; ``--model.request_timeout`` defaults to 600."""
    import inspect

    from lightning_modules.models import InteractionModule
    from lightning_modules.trainer import main

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "python lightning_modules/trainer.py validate --model.help InteractionModule" in readme
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as done:
        main(["validate", "--model.help", "InteractionModule"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--model.request_timeout" in out and "seconds before a model request" in out and len(out.splitlines()) < 250
    timeout = inspect.signature(InteractionModule).parameters["request_timeout"].default
    row = f"`--model.request_timeout` | seconds before a model request is abandoned and retried (default {timeout:g})"
    assert row in readme
    assert "--model.extractor.app_name http://127.0.0.1:8000/v1" in readme and 'api_key="unused"' in readme
