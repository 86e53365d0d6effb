"""``--model.agents`` on the command line: per-role models reach the agents and the config hash (the MALT driver
names each trained role's checkpoint this way)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from lightning_modules.models import InteractionModule
from lightning_modules.trainer import main

AGENTS = {"generator": {"model": "/ckpt/g"}, "refiner": {"model": "/ckpt/r", "temperature": 0.1}}


def build(*args: str):
    return main(["--config", "configs/gvr/gvr_anli.yaml", *args], run=False)


def config_hash(cli) -> str:
    module = SimpleNamespace(hparams=dict(cli.model.hparams), extractor_config=cli.model.extractor_config,
                             trainer=SimpleNamespace(datamodule=cli.datamodule), run_seed=333)
    return InteractionModule.config_hash(module)  # type: ignore[arg-type]  # the hash reads these fields only


def test_agents_given_as_json_name_each_roles_model_and_enter_the_config_hash() -> None:
    cli = build(f"--model.agents={json.dumps(AGENTS)}")
    specs = cli.model.agent_specs()
    assert {name: spec.model for name, spec in specs.items()} == {
        "generator": "/ckpt/g", "verifier": "SmolLM2-135M-Instruct", "refiner": "/ckpt/r"}
    assert cli.model.agent_configs()["refiner"].temperature == 0.1
    plain = build()
    assert config_hash(cli) != config_hash(plain)
    assert config_hash(cli) == config_hash(build(f"--model.agents={json.dumps(AGENTS)}"))
