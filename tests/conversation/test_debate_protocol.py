"""The debate protocol on a scripted backend: votes and ties, per-round metrics, what each agent sees, seeds."""

from __future__ import annotations

import asyncio
import random

import pytest

from coral.backends import BackendError, ScriptedBackend
from coral.beliefs import BeliefExtractor
from coral.conversation import PROTOCOLS, Agent, ConversationRunner, RetryPolicy, RunSettings
from coral.conversation.protocols.debate import DebateProtocol, debate_messages
from coral.metrics.debate import debate_metrics
from coral.sampling import SamplingParams
from coral.seeding import derive_seed
from coral.store import ResultStore, read_records
from coral.tasks import Example, MMLUProTask

MC = Example(id="mc", task="mmlu_pro", question="Pick B.", answer="B", choices=("x", "y", "z"))
HALF = Example(id="half", task="math", question="What is 1/2 as a decimal?", answer="\\frac{1}{2}")
MC_FORMAT = (
    'Give your final answer in the form "The correct answer is (B)", with the letter of your choice in place of B.'
)


def said(letter):
    """A reply the MMLU-Pro rules read as ``letter``; None: a reply with no answer."""
    return "I am not sure yet." if letter is None else f"The correct answer is ({letter})"


def scripted(replies):
    """A backend where ``replies[speaker][round]`` is what ``speaker`` says in ``round``.

    The speaker is read from its system prompt ("system prompt of agent_2"), the round from how many of its own
    answers it has already seen.
    """

    def script(messages, sampling):
        speaker = messages[0]["content"].split()[-1]
        round_ = sum(m["role"] == "assistant" for m in messages)
        reply = replies[speaker][round_]
        short = reply is None or (isinstance(reply, str) and len(reply) == 1)
        return said(reply) if short else reply  # a full reply or a BackendError (raised) as it is

    return ScriptedBackend(script)


def debate(task, backend, tmp_path, example=MC, **protocol_args):
    """Run one debate and return its stored record."""
    protocol = DebateProtocol(**protocol_args)
    return run_debate(protocol, task, backend, tmp_path, example)


def run_debate(protocol, task, backend, tmp_path, example=MC):
    agents = {
        name: Agent(name, backend, "scripted-model", f"system prompt of {name}", SamplingParams(max_tokens=50))
        for name in protocol.speakers()
    }
    runner = ConversationRunner(
        protocol=protocol,
        task=task,
        agents=agents,
        extractor=BeliefExtractor("rules", backend),
        store=ResultStore(tmp_path),
        settings=RunSettings(run_seed=7, config_hash="test", retry=RetryPolicy(attempts=1, backoff_s=0.0)),
    )
    asyncio.run(runner.run([(example, 0)]))
    [record] = read_records(tmp_path)
    return record


def answers_of(record, round_):
    return [t.belief for t in record.turns if t.round == round_]


def test_votes_per_round_agent_accuracy_and_answer_changes_by_hand(tmp_path):
    # gold B. round 0: B C C (vote C, wrong); round 1: B B C (vote B); round 2: C B B (vote B)
    replies = {"agent_1": ["B", "B", "C"], "agent_2": ["C", "B", "B"], "agent_3": ["C", "C", "B"]}
    record = debate(MMLUProTask(), scripted(replies), tmp_path)
    assert [(t.speaker, t.role, t.round) for t in record.turns[:5]] == [
        ("moderator", "question", None), ("agent_1", "debater", 0), ("agent_2", "debater", 0),
        ("agent_3", "debater", 0), ("agent_1", "debater", 1),
    ]
    assert record.turns[0].generated is False and len(record.turns) == 10
    assert record.stop_reason == "completed" and record.max_turns == 9
    outcome = record.outcome
    assert [(v.answer, v.correct, v.votes, v.voters) for v in outcome.rounds] == [
        ("C", 0.0, {"B": 1, "C": 2}, [1, 2, 3]),
        ("B", 1.0, {"B": 2, "C": 1}, [4, 5, 6]),
        ("B", 1.0, {"C": 1, "B": 2}, [7, 8, 9]),
    ]
    assert (outcome.answer, outcome.correct, outcome.decided_by, outcome.voters) == ("B", 1.0, "majority", [7, 8, 9])
    assert debate_metrics(record) == {
        "mv_accuracy": 1.0,
        "consensus": 0.0,
        "mv_accuracy_round_0": 0.0, "agent_accuracy_round_0": pytest.approx(1 / 3),
        "mv_accuracy_round_1": 1.0, "agent_accuracy_round_1": pytest.approx(2 / 3),
        "mv_accuracy_round_2": 1.0, "agent_accuracy_round_2": pytest.approx(2 / 3),
        "w_to_r_round_1": pytest.approx(1 / 3), "r_to_w_round_1": 0.0,  # agent_2 C -> B
        "w_to_r_round_2": pytest.approx(1 / 3), "r_to_w_round_2": pytest.approx(1 / 3),  # agent_3 in, agent_1 out
    }


