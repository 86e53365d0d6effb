"""The Coral protocol on a scripted backend: turn order, what each agent sees, the stop rule, errors and seeds."""

from __future__ import annotations

import asyncio

import pytest

from coral.backends import BackendError, ScriptedBackend
from coral.beliefs import BeliefExtractor
from coral.conversation import Agent, ConversationRunner, CoralProtocol, RetryPolicy, RunSettings
from coral.metrics import conversation_metrics
from coral.metrics.social import reference_belief
from coral.sampling import SamplingParams
from coral.store import ResultStore, read_records
from coral.tasks import Example, MathTask, MMLUProTask
from coral.tasks.explore_tom import ExploreToMTask

MATH_EXAMPLE = Example(id="half", task="math", question="What is 1/2 as a decimal?", answer="\\frac{1}{2}")
MC_EXAMPLE = Example(id="mc", task="mmlu_pro", question="Pick B.", answer="B", choices=("x", "y", "z"))


def by_turn(*replies):
    """A script answering turn k (k = number of non-system messages) with ``replies[k - 1]``."""

    def script(messages, sampling):
        return replies[len(messages) - 2]

    return script


def runner_for(task, backend, tmp_path, max_turns=6, mode="rules", retry=RetryPolicy(attempts=2, backoff_s=0.0)):
    agents = {
        name: Agent(name, backend, "scripted-model", f"system prompt of {name}", SamplingParams(max_tokens=50))
        for name in ("teacher", "student")
    }
    return ConversationRunner(
        protocol=CoralProtocol(),
        task=task,
        agents=agents,
        extractor=BeliefExtractor(mode, backend),
        store=ResultStore(tmp_path),
        settings=RunSettings(run_seed=7, config_hash="test", max_turns=max_turns, retry=retry),
    )


def run_one(runner, example):
    asyncio.run(runner.run([(example, 0)]))
    [record] = read_records(runner.store.root)
    return record


def test_agents_alternate_and_see_their_own_turns_as_assistant(tmp_path):
    backend = ScriptedBackend(by_turn("(A) maybe", "I think (B)", "hmm", "ok"))
    record = run_one(runner_for(MMLUProTask(), backend, tmp_path, max_turns=4), MC_EXAMPLE)
    assert [t.speaker for t in record.turns] == ["student", "teacher", "student", "teacher", "student"]
    teacher_first, student_first = backend.calls[0].messages, backend.calls[1].messages
    assert teacher_first[0] == {"role": "system", "content": "system prompt of teacher"}
    assert [m["role"] for m in teacher_first[1:]] == ["user"]
    # The student asked turn 0, so it sees its own question as assistant and the teacher's answer as user.
    assert [m["role"] for m in student_first[1:]] == ["assistant", "user"]
    assert student_first[1]["content"].startswith("I'm trying to solve this problem")
    assert record.stop_reason == "max_turns" and len(record.turns) == 5


def test_stop_when_latest_beliefs_agree_by_math_equivalence(tmp_path, math_task):
    backend = ScriptedBackend(by_turn("It is $\\boxed{0.5}$.", "Agreed: $\\boxed{\\frac12}$.", "never reached"))
    record = run_one(runner_for(math_task, backend, tmp_path), MATH_EXAMPLE)
    assert record.stop_reason == "agreement"
    assert [t.belief for t in record.turns[1:]] == ["0.5", "\\frac12"]
    assert [t.correct for t in record.turns[1:]] == [True, True]
    assert record.turns[2].agreement and not record.turns[1].agreement
    assert record.turns[1].belief_class == record.turns[2].belief_class == 0
    assert conversation_metrics(record)["agreement_correctness"] == 1.0


def test_compat_agreement_is_string_equality(tmp_path):
    task = MathTask(compat=True)
    try:
        backend = ScriptedBackend(by_turn("$\\boxed{0.5}$", "$\\boxed{\\frac12}$", "$\\boxed{\\frac12}$", "x"))
        record = run_one(runner_for(task, backend, tmp_path, max_turns=4), MATH_EXAMPLE)
    finally:
        task.close()
    # 0.5 vs \frac12 do not agree as strings; turn 3 repeats the student's string, so turn 3 agrees with turn 2.
    assert record.stop_reason == "agreement" and len(record.turns) == 4
    assert record.turns[2].belief_class != record.turns[1].belief_class


