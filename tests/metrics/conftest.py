"""A small builder for hand-made conversation records, shared by the metrics tests as the ``build`` fixture."""

from __future__ import annotations

from typing import Any

import pytest

from coral.records import ConversationRecord, Turn, Usage

Spec = str | None | dict[str, Any]


def build_record(
    *specs: Spec,
    gold: str = "A",
    max_turns: int = 20,
    speakers: tuple[str, str] = ("student", "teacher"),
    example_id: str = "ex",
    sample_index: int = 0,
    classes: bool = True,
) -> ConversationRecord:
    """A record whose turn 0 is ``speakers[0]``'s opening and whose generated turns follow ``specs``.

    Speakers alternate, ``speakers[1]`` answering first (turn 1). A spec is a belief string, None ("not sure
    yet"), or a dict with keys ``belief``, ``correct`` (default: ``belief == gold``, None when there is no
    belief), ``cls`` (default: numbered by first appearance when ``classes``), ``tokens`` (default 10),
    ``error``, ``agreement``, ``method``, ``extraction_error``.
    """
    turns = [Turn(index=0, speaker=speakers[0], text="question", generated=False)]
    class_of: dict[str, int] = {}
    for index, spec in enumerate(specs, start=1):
        spec = spec if isinstance(spec, dict) else {"belief": spec}
        belief = spec.get("belief")
        if belief is not None and classes:
            class_of.setdefault(belief, len(class_of))
        default_correct = None if belief is None else belief == gold
        turns.append(
            Turn(
                index=index,
                speaker=speakers[index % 2],
                text="" if spec.get("error") else f"turn {index}",
                usage=Usage(prompt_tokens=5, completion_tokens=spec.get("tokens", 10)),
                belief=belief,
                belief_method=spec.get("method", "none" if belief is None else "rule"),
                belief_class=spec.get("cls", class_of.get(belief) if belief is not None else None),
                extraction_error=spec.get("extraction_error"),
                correct=spec.get("correct", default_correct),
                agreement=spec.get("agreement", False),
                error=spec.get("error"),
            )
        )
    last = turns[-1]
    stop = "error" if last.error else "agreement" if last.agreement else "max_turns"
    return ConversationRecord(
        example_id=example_id,
        sample_index=sample_index,
        task="test",
        run_seed=0,
        config_hash="test",
        protocol="coral",
        agents={speakers[0]: "model-s", speakers[1]: "model-t"},
        turns=turns,
        stop_reason=stop,
        max_turns=max_turns,
        gold=gold,
    )


@pytest.fixture
def build():
    """The record builder (a fixture so test modules need no import path to this folder)."""
    return build_record
