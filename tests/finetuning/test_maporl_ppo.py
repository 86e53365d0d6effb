"""The MAPoRL PPO trainer on a tiny random Llama: the turn schedule, updates and their logs, checkpoint and resume."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from finetuning.trainers.maporl_ppo import (
    LOG_FILE,
    MultiAgentPPO,
    Rollout,
    TrainerSettings,
    TurnSchedule,
    checkpoint_update,
)
from finetuning.trainers.ppo_math import PPOSettings


def test_official_schedule_trains_turn_1_for_20_updates_then_2_and_1_every_40():
    schedule = TurnSchedule()
    turns = [schedule.turn_at(u) for u in (0, 19, 20, 59, 60, 99, 100, 140)]
    assert turns == [1, 1, 2, 2, 1, 1, 2, 1]
    assert schedule.turns() == [1, 2]


def test_a_schedule_that_trains_turn_0_is_refused():
    with pytest.raises(ValueError, match="turn 0"):
        TurnSchedule(first_turn=0)


def test_short_schedule_for_two_turns():
    schedule = TurnSchedule(first_turn=1, first_updates=0, cycle=(1,), period=1)
    assert [schedule.turn_at(u) for u in range(3)] == [1, 1, 1]
    assert schedule.turns() == [1]


def tiny_model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def hand_made_rollouts():
    """Two debates of two agents x two turns: turn 1 answers ending in token 5 are rewarded, others are not."""
    rollouts = []
    for debate, good in ((0, 5), (1, 6)):
        for agent in ("agent_1", "agent_2"):
            prompt = [1, 2 + debate, 3]
            rollouts.append(Rollout(prompt, [7, 8], 0.0, 0, agent, False))
            rollouts.append(Rollout(prompt + [9], [4, good], 1.0 if good == 5 else 0.0, 1, agent, good == 5))
    return rollouts


def settings():
    return TrainerSettings(
        ppo=PPOSettings(ppo_epochs=2),
        schedule=TurnSchedule(first_turn=1, first_updates=0, cycle=(1,), period=1),
        lora_r=4, lora_alpha=8, learning_rate=1e-2, minibatches=2,
        temperature=1.0, seed=3,
    )


def test_updates_log_losses_kl_and_clipping_and_a_resumed_run_continues_the_counter(tmp_path):
    trainer = MultiAgentPPO(tiny_model(), settings(), tmp_path)
    first = trainer.update(hand_made_rollouts())
    # The first update starts at the reference (LoRA B is zero): no KL, every ratio 1 in the first minibatch.
    assert first["update"] == 0 and first["turn"] == 1 and first["answers"] == 4
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)
    assert first["reward"] == pytest.approx(0.5)
    assert first["reward_by_turn_agent"] == {"0/agent_1": 0.0, "0/agent_2": 0.0, "1/agent_1": 0.5, "1/agent_2": 0.5}
    assert first["accuracy_by_turn"] == {"0": 0.0, "1": 0.5}
    for name in ("policy_loss", "value_loss", "clip_frac", "value_clip_frac", "approx_kl"):
        assert name in first
    assert 0.0 <= first["clip_frac"] <= 1.0
    assert first["value_loss"] > 0.0
    second = trainer.update(hand_made_rollouts())
    assert second["update"] == 1
    assert abs(second["kl"]) > 1e-6  # the policy has moved from the reference
    trainer.save(tmp_path / "checkpoint")
    assert checkpoint_update(tmp_path / "checkpoint") == 2

    resumed = MultiAgentPPO(tiny_model(), settings(), tmp_path / "resumed")
    resumed.resume(tmp_path / "checkpoint")
    assert resumed.update_count == 2
    continued = trainer.update(hand_made_rollouts())
    again = resumed.update(hand_made_rollouts())
    assert again["update"] == continued["update"] == 2
    assert again["policy_loss"] == pytest.approx(continued["policy_loss"], rel=1e-4)
    assert again["kl"] == pytest.approx(continued["kl"], rel=1e-4)
    lines = (tmp_path / LOG_FILE).read_text().splitlines()
    assert [json.loads(line)["update"] for line in lines] == [0, 1, 2]


def test_updates_favour_the_rewarded_answer_over_the_unrewarded_one(tmp_path):
    trainer = MultiAgentPPO(tiny_model(), replace(settings(), learning_rate=1e-3), tmp_path)

    def odds():
        """p(5 | debate 0's turn-1 prompt, 4) / p(6 | debate 1's): rewarded answer against unrewarded one."""
        trainer.model.set_adapter("policy_1")
        with torch.no_grad():
            rewarded = torch.softmax(trainer.model(input_ids=torch.tensor([[1, 2, 3, 9, 4]])).logits[0, -1], -1)[5]
            unrewarded = torch.softmax(trainer.model(input_ids=torch.tensor([[1, 3, 3, 9, 4]])).logits[0, -1], -1)[6]
        return (rewarded / unrewarded).item()

    before = odds()
    for _ in range(5):
        trainer.update(hand_made_rollouts())
    assert before == pytest.approx(1.26, abs=0.01)  # seeded random model
    assert odds() > 2.0  # measured 2.61
