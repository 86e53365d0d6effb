"""DPO preference pairs from tree-sampled conversation records (paper appendix D.2; reference sections 5.1-5.2).

In tree mode every generated turn of a record was picked among ``beam_size`` candidates sampled from the same
prefix: ``record.turns[i]`` is the candidate that continued the conversation and ``turns[i].siblings`` are the
others. A pair contrasts two candidates of ONE such level: the prompt is the conversation so far as that speaker saw
it (``agent_view`` of ``turns[:i]``), ``chosen`` is a candidate whose belief is correct and ``rejected`` one whose
belief is not. Pairs never mix levels or records, so chosen and rejected always answer the identical prompt.

Selection, in order (each pair that is dropped is counted under the first step that drops it):

1. Candidates: the continued turn plus its siblings. Errored candidates, and candidates whose correctness is
   unknown (never graded, or belief extraction failed), are never used.
2. ``difficulty``: a problem (task, example id) is kept only if its pass rate, the share of correct candidates
   among all graded candidates of all its trees and levels, lies in ``[min_pass_rate, max_pass_rate]``.
3. Every correct x rejectable pair of a level; ``same_text`` drops pairs whose two texts are identical,
   ``length_ratio`` pairs whose chosen is more than ``max_length_ratio`` times longer than the rejected, and
   ``duplicate`` a (prompt, chosen, rejected) already taken from an earlier level or tree.
4. ``level_cap``: a seeded shuffle of the level's pairs, then a stable sort by score gap (largest first), keeping
   ``max_pairs_per_level``. Without penalties all gaps are 1 and the choice is uniformly random.
5. ``problem_cap``: a seeded shuffle of the problem's pairs over all its trees, keeping ``max_pairs_per_problem``.
6. A seeded shuffle of the whole dataset.

Every random choice is seeded from ``PairSettings.seed`` and the coordinates of what is chosen (problem, tree,
level), and records are visited in a canonical order, so the output does not depend on file or record order and
adding one problem's records leaves the other problems' pairs unchanged.

Paper versus reference code, and the choice made here:

- Caps: the paper keeps at most 2 pairs per level and 20 per problem (the defaults here); the reference
  defaults to 1 per turn and its driver to 10 per example.
- The reference orients candidates by a score (correctness with optional penalties) and keeps gaps above 0.5,
  i.e. correct versus incorrect; here pairs are correct versus incorrect by definition and the score only
  orders pairs under the level cap. ``agree_wrong_penalty=0.1`` and ``length_penalty=0.1`` reproduce the
  reference's ``discourage_agreement`` and ``discourage_length``; ties are broken by a seeded shuffle instead of
  candidate order (which favoured the continued turn).
- A candidate with no belief ("not sure yet") scores 0 in the reference and so can be rejected; that stays the
  default (``no_belief_is_incorrect``). An extraction *failure* also read as "no belief" there (reference 8.1.8);
  here such a candidate is unknown and unused.
- The reference can pair errored candidates (their error text becomes a training target); here never.
- The reference reads only the newest timestamp's files, does not deduplicate, and shuffles unseeded; here every
  record is read, duplicates are dropped and every shuffle is seeded.
"""

from __future__ import annotations

import json
import random
import statistics
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from coral.backends.base import Message
from coral.conversation.protocols import agent_view
from coral.records import ConversationRecord, Turn
from coral.seeding import derive_seed

CORRECT, INCORRECT, NO_BELIEF, ERRORED, UNKNOWN = "correct", "incorrect", "no_belief", "errored", "unknown"
GRADED = (CORRECT, INCORRECT, NO_BELIEF)
PAIR_FILTERS = ("difficulty", "same_text", "length_ratio", "duplicate", "level_cap", "problem_cap")


