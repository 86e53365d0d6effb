"""Runs many conversations at once and appends each record to the store the moment it ends.

Work is the list of (example, sample) keys not yet in the store, so a rerun after a crash or kill resumes where
the store stops, without duplicates. At most ``settings.concurrency`` conversations are in flight; one
conversation that raises (a bug, not a model error: those are recorded on turns) is recorded as an errored
conversation and never stops the others.

Records are stored with group commit: conversations that end while the previous write is being fsynced are
written together, with one write and one fsync, off the event loop. A conversation counts as done (``on_done``,
the returned count) only once its record is on disk.

A run told to stop (``stop``, set on SIGTERM by the Lightning module) starts no new conversation and gives those in
flight a short grace period; any still running then are abandoned, unstored, so their keys stay pending.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coral.beliefs import BeliefExtractor
from coral.conversation.agent import Agent
from coral.conversation.context import ConversationContext
from coral.conversation.protocols import Protocol
from coral.conversation.settings import RunSettings
from coral.metrics import conversation_metrics, write_metrics
from coral.records import ConversationRecord
from coral.store import ResultStore
from coral.tasks.base import Example, Task

log = logging.getLogger(__name__)


@dataclass
class ConversationRunner:
    """Runs a protocol over examples and stores the records.

    Args:
        protocol: who speaks and when to stop.
        task: the task the examples belong to.
        agents: speaker name -> agent.
        extractor: belief extraction for every turn.
        store: where finished conversations go.
        settings: seeds, limits and retries, shared whole with every conversation's context.
    """

    protocol: Protocol
    task: Task
    agents: dict[str, Agent]
    extractor: BeliefExtractor
    store: ResultStore
    settings: RunSettings

    def pending(self, examples: Iterable[Example], samples: int) -> list[tuple[Example, int]]:
        """(example, sample index) pairs the store has no record of yet."""
        return [(ex, s) for ex in examples for s in range(samples) if (ex.id, s) not in self.store.done]

    async def run(
        self,
        work: list[tuple[Example, int]],
        on_done: Callable[[ConversationRecord], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> int:
        """Run every (example, sample) in ``work``; returns how many records were written.

        Once ``stop`` is set (e.g. on SIGTERM), no new conversation starts; those in flight get
        ``settings.stop_grace_s`` seconds to finish and are then abandoned: nothing is stored for them, so a rerun
        redoes them.
        """
        queue = deque(work)
        commits = GroupCommit(self.store)
        written = 0

        async def worker() -> None:
            nonlocal written
            while queue and not (stop is not None and stop.is_set()):
                example, sample = queue.popleft()
                record = await self._one(example, sample)
                if await commits.append(record):
                    written += 1
                if on_done is not None:
                    on_done(record)

        workers = [asyncio.create_task(worker()) for _ in range(min(self.settings.concurrency, len(work)))]
        try:
            await self._finish(workers, stop)
        finally:
            commits.close()
        return written

    async def _finish(self, workers: list[asyncio.Task[None]], stop: asyncio.Event | None) -> None:
        """Wait for the workers; once ``stop`` is set, for at most ``settings.stop_grace_s`` more, then cancel."""
        everything = asyncio.gather(*workers)
        if stop is not None:
            stopped = asyncio.ensure_future(stop.wait())
            try:
                either: list[asyncio.Future[Any]] = [everything, stopped]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if not everything.done():
                    grace_s = self.settings.stop_grace_s
                    log.warning("stopping: no new conversation starts; %.0f s for those in flight", grace_s)
                    await asyncio.wait([everything], timeout=grace_s)
            finally:
                stopped.cancel()
            if not everything.done():
                log.warning("stopping: abandoning the conversations still in flight (a rerun redoes them)")
                everything.cancel()
                await asyncio.wait(workers)
                return
        await everything

    async def _one(self, example: Example, sample: int) -> ConversationRecord:
        ctx = ConversationContext(self.task, example, sample, self.agents, self.extractor, self.settings)
        try:
            record = await self.protocol.run(ctx)
        except Exception as exc:  # one broken conversation never kills the run
            log.error("conversation %s failed:\n%s", ctx.session_id, traceback.format_exc())
            record = ctx.record(self.protocol, [], "error")
            record.metadata["exception"] = f"{type(exc).__name__}: {exc}"
        finally:
            for backend in {id(a.backend): a.backend for a in self.agents.values()}.values():
                await backend.end_session(ctx.session_id)
        record.metrics = conversation_metrics(record)
        return record


def evaluate(
    runner: ConversationRunner, examples: Sequence[Example], samples: int = 1, compat: bool = False
) -> dict[str, float]:
    """Run in this process every (example, sample) the runner's store lacks, then write and return the metrics.

    The library's one entry point for a whole evaluation: the drivers call it for MALT's trees and evaluations
    and MAPoRL's rollouts and evaluations (a backend serving the weights being trained included), with no
    subprocess; the Lightning module runs the same runner with its sharding, progress line and SIGTERM handling
    around it. A rerun resumes: what the store holds is not run again.
    """
    asyncio.run(runner.run(runner.pending(examples, samples)))
    return write_metrics(runner.store.root, compat=compat)


class GroupCommit:
    """Appends records to a store from one event loop, batching those that arrive while a write is in flight.

    ``append`` returns once the record is fsynced (True) or found already done (False). One writer task runs
    ``ResultStore.append_many`` in a thread for everything queued so far, then for what queued meanwhile, so
    the number of fsyncs follows the disk's speed instead of the number of records.
    """

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self._queued: list[tuple[ConversationRecord, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def append(self, record: ConversationRecord) -> bool:
        """Queue the record; True once it is fsynced, False if the store already had it."""
        future = asyncio.get_running_loop().create_future()
        self._queued.append((record, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        return await future

    async def _write_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                written = await asyncio.to_thread(self.store.append_many, [record for record, _ in batch])
            except Exception as exc:  # every waiting conversation gets the store's error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), new in zip(batch, written):
                if not future.done():
                    future.set_result(new)

    def close(self) -> None:
        """Stop the writer (after a failed run; a finished run has nothing queued)."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
