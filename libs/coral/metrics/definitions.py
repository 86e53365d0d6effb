"""What each metric of ``metrics.json`` means, in one place: the report prints these beside the numbers.

The README's metrics table says the same at more length; a test keeps the two naming the same metrics. Each entry
is ``(default definition, compat definition)``; a compat definition of None means "same as the default".
Families of metrics are keyed by their pattern (``accuracy_turn_<k>``, ``len_<speaker>``).
"""

from __future__ import annotations

import re

DEFINITIONS: dict[str, tuple[str, str | None]] = {
    "n_conversations": ("number of conversations in the store (one per example and sample)", None),
    "agreement_correctness": (
        "headline: ended by agreement and both agreeing beliefs are correct",
        "ended by agreement and the last turn is correct",
    ),
    "agreement": ("the conversation ended by agreement", None),
    "final_answer_accuracy": (
        "the last generated turn that has a belief is correct (0 if none has one); the CoT baseline's accuracy",
        None,
    ),
    "final_success_rate": (
        "the last non-errored generated turn is correct",
        "any turn was ever correct (the reference's name; equal to ever_correct)",
    ),
    "ever_correct": ("any generated turn is correct (an oracle-style upper bound)", None),
    "persuade_rate": (
        "persuasive turns / rated turns: the partner's next belief moves to this turn's belief",
        "persuasive turns / (len(turns) - 1), beliefs compared as strings",
    ),
    "assert_rate": (
        "assertive turns / rated turns: the speaker keeps its previous belief against a partner who differs",
        "assertive turns / (len(turns) - 1), beliefs compared as strings",
    ),
    "correct_persuade_rate": ("share of persuasive turns whose own belief is correct (None when none)", "0 when none"),
    "incorrect_persuade_rate": ("share of persuasive turns whose own belief is wrong (None when none)", "0 when none"),
    "unsure_persuade_rate": ("share of persuasive turns with no belief (None when none)", "0 when none"),
    "correct_assert_rate": ("share of assertive turns whose own belief is correct (None when none)", "0 when none"),
    "incorrect_assert_rate": ("share of assertive turns whose own belief is wrong (None when none)", "0 when none"),
    "unsure_assert_rate": ("share of assertive turns with no belief (None when none)", "0 when none"),
    "persuasion_quality": (
        "mean partner score change (next minus previous) over persuasive turns: moved to a better answer?",
        "0 when there are no persuasive turns",
    ),
    "conv_err": ("a generation failure ended the conversation", None),
    "total_turns": ("number of generated turns", "len(turns), turn 0 included"),
    "n_turns_to_success": ("index of the first correct turn; left out if never correct", "max_turns if never correct"),
    "len_<speaker>": ("mean completion tokens of that speaker's rated turns", None),
    "conv_len": ("completion tokens of all rated turns (extractor tokens not counted)", None),
    "rated_turns": ("number of rated turns (generated, not errored)", "every generated turn, the errored one included"),
    "extractor_err_rate": ("share of rated turns whose judge call failed", "0 when there are no rated turns"),
    "valid_answer_rate": ("share of rated turns that commit to an answer", "0 when there are no rated turns"),
    "judge_rate": ("share of rated turns whose belief came from the LLM judge rather than the rules", None),
    "accuracy_turn_<k>": (
        "among conversations whose turn k was generated without error, the share whose turn-k belief is correct",
        None,
    ),
    "mv_accuracy": ("headline of debate and G->V->R: the final majority vote is correct (a tie under 'expected' "
                    "scores 1/|tied| when the gold is tied; no valid answer scores 0)", None),
    "mv_accuracy_round_<r>": ("debate: the majority vote after round r is correct (0 = the independent answers)", None),
    "agent_accuracy_round_<r>": ("debate: share of agents whose round-r answer is correct", None),
    "consensus": ("debate: every agent's final answer is valid and all are one answer", None),
    "w_to_r_round_<r>": ("debate: share of agents whose answer went wrong -> right from round r-1 to r", None),
    "r_to_w_round_<r>": ("debate: share of agents whose answer went right -> wrong from round r-1 to r", None),
    "generator_accuracy": ("G->V->R: share of generator answers that are correct (before refining)", None),
    "refiner_accuracy": ("G->V->R: share of refiner answers that are correct (after refining)", None),
    "self_correction_rate": ("G->V->R: share of passes whose generator answer was wrong, refined answer right", None),
    "self_corruption_rate": ("G->V->R: share of passes whose generator answer was right, refined answer wrong", None),
}

_FAMILIES = (
    (re.compile(r"accuracy_turn_\d+"), "accuracy_turn_<k>"),
    (re.compile(r"mv_accuracy_round_\d+"), "mv_accuracy_round_<r>"),
    (re.compile(r"agent_accuracy_round_\d+"), "agent_accuracy_round_<r>"),
    (re.compile(r"w_to_r_round_\d+"), "w_to_r_round_<r>"),
    (re.compile(r"r_to_w_round_\d+"), "r_to_w_round_<r>"),
    (re.compile(r"len_\w+|[ts]_len"), "len_<speaker>"),
)
_GROUPED = re.compile(r"(?P<name>[^\[]+)\[(?P<group>.+)\]")


def definition(name: str, compat: bool = False) -> str | None:
    """The definition of metric ``name`` as computed (``compat``: the reference's), or None for an unknown name.

    ``<metric>[<key>=<value>]`` (a per-group metric) is the metric's definition within that group.
    """
    grouped = _GROUPED.fullmatch(name)
    if grouped:
        inner = definition(grouped["name"], compat)
        return None if inner is None else f"{inner} (within {grouped['group']})"
    key = next((family for pattern, family in _FAMILIES if pattern.fullmatch(name)), name)
    if key not in DEFINITIONS:
        return None
    default, reference = DEFINITIONS[key]
    return reference if compat and reference is not None else default
