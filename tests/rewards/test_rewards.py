"""MAPoRL rewards on hand-built debates: Definition 1, both shaping conventions row by row, the malformed penalty.

Debates are written as one string per round, one letter per agent: R (correct), W (wrong), E (the request
failed). Turn 0 is the question; round r's answers follow in agent order, so with two agents round 0 is turns 1
and 2, round 1 turns 3 and 4, round 2 turns 5 and 6.
"""

from __future__ import annotations

import pytest

from coral.records import ConversationRecord, Turn, Usage
from coral.rewards import (
    RewardSettings,
    debate_grid,
    gold_scores,
    has_ngram_loop,
    influence_rewards,
    is_malformed,
    malformed_penalty,
    others_majority,
    shaping_bonus,
    turn_rewards,
)

CONSTANTS = {"alpha0": 1.0, "alpha1": 2.0, "beta0": 10.0, "beta1": 20.0}
"""Distinct shaping constants, so a bonus's value names the constant and sign that produced it."""


def answer(index: int, agent: int, round_: int, letter: str) -> Turn:
    """One debater turn: R answers the gold 4, W answers 5, E failed."""
    failed = letter == "E"
    return Turn(index=index, speaker=f"agent_{agent + 1}", text=f"answer {letter}", model="m", role="debater",
                round=round_, belief=None if failed else ("4" if letter == "R" else "5"),
                correct=None if failed else letter == "R", error="timeout" if failed else None,
                usage=Usage(prompt_tokens=10, completion_tokens=60))


def debate(*rounds: str, max_rounds: int = 3) -> ConversationRecord:
    """A debate record with one round per string (see the module docstring)."""
    turns = [Turn(index=0, speaker="question", text="What is 2 + 2?", generated=False, role="question")]
    for number, letters in enumerate(rounds):
        for agent, letter in enumerate(letters):
            turns.append(answer(len(turns), agent, number, letter))
    agents = {f"agent_{a + 1}": "m" for a in range(len(rounds[0]))}
    return ConversationRecord(example_id="e", sample_index=0, task="gsm8k", run_seed=0, config_hash="h",
                              protocol="debate", agents=agents, turns=turns, stop_reason="completed",
                              max_turns=max_rounds * len(agents), gold="4",
                              protocol_args={"rounds": max_rounds})


def scored(*rounds: list[float]) -> dict[int, float]:
    """Verifier scores given per round, numbered like ``debate`` numbers turns."""
    scores, index = {}, 1
    for row in rounds:
        for score in row:
            scores[index] = score
            index += 1
    return scores


# --- the grid ---------------------------------------------------------------------------------------------------


def test_grid_is_rounds_by_agents_without_the_question() -> None:
    grid = debate_grid(debate("RW", "WR", "RR"))
    assert [[turn.index for turn in row] for row in grid] == [[1, 2], [3, 4], [5, 6]]
    assert [turn.speaker for turn in grid[1]] == ["agent_1", "agent_2"]


def test_grid_keeps_a_last_round_cut_short_and_refuses_a_shuffled_one() -> None:
    assert [[turn.index for turn in row] for row in debate_grid(debate("RW", "E"))] == [[1, 2], [3]]
    record = debate("RW", "RW")
    record.turns[3].speaker, record.turns[4].speaker = "agent_2", "agent_1"
    with pytest.raises(ValueError, match="round 1 has speakers"):
        debate_grid(record)


# --- Definition 1 -----------------------------------------------------------------------------------------------

THREE_ROUNDS = scored([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])


def test_influence_reward_by_hand_with_gamma_one_half() -> None:
    # round 0, agent 1: (1 + 0.5·mean(0, 1) + 0.25·mean(1, 1)) / (1 + 0.5 + 0.25) = 1.5 / 1.75 = 6/7
    # round 0, agent 2: (0 + 0.25 + 0.25) / 1.75 = 2/7; round 1: (0 + 0.5·1) / 1.5 = 1/3 and (1 + 0.5) / 1.5 = 1
    rewards = influence_rewards(debate("RW", "WR", "RR"), THREE_ROUNDS, gamma=0.5)
    assert rewards == pytest.approx({1: 6 / 7, 2: 2 / 7, 3: 1 / 3, 4: 1.0, 5: 1.0, 6: 1.0})


def test_last_round_reward_is_the_own_score() -> None:
    scores = scored([0.2, 0.9], [0.4, 0.7])
    rewards = influence_rewards(debate("RW", "WR"), scores, gamma=0.3)
    assert rewards[3] == pytest.approx(0.4) and rewards[4] == pytest.approx(0.7)


