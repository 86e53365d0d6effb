"""The reference's option spellings stay the command line's and the YAML's; inside, they become domain names.

Existing configs keep their config hash (what lets a results folder resume), and the README's table of option
names names real options and real fields.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import fields
from pathlib import Path

from test_interaction_asker import config_hash

from coral.conversation import AgentSpec, RunSettings
from lightning_modules.models import InteractionModule
from lightning_modules.models.interaction import ExtractorConfig
from lightning_modules.trainer import main

ROOT = Path(__file__).resolve().parents[2]

REFERENCE_SPELLINGS = [
    "--model.teacher_model", "/models/t", "--model.student_model", "/models/s",
    "--model.teacher_app_name", "grpc://127.0.0.1:9000/tiny", "--model.student_app_name", "http://127.0.0.1:8000/v1",
    "--model.max_n_processes", "7", "--model.expansion_strategy", "stratified", "--model.beam_size", "3",
    "--model.max_turns", "4", "--model.single_request_expansion", "false",
]


def check_mapped(module: InteractionModule) -> None:
    assert module.agent_specs() == {
        "teacher": AgentSpec(model="/models/t", endpoint="grpc://127.0.0.1:9000/tiny"),
        "student": AgentSpec(model="/models/s", endpoint="http://127.0.0.1:8000/v1"),
    }
    settings = module.run_settings("cafe")
    assert (settings.concurrency, settings.expansion, settings.beam_size, settings.max_turns) == (7, "stratified", 3, 4)
    assert (settings.single_request_expansion, settings.config_hash, settings.run_seed) == (False, "cafe", 333)
    assert settings.retry is module.retry


def test_reference_spellings_on_the_command_line_become_agent_specs_and_run_settings(monkeypatch):
    monkeypatch.chdir(ROOT)
    check_mapped(main(["--config", "configs/ts_math.yaml", *REFERENCE_SPELLINGS], run=False).model)


def test_reference_spellings_in_a_yaml_config_become_agent_specs_and_run_settings(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    pairs = zip(REFERENCE_SPELLINGS[::2], REFERENCE_SPELLINGS[1::2])
    lines = [f"    {option.removeprefix('--model.')}: {value}" for option, value in pairs]
    config = tmp_path / "reference.yaml"
    config.write_text("model:\n  init_args:\n" + "\n".join(lines) + "\n")
    check_mapped(main(["--config", "configs/ts_math.yaml", "--config", str(config)], run=False).model)


GOLDEN_HASHES = {
    "cot/cot_anli.yaml": "b20581fb9e12c2f5",
    "cot/cot_commonsense_qa.yaml": "4f40ffcc4108340c",
    "cot/cot_explore_tom.yaml": "da4d291e2999f6c4",
    "cot/cot_gpqa.yaml": "88b16fe30eea43eb",
    "cot/cot_gsm8k.yaml": "8c5ad9a275566162",
    "cot/cot_hi_tom.yaml": "cc632b8b436375d1",
    "cot/cot_math.yaml": "b7189cda2b2136ae",
    "cot/cot_mbpp_cr.yaml": "11b05b5ddc782a3d",
    "cot/cot_mmlu_pro.yaml": "0d419a4b2bc8bbb6",
    "ts_anli.yaml": "b7dc66ca1f255794",
    "ts_commonsense_qa.yaml": "0ae10fed54dff227",
    "ts_explore_tom.yaml": "db84a6762e1dbf75",
    "ts_gpqa.yaml": "3461d075e178551b",
    "ts_gsm8k.yaml": "d4a9610d21930d49",
    "ts_hi_tom.yaml": "c37efa293394f167",
    "ts_math.yaml": "ea7d9b17f5f111ad",
    "ts_mbpp_cr.yaml": "93325f26cb23264a",
    "ts_mmlu_pro.yaml": "6f0efdbe034e8fb6",
}
"""Each config's hash (seed 333; unbundled data at its fixture's relative path) as computed before the options got
domain names inside: a results folder resumes only while its hash stays the same."""


NEWER_CONFIG_FOLDERS = ("debate", "gvr")
"""Config folders written after the hashes above were pinned (no results folder of theirs predates them)."""


def test_existing_configs_keep_their_config_hash(eval_config, data_override, monkeypatch):
    name = eval_config.relative_to(ROOT / "configs").as_posix()
    if name not in GOLDEN_HASHES:
        assert name.split("/")[0] in NEWER_CONFIG_FOLDERS, f"{name}: pin its hash in GOLDEN_HASHES"
        return
    monkeypatch.chdir(ROOT)
    override = data_override(eval_config)
    relative = [override[0], str(Path(override[1]).relative_to(ROOT))] if override else []
    cli = main(["--config", str(eval_config.relative_to(ROOT)), *relative], run=False)
    assert config_hash(cli) == GOLDEN_HASHES[eval_config.relative_to(ROOT / "configs").as_posix()]


def test_the_readme_names_each_reference_spelling_once_with_a_real_inside_name():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| option (the reference's spelling) | inside coral |\n|---|---|\n", 1)[1].split("\n\n")[0]
    rows = [row.split(" | ") for row in table.splitlines()]
    options = {option for cells in rows for option in re.findall(r"`--model\.([\w.]+)`", cells[0])}
    accepted = set(inspect.signature(InteractionModule).parameters)
    accepted |= {f"extractor.{f.name}" for f in fields(ExtractorConfig)}
    assert options == {"teacher_model", "student_model", "teacher_app_name", "student_app_name",
                       "extractor.app_name", "max_n_processes", "expansion_strategy"}
    assert options <= accepted
    inside = {name for cells in rows for name in re.findall(r"`(\w+\.\w+)`", cells[1])}
    known = {f"RunSettings.{f.name}" for f in fields(RunSettings)} | {f"AgentSpec.{f.name}" for f in fields(AgentSpec)}
    assert inside and inside <= known
