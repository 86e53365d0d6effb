"""What a run does besides running: stopping when told (SIGTERM) and redoing errored conversations on request."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from coral.backends import BackendError, ScriptedBackend
from coral.beliefs import BeliefExtractor
from coral.conversation import Agent, ConversationRunner, CoralProtocol, RetryPolicy, RunSettings
from coral.sampling import SamplingParams
from coral.store import ResultStore, read_records
from coral.tasks import Example, MMLUProTask

EXAMPLES = [Example(id=name, task="mmlu_pro", question=f"{name}: pick B.", answer="B", choices=("x", "y")) for name in
            ("first", "slow", "third", "fourth")]


class SlowOn(ScriptedBackend):
    """Answers at once, except questions containing ``marker``, which take ``delay_s``."""

    def __init__(self, marker: str, delay_s: float) -> None:
        super().__init__(lambda messages, sampling: "The correct answer is (B)")
        self.marker, self.delay_s = marker, delay_s

    async def chat(self, request):
        if self.marker in request.messages[1]["content"]:
            await asyncio.sleep(self.delay_s)
        return await super().chat(request)


def runner_for(backend, root, retry_errors: bool = False, **options) -> ConversationRunner:
    agents = {name: Agent(name, backend, "m", name, SamplingParams(max_tokens=20)) for name in ("teacher", "student")}
    store = ResultStore(root, retry_errors=retry_errors)
    settings = RunSettings(1, "h", max_turns=2, retry=RetryPolicy(attempts=1), **options)
    return ConversationRunner(CoralProtocol(), MMLUProTask(), agents, BeliefExtractor("rules"), store, settings)


def asked(backend) -> set[str]:
    """The examples whose conversations sent requests."""
    return {ex.id for call in backend.calls for ex in EXAMPLES if f"{ex.id}: pick" in call.messages[1]["content"]}


def run_until_first_done(runner, grace_s: float) -> int:
    """Run all examples two at a time and ask the run to stop as soon as the first conversation is stored."""
    runner.settings = replace(runner.settings, stop_grace_s=grace_s)

    async def scenario() -> int:
        stop = asyncio.Event()
        return await runner.run([(ex, 0) for ex in EXAMPLES], on_done=lambda record: stop.set(), stop=stop)

    return asyncio.run(scenario())


def test_a_stopped_run_starts_nothing_new_and_lets_those_in_flight_finish(tmp_path):
    backend = SlowOn("slow", 0.3)
    runner = runner_for(backend, tmp_path, concurrency=2)
    assert run_until_first_done(runner, grace_s=60) == 2
    assert [r.example_id for r in read_records(tmp_path)] == ["first", "slow"]
    assert asked(backend) == {"first", "slow"}  # "third" was never started
    assert [ex.id for ex, _ in runner.pending(EXAMPLES, 1)] == ["third", "fourth"]


def test_a_stopped_run_abandons_what_outlives_the_grace_period(tmp_path):
    backend = SlowOn("slow", 60)
    runner = runner_for(backend, tmp_path, concurrency=2)
    assert run_until_first_done(runner, grace_s=0.05) == 1
    assert [r.example_id for r in read_records(tmp_path)] == ["first"]  # "slow" left no (errored) record
    assert [ex.id for ex, _ in runner.pending(EXAMPLES, 1)] == ["slow", "third", "fourth"]


def test_retry_errors_redoes_exactly_the_errored_conversations(tmp_path):
    def failing_on_slow(messages, sampling):
        return BackendError("refused", retryable=False) if "slow" in messages[1]["content"] else "(B)"

    work = [(ex, 0) for ex in EXAMPLES]
    asyncio.run(runner_for(ScriptedBackend(failing_on_slow), tmp_path).run(work))
    assert {r.example_id for r in read_records(tmp_path) if r.stop_reason == "error"} == {"slow"}
    assert runner_for(ScriptedBackend(failing_on_slow), tmp_path).pending(EXAMPLES, 1) == []  # the default
    healthy = ScriptedBackend(lambda messages, sampling: "(B)")
    retry = runner_for(healthy, tmp_path, retry_errors=True)
    assert asyncio.run(retry.run(retry.pending(EXAMPLES, 1))) == 1
    assert asked(healthy) == {"slow"}
    records = read_records(tmp_path)
    assert sorted(r.example_id for r in records) == sorted(ex.id for ex in EXAMPLES)
    assert all(r.stop_reason != "error" for r in records)