def test_gamma_weighs_the_future() -> None:
    record = debate("RW", "WR", "RR")
    # γ = 0: the own score only (the code's current/individual); γ = 1: a plain mean over rounds,
    # (1 + 0.5 + 1) / 3 = 5/6; the default γ = 0.3: (0 + 0.3·1) / 1.3 = 3/13 for round 1, agent 1
    assert influence_rewards(record, THREE_ROUNDS, gamma=0.0) == THREE_ROUNDS
    assert influence_rewards(record, THREE_ROUNDS, gamma=1.0)[1] == pytest.approx(5 / 6)
    assert influence_rewards(record, THREE_ROUNDS)[3] == pytest.approx(3 / 13)


def test_early_end_sums_only_the_rounds_played() -> None:
    # three rounds allowed, two played (x = 1): (1 + 0.5·mean(0, 1)) / (1 + 0.5) = 5/6
    record = debate("RW", "WR", max_rounds=3)
    rewards = influence_rewards(record, scored([1.0, 0.0], [0.0, 1.0]), gamma=0.5)
    assert rewards == pytest.approx({1: 5 / 6, 2: 1 / 6, 3: 0.0, 4: 1.0})


def test_three_agents_are_averaged() -> None:
    # round 0, agent 2: (0 + 0.5·mean(1, 1, 0)) / 1.5 = (1/3) / 1.5 = 2/9
    rewards = influence_rewards(debate("RWW", "RRW"), scored([1.0, 0.0, 0.0], [1.0, 1.0, 0.0]), gamma=0.5)
    assert rewards[2] == pytest.approx(2 / 9)
    assert rewards[1] == pytest.approx((1 + 0.5 * 2 / 3) / 1.5)


def test_individual_share_counts_only_own_future_scores() -> None:
    # round 0, agent 1: (1 + 0.5·0 + 0.25·1) / 1.75 = 5/7; agent 2: (0 + 0.5·1 + 0.25·1) / 1.75 = 3/7
    rewards = influence_rewards(debate("RW", "WR", "RR"), THREE_ROUNDS, gamma=0.5, share="individual")
    assert rewards[1] == pytest.approx(5 / 7) and rewards[2] == pytest.approx(3 / 7)


def test_gold_scores_and_missing_scores() -> None:
    record = debate("RW", "WE")
    assert gold_scores(record) == {1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0}
    with pytest.raises(ValueError, match=r"no verifier score for turns \[4\]"):
        influence_rewards(record, {1: 1.0, 2: 0.0, 3: 0.0})


# --- shaping: every row of both tables, in both conventions -------------------------------------------------------

# (own t, own t+1, other agent at t) -> bonus on agent 1's round-1 answer (turn 3). The other agent keeps its
# answer, so no influence row fires for agent 1; betas are 0, so agent 2's influence bonus is 0.
REVISION_ROWS = {
    "paper": [("R", "W", "R", -2.0), ("R", "W", "W", -1.0), ("W", "R", "W", +1.0), ("W", "R", "R", +2.0)],
    "official_code": [("R", "W", "R", -2.0), ("R", "W", "W", -1.0), ("W", "R", "W", +2.0), ("W", "R", "R", +1.0)],
}
# (other agent t, other agent t+1, own t) -> bonus on agent 1's round-0 answer (turn 1). Agent 1 keeps its answer,
# so its revision rows do not fire; alphas are 0, so agent 2's revision bonus is 0.
INFLUENCE_ROWS = {
    "paper": [("R", "W", "R", -20.0), ("R", "W", "W", -10.0), ("W", "R", "W", +10.0), ("W", "R", "R", +20.0)],
    "official_code": [("W", "R", "R", -20.0), ("W", "R", "W", -10.0), ("R", "W", "W", +20.0),
                      ("R", "W", "R", +10.0)],
}


@pytest.mark.parametrize(("convention", "row"), [(c, r) for c, rows in REVISION_ROWS.items() for r in rows])
def test_revision_table_rows(convention: str, row: tuple[str, str, str, float]) -> None:
    own_now, own_after, other, expected = row
    record = debate(own_now + other, own_after + other)
    bonus = shaping_bonus(record, alpha0=1.0, alpha1=2.0, convention=convention)
    assert bonus == {1: 0.0, 2: 0.0, 3: expected, 4: 0.0}