@dataclass(frozen=True)
class PairSettings:
    """How preference pairs are chosen from tree records."""

    max_pairs_per_level: int | None = 2
    """Pairs kept per level, i.e. per (tree, turn index); paper: 2, reference default: 1. None: no cap."""
    max_pairs_per_problem: int | None = 20
    """Pairs kept per problem over all its trees; paper: 20, reference driver: 10. None: no cap."""
    seed: int = 0
    """Seeds every shuffle; the same records and seed give the same dataset."""
    no_belief_is_incorrect: bool = True
    """A candidate that commits to no answer can be rejected (the reference scores it 0)."""
    agree_wrong_penalty: float = 0.0
    """Caps keep first pairs whose rejected agreed while wrong (reference discourage_agreement: 0.1)."""
    length_penalty: float = 0.0
    """Caps keep first pairs with a shorter chosen and a longer rejected (reference discourage_length: 0.1)."""
    max_length_ratio: float | None = None
    """Drop pairs whose chosen is more than this many times longer (characters) than the rejected. None: off."""
    min_pass_rate: float = 0.0
    """Keep problems whose share of correct candidates is at least this (drops too-hard problems)."""
    max_pass_rate: float = 1.0
    """Keep problems whose share of correct candidates is at most this (the reference's hard_threshold)."""
    dedupe: bool = True
    """Drop a (prompt, chosen, rejected) already taken (duplicate trees, identical candidates)."""

    def __post_init__(self) -> None:
        for name in ("max_pairs_per_level", "max_pairs_per_problem"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"PairSettings.{name} must be >= 1 or None, got {value}")
        for name in ("agree_wrong_penalty", "length_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"PairSettings.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_length_ratio is not None and self.max_length_ratio <= 0:
            raise ValueError(f"PairSettings.max_length_ratio must be > 0 or None, got {self.max_length_ratio}")
        if not 0.0 <= self.min_pass_rate <= self.max_pass_rate <= 1.0:
            raise ValueError(
                "PairSettings needs 0 <= min_pass_rate <= max_pass_rate <= 1, "
                f"got {self.min_pass_rate} and {self.max_pass_rate}"
            )


@dataclass(frozen=True)
class Origin:
    """Where a training example was drawn: one record (a tree) at one turn index (a level)."""

    task: str
    example_id: str
    sample_index: int
    run_seed: int
    config_hash: str
    turn: int
    speaker: str


@dataclass(frozen=True)
class PreferencePair:
    """Two candidate replies to the same prompt: ``chosen`` holds a correct belief, ``rejected`` does not."""

    prompt: list[Message]
    chosen: str
    rejected: str
    origin: Origin
    chosen_seed: int | None
    rejected_seed: int | None
    gap: float
    """Score gap that ordered the pair under the level cap (1.0 without penalties)."""

    def provenance(self) -> dict[str, Any]:
        """The pair's line in the dataset's provenance file."""
        return {**asdict(self.origin), "chosen_seed": self.chosen_seed, "rejected_seed": self.rejected_seed,
                "gap": self.gap}


# ---- helpers shared with coral.synthesis.sft -----------------------------------------------------------------


def problem_key(record: ConversationRecord) -> tuple[str, str]:
    """One problem across samples, seeds and result folders."""
    return (record.task, record.example_id)


def tree_key(record: ConversationRecord) -> tuple[str, str, str, int, int]:
    """Identifies one sampled conversation across result folders (the store's key is unique only within one)."""
    return (record.task, record.example_id, record.config_hash, record.run_seed, record.sample_index)


def origin_of(record: ConversationRecord, index: int) -> Origin:
    """The provenance of the record's turn ``index``."""
    turn = record.turns[index]
    return Origin(record.task, record.example_id, record.sample_index, record.run_seed, record.config_hash, index,
                  turn.speaker)


def prompt_at(record: ConversationRecord, index: int) -> list[Message]:
    """Exactly what the speaker of turn ``index`` saw before speaking: its system prompt, then turns[:index]."""
    speaker = record.turns[index].speaker
    if speaker not in record.system_prompts:
        raise ValueError(
            f"record (task {record.task!r}, example {record.example_id!r}, sample {record.sample_index}), turn "
            f"{index}: field 'system_prompts' has no entry for speaker {speaker!r}; without it the prompt the "
            "speaker saw cannot be rebuilt"
        )
    return agent_view(record.system_prompts[speaker], speaker, record.turns[:index])


def by_problem(records: Sequence[ConversationRecord]) -> dict[tuple[str, str], list[ConversationRecord]]:
    """Records grouped by problem, problems and their trees in canonical (sorted) order."""
    groups: dict[tuple[str, str], list[ConversationRecord]] = defaultdict(list)
    for record in records:
        groups[problem_key(record)].append(record)
    return {key: sorted(groups[key], key=tree_key) for key in sorted(groups)}


def seeded_shuffle(items: list[Any], seed: int, *coordinates: object) -> list[Any]:
    """A copy of ``items`` shuffled by a seed derived from the run seed and what is being shuffled."""
    shuffled = list(items)
    random.Random(derive_seed(seed, *coordinates)).shuffle(shuffled)
    return shuffled


def prompt_key(prompt: list[Message]) -> str:
    """A prompt as a canonical string, the key that deduplicates pairs and examples."""
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def per_problem_summary(sizes: list[int], cap: int | None) -> dict[str, float | int | None]:
    """How many examples each problem contributed, so an imbalance (or a binding cap) shows in counts.json."""
    if not sizes:
        return {"problems": 0, "with_examples": 0, "min": None, "max": None, "mean": None, "median": None,
                "at_cap": 0}
    return {
        "problems": len(sizes),
        "with_examples": sum(1 for size in sizes if size),
        "min": min(sizes),
        "max": max(sizes),
        "mean": round(statistics.fmean(sizes), 4),
        "median": statistics.median(sizes),
        "at_cap": sum(1 for size in sizes if cap is not None and size >= cap),
    }


# ---- preference pairs ----------------------------------------------------------------------------------------


def grade_of(turn: Turn) -> str:
    """One of correct / incorrect / no_belief (graded), errored, or unknown (not graded, or extraction failed)."""
    if turn.error is not None:
        return ERRORED
    if turn.correct is None or (turn.belief is None and turn.extraction_error is not None):
        return UNKNOWN
    if turn.correct:
        return CORRECT
    return INCORRECT if turn.belief is not None else NO_BELIEF


@dataclass
class _Level:
    """The usable candidates generated from one prefix, with the prompt they answered."""

    origin: Origin
    prompt: list[Message]
    candidates: list[tuple[Turn, str]]  # (turn, grade); the continued turn first, then siblings in record order


def _levels(record: ConversationRecord, counts: dict[str, Any]) -> Iterator[_Level]:
    for index, turn in enumerate(record.turns):
        if not turn.generated:
            continue
        counts["levels"] += 1
        usable = []
        for candidate in [turn, *turn.siblings]:
            if candidate.speaker != turn.speaker:
                raise ValueError(
                    f"record (example {record.example_id!r}, sample {record.sample_index}), turn {index}: a sibling "
                    f"by {candidate.speaker!r} differs from the turn's speaker {turn.speaker!r}"
                )
            grade = grade_of(candidate)
            counts["candidates"][grade] += 1
            if grade in GRADED:
                usable.append((candidate, grade))
        yield _Level(origin_of(record, index), prompt_at(record, index), usable)


def _pass_rate(levels: list[_Level]) -> float | None:
    grades = [grade for level in levels for _, grade in level.candidates]
    return grades.count(CORRECT) / len(grades) if grades else None


def _scores(level: _Level, settings: PairSettings) -> list[float]:
    """The reference's candidate score: correctness minus the agreement and normalised-length penalties."""
    lengths = [len(turn.text) for turn, _ in level.candidates]
    low, high = min(lengths, default=0), max(lengths, default=0)
    scores = []
    for (turn, grade), length in zip(level.candidates, lengths):
        correct = 1.0 if grade == CORRECT else 0.0
        agreed_wrong = float(turn.agreement) * (1.0 - correct)
        scores.append(correct - settings.agree_wrong_penalty * agreed_wrong
                      - settings.length_penalty * (length - low) / (1 + high - low))
    return scores


def _level_pairs(level: _Level, settings: PairSettings, dropped: dict[str, int]) -> list[PreferencePair]:
    """Every correct x rejectable pair of one level that passes the per-pair filters, in candidate order."""
    rejectable = (INCORRECT, NO_BELIEF) if settings.no_belief_is_incorrect else (INCORRECT,)
    scores = _scores(level, settings)
    pairs = []
    for (chosen, chosen_grade), chosen_score in zip(level.candidates, scores):
        if chosen_grade != CORRECT:
            continue
        for (rejected, rejected_grade), rejected_score in zip(level.candidates, scores):
            if rejected_grade not in rejectable:
                continue
            if chosen.text == rejected.text:
                dropped["same_text"] += 1
            elif settings.max_length_ratio is not None and len(chosen.text) > settings.max_length_ratio * len(
                rejected.text
            ):
                dropped["length_ratio"] += 1
            else:
                gap = round(chosen_score - rejected_score, 6)
                pairs.append(PreferencePair(level.prompt, chosen.text, rejected.text, level.origin, chosen.seed,
                                            rejected.seed, gap))
    return pairs


def _possible(level: _Level, settings: PairSettings) -> int:
    grades = [grade for _, grade in level.candidates]
    rejectable = grades.count(INCORRECT) + (grades.count(NO_BELIEF) if settings.no_belief_is_incorrect else 0)
    return grades.count(CORRECT) * rejectable


def _cap_level(pairs: list[PreferencePair], level: _Level, settings: PairSettings) -> list[PreferencePair]:
    """Random among equals, but larger score gaps first: penalties decide which pairs a cap keeps."""
    origin = level.origin
    shuffled = seeded_shuffle(pairs, settings.seed, "level", origin.task, origin.example_id, origin.config_hash,
                              origin.run_seed, origin.sample_index, origin.turn)
    shuffled.sort(key=lambda pair: -pair.gap)
    return shuffled[: settings.max_pairs_per_level]


def _new_counts() -> dict[str, Any]:
    return {
        "records": 0,
        "problems": 0,
        "problems_kept": 0,
        "levels": 0,
        "levels_with_pairs": 0,
        "candidates": {grade: 0 for grade in (*GRADED, ERRORED, UNKNOWN)},
        "pairs_possible": 0,
        "dropped": {name: 0 for name in PAIR_FILTERS},
        "pairs": 0,
    }


def build_pairs(
    records: Sequence[ConversationRecord], settings: PairSettings
) -> tuple[list[PreferencePair], dict[str, Any]]:
    """Preference pairs from tree records, and counts of what was seen and what each step dropped.

    ``counts["pairs_possible"]`` equals ``counts["pairs"]`` plus the sum of ``counts["dropped"]``.
    """
    counts = _new_counts()
    counts["records"] = len(records)
    seen: set[tuple[str, str, str]] = set()
    dropped = counts["dropped"]
    kept: list[PreferencePair] = []
    sizes = []
    for (task, example_id), trees in by_problem(records).items():
        counts["problems"] += 1
        levels = [level for record in trees for level in _levels(record, counts)]
        possible = sum(_possible(level, settings) for level in levels)
        counts["pairs_possible"] += possible
        rate = _pass_rate(levels)
        if rate is not None and not settings.min_pass_rate <= rate <= settings.max_pass_rate:
            dropped["difficulty"] += possible
            continue
        counts["problems_kept"] += 1
        problem_pairs = []
        for level in levels:
            pairs = []
            for pair in _level_pairs(level, settings, dropped):
                key = (prompt_key(pair.prompt), pair.chosen, pair.rejected)
                if settings.dedupe and key in seen:
                    dropped["duplicate"] += 1
                    continue
                seen.add(key)
                pairs.append(pair)
            capped = _cap_level(pairs, level, settings)
            dropped["level_cap"] += len(pairs) - len(capped)
            counts["levels_with_pairs"] += bool(capped)
            problem_pairs.extend(capped)
        capped = seeded_shuffle(problem_pairs, settings.seed, "problem", task, example_id)
        capped = capped[: settings.max_pairs_per_problem]
        dropped["problem_cap"] += len(problem_pairs) - len(capped)
        sizes.append(len(capped))
        kept.extend(capped)
    pairs = seeded_shuffle(kept, settings.seed, "order")
    counts["pairs"] = len(pairs)
    counts["per_problem"] = per_problem_summary(sizes, settings.max_pairs_per_problem)
    if not pairs:
        counts["no_pairs_because"] = no_pairs_reason(counts)
    return pairs, counts


def no_pairs_reason(counts: dict[str, Any]) -> str:
    """Why ``build_pairs`` found no pair, from its counts: the first missing ingredient, in pipeline order."""
    candidates = counts["candidates"]
    if not counts["records"]:
        return "no records were read"
    if not counts["levels"]:
        return "the records hold no generated turn"
    if sum(candidates.values()) <= counts["levels"]:
        return ("the records were not tree-sampled: no turn has sibling candidates, and pairs contrast candidates "
                "of one prefix (sample with --model.beam_size > 1, e.g. 5 as in the paper)")
    if not candidates[CORRECT]:
        return f"no candidate is correct ({_listed(candidates)})"
    if not counts["pairs_possible"]:
        return f"no prefix has both a correct and a rejectable candidate ({_listed(candidates)})"
    dropped = {name: n for name, n in counts["dropped"].items() if n}
    return f"all {counts['pairs_possible']} possible pairs were dropped by the filters ({_listed(dropped)})"


def _listed(numbers: dict[str, int]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in numbers.items())
