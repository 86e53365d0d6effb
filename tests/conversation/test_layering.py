"""``coral.conversation`` knows roles and turns, not tasks or Lightning: a protocol works for every task."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import coral.conversation
from coral.tasks import TASKS

PACKAGE = Path(coral.conversation.__file__).parent


def code_strings(path: Path) -> set[str]:
    """Every string constant of a module that is not a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


def test_no_module_of_coral_conversation_names_a_task():
    names = set(TASKS.names())
    found = {path.name: code_strings(path) & names for path in PACKAGE.rglob("*.py")}
    assert {module: hit for module, hit in found.items() if hit} == {}


def test_importing_coral_conversation_imports_no_lightning():
    code = "import sys, coral.conversation; print(sorted(m for m in sys.modules if m.startswith('lightning')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