@pytest.mark.parametrize(("tie_rule", "answer", "correct"), [("expected", "C", 0.5), ("first_agent", "C", 0.0)])
def test_a_tie_with_invalid_answers_is_between_the_valid_ones(tmp_path, tie_rule, answer, correct):
    # C, -, B, -: two unparseable answers outnumber each valid one but never win; C and B tie at one vote each
    replies = {"agent_1": ["C"], "agent_2": [None], "agent_3": ["B"], "agent_4": [None]}
    record = debate(MMLUProTask(), scripted(replies), tmp_path, agents=4, rounds=1, tie_rule=tie_rule)
    outcome = record.outcome
    assert (outcome.answer, outcome.correct, outcome.decided_by) == (answer, correct, "tie")
    assert (outcome.tied, outcome.invalid, outcome.tie_rule) == (["C", "B"], 2, tie_rule)
    assert outcome.votes == {"C": 1, "B": 1}
    assert "vote_seeds" not in record.metadata


def test_a_three_way_tie_scores_a_third_when_the_gold_is_among_it(tmp_path):
    replies = {"agent_1": ["A"], "agent_2": ["B"], "agent_3": ["C"]}
    record = debate(MMLUProTask(), scripted(replies), tmp_path, rounds=1)
    assert record.outcome.correct == pytest.approx(1 / 3) and record.outcome.tied == ["A", "B", "C"]


def test_the_random_tie_rule_picks_with_a_recorded_seed(tmp_path):
    replies = {"agent_1": ["C", "C"], "agent_2": ["B", "B"]}
    record = debate(MMLUProTask(), scripted(replies), tmp_path, agents=2, rounds=2, tie_rule="random")
    seeds = [derive_seed(7, "mc", 0, "vote", r) for r in range(2)]
    assert record.metadata["vote_seeds"] == seeds and seeds[0] != seeds[1]
    for seed, vote in zip(seeds, record.outcome.rounds, strict=True):
        picked = random.Random(seed).choice(["C", "B"])  # the tied answers in first-voter order
        assert (vote.answer, vote.correct, vote.decided_by) == (picked, 1.0 if picked == "B" else 0.0, "tie")


def test_all_answers_unparseable_decide_nothing_and_score_zero(tmp_path):
    replies = {"agent_1": [None, None], "agent_2": [None, None], "agent_3": [None, None]}
    record = debate(MMLUProTask(), scripted(replies), tmp_path, rounds=2)
    outcome = record.outcome
    assert (outcome.answer, outcome.correct, outcome.decided_by, outcome.invalid) == (None, 0.0, "no_valid_answer", 3)
    metrics = debate_metrics(record)
    assert (metrics["mv_accuracy"], metrics["agent_accuracy_round_1"], metrics["consensus"]) == (0.0, 0.0, 0.0)
    assert (metrics["w_to_r_round_1"], metrics["r_to_w_round_1"]) == (0.0, 0.0)


