"""The record schema documents itself: an attribute docstring under every field, closed sets as ``Literal`` types.

The record is the product every other stage reads (STYLE.md 7), so each field says what it holds in one style
(PEP 257 attribute docstrings, which editors and documentation tools show), and the enum-like strings are typed
once in ``coral.records`` and used where they are produced, so a typo there is a type error.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path
from typing import get_args

import pytest

from coral import records
from coral.beliefs.extractor import Extraction
from coral.records import BeliefMethod, ConversationRecord, Decision, Outcome, StopReason, TieRule, Turn, Usage

LIB = Path(records.__file__).resolve().parent


def documented_fields(cls: type) -> dict[str, str | None]:
    """Field name -> the string literal right under it (None when there is none)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    found: dict[str, str | None] = {}
    for statement, following in zip(body, body[1:] + [None]):
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            doc = following.value.value if isinstance(following, ast.Expr) and isinstance(
                following.value, ast.Constant) and isinstance(following.value.value, str) else None
            found[statement.target.id] = doc
    return found


@pytest.mark.parametrize("cls", [Usage, Turn, Outcome, ConversationRecord])
def test_every_record_field_has_an_attribute_docstring_and_no_trailing_comment(cls):
    documented = documented_fields(cls)
    assert list(documented) == [f.name for f in dataclasses.fields(cls)]
    assert [name for name, doc in documented.items() if not doc] == []
    source = inspect.getsource(cls)
    assert [line for line in source.splitlines() if line.startswith("    ") and ": " in line and "  # " in line] == []


def test_closed_sets_are_literal_types_on_the_record():
    assert get_args(StopReason) == ("agreement", "max_turns", "completed", "error")
    assert get_args(TieRule) == ("expected", "first_agent", "random")
    assert get_args(Decision) == ("majority", "tie", "no_valid_answer")
    assert get_args(BeliefMethod) == ("rule", "judge", "none")
    hints = {f.name: f.type for f in dataclasses.fields(Turn) + dataclasses.fields(ConversationRecord)}
    assert (hints["belief_method"], hints["stop_reason"]) == ("BeliefMethod | None", "StopReason")
    assert {f.name: f.type for f in dataclasses.fields(Extraction)}["method"] == "BeliefMethod"


def test_the_values_produced_are_the_literals_values():
    def assigned_to_stop_reason(tree_path: Path) -> set[str]:
        found = set()
        for node in ast.walk(ast.parse(tree_path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == "stop_reason" for t in targets) and isinstance(
                    node.value, ast.Constant):
                found.add(node.value.value)
        return found

    protocols = sorted((LIB / "conversation" / "protocols").glob("*.py"))
    assert set().union(*map(assigned_to_stop_reason, protocols)) == set(get_args(StopReason))
    methods = set()
    for node in ast.walk(ast.parse((LIB / "beliefs" / "extractor.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Extraction" and len(node.args) > 1:
            methods.add(node.args[1].value)
    assert methods == set(get_args(BeliefMethod))
