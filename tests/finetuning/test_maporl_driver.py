"""The MAPoRL driver on a tiny random Llama (SmolLM2's tokenizer, no weights loaded): PPO steps, resume, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from coral.backends import models
from coral.records import Outcome
from finetuning.maporl import DebateSettings, Maporl, parse, summary_markdown, vote_metrics
from finetuning.trainers.maporl_ppo import LOG_FILE, MultiAgentPPO, checkpoint_update

ROOT = Path(__file__).resolve().parents[2]
ANLI = ROOT / "data/anli/anli_v1.0/R1"


def tiny_driver(tmp_path, updates):
    config = parse([
        "--config", str(ROOT / "configs/finetuning/maporl_tiny.yaml"), f"--exp_dir={tmp_path}",
        f"--train_file={ANLI / 'dev.jsonl'}", f"--test_file={ANLI / 'test.jsonl'}", f"--updates={updates}",
        "--save_every=1", "--eval_questions=2", "--debate.max_tokens=6", "--eval_debate.max_tokens=6",
        "--trainer.lora_targets=[q_proj,v_proj]",
    ])
    driver = Maporl(config)
    tokenizer = AutoTokenizer.from_pretrained(models.resolve("SmolLM2-135M-Instruct"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=4096, pad_token_id=0,
    ))
    trainer = MultiAgentPPO(model, config.trainer, tmp_path / "ppo")
    if checkpoint_update(tmp_path / "ppo/checkpoint") is not None:
        trainer.resume(tmp_path / "ppo/checkpoint")
    driver._loaded = (trainer, tokenizer)
    return driver


@pytest.mark.slow  # about 2 minutes on a busy 2-core CPU (debates of 6-token answers, two PPO updates)
def test_ppo_plays_debates_with_the_policy_rewards_them_and_resumes_at_the_checkpointed_update(tmp_path):
    driver = tiny_driver(tmp_path, updates=1)
    driver.ppo()
    assert checkpoint_update(tmp_path / "ppo/checkpoint") == 1
    [row] = [json.loads(line) for line in (tmp_path / "ppo" / LOG_FILE).read_text().splitlines()]
    assert row["update"] == 0 and row["turn"] == 1 and row["answers"] == 4  # 2 debates x 2 agents, turn 1
    assert set(row["reward_by_turn_agent"]) == {"0/agent_1", "0/agent_2", "1/agent_1", "1/agent_2"}
    records = list((tmp_path / "ppo/rollouts/update_0").glob("*.jsonl"))
    assert records
    # a second driver with more updates resumes at update 1 and adds exactly one log line
    again = tiny_driver(tmp_path, updates=2)
    assert again.trainer()[0].update_count == 1
    again.ppo()
    assert [json.loads(line)["update"] for line in (tmp_path / "ppo" / LOG_FILE).read_text().splitlines()] == [0, 1]


def test_evaluation_arm_writes_metrics_that_validate(tmp_path):
    driver = tiny_driver(tmp_path, updates=1)
    driver.evaluate("single")
    metrics = json.loads((tmp_path / "eval/single/metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["agents"] == 1 and metrics["rounds"] == 1
    assert driver.evaluated("single") and not driver.evaluated("trained")


def outcome(correct, by_round):
    rounds = [Outcome(answer=None, correct=c, decided_by="vote", votes={}) for c in by_round]
    return Outcome(answer=None, correct=correct, decided_by="vote", votes={}, rounds=rounds)


class FakeRecord:
    def __init__(self, result):
        self.outcome = result


def test_vote_metrics_average_the_final_and_every_rounds_vote():
    records = [FakeRecord(outcome(1.0, [0.0, 1.0])), FakeRecord(outcome(0.5, [0.5, 0.5]))]
    metrics = vote_metrics(records, DebateSettings(agents=2, rounds=2))
    assert metrics == {"n": 2, "agents": 2, "rounds": 2, "accuracy": 0.75, "accuracy_by_round": [0.25, 0.75]}
    table = summary_markdown([{"arm": "trained", **metrics}])
    assert table.splitlines()[-1] == "| trained | 2 x 2 | 2 | 0.750 | 0.250, 0.750 |"


@pytest.mark.parametrize("name", ["maporl_tiny", "maporl_gsm8k", "maporl_anli"])
def test_maporl_configs_parse(name):
    config = parse(["--config", str(ROOT / f"configs/finetuning/{name}.yaml")])
    assert config.trainer.ppo.kl_coef == 0.002 and config.rewards.gamma == 0.3
    assert config.debate.agents == 2