@pytest.mark.parametrize(("convention", "row"), [(c, r) for c, rows in INFLUENCE_ROWS.items() for r in rows])
def test_influence_table_rows(convention: str, row: tuple[str, str, str, float]) -> None:
    other_now, other_after, own, expected = row
    record = debate(own + other_now, own + other_after)
    bonus = shaping_bonus(record, beta0=10.0, beta1=20.0, convention=convention)
    assert bonus == {1: expected, 2: 0.0, 3: 0.0, 4: 0.0}


@pytest.mark.parametrize("convention", ["paper", "official_code"])
def test_others_exactly_at_the_threshold_give_no_bonus(convention: str) -> None:
    # agent 1 goes W→R while the others are half right (R, W): no majority, no revision bonus; agent 1's influence
    # and agent 3's revision see (R, W) → half right too; agent 2's others go (W, W) → (R, W), again half
    record = debate("WRW", "RRW")
    assert others_majority(debate_grid(record)[0], 0) is None
    bonus = shaping_bonus(record, **CONSTANTS, convention=convention)
    assert bonus == {index: 0.0 for index in range(1, 7)}


def test_a_two_thirds_majority_is_right() -> None:
    # four agents. Agent 1 goes W→R while its others are (R, R, W), 2/3 right: +α1 = 2 on turn 5. Agents 2 and 3
    # see their others go from 1/3 right (W, R, W) to 2/3 right (R, R, W), W→R with their own answer right: +β1 = 20
    # on turns 2 and 3. Agent 4's others go from 2/3 to 3/3 right (no move) and it stays W: nothing.
    bonus = shaping_bonus(debate("WRRW", "RRRW"), **CONSTANTS)
    assert bonus == {1: 0.0, 2: 20.0, 3: 20.0, 4: 0.0, 5: 2.0, 6: 0.0, 7: 0.0, 8: 0.0}


def test_an_answer_can_take_both_bonuses() -> None:
    # three rounds; agent 1's round-1 answer gets its W→R revision (+α0, the other was W at round 0) and the
    # influence of the other's W→R move between rounds 1 and 2 with its own answer right (+β1)
    record = debate("WW", "RW", "RR")
    bonus = shaping_bonus(record, **CONSTANTS)
    assert bonus[3] == pytest.approx(1.0 + 20.0)


# --- malformed answers and the combination -------------------------------------------------------------------------


def test_malformed_checks() -> None:
    good = answer(1, 0, 0, "R")
    assert not is_malformed(good, min_tokens=50)
    assert is_malformed(answer(1, 0, 0, "E"))
    assert is_malformed(Turn(index=1, speaker="agent_1", text="I am not sure", belief=None, correct=False))
    assert is_malformed(good, min_tokens=61)
    loop = "so the answer is four and then " * 4
    assert has_ngram_loop(loop, repeats=3) and not has_ngram_loop(loop, repeats=5)
    assert not has_ngram_loop("one two three four five six seven eight nine ten", repeats=2)


def test_penalty_replaces_only_malformed_answers() -> None:
    assert malformed_penalty(debate("RW", "RE")) == {4: -10.0}


def test_turn_rewards_combine_influence_shaping_and_penalty() -> None:
    # gold scores 1, 0, 0, 0. Influence (γ = 0.5): turn 1 = (1 + 0.5·0) / 1.5 = 2/3, the others 0.
    # Shaping (paper): agent 1 goes R→W with the other W at round 0 → −α0 = −1 on turn 3; agent 2's other goes
    # R→W with its own answer W → −β0 = −10 on turn 2. Turn 4 failed: −10 replaces its reward.
    settings = RewardSettings(gamma=0.5, **CONSTANTS, penalty=-10.0)
    rewards = turn_rewards(debate("RW", "WE"), settings)
    assert rewards == pytest.approx({1: 2 / 3, 2: -10.0, 3: -1.0, 4: -10.0})


def test_turn_rewards_take_a_verifier_and_default_to_no_shaping() -> None:
    rewards = turn_rewards(debate("RW", "WR"), RewardSettings(gamma=0.5), scored([0.8, 0.2], [0.4, 0.6]))
    assert rewards == pytest.approx({1: (0.8 + 0.25) / 1.5, 2: (0.2 + 0.25) / 1.5, 3: 0.4, 4: 0.6})


def test_settings_refuse_unknown_names_and_gamma_out_of_range() -> None:
    with pytest.raises(ValueError, match="unknown convention"):
        RewardSettings(convention="paper_v2")
    with pytest.raises(ValueError, match="gamma"):
        RewardSettings(gamma=1.5)