def test_no_stop_when_one_belief_is_missing_or_different(tmp_path):
    backend = ScriptedBackend(by_turn("The correct answer is (B)", "not sure", "The correct answer is (C)", "(C)?"))
    record = run_one(runner_for(MMLUProTask(), backend, tmp_path, max_turns=4), MC_EXAMPLE)
    assert record.stop_reason == "max_turns"
    assert [t.belief for t in record.turns[1:]] == ["B", None, "C", None]
    assert [t.correct for t in record.turns[1:]] == [True, False, False, False]


def test_a_turn_that_keeps_failing_ends_the_conversation_with_the_error(tmp_path):
    backend = ScriptedBackend(
        lambda m, s: BackendError("connection refused") if len(m) == 3 else "The correct answer is (B)"
    )
    record = run_one(runner_for(MMLUProTask(), backend, tmp_path), MC_EXAMPLE)
    assert record.stop_reason == "error"
    last = record.turns[-1]
    assert last.index == 2 and last.text == "" and "connection refused" in last.error and last.attempts == 2
    assert conversation_metrics(record)["conv_err"] == 1.0


def test_a_failed_request_is_retried_with_the_same_seed(tmp_path):
    failures = iter([BackendError("busy")])

    def script(messages, sampling):
        return next(failures, "The correct answer is (B)")

    backend = ScriptedBackend(script)
    record = run_one(runner_for(MMLUProTask(), backend, tmp_path, max_turns=1), MC_EXAMPLE)
    assert record.turns[1].attempts == 2 and record.turns[1].error is None
    assert backend.calls[0].sampling.seed == backend.calls[1].sampling.seed == record.turns[1].seed


def test_non_retryable_errors_are_not_retried(tmp_path):
    backend = ScriptedBackend(lambda m, s: BackendError("prompt too long", retryable=False))
    record = run_one(runner_for(MMLUProTask(), backend, tmp_path), MC_EXAMPLE)
    assert record.turns[1].attempts == 1 and len(backend.calls) == 1


def test_unreachable_judge_is_recorded_not_raised(tmp_path):
    def script(messages, sampling):
        if "Extract the answer" in messages[-1]["content"]:
            return BackendError("judge unreachable")
        return "I am thinking about it."

    runner = runner_for(MMLUProTask(), ScriptedBackend(script), tmp_path, max_turns=2, mode="rules_then_judge")
    record = run_one(runner, MC_EXAMPLE)
    assert all(t.belief is None and "judge unreachable" in t.extraction_error for t in record.turns[1:])
    assert conversation_metrics(record)["extractor_err_rate"] == 1.0


def test_the_judges_reply_is_kept_on_the_turn(tmp_path):
    # item 17: a reply the task cannot read leaves no belief, but the record keeps it, so compat metrics read it
    # as the reference did ("Error: <reply>"); a readable reply is kept too
    replies = iter(["I think it is the second option", "(B)"])

    def script(messages, sampling):
        return next(replies) if "Extract the answer" in messages[-1]["content"] else "I am thinking about it."

    runner = runner_for(MMLUProTask(), ScriptedBackend(script), tmp_path, max_turns=2, mode="rules_then_judge")
    first, second = run_one(runner, MC_EXAMPLE).turns[1:]
    assert (first.belief, first.judge_reply) == (None, "I think it is the second option")
    assert reference_belief(first) == "Error: I think it is the second option"
    assert (second.belief, second.judge_reply, reference_belief(second)) == ("B", "(B)", "B")


def test_seeds_are_derived_per_turn_and_reproducible(tmp_path):
    script = by_turn("a", "b", "c")
    first = run_one(runner_for(MMLUProTask(), ScriptedBackend(script), tmp_path / "1", max_turns=3), MC_EXAMPLE)
    second = run_one(runner_for(MMLUProTask(), ScriptedBackend(script), tmp_path / "2", max_turns=3), MC_EXAMPLE)
    seeds = [t.seed for t in first.turns[1:]]
    assert len(set(seeds)) == 3 and seeds == [t.seed for t in second.turns[1:]]


