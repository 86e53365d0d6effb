"""Acceptance: the report a real small run writes at its end, checked in headless Chromium.

The run is ``trainer.py validate`` on the embedded model (2 MMLU-Pro questions, 2 turns of at most 16 tokens); its
own ``report.html`` must load with no console error and no network request, show ``metrics.json``'s numbers,
filter to exactly the incorrect conversations and open a conversation's turns. A screenshot is kept
(``$CORAL_ARTIFACTS/report.png`` when that is set). The hand-built folder, where every outcome occurs, checks the
filters and the detail view against known values in the same browser.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from report_helpers import HAND_OUTCOMES, HOSTILE_TEXT, Page

from coral.metrics.aggregate import format_metric
from coral.report import write_report
from coral.store import read_records

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, browser) -> Path:
    """A real run (after the browser fixture, so a missing Chromium skips before the model is loaded)."""
    results = tmp_path_factory.mktemp("small_run")
    command = [
        sys.executable, "lightning_modules/trainer.py", "validate",
        "--config", "configs/ts_mmlu_pro.yaml",
        "--data.val_max_instances", "2",
        "--model.max_turns", "2",
        "--model.max_turn_tokens", "16",
        "--model.extractor.max_tokens", "8",
        "--trainer.default_root_dir", str(results),
        "--trainer.logger.init_args.save_dir", str(results / "logs"),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"report: {results / 'report.html'}" in done.stdout
    return results


def shown(page) -> list[tuple[str, str]]:
    """(example id, outcome) of every listed row."""
    rows = page.query_selector_all("#list tbody tr.conv")
    return [(row.query_selector("td").inner_text(), row.get_attribute("data-outcome")) for row in rows]


def outcome(record) -> str:
    """The test's own reading of a record: its last belief's grade, or no answer."""
    beliefs = [turn for turn in record.turns if turn.generated and turn.belief is not None]
    if not beliefs:
        return "no answer"
    return "correct" if beliefs[-1].correct else "incorrect"


@pytest.mark.slow
def test_real_runs_report_in_chromium(small_run, page: Page, tmp_path):
    html = small_run / "report.html"
    view = page.open(html)
    metrics = json.loads((small_run / "metrics.json").read_text())
    for name, value in metrics.items():
        assert view.inner_text(f"td[data-metric='{name}'][data-run='0']") == format_metric(value), name

    records = {record.example_id: record for record in read_records(small_run)}
    assert sorted(example for example, _ in shown(view)) == sorted(records)
    view.select_option("#f-outcome", "incorrect")
    incorrect = sorted(example for example, record in records.items() if outcome(record) == "incorrect")
    assert sorted(example for example, _ in shown(view)) == incorrect
    view.select_option("#f-outcome", "")

    first = shown(view)[0][0]
    view.click("#list tbody tr.conv")
    turns = view.query_selector_all("#detail-body .turn")
    assert [turn.get_attribute("data-index") for turn in turns] == [str(t.index) for t in records[first].turns]
    for element, turn in zip(turns, records[first].turns, strict=True):
        assert element.query_selector("pre.text").inner_text() == turn.text
    assert view.inner_text("#detail-title") == f"example {first}, sample 0"

    shots = screenshots(view, tmp_path)
    assert all(shot.stat().st_size > 10_000 for shot in shots)
    assert page.errors == [] and page.requests == []


def screenshots(view, folder: Path) -> list[Path]:
    """The open conversation (``conversation.png``), then the whole page (``report.png``), kept as artifacts."""
    shots = [folder / "conversation.png", folder / "report.png"]
    view.screenshot(path=str(shots[0]))
    view.click("#close")
    view.evaluate("window.scrollTo(0, 0)")
    view.screenshot(path=str(shots[1]), full_page=True)
    if os.environ.get("CORAL_ARTIFACTS"):
        artifacts = Path(os.environ["CORAL_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, artifacts / shot.name)
    return shots


def test_filters_and_the_conversation_view_on_known_outcomes(hand_run, page: Page):
    view = page.open(write_report([hand_run]).html)
    for choice in ("correct", "incorrect", "no answer"):
        view.select_option("#f-outcome", choice)
        assert sorted(shown(view)) == sorted((name, o) for name, o in HAND_OUTCOMES.items() if o == choice)
    view.select_option("#f-outcome", "")
    view.select_option("#f-agreed", "1")
    assert sorted(name for name, _ in shown(view)) == ["right", "wrong"]
    view.select_option("#f-agreed", "")
    view.select_option("#f-errored", "1")
    assert [name for name, _ in shown(view)] == ["broken"]
    view.select_option("#f-errored", "")
    view.select_option("#f-stop", "max_turns")
    assert [name for name, _ in shown(view)] == ["unsure"]
    view.select_option("#f-stop", "")
    view.fill("#f-search", "</script><script>window.pwned")  # the text search reads the records
    view.wait_for_function("document.querySelectorAll('#list tbody tr.conv').length === 1")
    assert [name for name, _ in shown(view)] == ["unsure"]
    view.click("#list tbody tr.conv")
    assert view.inner_text("#detail-body .turn[data-index='1'] pre.text") == HOSTILE_TEXT
    assert view.evaluate("window.pwned") is None
    view.click("#close")
    view.fill("#f-search", "")
    view.wait_for_function("document.querySelectorAll('#list tbody tr.conv').length === 4")

    view.click("#list tbody tr.conv[data-row='1']")  # "wrong": judged, with the judge's raw reply
    detail = view.inner_text("#detail-body .turn[data-index='1']")
    for fact in ("teacher (answerer)", "extracted by\njudge, class 1", "incorrect", str(2**63 - 24)):
        assert fact in detail
    view.click("#detail-body .turn[data-index='1'] details summary")
    assert "The final answer is (B)." in view.inner_text("#detail-body .turn[data-index='1']")
    view.click("#close")
    view.click("#list tbody tr.conv[data-row='0']")  # "right": its turn 1 has a tree sibling
    assert "1 tree siblings" in view.inner_text("#detail-body .turn[data-index='1']")
    assert page.errors == [] and page.requests == []


@pytest.mark.slow
def test_load_benchmark_writes_seeded_records_and_times_a_real_page(tmp_path, browser):
    from benchmarks import report_load

    sizes = report_load.Sizes(20, max_turns=4, chars=80)
    first = report_load.write_synthetic_run(tmp_path / "a", sizes, seed=3)
    again = report_load.write_synthetic_run(tmp_path / "b", sizes, seed=3)
    assert (first / "conversations.jsonl").read_bytes() == (again / "conversations.jsonl").read_bytes()
    records = read_records(first)
    assert len(records) == 20 and {r.stop_reason for r in records} == {"agreement", "max_turns", "error"}
    interactive, mark, loaded, open_ms = report_load.open_in_browser(browser, write_report([first]).html)
    assert 0 < mark <= loaded and 0 < interactive <= loaded and open_ms > 0
