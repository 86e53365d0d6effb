"""The MAPoRL driver on a tiny random Llama (SmolLM2's tokenizer, no weights loaded): PPO steps, resume, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from coral.backends import models
from finetuning.maporl import Maporl, parse, summary_markdown
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


def test_ppo_plays_debates_with_the_policy_rewards_them_and_resumes_at_the_checkpointed_update(tmp_path):
    """About 10 s on a busy 2-core CPU: the engine batches the debates of 6-token answers; two PPO updates."""
    driver = tiny_driver(tmp_path, updates=1)
    driver.ppo()
    assert checkpoint_update(tmp_path / "ppo/checkpoint") == 1
    [row] = [json.loads(line) for line in (tmp_path / "ppo" / LOG_FILE).read_text().splitlines()]
    assert row["update"] == 0 and row["turn"] == 1 and row["answers"] == 4  # 2 debates x 2 agents, turn 1
    assert set(row["reward_by_turn_agent"]) == {"0/agent_1", "0/agent_2", "1/agent_1", "1/agent_2"}
    assert row["sampler_logprob_gap"] < 1e-4  # the engine sampled from the weights the update scores
    records = list((tmp_path / "ppo/rollouts/update_0").glob("*.jsonl"))
    assert records
    # a second driver with more updates resumes at update 1 and adds exactly one log line
    again = tiny_driver(tmp_path, updates=2)
    assert again.trainer()[0].update_count == 1
    again.ppo()
    rows = [json.loads(line) for line in (tmp_path / "ppo" / LOG_FILE).read_text().splitlines()]
    assert [row["update"] for row in rows] == [0, 1]
    assert rows[1]["sampler_logprob_gap"] < 1e-4  # the resumed model object is served, with its trained adapter


def test_evaluation_arm_writes_corals_debate_metrics_that_validate(tmp_path):
    driver = tiny_driver(tmp_path, updates=1)
    driver.evaluate_arm("single")
    metrics = json.loads((tmp_path / "eval/single/metrics.json").read_text())
    # A random model's 6 tokens never hold a label: no valid answer, no vote, no consensus; one round only.
    assert (metrics["n_conversations"], metrics["total_turns"], metrics["valid_answer_rate"]) == (2, 1.0, 0.0)
    assert metrics["mv_accuracy"] == metrics["mv_accuracy_round_0"] == metrics["consensus"] == 0.0
    assert "mv_accuracy_round_1" not in metrics
    assert driver.evaluated("single") and not driver.evaluated("trained")
    [row] = driver.write_summary()
    assert (row["arm"], row["agents"], row["rounds"]) == ("single", 1, 1)


def test_summary_lists_vote_accuracy_by_round_consensus_and_answer_changes():
    row = {"arm": "trained", "agents": 2, "rounds": 2, "n_conversations": 4, "mv_accuracy": 0.75,
           "mv_accuracy_round_0": 0.25, "mv_accuracy_round_1": 0.75, "agent_accuracy_round_0": 0.5,
           "agent_accuracy_round_1": 0.625, "consensus": 0.5, "w_to_r_round_1": 0.25, "r_to_w_round_1": 0.125}
    single = {"arm": "single", "agents": 1, "rounds": 1, "n_conversations": 4, "mv_accuracy": 0.5,
              "mv_accuracy_round_0": 0.5, "agent_accuracy_round_0": 0.5, "consensus": 1.0}
    lines = summary_markdown([row, single]).splitlines()
    assert lines[0] == ("| arm | agents x rounds | n | mv_accuracy | mv_accuracy by round | agent_accuracy by round "
                        "| consensus | w_to_r / r_to_w by round |")
    assert lines[2] == "| trained | 2 x 2 | 4 | 0.7500 | 0.2500, 0.7500 | 0.5000, 0.6250 | 0.5000 | 0.2500 / 0.1250 |"
    assert lines[3] == "| single | 1 x 1 | 4 | 0.5000 | 0.5000 | 0.5000 | 1.0000 | - |"


@pytest.mark.parametrize("name", ["maporl_tiny", "maporl_gsm8k", "maporl_anli"])
def test_maporl_configs_parse(name):
    config = parse(["--config", str(ROOT / f"configs/finetuning/{name}.yaml")])
    assert config.trainer.ppo.kl_coef == 0.002 and config.rewards.gamma == 0.3
    assert config.debate.agents == 2
