"""Debates played by the weights being trained, and the PPO rollouts made from their records.

``PolicyBackend`` is a thin chat backend over the embedded engine serving the trainer's own model
(``EmbeddedBackend.for_model``): each request goes to the policy adapter of the round it asks for (the round is the
number of the agent's own earlier answers in the messages), ``"<name>@policy_<round>"``, or to the base model with
adapters off, ``"<name>@__base__"``. It asks for token ids and log-probabilities and keeps every answer's
Completion, so PPO scores exactly the tokens that were sampled (never a re-tokenisation of their text), and the
update can compare its own log-probabilities with the sampler's. The debates share the engine's continuous batches.

Between rollouts the trainer's optimizer writes the LoRA weights in place; the engine notices (parameter version
counters) and drops the keys and values the old weights computed, so the next debate is played by the new policy.
The debate itself runs through the library (``coral.conversation.evaluate`` with the ``debate`` protocol), and
rewards come from ``coral.rewards``: the record is the product, rollouts are derived from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from coral.backends.base import ChatRequest, Completion, Message
from coral.backends.embedded import EmbeddedBackend, EngineConfig
from coral.conversation.protocols.debate import debate_messages
from coral.records import ConversationRecord
from coral.rewards import RewardSettings, debate_grid, turn_rewards
from coral.tasks.base import Task
from finetuning.trainers.maporl_ppo import MultiAgentPPO, Rollout

BASE = "__base__"
"""The embedded engine's name for the model with every adapter off."""

Sampled = dict[str, Completion]
"""Prompt messages and answer text (``_key``) -> the engine's Completion, token ids and log-probabilities included."""


class PolicyBackend:
    """A chat backend answering from the trainer's model: trained policies per round, or the untrained base.

    Args:
        trainer: holds the model and its policy adapters.
        tokenizer: the model's tokenizer (its chat template renders the prompts).
        trained: answer with the policy adapters (False: the base model, for baselines and verifier data).
        name: the name the engine serves the trainer's model under.
        engine: the engine's limits (used when this model object is first served).
    """

    def __init__(
        self, trainer: MultiAgentPPO, tokenizer: Any, trained: bool, name: str = "policy",
        engine: EngineConfig = EngineConfig(),
    ) -> None:
        self.trainer = trainer
        self.trained = trained
        self.engine = EmbeddedBackend.for_model(trainer.model, tokenizer, name, engine)
        self.sampled: Sampled = {}

    def model_for(self, round_: int) -> str:
        """``"<name>@policy_<round>"`` when trained and that round has a policy, else ``"<name>@__base__"``."""
        adapter = self.trainer.adapter(round_) if self.trained else None
        return f"{self.engine.model}@{adapter or BASE}"

    async def chat(self, request: ChatRequest) -> list[Completion]:
        """The engine's answers from the policy of the round the messages ask for, kept for ``record_rollouts``."""
        round_ = sum(message["role"] == "assistant" for message in request.messages)
        routed = replace(request, model=self.model_for(round_), logprobs=True)
        completions = await self.engine.chat(routed)
        for completion in completions:
            self.sampled[_key(request.messages, completion.text)] = completion
        return completions

    async def end_session(self, session_id: str) -> None:
        """The engine forgets the conversation's cached prefixes."""
        await self.engine.end_session(session_id)

    async def aclose(self) -> None:
        """The engine belongs to the process (and to the trainer's model), not to this backend."""


def record_rollouts(
    record: ConversationRecord,
    task: Task,
    sampled: Sampled,
    rewards: RewardSettings,
    scorer: Callable[[str, str], float] | None,
) -> list[Rollout]:
    """Every debater answer of ``record`` as a PPO rollout with its reward (``coral.rewards.turn_rewards``).

    Args:
        record: a debate played through ``PolicyBackend``.
        task: the record's task (its answer format is part of the prompts ``debate_messages`` rebuilds).
        sampled: the backend's Completions, with their prompt and answer token ids.
        rewards: how rewards are made.
        scorer: a learned verifier (question, answer) -> probability; None scores with the gold labels.
    """
    answers = [turn for row in debate_grid(record) for turn in row]
    scores = None if scorer is None else {t.index: scorer(record.turns[0].text, t.text) for t in answers}
    reward = turn_rewards(record, rewards, scores)
    rollouts = []
    for turn in answers:
        assert turn.round is not None  # debate_grid keeps debater turns, which always have a round
        key = _key(debate_messages(record, turn.speaker, turn.round, task), turn.text)
        if key not in sampled:
            raise KeyError(f"turn {turn.index} of {record.example_id}: its prompt was not generated by this backend")
        completion = sampled[key]
        assert completion.prompt_token_ids is not None and completion.token_ids is not None  # asked with logprobs
        rollouts.append(Rollout(
            list(completion.prompt_token_ids), list(completion.token_ids), reward[turn.index], turn.round,
            turn.speaker, turn.correct, None if completion.logprobs is None else list(completion.logprobs),
        ))
    return rollouts


def _key(messages: list[Message], text: str) -> str:
    return json.dumps([messages, text])
