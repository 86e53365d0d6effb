"""MALT credit assignment: generate-verify-refine trees to per-role SFT examples and sibling DPO pairs.

Motwani et al., Algorithm 1 (training.md section 2.1).

A tree is one ``generate_verify_refine`` record sampled with ``passes = branching = n``: n generator answers, n
critiques of each, n refinements of each critique (n^3 leaves). Node values, bottom up:

- a refiner (leaf) is worth 1 when its final answer is correct and 0 when it is wrong or gives none;
- a verifier is worth the mean of its refiners; a generator the mean of its verifiers (G+R ablation: of its
  refiners). A node none of whose children has a value (they errored, or their answer was never graded) has no
  value and is used nowhere: an infrastructure failure says nothing about the text above it.

A node is positive when its value is strictly above ``threshold`` (the paper's "> 0.5 is correct, <= 0.5 is
incorrect"): with n = 3, a verifier needs 2 of its 3 refiners right and a generator k of 9 leaves with k >= 5.
Values are exact fractions, so a value of exactly 1/2 is never rounded to the positive side.

SFT: every positive node with the prompt its role saw, (q) -> g, (q, g) -> v, (q, g, v) -> r, rebuilt with
``role_messages``. DPO: positive x negative pairs between SIBLINGS only (children of one parent, so both answer
the identical prompt); ``pairs_per_node`` keeps all of a parent's pairs, or a seeded choice of k (nip's MALT keeps
one random pair per node; the paper does not say). Identical texts never pair, a repeated (prompt, chosen,
rejected) or (prompt, target) is dropped, and each role's set is shuffled with a seed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from coral.backends.base import Message
from coral.conversation.protocols.generate_verify_refine import GENERATOR, REFINER, VERIFIER, role_messages
from coral.records import ConversationRecord, Turn
from coral.synthesis.formats import dataset_settings, dpo_files, load_chat_tokenizer, sft_files, write_dataset
from coral.synthesis.preferences import (
    CORRECT,
    INCORRECT,
    NO_BELIEF,
    PreferencePair,
    by_problem,
    grade_of,
    origin_of,
    prompt_key,
    seeded_shuffle,
)
from coral.synthesis.sft import SFTExample
from coral.tasks import get_task

ROLES = (GENERATOR, VERIFIER, REFINER)
LEAF_VALUES = {CORRECT: Fraction(1), INCORRECT: Fraction(0), NO_BELIEF: Fraction(0)}
"""A refiner's value by grade; errored and ungraded refiners have none."""
PAIR_DROPS = ("same_text", "duplicate", "node_cap")


@dataclass(frozen=True)
class MaltSettings:
    """How MALT trees become per-role training data."""

    threshold: float = 0.5
    """A node is positive when its value is strictly above this (the paper: 0.5)."""
    pairs_per_node: Literal["all"] | int = "all"
    """DPO pairs kept per parent: ``all`` positive x negative sibling pairs, or a seeded choice of k (nip: 1)."""
    seed: int = 0
    """Seeds the per-parent choice and each role's final shuffle."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"MaltSettings.threshold must be in [0, 1), got {self.threshold}")
        if self.pairs_per_node != "all" and (isinstance(self.pairs_per_node, bool)
                                             or not isinstance(self.pairs_per_node, int) or self.pairs_per_node < 1):
            raise ValueError(f"MaltSettings.pairs_per_node must be 'all' or an int >= 1, got {self.pairs_per_node!r}")


@dataclass
class RoleData:
    """One role's SFT examples and DPO pairs, with the counts that explain them (written to counts.json)."""

    examples: list[SFTExample] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)
    nodes: dict[str, Any] = field(default_factory=dict)
    """Nodes of the role: total, valued, positive, negative, and how many had each value."""
    sft: dict[str, Any] = field(default_factory=dict)
    dpo: dict[str, Any] = field(default_factory=dict)


# ---- node values ---------------------------------------------------------------------------------------------


def children_of(record: ConversationRecord) -> dict[int, list[int]]:
    """Turn index -> indices of the generated turns that answer it, in record order."""
    children: dict[int, list[int]] = defaultdict(list)
    for turn in record.turns:
        if turn.generated and turn.parent is not None:
            children[turn.parent].append(turn.index)
    return children


def node_values(record: ConversationRecord) -> dict[int, Fraction]:
    """The value of every node of the tree that has one, by turn index (leaves first, then their parents)."""
    children = children_of(record)
    values: dict[int, Fraction] = {}
    for role in (REFINER, VERIFIER, GENERATOR):
        for turn in record.turns:
            if turn.role != role:
                continue
            value = LEAF_VALUES.get(grade_of(turn)) if role == REFINER else _mean(
                [values[child] for child in children[turn.index] if child in values])
            if value is not None:
                values[turn.index] = value
    return values


