"""A run's settings are one frozen object, handed whole to the runner and to every conversation's context."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from coral.backends import ScriptedBackend
from coral.beliefs import BeliefExtractor
from coral.conversation import Agent, ConversationContext, ConversationRunner, CoralProtocol, RetryPolicy, RunSettings
from coral.sampling import SamplingParams
from coral.store import ResultStore, read_records
from coral.tasks import Example, MMLUProTask

EXAMPLES = [Example(id=f"q{i}", task="mmlu_pro", question="Pick B.", answer="B", choices=("x", "y")) for i in range(3)]


class Watching(CoralProtocol):
    """The Coral protocol, keeping every context it runs in."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[ConversationContext] = []

    async def run(self, ctx):
        self.contexts.append(ctx)
        return await super().run(ctx)


def test_every_context_gets_the_runners_settings_object_and_records_carry_its_values(tmp_path):
    def disagree(messages, sampling):  # the teacher says A, the student B: every conversation runs max_turns
        return f"The correct answer is ({'AB'[messages[0]['content'] == 'student']})"

    backend = ScriptedBackend(disagree)
    agents = {name: Agent(name, backend, "m", name, SamplingParams(max_tokens=8)) for name in ("teacher", "student")}
    settings = RunSettings(run_seed=5, config_hash="cafe", max_turns=3, concurrency=2, retry=RetryPolicy(attempts=1))
    protocol = Watching()
    store = ResultStore(tmp_path)
    runner = ConversationRunner(protocol, MMLUProTask(), agents, BeliefExtractor("rules"), store, settings)
    assert asyncio.run(runner.run([(example, 1) for example in EXAMPLES])) == 3

    assert len(protocol.contexts) == 3 and all(ctx.settings is settings for ctx in protocol.contexts)
    copied = {f.name for f in dataclasses.fields(ConversationContext)} & {f.name for f in dataclasses.fields(settings)}
    assert copied == set()  # nothing of the settings is copied field by field into a context
    records = read_records(tmp_path)
    assert {(r.run_seed, r.config_hash, r.max_turns, r.sample_index) for r in records} == {(5, "cafe", 3, 1)}
    assert {len(r.turns) for r in records} == {4}  # the opening message and max_turns generated turns
    assert {ctx.session_id for ctx in protocol.contexts} == {f"5:q{i}:1" for i in range(3)}


def test_settings_are_frozen_and_default_like_the_runner_did():
    settings = RunSettings(run_seed=1, config_hash="h")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.concurrency = 3
    assert (settings.max_turns, settings.concurrency, settings.beam_size, settings.expansion) == (20, 100, 1, "random")
    assert (settings.retry, settings.single_request_expansion, settings.stop_grace_s) == (RetryPolicy(), True, 10.0)