def test_equivalent_answers_vote_together_on_math(tmp_path, math_task):
    replies = {
        "agent_1": ["It is $\\boxed{0.5}$."],
        "agent_2": ["It is $\\boxed{3}$."],
        "agent_3": ["It is $\\boxed{\\frac12}$."],
    }
    record = debate(math_task, scripted(replies), tmp_path, example=HALF, rounds=1)
    assert answers_of(record, 0) == ["0.5", "3", "\\frac12"]
    assert [t.belief_class for t in record.turns[1:]] == [0, 1, 0]
    outcome = record.outcome
    assert (outcome.answer, outcome.correct, outcome.votes) == ("0.5", 1.0, {"0.5": 2, "3": 1})


def test_consensus_is_one_answer_under_the_tasks_equivalence(tmp_path, math_task):
    replies = {"agent_1": ["$\\boxed{0.5}$"], "agent_2": ["$\\boxed{\\frac12}$"]}
    record = debate(math_task, scripted(replies), tmp_path, example=HALF, agents=2, rounds=1)
    assert debate_metrics(record)["consensus"] == 1.0 and record.outcome.decided_by == "majority"


def test_each_agent_sees_its_own_answers_as_assistant_and_the_others_labelled(tmp_path):
    replies = {"agent_1": ["B", "B", "B"], "agent_2": ["C", "B", "B"], "agent_3": ["A", "C", "B"]}
    backend = scripted(replies)
    record = debate(MMLUProTask(), backend, tmp_path)
    last = backend.calls[-3].messages  # agent_1, round 2
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert last[0]["content"] == "system prompt of agent_1"
    assert last[1]["content"] == record.turns[0].text == MMLUProTask().opening_message(MC, posed=True)
    assert [last[2]["content"], last[4]["content"]] == [said("B"), said("B")]
    assert last[5]["content"] == (
        "These are the solutions to the problem from the other agents:\n\n"
        f"agent_2's solution:\n```\n{said('B')}\n```\n\n"
        f"agent_3's solution:\n```\n{said('C')}\n```\n\n"
        "Using the solutions from other agents as additional information, can you provide your answer to the "
        f"problem? {MC_FORMAT}"
    )
    assert "agent_2's solution" not in backend.calls[-2].messages[5]["content"]  # agent_2 never quotes itself


def test_the_record_rebuilds_every_prompt_exactly(tmp_path):
    replies = {"agent_1": ["B", "C", "B"], "agent_2": ["C", "B", "B"], "agent_3": ["A", "C", None]}
    backend = scripted(replies)
    record = debate(MMLUProTask(), backend, tmp_path)
    assert len(backend.calls) == 9
    for call, turn in zip(backend.calls, record.turns[1:], strict=True):  # requests go out in agent order
        assert call.messages == debate_messages(record, turn.speaker, turn.round, MMLUProTask())


def test_maporl_wording_shows_the_verifiers_score_of_each_peer(tmp_path):
    replies = {"agent_1": ["B", "B"], "agent_2": ["C", "B"]}
    backend = scripted(replies)
    protocol = DebateProtocol(agents=2, rounds=2, prompts="maporl")

    async def verifier(example, turn):
        return 0.75 if "(B)" in turn.text else 0.125

    protocol.peer_scores = verifier
    record = run_debate(protocol, MMLUProTask(), backend, tmp_path)
    assert record.metadata["peer_scores"] == {"1": 0.75, "2": 0.125}  # round 0 only: the last round is never shown
    assert backend.calls[2].messages[-1]["content"] == (
        f"agent_2 solution:\n```\n{said('C')}\n```\n"
        "Reward associated with agent_2's solution calculated by verifier: 0.125\n\n"
        "Weigh your previous answer against the other agents' solutions above. If your answer is wrong, revise it; "
        f"if it is right, keep it. Keep your reasoning simple and short. {MC_FORMAT}\n\n"
        f"Once again, the problem is: {record.turns[0].text}"
    )
    for call, turn in zip(backend.calls, record.turns[1:], strict=True):
        assert call.messages == debate_messages(record, turn.speaker, turn.round, MMLUProTask())