def _mean(values: list[Fraction]) -> Fraction | None:
    return sum(values, Fraction(0)) / len(values) if values else None


def is_positive(value: Fraction, threshold: float) -> bool:
    """The paper's binarisation: strictly above the threshold (exact, so 1/2 is not above 0.5)."""
    return value > Fraction(threshold)


# ---- per-role data -------------------------------------------------------------------------------------------


def build_malt_data(records: Sequence[ConversationRecord], settings: MaltSettings) -> dict[str, RoleData]:
    """Every role's SFT examples and sibling DPO pairs from tree records, with counts, in a canonical order.

    Records are visited problem by problem (sorted), so the result does not depend on the order they were read.
    """
    data = {role: RoleData(nodes={"nodes": 0, "valued": 0, "positive": 0, "negative": 0, "values": Counter()})
            for role in ROLES}
    for role_data in data.values():
        role_data.sft = {"examples_possible": 0, "dropped": {"duplicate": 0}}
        role_data.dpo = {"parents": 0, "parents_with_pairs": 0, "pairs_possible": 0,
                         "dropped": {name: 0 for name in PAIR_DROPS}}
    seen_examples: set[tuple[str, str]] = set()
    seen_pairs: set[tuple[str, str, str]] = set()
    answer_formats: dict[str, str] = {}
    problems = by_problem(records)
    trees = [record for problem in problems.values() for record in problem]
    for record in trees:
        if record.task not in answer_formats:
            answer_formats[record.task] = get_task(record.task).answer_instruction()
        values = node_values(record)
        for parent, siblings in children_of(record).items():
            role = record.turns[siblings[0]].role
            if role not in data:
                continue
            group = _Siblings(record, parent, siblings, values, answer_formats[record.task], settings)
            _count_nodes(data[role].nodes, group)
            _add_examples(data[role], group, seen_examples)
            _add_pairs(data[role], group, seen_pairs, settings)
    for role, role_data in data.items():
        _finish(role, role_data, len(records), len(problems), settings)
    return data


class _Siblings:
    """The children of one parent: same role, same prompt. Only the valued ones are kept."""

    def __init__(self, record: ConversationRecord, parent: int, indices: list[int], values: dict[int, Fraction],
                 answer_format: str, settings: MaltSettings) -> None:
        self.record, self.parent, self.total = record, parent, len(indices)
        valued = [i for i in indices if i in values]
        self.turns: list[Turn] = [record.turns[i] for i in valued]
        self.values: list[Fraction] = [values[i] for i in valued]
        self.positive: list[bool] = [is_positive(value, settings.threshold) for value in self.values]
        self.prompt: list[Message] = role_messages(record, indices[0], answer_format)  # one parent: one prompt for all

    def labelled(self) -> Iterator[tuple[Turn, Fraction, bool]]:
        return zip(self.turns, self.values, self.positive)


def _count_nodes(nodes: dict[str, Any], group: _Siblings) -> None:
    nodes["nodes"] += group.total
    nodes["valued"] += len(group.turns)
    nodes["positive"] += sum(group.positive)
    nodes["negative"] += len(group.turns) - sum(group.positive)
    nodes["values"].update(str(value) for value in group.values)


def _add_examples(role_data: RoleData, group: _Siblings, seen: set[tuple[str, str]]) -> None:
    """SFT: every positive sibling, unless the same (prompt, text) was already taken."""
    for turn, _, positive in group.labelled():
        if not positive:
            continue
        role_data.sft["examples_possible"] += 1
        key = (prompt_key(group.prompt), turn.text)
        if key in seen:
            role_data.sft["dropped"]["duplicate"] += 1
            continue
        seen.add(key)
        role_data.examples.append(SFTExample(group.prompt, turn.text, origin_of(group.record, turn.index), turn.seed))


def _add_pairs(role_data: RoleData, group: _Siblings, seen: set[tuple[str, str, str]],
               settings: MaltSettings) -> None:
    """DPO: positive x negative siblings, identical texts and repeats dropped, then the per-parent cap."""
    counts, dropped = role_data.dpo, role_data.dpo["dropped"]
    counts["parents"] += 1
    pairs = []
    for chosen, chosen_value, chosen_positive in group.labelled():
        for rejected, rejected_value, rejected_positive in group.labelled():
            if not chosen_positive or rejected_positive:
                continue
            counts["pairs_possible"] += 1
            key = (prompt_key(group.prompt), chosen.text, rejected.text)
            if chosen.text == rejected.text:
                dropped["same_text"] += 1
            elif key in seen:
                dropped["duplicate"] += 1
            else:
                seen.add(key)
                pairs.append(PreferencePair(group.prompt, chosen.text, rejected.text,
                                            origin_of(group.record, chosen.index), chosen.seed, rejected.seed,
                                            round(float(chosen_value - rejected_value), 6)))
    kept = pairs if settings.pairs_per_node == "all" else _node_choice(pairs, group, settings)
    dropped["node_cap"] += len(pairs) - len(kept)
    counts["parents_with_pairs"] += bool(kept)
    role_data.pairs.extend(kept)


