"""Tree sampling: beam_size candidates per turn, graded siblings, seeded picks, errors never continued."""

from __future__ import annotations

import asyncio
import random

import pytest

from coral.backends import BackendError, ScriptedBackend
from coral.beliefs import BeliefExtractor
from coral.conversation import Agent, ConversationRunner, CoralProtocol, RetryPolicy, RunSettings
from coral.conversation.tree import continue_with, pick_diverse, pick_stratified, strategy
from coral.records import Turn
from coral.sampling import SamplingParams
from coral.store import ResultStore, read_records
from coral.tasks import Example, MMLUProTask

EXAMPLE = Example(id="mc", task="mmlu_pro", question="Pick B.", answer="B", choices=("x", "y", "z"))


def answer_by_seed(messages, sampling):
    """Odd seeds answer B (correct), even seeds answer A; the turn number keeps candidates' texts distinct."""
    return f"turn {len(messages) - 1}: the answer is ({'B' if sampling.seed % 2 else 'A'})"


def runner(tmp_path, backend, beam_size=3, expansion="random", single_request=True, max_turns=4):
    agents = {
        name: Agent(name, backend, "scripted", f"system of {name}", SamplingParams(max_tokens=20))
        for name in ("teacher", "student")
    }
    return ConversationRunner(
        protocol=CoralProtocol(),
        task=MMLUProTask(),
        agents=agents,
        extractor=BeliefExtractor("rules", None),
        store=ResultStore(tmp_path),
        settings=RunSettings(
            run_seed=11,
            config_hash="tree",
            max_turns=max_turns,
            retry=RetryPolicy(attempts=1, backoff_s=0.0),
            beam_size=beam_size,
            expansion=expansion,
            single_request_expansion=single_request,
        ),
    )


def run_tree(tmp_path, backend, **kwargs):
    r = runner(tmp_path, backend, **kwargs)
    asyncio.run(r.run([(EXAMPLE, 0), (EXAMPLE, 1)]))
    return sorted(read_records(tmp_path), key=lambda rec: rec.sample_index)


def test_every_generated_turn_has_graded_siblings_from_one_request(tmp_path):
    backend = ScriptedBackend(answer_by_seed)
    records = run_tree(tmp_path, backend)
    assert all(call.sampling.seed is not None for call in backend.calls)
    for record in records:
        for turn in record.turns[1:]:
            candidates = [turn, *turn.siblings]
            assert len(candidates) == 3
            seeds = sorted(c.seed for c in candidates)
            assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]  # one request with n: s, s+1, s+2
            for c in candidates:
                assert c.belief == ("B" if c.seed % 2 else "A") and c.correct == (c.seed % 2 == 1)
                assert c.index == turn.index and c.siblings == [] or c is turn
    # The two trees of the example are independent samples: their first-turn seeds differ.
    assert records[0].turns[1].seed != records[1].turns[1].seed


def test_sibling_agreement_is_recorded_against_the_partner(tmp_path):
    records = run_tree(tmp_path, ScriptedBackend(answer_by_seed), max_turns=6)
    checked = 0
    for record in records:
        for partner, turn in zip(record.turns[1:], record.turns[2:]):
            for sibling in turn.siblings:
                assert sibling.agreement == (sibling.belief == partner.belief), (sibling, partner)
                checked += 1
    assert checked >= 2

def test_same_seed_gives_the_same_trees(tmp_path):
    first = run_tree(tmp_path / "a", ScriptedBackend(answer_by_seed, latency_s=0.001))
    second = run_tree(tmp_path / "b", ScriptedBackend(answer_by_seed))

    def strip(recs: list) -> list:
        return [[(t.seed, t.text, [s.seed for s in t.siblings]) for t in r.turns] for r in recs]

    assert strip(first) == strip(second)


def test_errored_candidates_never_continue(tmp_path):
    def flaky(messages, sampling):
        # Separate requests: every candidate but one errors at each level.
        return answer_by_seed(messages, sampling) if sampling.seed % 3 == 0 else BackendError("boom", retryable=False)

    seeds_ok = []

    def script(messages, sampling):
        reply = flaky(messages, sampling)
        if not isinstance(reply, BaseException):
            seeds_ok.append(sampling.seed)
        return reply

    records = run_tree(tmp_path, ScriptedBackend(script), single_request=False, beam_size=4)
    for record in records:
        for turn in record.turns[1:]:
            if turn.error is None:
                assert turn.seed in seeds_ok
                assert all(s.error is not None or s.seed in seeds_ok for s in turn.siblings)
            else:  # only when every candidate errored
                assert all(s.error is not None for s in turn.siblings)
                assert record.stop_reason == "error"


def test_all_candidates_errored_ends_the_conversation_with_an_error(tmp_path):
    records = run_tree(tmp_path, ScriptedBackend(lambda m, s: BackendError("down", retryable=False)))
    for record in records:
        assert record.stop_reason == "error"
        assert record.turns[1].error and len(record.turns[1].siblings) == 2


def candidates(*specs):
    return [Turn(index=1, speaker="t", text=str(i), belief=b, correct=c, belief_class=k)
            for i, (b, c, k) in enumerate(specs)]


def test_stratified_picks_both_sides_about_equally():
    pool = candidates(("B", True, 0), ("A", False, 1), ("A", False, 1), ("A", False, 1))
    rng = random.Random(0)
    picks = [pick_stratified(pool, rng).correct for _ in range(2000)]
    assert 0.45 < sum(picks) / len(picks) < 0.55  # uniform picking would give 0.25


def test_diversity_gives_each_distinct_belief_equal_chance():
    pool = candidates(("B", True, 0), ("A", False, 1), ("A", False, 1), (None, False, None))
    rng = random.Random(1)
    picks = [pick_diverse(pool, rng).belief for _ in range(3000)]
    for belief in ("B", "A", None):
        assert 0.28 < picks.count(belief) / len(picks) < 0.39


def test_continue_with_keeps_the_others_as_siblings_and_skips_errors():
    pool = candidates(("B", True, 0), ("A", False, 1), ("C", False, 2))
    pool[0].error = "timeout"
    chosen = continue_with(pool, strategy("random"), random.Random(3))
    assert chosen is not pool[0] and len(chosen.siblings) == 2 and pool[0] in chosen.siblings


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown expansion strategy 'best'"):
        strategy("best")
