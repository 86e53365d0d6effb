"""Benchmark 6, report load time: how soon a report of many conversations is usable in a browser.

Synthetic records (seeded: MMLU-Pro-like letters, alternating speakers, turns of ``chars`` characters, agreement
at a random turn or never, one conversation in fifty ending in a generation error) are written to a real results
store, ``metrics.json`` is computed, and ``coral.report.write_report`` renders the page. Headless Chromium
(Debian's ``chromium``, driven by Playwright) then opens it from disk, each repeat in a fresh page:

- time to interactive: from ``goto`` until the list shows its first rows (what a reader waits for);
- the page's own mark of the same moment (``coral:list-ready``, ms since navigation start, no driver overhead);
- the load event (the browser has read every embedded record);
- opening a conversation (parse its record, draw its turns).

The issue's target: 10,000 conversations open in under 3 s.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import Check, Row, Section, stat, stopwatch
from coral.metrics import write_metrics
from coral.records import ConversationRecord, Turn, Usage
from coral.report import write_report
from coral.store import ResultStore

TARGET_INTERACTIVE_S = 3.0
LETTERS = "ABCDEFGHIJ"
WORDS = (
    "the answer option because first step ratio interest payment total we check your reasoning agree compute "
    "value so therefore which gives monthly rate choice correct seems off let me recheck"
).split()


@dataclass(frozen=True)
class Sizes:
    """How big the report is.

    Args:
        conversations: records in the store (and rows in the report's list).
        max_turns: generated turns of a conversation that never agrees.
        chars: characters of each generated turn's text.
    """

    conversations: int
    max_turns: int = 10
    chars: int = 600


QUICK = Sizes(1000)
FULL = Sizes(10_000)


@dataclass(frozen=True)
class Result:
    html_mb: float
    render_s: float
    interactive_s: float
    list_mark_s: float
    load_s: float
    open_ms: float


def _text(rng: random.Random, chars: int, letter: str) -> str:
    words: list[str] = []
    while sum(len(word) + 1 for word in words) < chars:
        words.append(rng.choice(WORDS))
    return " ".join(words)[: chars - 30] + f" The correct answer is ({letter})."


def synthetic_record(rng: random.Random, number: int, sizes: Sizes) -> ConversationRecord:
    """One conversation: beliefs drift towards agreement at a random turn (or never), graded against gold."""
    gold = rng.choice(LETTERS)
    agree_at = rng.choice([*range(2, sizes.max_turns + 1), None])
    last = agree_at or sizes.max_turns
    turns = [Turn(index=0, speaker="student", text=_text(rng, sizes.chars, gold), generated=False)]
    errored = number % 50 == 1
    for index in range(1, last + 1):
        belief = turns[-1].belief if agree_at == index else rng.choice(LETTERS)
        turn = Turn(
            index=index,
            speaker="teacher" if index % 2 else "student",
            text=_text(rng, sizes.chars, belief),
            model="SmolLM2-135M-Instruct",
            seed=rng.getrandbits(63),
            usage=Usage(prompt_tokens=150 * index, completion_tokens=sizes.chars // 4),
            latency_s=rng.uniform(0.5, 5.0),
            finish_reason="stop",
            belief=belief,
            belief_method="rule",
            belief_class=LETTERS.index(belief),
            correct=belief == gold,
            agreement=agree_at == index,
        )
        turns.append(turn)
    if errored:
        turns[-1] = Turn(index=last, speaker=turns[-1].speaker, text="", error="TimeoutError: request timed out")
    stop = "error" if errored else "agreement" if agree_at else "max_turns"
    return ConversationRecord(
        example_id=str(number // 2),
        sample_index=number % 2,
        task="mmlu_pro",
        run_seed=333,
        config_hash="synthetic",
        protocol="coral",
        agents={"student": "SmolLM2-135M-Instruct", "teacher": "SmolLM2-135M-Instruct"},
        turns=turns,
        stop_reason=stop,
        max_turns=sizes.max_turns,
        gold=gold,
    )


def write_synthetic_run(root: Path, sizes: Sizes, seed: int = 0) -> Path:
    """A results folder of ``sizes.conversations`` synthetic records with its metrics.json."""
    rng = random.Random(seed)
    ResultStore(root).append_many([synthetic_record(rng, number, sizes) for number in range(sizes.conversations)])
    write_metrics(root)
    return root


def chromium_path() -> str:
    """Debian's Chromium (``apt-get install chromium``); the benchmark needs a real browser."""
    found = shutil.which("chromium")
    if found is None:
        raise RuntimeError("the report benchmark needs Debian's chromium (apt-get install chromium) and playwright")
    return found


def open_in_browser(browser: object, html: Path) -> tuple[float, float, float, float]:
    """(time to interactive, the page's list mark, load event) in seconds, and opening a conversation in ms."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        start = time.perf_counter()
        page.goto(html.resolve().as_uri(), wait_until="commit")
        page.wait_for_selector("#list tbody tr.conv")
        interactive = time.perf_counter() - start
        mark = page.evaluate("performance.getEntriesByName('coral:list-ready')[0].startTime") / 1000
        page.wait_for_load_state("load")
        loaded = time.perf_counter() - start
        clicked = time.perf_counter()
        page.click("#list tbody tr.conv")
        page.wait_for_selector("#detail-body .turn")
        return interactive, mark, loaded, 1000 * (time.perf_counter() - clicked)
    finally:
        page.close()


def measure(sizes: Sizes, repeats: int) -> list[Result]:
    """Write and render the report once, then open it ``repeats`` times, each in a fresh page of one browser."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="coral-report-bench-") as folder:
        root = write_synthetic_run(Path(folder) / "run", sizes)
        with stopwatch() as rendering:
            report = write_report([root])
        megabytes = report.html.stat().st_size / 2**20
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
            try:
                timings = [open_in_browser(browser, report.html) for _ in range(repeats)]
            finally:
                browser.close()
    return [Result(megabytes, rendering(), *timing) for timing in timings]


def benchmark(sizes: Sizes, repeats: int) -> Section:
    """Render time, page size and time to interactive for a report of ``sizes.conversations`` conversations."""
    section = Section("report", f"6. Report load time ({sizes.conversations:,} synthetic conversations, Chromium)")
    with stopwatch() as elapsed:
        results = measure(sizes, repeats)
    section.seconds = elapsed()
    interactive = stat(results, lambda r: r.interactive_s)
    section.rows += [
        Row("report.html size", stat(results, lambda r: r.html_mb), "MB"),
        Row("render (records -> report.html + figures)", stat(results, lambda r: r.render_s), "s", 2),
        Row("time to interactive (goto -> first list rows)", interactive, "s", 2),
        Row("page mark coral:list-ready (since navigation start)", stat(results, lambda r: r.list_mark_s), "s", 2),
        Row("load event (every record read)", stat(results, lambda r: r.load_s), "s", 2),
        Row("open a conversation (parse + draw its turns)", stat(results, lambda r: r.open_ms), "ms", 0),
    ]
    name = f"report of {sizes.conversations:,} conversations interactive (s)"
    section.checks.append(Check(name, interactive.median, "<=", TARGET_INTERACTIVE_S))
    section.notes += [
        f"Each conversation: up to {sizes.max_turns} generated turns of {sizes.chars} characters (agreement at a "
        "random turn or never; one in fifty ends in an error).",
        "The list is drawn from the embedded index before the browser has read the records, which follow it in "
        "the page; a record is parsed when its conversation is opened.",
    ]
    return section