def test_sessions_end_with_the_conversation(tmp_path):
    backend = ScriptedBackend(by_turn("(B)", "(B)"))
    runner = runner_for(MMLUProTask(), backend, tmp_path, max_turns=2)
    run_one(runner, MC_EXAMPLE)
    assert backend.ended_sessions == ["7:mc:0"]
    assert {call.session_id for call in backend.calls} == {"7:mc:0"}


def test_rerun_skips_finished_conversations(tmp_path):
    examples = [Example(id=f"q{i}", task="mmlu_pro", question="?", answer="B", choices=("x", "y")) for i in range(3)]
    backend = ScriptedBackend(lambda m, s: "The correct answer is (B)")
    runner = runner_for(MMLUProTask(), backend, tmp_path, max_turns=2)
    assert asyncio.run(runner.run(runner.pending(examples[:2], 2))) == 4
    again = runner_for(MMLUProTask(), backend, tmp_path, max_turns=2)
    pending = again.pending(examples, 2)
    assert [(e.id, s) for e, s in pending] == [("q2", 0), ("q2", 1)]
    assert asyncio.run(again.run(pending)) == 2
    assert len(read_records(tmp_path)) == 6


def test_a_crashing_protocol_is_recorded_and_others_continue(tmp_path):
    class Broken(CoralProtocol):
        async def run(self, ctx):
            if ctx.example.id == "bad":
                raise KeyError("bug")
            return await super().run(ctx)

    backend = ScriptedBackend(lambda m, s: "(B)")
    runner = runner_for(MMLUProTask(), backend, tmp_path, max_turns=1)
    runner.protocol = Broken()
    good = Example(id="good", task="mmlu_pro", question="?", answer="B", choices=("x", "y"))
    bad = Example(id="bad", task="mmlu_pro", question="?", answer="B", choices=("x", "y"))
    asyncio.run(runner.run([(bad, 0), (good, 0)]))
    records = {r.example_id: r for r in read_records(tmp_path)}
    assert records["bad"].stop_reason == "error" and "KeyError" in records["bad"].metadata["exception"]
    assert records["good"].stop_reason == "max_turns"


@pytest.mark.parametrize("asker", ["teacher", "nobody"])
def test_protocol_validates_its_agents(tmp_path, asker):
    backend = ScriptedBackend(lambda m, s: "(B)")
    runner = runner_for(MMLUProTask(), backend, tmp_path, max_turns=1)
    runner.protocol = CoralProtocol(asker=asker)
    record = run_one(runner, MC_EXAMPLE)
    if asker == "teacher":
        assert [t.speaker for t in record.turns] == ["teacher", "student"]
    else:
        assert record.stop_reason == "error" and "needs two agents" in record.metadata["exception"]


def test_teacher_first_the_teacher_poses_the_problem_and_the_student_answers(tmp_path):
    # item 19: the reference's teacher-first variant (first_role=teacher)
    backend = ScriptedBackend(by_turn("The correct answer is (B)", "The correct answer is (B)"))
    runner = runner_for(MMLUProTask(), backend, tmp_path, max_turns=2)
    runner.protocol = CoralProtocol(asker="teacher", posed=True)
    record = run_one(runner, MC_EXAMPLE)
    assert [t.speaker for t in record.turns] == ["teacher", "student", "teacher"]
    assert record.turns[0].text == (
        'I would like you to try and solve this problem: "Pick B."\nAnd the choices are:\n(A) x\n(B) y\n(C) z'
    )
    student_view = backend.calls[0].messages
    assert student_view[0]["content"] == "system prompt of student"
    assert student_view[1:] == [{"role": "user", "content": record.turns[0].text}]


def test_opening_wordings_are_the_references():
    story = Example(id="s", task="explore_tom", question="Where is it?", answer="box", source={"story": "A ball."})
    tom = ExploreToMTask()
    assert tom.opening_message(story) == (
        "I'm trying to answer this question based on the following story:\nStory: A ball.\nQuestion: Where is it?"
    )
    assert tom.opening_message(story, posed=True) == (
        "I would like you to try to answer a question based on the following story: \nStory: A ball.\n"
        "Question: Where is it?"
    )
    math = MathTask()
    assert math.opening_message(MATH_EXAMPLE) == 'I\'m trying to solve this math problem: "What is 1/2 as a decimal?"'
    assert math.opening_message(MATH_EXAMPLE, posed=True) == (
        'I would like you to try and solve this math problem: "What is 1/2 as a decimal?"'
    )
