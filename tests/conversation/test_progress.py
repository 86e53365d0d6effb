"""Live progress: exact rates and time left for a scripted clock, terminal vs log output, and a real validate whose
stderr is not a terminal (as in a Slurm job) printing plain lines with the right counts."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from coral.backends import ScriptedBackend
from coral.backends.base import InvalidRequestError
from coral.backends.models import DEFAULT_MODEL
from coral.conversation.progress import Progress, ProgressReporter, Snapshot
from coral.records import ConversationRecord, Turn, Usage
from coral.serving.local import LocalServer
from coral.serving.openai_api import build_openai_app
from lightning_modules.trainer import cli

pytestmark = pytest.mark.timeout(120)

LINE = re.compile(r"^conversations (\d+)/(\d+) \(\d+%\), (.+) \| errors (\d+) \| [\d.]+ turns/s \| \d+ tokens/s \| "
                  r"\d+:\d\d:\d\d elapsed$")


class Clock:
    """Seconds set by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(turn_tokens: list[int], judge_tokens: int = 0, sibling_tokens: int = 0, error: bool = False):
    """A record with one generated turn per entry of ``turn_tokens``; the first turn carries the judge's reply and
    one tree sibling."""
    turns = [Turn(index=0, speaker="student", text="question", generated=False, usage=Usage(0, 0))]
    for index, tokens in enumerate(turn_tokens, start=1):
        turns.append(Turn(index=index, speaker="teacher", text="t", usage=Usage(7, tokens)))
    turns[1].extraction_usage = Usage(3, judge_tokens)
    turns[1].siblings = [Turn(index=1, speaker="teacher", text="s", usage=Usage(7, sibling_tokens))]
    return ConversationRecord("ex", 0, "test", 0, "h", "coral", {"teacher": "m"}, turns,
                              "error" if error else "agreement", 20)


def test_rates_over_the_window_time_left_and_the_whole_run_for_a_scripted_sequence():
    clock = Clock()
    progress = Progress(total=10, done=2, window_s=32.0, clock=clock)
    assert progress.snapshot() == Snapshot(2, 10, 0, 0.0, 0.0, 0.0, 0.0)
    assert progress.snapshot().eta_s is None  # nothing finished yet: no rate to measure it by

    clock.now = 8.0
    progress.add(record([30, 20], judge_tokens=5, sibling_tokens=9))  # 2 turns, 64 tokens
    clock.now = 12.0
    progress.add(record([16], error=True))  # 1 turn, 16 tokens
    clock.now = 16.0
    now = progress.snapshot()
    assert now == Snapshot(done=4, total=10, errors=1, elapsed_s=16.0, conversations_per_s=2 / 16,
                           turns_per_s=3 / 16, tokens_per_s=80 / 16)
    assert now.eta_s == 6 / (2 / 16) == 48.0

    clock.now = 40.0  # the window (8, 40]: the first record has left it, the second is still in
    recent = progress.snapshot()
    assert (recent.conversations_per_s, recent.turns_per_s, recent.tokens_per_s) == (1 / 32, 1 / 32, 16 / 32)
    assert recent.eta_s == 6 * 32 == 192.0
    whole = progress.snapshot(whole_run=True)
    assert (whole.conversations_per_s, whole.turns_per_s, whole.tokens_per_s) == (2 / 40, 3 / 40, 80 / 40)

    clock.now = 64.0  # nothing finished for a whole window: rates are 0, the time left unknown
    assert progress.snapshot().tokens_per_s == 0.0 and progress.snapshot().eta_s is None
    assert progress.snapshot(whole_run=True).conversations_per_s == 2 / 64


def test_line_says_done_total_errors_rates_elapsed_and_time_left():
    snapshot = Snapshot(done=4, total=10, errors=1, elapsed_s=3725.0, conversations_per_s=0.125,
                        turns_per_s=2.25, tokens_per_s=80.4)
    assert snapshot.line() == (
        "conversations 4/10 (40%), ~0:00:48 left | errors 1 | 2.2 turns/s | 80 tokens/s | 1:02:05 elapsed"
    )
    assert snapshot.line(final=True).startswith("conversations 4/10 (40%), 6 not run | errors 1 |")
    assert Snapshot(10, 10, 0, 5.0, 2.0, 2.0, 2.0).line(final=True).startswith("conversations 10/10 (100%), done |")


def reporter_with(clock: Clock, stream: io.StringIO, every_s: float = 30.0) -> ProgressReporter:
    return ProgressReporter(Progress(total=5, clock=clock), every_s=every_s, stream=stream)


