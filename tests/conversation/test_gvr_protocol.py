"""The generate-verify-refine protocol on a scripted backend: tree shape, prompts, MV@k, rates by hand."""

from __future__ import annotations

import asyncio

import pytest

from coral.backends import ScriptedBackend
from coral.beliefs import BeliefExtractor
from coral.conversation import Agent, ConversationRunner, RetryPolicy, RunSettings
from coral.conversation.protocols.generate_verify_refine import GenerateVerifyRefine, role_messages
from coral.metrics.conversation import conversation_metrics
from coral.sampling import SamplingParams
from coral.seeding import derive_seed
from coral.store import ResultStore, read_records
from coral.tasks import Example, MMLUProTask

MC = Example(id="mc", task="mmlu_pro", question="Pick B.", answer="B", choices=("x", "y", "z"))
RUN_SEED = 7


def index_of_seed(seed: int, most: int = 40) -> int:
    """The turn index a seed belongs to: siblings a..a+k-1 come from one request seeded from a's index, + i each."""
    bases = {derive_seed(RUN_SEED, MC.id, 0, "turn", a, 0): a for a in range(most)}
    return next(bases[seed - i] + i for i in range(4) if seed - i in bases)


def scripted(by_index: dict[int, str], judged: list[str]):
    """Turn ``i`` says ``by_index[i]`` (a letter becomes an answer the rules read; anything else is said as is).

    Extraction requests (the judge) are recorded in ``judged``.
    """

    def script(messages, sampling):
        if "Extract the answer" in messages[-1]["content"]:
            judged.append(messages[-1]["content"])
            return "not sure yet"
        reply = by_index[index_of_seed(sampling.seed)]
        return f"The correct answer is ({reply})" if len(reply) == 1 else reply

    return ScriptedBackend(script)


def run(protocol, backend, tmp_path):
    agents = {name: Agent(name, backend, "m", f"system prompt of {name}", SamplingParams(max_tokens=50))
              for name in protocol.speakers()}
    runner = ConversationRunner(
        protocol=protocol, task=MMLUProTask(), agents=agents, extractor=BeliefExtractor("rules_then_judge", backend),
        store=ResultStore(tmp_path), settings=RunSettings(run_seed=RUN_SEED, config_hash="t",
                                                          retry=RetryPolicy(attempts=1, backoff_s=0.0)),
    )
    asyncio.run(runner.run([(MC, 0)]))
    [record] = read_records(tmp_path)
    return record


def test_mv3_rates_by_hand_and_critiques_never_reach_the_judge(tmp_path):
    # turns 1-3 generators (C, B, C), 4-6 verifiers (critiques, no answer), 7-9 refiners (B, B, C); gold B
    script = {1: "C", 2: "B", 3: "C", 4: "Step 2 is wrong.", 5: "Looks right.", 6: "Fine.", 7: "B", 8: "B", 9: "C"}
    judged: list[str] = []
    record = run(GenerateVerifyRefine(passes=3), scripted(script, judged), tmp_path)
    roles = [(t.role, t.round, t.parent) for t in record.turns]
    assert roles == [("question", None, None), *[("generator", p, 0) for p in range(3)],
                     *[("verifier", p, 1 + p) for p in range(3)], *[("refiner", p, 4 + p) for p in range(3)]]
    verifiers = [t for t in record.turns if t.role == "verifier"]
    assert all(not t.carries_answer and t.belief is None and t.correct is None for t in verifiers)
    assert judged == []  # every answer was read by the rules; the critiques were never extracted
    assert (record.outcome.answer, record.outcome.correct, record.outcome.votes) == ("B", 1.0, {"B": 2, "C": 1})
    assert record.outcome.voters == [7, 8, 9] and record.stop_reason == "completed"
    metrics = conversation_metrics(record)
    assert metrics["generator_accuracy"] == pytest.approx(1 / 3) and metrics["refiner_accuracy"] == pytest.approx(2 / 3)
    assert metrics["self_correction_rate"] == pytest.approx(1 / 3) and metrics["self_corruption_rate"] == 0.0
    assert metrics["mv_accuracy"] == 1.0 and metrics["rated_turns"] == 6.0  # critiques are not rated
    assert "persuade_rate" not in metrics and "agreement_correctness" not in metrics
    assert record.protocol_args == {"passes": 3, "branching": 1, "verify": True, "tie_rule": "expected"}


@pytest.mark.parametrize(("rule", "correct"), [("expected", 1 / 3), ("first_agent", 0.0)])
def test_a_three_way_tie_of_refiners(tmp_path, rule, correct):
    script = {1: "A", 2: "B", 3: "C", 4: "ok", 5: "ok", 6: "ok", 7: "A", 8: "B", 9: "C"}
    record = run(GenerateVerifyRefine(passes=3, tie_rule=rule), scripted(script, []), tmp_path)
    assert record.outcome.decided_by == "tie" and record.outcome.tied == ["A", "B", "C"]
    assert (record.outcome.answer, record.outcome.correct) == ("A", pytest.approx(correct))


def test_the_g_plus_r_ablation_gives_the_refiner_an_empty_feedback(tmp_path):
    backend = scripted({1: "C", 2: "B"}, [])
    record = run(GenerateVerifyRefine(passes=1, verify=False), backend, tmp_path)
    assert [(t.role, t.parent) for t in record.turns[1:]] == [("generator", 0), ("refiner", 1)]
    refiner_prompt = backend.calls[-1].messages[-1]["content"]
    assert "Feedback:\n\n\nUse the feedback" in refiner_prompt and "Initial Answer:\nThe correct answer is (C)" in (
        refiner_prompt)
    assert conversation_metrics(record)["self_correction_rate"] == 1.0


def test_a_tree_has_every_node_with_its_own_seed_and_prompts_rebuild_from_the_record(tmp_path):
    letters = "ABC"
    backend = scripted({i: letters[i % 3] if i < 3 or i > 6 else f"critique {i}" for i in range(1, 15)}, [])
    record = run(GenerateVerifyRefine(passes=2, branching=2), backend, tmp_path)
    assert [t.role for t in record.turns[1:]] == ["generator"] * 2 + ["verifier"] * 4 + ["refiner"] * 8
    assert [t.parent for t in record.turns[3:]] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert [t.round for t in record.turns[7:]] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len({t.seed for t in record.turns[1:]}) == 14 and record.max_turns == 14
    sent = {index_of_seed(call.sampling.seed): call for call in backend.calls}
    assert sorted(sent) == [1, 3, 5, 7, 9, 11, 13] and {call.n for call in sent.values()} == {2}  # one per parent
    for turn in record.turns[1:]:
        first_sibling = turn.index - (turn.index - 1) % 2
        assert role_messages(record, turn.index, MMLUProTask().answer_instruction()) == sent[first_sibling].messages
    assert record.outcome.voters == list(range(7, 15))
    rerun = run(GenerateVerifyRefine(passes=2, branching=2), backend, tmp_path / "again")
    assert rerun.to_dict() == record.to_dict()
