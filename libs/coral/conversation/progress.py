"""Live progress of a run: conversations done of total, errors, turns/s, generated tokens/s and the time left.

``Progress`` counts finished records. Its rates cover a sliding window (the recent throughput, not an average
dragged down by a slow start) and the time left is the remaining count over the recent conversation rate. Its
clock is injected, so tests can script exact times.

``ProgressReporter`` shows it on stderr: on a terminal one line redrawn in place; anywhere else (a Slurm job's
log file, a pipe) a plain line at most every ``every_s`` seconds, since a redrawn bar there is an endless line of
carriage returns. The same lines go to this module's logger at INFO, so a logging handler that writes a file
collects them; a last line gives the whole run's averages.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

from coral.records import ConversationRecord

log = logging.getLogger(__name__)

REDRAW_S = 0.1
"""Least time between two redraws of the terminal line (a fast run finishes hundreds of conversations a second)."""


def generated(record: ConversationRecord) -> tuple[int, int]:
    """(generated turns, generated tokens) of a record: the tokens of every turn, tree sibling and judge reply."""
    turns = [turn for turn in record.turns if turn.generated]
    tokens = 0
    for turn in record.turns:
        for t in (turn, *turn.siblings):
            tokens += t.usage.completion_tokens + t.extraction_usage.completion_tokens
    return len(turns), tokens


@dataclass(frozen=True)
class Snapshot:
    """Where a run stands. Rates are per second; ``errors`` counts this run's conversations that ended in an error."""

    done: int
    total: int
    errors: int
    elapsed_s: float
    conversations_per_s: float
    turns_per_s: float
    tokens_per_s: float

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current conversation rate; None while nothing has finished to measure it by."""
        remaining = self.total - self.done
        if remaining <= 0:
            return 0.0
        return remaining / self.conversations_per_s if self.conversations_per_s > 0 else None

    def line(self, final: bool = False) -> str:
        """One line for a person, most telling first (a terminal cuts the end).

        ``final``: the run is over, so the line says what was left undone instead of a time left.
        """
        percent = 100 * self.done // self.total if self.total else 100
        if final:
            state = "done" if self.done >= self.total else f"{self.total - self.done} not run"
        else:
            state = "? left" if self.eta_s is None else f"~{_clock(self.eta_s)} left"
        return (
            f"conversations {self.done}/{self.total} ({percent}%), {state} | errors {self.errors} | "
            f"{self.turns_per_s:.1f} turns/s | {self.tokens_per_s:.0f} tokens/s | {_clock(self.elapsed_s)} elapsed"
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Counts finished conversations; rates over the last ``window_s`` seconds (or since the start, if sooner).

    Args:
        total: conversations of the run, those already stored by an earlier run included.
        done: of those, already stored when this run starts (they count as done, not in the rates).
        window_s: how far back the rates look.
        clock: seconds, monotonic; injected by tests.
    """

    def __init__(
        self, total: int, done: int = 0, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total, self.done, self.errors = total, done, 0
        self.window_s = window_s
        self._clock = clock
        self._start = clock()
        self._recent: deque[tuple[float, int, int]] = deque()  # (finished at, turns, tokens) inside the window
        self._recent_turns = self._recent_tokens = 0  # sums over self._recent
        self._finished = self._turns = self._tokens = 0  # since the start

    def add(self, record: ConversationRecord) -> None:
        """Count a finished conversation (an errored one too) with its generated turns and tokens."""
        turns, tokens = generated(record)
        self.done += 1
        self.errors += record.stop_reason == "error"
        self._recent.append((self._clock(), turns, tokens))
        self._recent_turns += turns
        self._recent_tokens += tokens
        self._finished += 1
        self._turns += turns
        self._tokens += tokens

    def snapshot(self, whole_run: bool = False) -> Snapshot:
        """Where the run stands now; ``whole_run``: rates averaged since the start instead of over the window."""
        now = self._clock()
        elapsed = now - self._start
        while self._recent and self._recent[0][0] <= now - self.window_s:
            _, turns, tokens = self._recent.popleft()
            self._recent_turns -= turns
            self._recent_tokens -= tokens
        if whole_run:
            span, counts = elapsed, (self._finished, self._turns, self._tokens)
        else:
            span, counts = min(elapsed, self.window_s), (len(self._recent), self._recent_turns, self._recent_tokens)
        rates = (n / span if span > 0 else 0.0 for n in counts)
        return Snapshot(self.done, self.total, self.errors, elapsed, *rates)


class ProgressReporter:
    """Shows a ``Progress`` while a run goes: ``with reporter: ... on_done=reporter.update``.

    Args:
        progress: what to show.
        every_s: least seconds between two plain lines (stderr not a terminal) and between two logged lines.
        stream: where lines go (default: stderr).
        silent: count but show and log nothing (the ranks other than 0 of a multi-process run).
    """

    def __init__(
        self, progress: Progress, every_s: float = 30.0, stream: TextIO | None = None, silent: bool = False
    ) -> None:
        self.progress = progress
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.silent = silent
        self.tty = self.stream.isatty()
        self._drawn_at = self._logged_at = float("-inf")

    def __enter__(self) -> ProgressReporter:
        self._show(self.progress.snapshot())
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.silent:
            return
        line = self.progress.snapshot(whole_run=True).line(final=True)
        self.stream.write(f"\r{self._fit(line)}\x1b[K\n" if self.tty else f"{line}\n")
        self.stream.flush()
        log.info("%s", line)

    def update(self, record: ConversationRecord) -> None:
        """A conversation finished (the runner's ``on_done``)."""
        self.progress.add(record)
        self._show(self.progress.snapshot())

    def _show(self, now: Snapshot) -> None:
        if self.silent:
            return
        if self.tty and now.elapsed_s - self._drawn_at >= REDRAW_S:
            self._drawn_at = now.elapsed_s
            self.stream.write(f"\r{self._fit(now.line())}\x1b[K")
            self.stream.flush()
        if now.elapsed_s - self._logged_at >= self.every_s:
            self._logged_at = now.elapsed_s
            if not self.tty:
                self.stream.write(f"{now.line()}\n")
                self.stream.flush()
            log.info("%s", now.line())

    def _fit(self, line: str) -> str:
        """A redrawn line longer than the terminal would wrap and leave a trail of copies."""
        return line[: shutil.get_terminal_size().columns - 1]