def _node_choice(pairs: list[PreferencePair], group: _Siblings, settings: MaltSettings) -> list[PreferencePair]:
    """A seeded choice of ``pairs_per_node`` pairs, seeded by the parent's coordinates (not by visiting order)."""
    record = group.record
    shuffled = seeded_shuffle(pairs, settings.seed, "node", record.task, record.example_id, record.config_hash,
                              record.run_seed, record.sample_index, group.parent)
    return shuffled[: int(settings.pairs_per_node)]


def _finish(role: str, role_data: RoleData, records: int, problems: int, settings: MaltSettings) -> None:
    """Shuffle each set with a seed, complete the counts and say why a set is empty."""
    nodes = role_data.nodes
    nodes["values"] = {value: nodes["values"][value] for value in sorted(nodes["values"], key=Fraction)}
    role_data.examples = seeded_shuffle(role_data.examples, settings.seed, "order", role, "sft")
    role_data.pairs = seeded_shuffle(role_data.pairs, settings.seed, "order", role, "dpo")
    head = {"role": role, "records": records, "problems": problems, "threshold": settings.threshold,
            "nodes": nodes}
    role_data.sft = {**head, **role_data.sft, "examples": len(role_data.examples)}
    role_data.dpo = {**head, **role_data.dpo, "pairs": len(role_data.pairs)}
    if not role_data.examples:
        role_data.sft["no_examples_because"] = no_data_reason(role_data.sft, "sft")
    if not role_data.pairs:
        role_data.dpo["no_pairs_because"] = no_data_reason(role_data.dpo, "dpo")


def no_data_reason(counts: dict[str, Any], kind: str) -> str:
    """Why a role's SFT or DPO set is empty, from its counts: the first missing ingredient."""
    role, nodes = counts["role"], counts["nodes"]
    tally = (f"{nodes['positive']} positive, {nodes['negative']} negative of {nodes['valued']} valued "
             f"{role} nodes (value > {counts['threshold']} is positive; values: {_listed(nodes['values'])})")
    if not counts["records"]:
        return "no records were read"
    if not nodes["nodes"]:
        return f"the records hold no {role} turn (MALT needs generate_verify_refine records)"
    if not nodes["valued"]:
        return f"no {role} node has a value: every refiner below them errored or was not graded"
    if not nodes["positive"]:
        return f"no {role} node is positive: {tally}"
    if kind == "sft":
        return f"every positive {role} node repeats an example already taken ({tally})"
    if not nodes["negative"]:
        return f"no {role} node is negative: {tally}"
    if not counts["pairs_possible"]:
        return (f"no parent has both a positive and a negative {role} child: {tally}; the tree may not branch "
                "(sample with --model.protocol.init_args.branching > 1)")
    return f"all {counts['pairs_possible']} possible pairs were dropped ({_listed(counts['dropped'])})"


def _listed(numbers: dict[str, int]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in numbers.items() if n) or "none"


# ---- datasets ------------------------------------------------------------------------------------------------


def dataset_folder(out: str | Path, role: str, kind: str) -> Path:
    """Where a role's dataset of ``kind`` (sft, dpo) lives: ``<out>/<role>/<kind>``."""
    return Path(out) / role / kind


def write_malt_datasets(records: Sequence[ConversationRecord], out: str | Path, settings: MaltSettings,
                        model: Any, sources: Sequence[dict[str, Any]] = ()) -> dict[str, dict[str, Any]]:
    """Write an SFT and a DPO dataset per role (TRL and fairseq2, settings and counts beside them).

    ``model`` (a name, a checkpoint folder or a tokenizer) renders fairseq2's prompts. Returns the counts written,
    keyed ``<role>/<kind>``; every folder passes ``dataset_is_complete(folder, settings)``.
    """
    tokenizer = load_chat_tokenizer(model)
    written = {}
    for role, role_data in build_malt_data(records, settings).items():
        for kind, files, counts in (("sft", sft_files(role_data.examples, tokenizer), role_data.sft),
                                    ("dpo", dpo_files(role_data.pairs, tokenizer), role_data.dpo)):
            info = {**dataset_settings(kind, settings, sources, model, tokenizer), "role": role}
            written[f"{role}/{kind}"] = write_dataset(dataset_folder(out, role, kind), files, info, counts)
    return written

