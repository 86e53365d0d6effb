"""PolicyBackend on the embedded engine: per-round routing, token ids and log-probabilities PPO can trust, and
rollouts played by the weights of the latest update (tiny random Llama with SmolLM2's tokenizer, no weights loaded).
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from coral.backends import ChatRequest, models
from coral.sampling import SamplingParams
from finetuning.trainers.maporl_ppo import MultiAgentPPO, Rollout, TrainerSettings, TurnSchedule
from finetuning.trainers.maporl_rollouts import PolicyBackend
from finetuning.trainers.ppo_math import PPOSettings

pytestmark = pytest.mark.timeout(300)

QUESTION = {"role": "user", "content": "Is the sky green? Answer yes or no."}
REVISE = [QUESTION, {"role": "assistant", "content": "no"}, {"role": "user", "content": "Agent 2 said yes. Revise?"}]
"""A round-1 prompt: one earlier answer of the agent's own."""
SAMPLING = SamplingParams(temperature=0.7, max_tokens=6, seed=5, ignore_eos=True)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(models.resolve(models.DEFAULT_MODEL))


@pytest.fixture
def trainer(tokenizer, tmp_path):
    """Policies for turn 1 only (LoRA B starts at zero, so policy_1 starts as the base model), a large step size."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, initializer_range=0.2, pad_token_id=0,
    ))
    settings = TrainerSettings(ppo=PPOSettings(ppo_epochs=2), schedule=TurnSchedule(1, 0, (1,), 1), lora_r=4,
                               lora_alpha=8, lora_targets=("q_proj", "v_proj"), learning_rate=5e-2, minibatches=1,
                               temperature=0.7)
    return MultiAgentPPO(model, settings, tmp_path)


def ask(backend: PolicyBackend, messages, n: int = 2, session: str | None = None):
    return asyncio.run(backend.chat(ChatRequest(messages, SAMPLING, model="ignored", n=n, session_id=session)))


def teacher_forced(trainer: MultiAgentPPO, completion, adapter: str) -> torch.Tensor:
    """log_softmax(logits / 0.7) of the completion's tokens in one plain forward pass of ``adapter``."""
    prompt, tokens = list(completion.prompt_token_ids), list(completion.token_ids)
    with torch.no_grad():
        logits = trainer.model(torch.tensor([prompt + tokens]), adapter_names=[adapter]).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits / 0.7, dim=-1)[torch.arange(len(tokens)), torch.tensor(tokens)]


def rollouts(completions, rewards) -> list[Rollout]:
    return [Rollout(list(c.prompt_token_ids), list(c.token_ids), r, 1, f"agent_{i}", None, list(c.logprobs))
            for i, (c, r) in enumerate(zip(completions, rewards))]


def test_each_round_goes_to_its_policy_and_the_base_answers_untrained_rounds(trainer, tokenizer):
    trained = PolicyBackend(trainer, tokenizer, trained=True, name="rollouts-a")
    untrained = PolicyBackend(trainer, tokenizer, trained=False, name="rollouts-a")
    assert [trained.model_for(r) for r in (0, 1, 2)] == ["rollouts-a@__base__", "rollouts-a@policy_1",
                                                         "rollouts-a@__base__"]
    assert untrained.model_for(1) == "rollouts-a@__base__"
    [completion] = ask(trained, REVISE, n=1)
    assert list(trained.sampled.values()) == [completion]  # kept, token ids and log-probabilities included
    assert len(completion.token_ids) == len(completion.logprobs) == 6


def test_the_engine_samples_what_the_update_scores_and_after_the_update_the_new_weights(trainer, tokenizer):
    backend = PolicyBackend(trainer, tokenizer, trained=True, name="rollouts-b")
    first = ask(backend, REVISE, session="debate")
    assert all(len(c.token_ids) == len(c.logprobs) == 6 for c in first)
    stats = trainer.update(rollouts(first, [1.0, 0.0]))
    # The engine's log-probabilities are those the update recomputes from the same tokens on the same adapter.
    assert stats["sampler_logprob_gap"] < 1e-4

    # The optimizer wrote policy_1 in place: the engine drops the session's cached prefix (old keys and values)
    # and samples from the new weights, which now differ from the base model's.
    second = ask(backend, REVISE, session="debate")
    assert all(c.cached_prompt_tokens == 0 for c in second)
    for completion in second:
        expected = teacher_forced(trainer, completion, "policy_1")
        assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-4)
        assert not torch.allclose(teacher_forced(trainer, completion, "__base__"), expected, atol=1e-3)
    assert trainer.update(rollouts(second, [0.0, 1.0]))["sampler_logprob_gap"] < 1e-4

    # Round 0 is never trained: the base answers it, whatever the policies learned.
    [opening] = ask(backend, [QUESTION], n=1)
    expected = teacher_forced(trainer, opening, "__base__")
    assert torch.allclose(torch.tensor(opening.logprobs), expected, atol=1e-4)
