"""Helpers of the report tests: a hand-built results folder (four conversations, one of each kind the browser
filters on) and a Chromium page that records errors and network requests.

Chromium is Debian's ``chromium`` package driven by Playwright (nothing is downloaded). Without it the browser
tests skip, except under CI (``CI`` set), where the project's setup installs it and its absence is a failure.
(Not ``conftest.py``: test modules import these by name, and every test folder has a ``conftest``.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from coral.metrics import write_metrics
from coral.records import ConversationRecord, Turn, Usage
from coral.store import ResultStore

HOSTILE_TEXT = "I think </script><script>window.pwned = 1</script> is not an answer"
"""Model output that would run as script if the report embedded it unescaped."""


def turn(index: int, belief: str | None, gold: str = "A", **fields) -> Turn:
    """A generated turn: teacher on odd turns, 5 prompt + 10 completion tokens, judge 3 + 2 when judged."""
    judged = fields.get("belief_method") == "judge"
    defaults = {
        "speaker": "teacher" if index % 2 else "student",
        "text": f"turn {index} says {belief}",
        "model": "model-x",
        "seed": 2**63 - 25 + index,  # past 2^53: the browser must show it exactly
        "usage": Usage(5, 10),
        "extraction_usage": Usage(3, 2) if judged else Usage(),
        "belief": belief,
        "belief_method": fields.get("belief_method", "rule" if belief else "none"),
        "belief_class": None if belief is None else ord(belief) - ord("A"),
        "correct": None if belief is None else belief == gold,
        "latency_s": 0.25,
    }
    return Turn(index=index, **{**defaults, **fields})


def record(example_id: str, *turns: Turn, stop: str) -> ConversationRecord:
    opening = Turn(index=0, speaker="student", text=f"Question {example_id}: pick A", generated=False)
    return ConversationRecord(
        example_id=example_id,
        sample_index=0,
        task="mmlu_pro",
        run_seed=7,
        config_hash="hand",
        protocol="coral",
        agents={"student": "model-x", "teacher": "model-x"},
        turns=[opening, *turns],
        stop_reason=stop,
        max_turns=2,
        gold="A",
    )


def hand_records() -> list[ConversationRecord]:
    """right: agreed on the gold answer (turn 1 has a tree sibling); wrong: agreed on B through the judge;
    unsure: never committed (hostile text); broken: right at turn 1, then the generation failed."""
    sibling = turn(1, "C", text="a sibling says C")
    return [
        record("right", turn(1, "A", siblings=[sibling]), turn(2, "A", agreement=True), stop="agreement"),
        record(
            "wrong",
            turn(1, "B", belief_method="judge", judge_reply="The final answer is (B)."),
            turn(2, "B", agreement=True),
            stop="agreement",
        ),
        record("unsure", turn(1, None, text=HOSTILE_TEXT), turn(2, None), stop="max_turns"),
        record(
            "broken",
            turn(1, "A"),
            turn(2, None, text="", error="RuntimeError: boom", failures=["timeout", "boom"], attempts=2),
            stop="error",
        ),
    ]


HAND_OUTCOMES = {"right": "correct", "wrong": "incorrect", "unsure": "no answer", "broken": "correct"}


def write_store(root: Path, records: list[ConversationRecord], max_turns: int = 2, metrics: bool = True) -> Path:
    """A results folder as a run leaves it: conversations.jsonl, metrics.json (unless told not to), config.yaml."""
    ResultStore(root).append_many(records)
    config = {"seed_everything": 7, "model": {"init_args": {"max_turns": max_turns, "compat_metrics": False}}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics:
        write_metrics(root)
    return root


# ---------------------------------------------------------------------------------------------- the browser
def chromium_path() -> str:
    """The system Chromium; skips without it (and without Playwright), except under CI, where that fails."""
    found = shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        reason = "needs Debian's chromium and playwright (apt-get install chromium; pip install -r requirements.txt)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the report's browser test cannot run: it {reason}")
        pytest.skip(reason)
    return found


class Page:
    """A page that records console errors, page errors and every request that is not a file or data URL."""

    def __init__(self, browser) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.route("**/*", self._route)
        self.page.on("request", self._request)

    def _request(self, request) -> None:
        if not request.url.startswith(("file:", "data:")):
            self.requests.append(request.url)

    def _route(self, route) -> None:
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def open(self, html: Path) -> object:
        self.page.goto(html.resolve().as_uri())
        self.page.wait_for_selector("#list tbody tr.conv")
        return self.page