def test_without_a_terminal_a_plain_line_every_interval_and_a_final_line_also_logged(caplog):
    clock, stream = Clock(), io.StringIO()
    caplog.set_level(logging.INFO, logger="coral.conversation.progress")
    with reporter_with(clock, stream) as reporter:
        for clock.now in (10.0, 29.0, 31.0, 45.0):
            reporter.update(record([4]))
        clock.now = 50.0
    lines = stream.getvalue().splitlines()
    assert [LINE.match(line).group(1, 2, 3, 4) for line in lines] == [
        ("0", "5", "? left", "0"),  # at the start
        ("3", "5", "~0:00:21 left", "0"),  # the first update 30 s later: 2 left at 3 per 31 s
        ("4", "5", "1 not run", "0"),  # the end, though one never finished
    ]
    assert "\r" not in stream.getvalue()
    assert [r.getMessage() for r in caplog.records] == lines  # the same lines, through logging


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_line_redrawn_in_place_logged_every_interval(caplog, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    clock, stream = Clock(), Terminal()
    caplog.set_level(logging.INFO, logger="coral.conversation.progress")
    with reporter_with(clock, stream) as reporter:
        for clock.now in (10.0, 10.05, 31.0, 32.0, 33.0):
            reporter.update(record([4], error=clock.now == 31.0))
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("elapsed\x1b[K\n")  # one final newline
    drawn = [LINE.match(part.removesuffix("\n").removesuffix("\x1b[K")) for part in text.split("\r")[1:]]
    assert [(m.group(1), m.group(4)) for m in drawn] == [("0", "0"), ("1", "0"), ("3", "1"), ("4", "1"), ("5", "1"),
                                                         ("5", "1")]  # 10.05 s: too soon to redraw
    assert [LINE.match(r.getMessage()).group(1) for r in caplog.records] == ["0", "3", "5"]


def test_a_silent_reporter_counts_but_shows_and_logs_nothing(caplog):
    clock, stream = Clock(), io.StringIO()
    caplog.set_level(logging.INFO, logger="coral.conversation.progress")
    with ProgressReporter(Progress(total=2, clock=clock), every_s=0.0, stream=stream, silent=True) as reporter:
        reporter.update(record([4]))
    assert reporter.progress.done == 1 and stream.getvalue() == "" and not caplog.records


def test_a_terminal_narrower_than_the_line_gets_its_start(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    clock, stream = Clock(), Terminal()
    with reporter_with(clock, stream):
        pass
    assert stream.getvalue().split("\r")[1] == "conversations 0/5 (0%), ? left | errors\x1b[K"


class Model(ScriptedBackend):
    """Answers (A) in 5 tokens; the first MMLU-Pro question (id 168) gets a 400, which ends its conversation."""

    def __init__(self) -> None:
        super().__init__(self.answer)

    def answer(self, messages, sampling):
        if any("A water bed sells" in message["content"] for message in messages):
            return InvalidRequestError("scripted refusal")
        return "The correct answer is (A)"


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    with LocalServer(build_openai_app(Model(), [DEFAULT_MODEL])) as server:
        yield server.base_url


def validate(url: str, root: Path, *extra: str) -> None:
    arguments = [
        "validate", "--config", "configs/cot/cot_mmlu_pro.yaml", f"--model.teacher_app_name={url}",
        f"--model.student_app_name={url}", "--model.extractor.mode=rules", f"--trainer.default_root_dir={root}",
        "--trainer.logger=false", "--model.max_n_processes=1", *extra,
    ]
    assert cli(arguments) == 0


def progress_lines(text: str) -> list[tuple[int, int, int, str]]:
    """(done, total, errors, the time left or how it ended) of each progress line of ``text``."""
    found = [LINE.match(line) for line in text.splitlines()]
    return [(int(m.group(1)), int(m.group(2)), int(m.group(4)), m.group(3)) for m in found if m]


@pytest.mark.slow
def test_validate_without_a_terminal_prints_plain_lines_with_the_right_counts_and_logs_them(model_url, tmp_path,
                                                                                           capfd):
    handler = logging.FileHandler(tmp_path / "run.log")  # how a program collects the lines in a log file
    logger = logging.getLogger("coral.conversation.progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        validate(model_url, tmp_path / "run", "--data.val_max_instances=4", "--model.progress_every_s=0")
        first = progress_lines(capfd.readouterr().err)
        # 4 more: the 4 stored count as done; at the default interval (30 s) only the start and the end show
        validate(model_url, tmp_path / "run", "--data.val_max_instances=8")
        resumed = progress_lines(capfd.readouterr().err)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        handler.close()
    # one at a time, in order: question 168, the first, ends in an error
    assert [line[:3] for line in first] == [(0, 4, 0), (1, 4, 1), (2, 4, 1), (3, 4, 1), (4, 4, 1), (4, 4, 1)]
    assert first[-1][3] == "done" and all(line[3].endswith(" left") for line in first[:-1])
    assert [line[:3] for line in resumed] == [(4, 8, 0), (8, 8, 0)]  # errors: this run's (168 is not redone)
    assert resumed[-1][3] == "done"
    assert progress_lines((tmp_path / "run.log").read_text()) == first + resumed
