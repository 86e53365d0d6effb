"""Debates played by the weights being trained, and the PPO rollouts made from their records.

``PolicyBackend`` is a chat backend over the trainer's own model: each request is answered by the policy adapter
of the round it asks for (the round is the number of the agent's own earlier answers in the messages), or by the
base model with adapters off. It keeps the exact prompt and sampled token ids of every answer, so PPO scores the
tokens that were sampled rather than a re-tokenisation of their text. The debate itself runs through the library
(``ConversationRunner`` with the ``debate`` protocol), and rewards come from ``coral.rewards``: the record is the
product, rollouts are derived from it.

Generation is ``PolicyBackend._sample``, one small function: when the embedded engine serves live weights with
token ids and log-probabilities, it is the one place to switch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from coral.backends.base import ChatRequest, Completion, Message
from coral.conversation.protocols.debate import debate_messages
from coral.records import ConversationRecord
from coral.rewards import RewardSettings, debate_grid, turn_rewards
from coral.tasks.base import Task
from finetuning.trainers.maporl_ppo import MultiAgentPPO, Rollout

Sampled = dict[str, tuple[list[int], list[int]]]
"""Prompt messages and answer text (``_key``) -> (prompt ids, response ids)."""


class PolicyBackend:
    """A chat backend answering from the trainer's model: trained policies per round, or the untrained base.

    Args:
        trainer: holds the model and its policy adapters.
        tokenizer: the model's tokenizer (its chat template renders the prompts).
        trained: answer with the policy adapters (False: the base model, for baselines and verifier data).
    """

    def __init__(self, trainer: MultiAgentPPO, tokenizer: Any, trained: bool) -> None:
        self.trainer = trainer
        self.tokenizer = tokenizer
        self.trained = trained
        self.sampled: Sampled = {}

    async def chat(self, request: ChatRequest) -> list[Completion]:
        """One sampled answer per choice, from the policy of the round the messages ask for."""
        round_ = sum(message["role"] == "assistant" for message in request.messages)
        prompt = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
        prompt = list(prompt["input_ids"] if isinstance(prompt, Mapping) else prompt)
        completions = []
        for choice in range(request.n):
            started = time.perf_counter()
            seed = (request.sampling.seed or 0) + choice
            with self._policy(round_):
                response = self._sample(prompt, request.sampling.temperature, request.sampling.max_tokens, seed)
            text = self.tokenizer.decode(response, skip_special_tokens=True)
            self.sampled[_key(request.messages, text)] = (prompt, response)
            finish = "stop" if response and response[-1] == self.tokenizer.eos_token_id else "length"
            completions.append(Completion(text, finish, len(prompt), len(response), time.perf_counter() - started))
        return completions

    def _policy(self, round_: int) -> AbstractContextManager[Any]:
        """The adapter of ``round_`` when trained and that round has one; otherwise the adapters switched off."""
        if self.trained and self.trainer.use(round_):
            return nullcontext()
        return self.trainer.model.disable_adapter()

    def _sample(self, prompt: list[int], temperature: float, max_tokens: int, seed: int) -> list[int]:
        """The answer's token ids, sampled with transformers' ``generate`` (full distribution: top_k 0, top_p 1)."""
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            ids = torch.tensor([prompt], device=self.trainer.device)
            output = self.trainer.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                do_sample=temperature > 0, temperature=temperature if temperature > 0 else None, top_k=0, top_p=1.0,
                pad_token_id=self.tokenizer.eos_token_id,
            )
        return [int(token) for token in output[0, len(prompt) :]]

    async def end_session(self, session_id: str) -> None:
        """Nothing is kept per conversation."""

    async def aclose(self) -> None:
        """Nothing to release."""


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
        sampled: the backend's prompt and answer token ids.
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
        prompt, response = sampled[key]
        rollouts.append(Rollout(prompt, response, reward[turn.index], turn.round, turn.speaker, turn.correct))
    return rollouts


def _key(messages: list[Message], text: str) -> str:
    return json.dumps([messages, text])