def test_one_agent_one_round_is_a_single_answer(tmp_path):
    backend = scripted({"agent_1": ["B"]})
    record = debate(MMLUProTask(), backend, tmp_path, agents=1, rounds=1)
    [call] = backend.calls
    assert call.messages == [
        {"role": "system", "content": "system prompt of agent_1"},
        {"role": "user", "content": MMLUProTask().opening_message(MC, posed=True)},
    ]
    assert [t.speaker for t in record.turns] == ["moderator", "agent_1"] and record.max_turns == 1
    outcome = record.outcome
    assert (outcome.answer, outcome.correct, outcome.decided_by, outcome.votes) == ("B", 1.0, "majority", {"B": 1})
    assert debate_metrics(record) == {
        "mv_accuracy": 1.0, "consensus": 1.0, "mv_accuracy_round_0": 1.0, "agent_accuracy_round_0": 1.0,
    }


def test_one_agent_reflects_on_its_own_answer_in_later_rounds(tmp_path):
    backend = scripted({"agent_1": ["C", "B"]})
    record = debate(MMLUProTask(), backend, tmp_path, agents=1, rounds=2)
    assert backend.calls[1].messages[2:] == [
        {"role": "assistant", "content": said("C")},
        {"role": "user", "content": f"Can you double check that your answer is correct? {MC_FORMAT}"},
    ]
    assert (debate_metrics(record)["w_to_r_round_1"], record.outcome.answer) == (1.0, "B")


def test_seeds_are_distinct_per_turn_and_reproducible(tmp_path):
    replies = {"agent_1": ["B", "B"], "agent_2": ["C", "B"]}
    first = debate(MMLUProTask(), scripted(replies), tmp_path / "1", agents=2, rounds=2)
    second = debate(MMLUProTask(), scripted(replies), tmp_path / "2", agents=2, rounds=2)
    seeds = [t.seed for t in first.turns[1:]]
    assert seeds == [derive_seed(7, "mc", 0, "turn", index, 0) for index in range(1, 5)]
    assert len(set(seeds)) == 4 and seeds == [t.seed for t in second.turns[1:]]


def test_a_turn_that_fails_stops_the_debate_after_its_round(tmp_path):
    failure = BackendError("prompt too long", retryable=False)
    replies = {"agent_1": ["B", "B", "B"], "agent_2": ["C", failure, "B"], "agent_3": ["C", "B", "B"]}
    record = debate(MMLUProTask(), scripted(replies), tmp_path)
    assert record.stop_reason == "error" and len(record.turns) == 7
    assert "prompt too long" in record.turns[5].error
    assert [(v.answer, v.invalid) for v in record.outcome.rounds] == [("C", 0), ("B", 1)]
    metrics = debate_metrics(record)
    assert (metrics["mv_accuracy"], metrics["consensus"], metrics["agent_accuracy_round_1"]) == (1.0, 0.0, 2 / 3)
    assert metrics["mv_accuracy_round_2"] is None and metrics["w_to_r_round_2"] is None


def test_arguments_are_recorded_and_checked(tmp_path):
    assert PROTOCOLS.get("debate") is DebateProtocol
    record = debate(MMLUProTask(), scripted({"agent_1": ["B"], "agent_2": ["B"]}), tmp_path, agents=2, rounds=1)
    assert record.protocol == "debate"
    assert record.protocol_args == {"agents": 2, "rounds": 1, "prompts": "du", "tie_rule": "expected"}
    assert DebateProtocol().instruction("agent_1", MMLUProTask()) == MMLUProTask().instruction("simple_cot")
    for bad in ({"agents": 0}, {"rounds": 0}, {"prompts": "socratic"}, {"tie_rule": "coin"}):
        with pytest.raises(ValueError):
            DebateProtocol(**bad)
