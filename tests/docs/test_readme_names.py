"""Every module, class, function, file and command the README names exists, so the README cannot drift silently.

The names are read from the README itself: dotted names under the project's packages (``coral.tasks.parsing``,
``lightning_modules.loggers.CoralWandbLogger``), repository paths (``finetuning/iterative_training.py``,
``configs/ts_<task>.yaml``), ``python -m`` modules, ``coral-*`` commands (which must be console scripts in
setup.cfg, each resolving to a function), backticked class names and ``name(...)`` calls, and the folders and
files of the Layout block.
"""

from __future__ import annotations

import builtins
import configparser
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PACKAGES = ("coral", "lightning_modules", "finetuning", "benchmarks")
SOURCES = [p for package in ("libs/coral", "lightning_modules", "finetuning", "benchmarks")
           for p in (ROOT / package).rglob("*.py")]

EXTERNAL = {"PrefixCacheAffinityRouter"}
"""Backticked class names the README cites from other projects (Ray Serve LLM's router): not coral's to define."""


def unique(pattern: str, text: str = README) -> list[str]:
    return sorted(set(re.findall(pattern, text)))


def dotted_names(text: str) -> list[str]:
    return unique(rf"\b(?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+", text)


def resolve(dotted: str) -> object:
    """The module or attribute ``dotted`` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        name = ".".join(parts[:split])
        try:
            if importlib.util.find_spec(name) is None:
                continue
        except ModuleNotFoundError:  # a parent is a module, not a package
            continue
        found: object = importlib.import_module(name)
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def layout_block(text: str) -> list[str]:
    return text.split("## Layout\n\n```\n", 1)[1].split("```", 1)[0].splitlines()


def layout_entries(lines: list[str]) -> list[tuple[str, str]]:
    """(top-level folder, name) for every ``name/`` and ``name.py`` of the Layout block.

    A line at column 0 opens a top-level folder (``libs/coral/``); every name on it, on its continuation lines and
    on its indented lines (``  tasks/``) is looked for inside that folder.
    """
    entries, top = [], ""
    for line in lines:
        head = line[:21].strip()
        if line and not line.startswith(" "):
            top = head
        elif head:
            entries.append((top, head))
        entries += [(top, name) for name in re.findall(r"(?<![\w/.<-])([\w<>]+(?:/|\.py))(?![\w/])", line[21:])]
    return entries


def missing_from_tree(entries: list[tuple[str, str]]) -> list[str]:
    return [f"{top}{name}" for top, name in entries
            if not list((ROOT / top).rglob(re.sub(r"<\w+>", "*", name.rstrip("/"))))]


def test_the_readme_names_things_to_check():
    assert {"coral.data.prepare_dataset", "lightning_modules.loggers.CoralWandbLogger"} <= set(dotted_names(README))
    assert "coral-serve" in unique(r"`(coral-[a-z]+)")


@pytest.mark.parametrize("dotted", dotted_names(README))
def test_every_dotted_name_imports(dotted):
    assert resolve(dotted) is not None


@pytest.mark.parametrize("path", unique(r"(?<![\w/.])((?:configs|libs|lightning_modules|finetuning|benchmarks|tests)/"
                                          r"[\w/<>-]*\.(?:py|yaml))\b"))
def test_every_repository_path_exists(path):
    assert list(ROOT.glob(re.sub(r"<\w+>", "*", path))), f"the README names {path}, which is not in the repository"


@pytest.mark.parametrize("module", unique(r"python -m ([\w.]+)"))
def test_every_python_m_module_runs(module):
    if module in ("pytest", "venv"):
        return
    spec = importlib.util.find_spec(module)
    assert spec is not None, module
    if spec.submodule_search_locations is not None:  # a package runs its __main__
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{module} has no __main__"


def console_scripts() -> dict[str, str]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = setup["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


def test_every_command_is_a_console_script_that_resolves():
    scripts = console_scripts()
    for command in unique(r"`(coral-[a-z]+)"):
        assert command in scripts, f"the README names {command}, which setup.cfg does not install"
    for command, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), command


@pytest.mark.parametrize("name", unique(r"`([A-Z][a-z0-9]+[A-Z]\w*)`"))
def test_every_backticked_class_is_defined(name):
    if name in EXTERNAL:
        return
    definition = re.compile(rf"^\s*(?:class {name}\b|{name}\s*[:=])", re.M)
    assert any(definition.search(p.read_text(encoding="utf-8")) for p in SOURCES), f"{name} is defined nowhere"


@pytest.mark.parametrize("name", unique(r"`([a-z_]\w*)\("))  # dotted calls are other libraries' (datasets.load_dataset)
def test_every_backticked_call_is_defined(name):
    if hasattr(builtins, name):
        return
    definition = re.compile(rf"^\s*(?:async )?def {name}\(", re.M)
    assert any(definition.search(p.read_text(encoding="utf-8")) for p in SOURCES), f"{name}() is defined nowhere"


def test_the_layout_block_lists_what_is_there():
    entries = layout_entries(layout_block(README))
    assert ("libs/coral/", "tasks/") in entries and ("finetuning/", "build_dpo.py") in entries
    missing = missing_from_tree(entries)
    assert not missing, f"the README's Layout block names what does not exist: {missing}"


def test_the_layout_block_lists_every_package_of_the_library():
    listed = {name for folder, name in layout_entries(layout_block(README)) if folder == "libs/coral/"}
    packages = {f"{p.parent.name}/" for p in (ROOT / "libs" / "coral").glob("*/__init__.py")}
    assert packages <= listed, f"packages missing from the Layout block: {sorted(packages - listed)}"


def test_the_checks_catch_a_stale_name():
    stale = "See `coral.tasks.no_such_module` and `coral.records.NoSuchType`."
    for dotted in dotted_names(stale):
        with pytest.raises((ModuleNotFoundError, AttributeError)):
            resolve(dotted)
    old_layout = ["libs/coral/          the library: tasks/", "data/                samples",
                  "  serving/           servers"]
    assert missing_from_tree(layout_entries(old_layout)) == ["data/serving/"]  # the old block put it under data/
