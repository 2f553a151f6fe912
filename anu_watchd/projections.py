"""Group commit for projection files: done/failed markers, envelope files, stale-marker removals.

Every wake ends by writing its marker and its envelope file. They are
projections of the ledger, whose line is the wake's only commit point
(docs/durability.md, "Projections"): under a burst the writer takes every
run's files that queued while the previous batch was on disk, writes each
tmp -> write -> rename (atomic to readers, no fsync of its own) and makes
the whole batch durable with one ``syncfs`` (``fsio.sync_bulk``). A
caller's ``write`` returns once its files are durable.

The watermark: a run ``owe``s a projection before it records its terminal
ledger line (the debt is the ledger's end at that moment, at or before the
line). After a bulk sync, every terminal line before the smallest debt still
open — or before the ledger's end when the batch started, if none is — has
its projection durable; that offset is written to ``watermark.path_for``
with the next batch (the next sync makes it durable too) at most once every
``MARK_EVERY_S``, or by a batch of its own once no batch came for that long,
and start-up repair reads only the ledger after it.

Batches run in the writer's own thread (:mod:`~anu_watchd.writerthread`),
whose callback on the loop settles the batch's callers and hands it the next
batch: a batch costs the event loop two iterations.

A failed batch fails every caller in it with ``DurabilityError``, and every
later write too: the daemon stops (docs/durability.md); nothing retries, a
failed sync is never repeated. After a fatal error elsewhere, ``halt`` stops
a batch already in its thread before its next file or sync.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import structlog

from anu_watchd import fsio, watermark
from anu_watchd.errors import DurabilityError
from anu_watchd.writerthread import Idle, WriterThread

_log = structlog.get_logger("anu_watchd.projections")

_Job = tuple[Sequence[tuple[Path, bytes]], Sequence[Path], "asyncio.Future[None]", int | None]
# The watermark only bounds the repair's reading: written at most once a second (and alone
# a second after the batches stop), a crash leaves about a second of wakes more to check,
# and a steady trickle (a batch a wake) does not pay a third file a wake for it.
MARK_EVERY_S = 1.0


class ProjectionWriter:
    """Batches concurrent runs' projection writes; one flusher task at a time."""

    def __init__(
        self,
        fail_stop: threading.Event | None = None,
        *,
        ledger: Path | None = None,
        ledger_end: Callable[[], int] | None = None,
        mark_every_s: float = MARK_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pending: list[_Job] = []
        self._inflight = False  # a batch is in the writer thread
        self._idle = Idle()  # aclose, waiting for no batch in flight
        self._writer = WriterThread("anu-projections")
        self._failure: DurabilityError | None = None
        self._halted_for: BaseException | None = None  # halt(): a fatal error seen elsewhere
        # Read by the writer thread before each file and sync; shared with the append logs
        # of the same daemon, so a failed ledger fsync stops a batch already in its thread
        # at once, not when the event loop gets to halt() (see AppendLog).
        self._halted = fail_stop if fail_stop is not None else threading.Event()
        # The watermark is kept only with a ledger to measure it against.
        self._ledger = ledger
        self._ledger_end = ledger_end if ledger is not None else None
        self._debts: dict[int, int] = {}
        self._tokens = itertools.count()
        self._mark = 0  # the watermark known durable-to-be, not yet written
        # 0, not "nothing yet": a mark of 0 says nothing, and writing it would clobber the
        # one a previous life left (still true: its projections were durable then).
        self._written_mark = 0
        self._mark_every_s = mark_every_s
        self._clock = clock
        self._mark_due = clock()  # when a moved watermark may be written next
        self._mark_timer: asyncio.TimerHandle | None = None
        self._last_batch = clock()  # when the last batch settled: the timer waits for quiet
        self._closing = False  # aclose writes the last mark itself

    def owe(self) -> int | None:
        """Before a terminal ledger line: a debt that ``write(..., debt=)`` pays once durable."""
        if self._ledger_end is None:
            return None
        token = next(self._tokens)
        self._debts[token] = self._ledger_end()
        return token

    async def write(
        self,
        writes: Sequence[tuple[Path, bytes]],
        *,
        remove: Sequence[Path] = (),
        debt: int | None = None,
    ) -> None:
        """Make ``writes`` (then ``remove``) durable, sharing the disk work with other runs."""
        if self._failure is not None:
            raise self._failure
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((writes, remove, done, debt))
        if not self._inflight:
            self._flush_next()
        await done

    @property
    def halted(self) -> bool:
        """True once ``halt`` was called: the fatal error was seen, and is being handled."""
        return self._halted_for is not None

    async def aclose(self) -> None:
        """Wait for the batches in flight, then make the final watermark durable."""
        self._closing = True
        self._cancel_mark_timer()
        while self._inflight:
            await self._idle.wait()
        try:
            await self._final_mark()
        finally:
            self._writer.stop()  # nothing is queued: returns at once

    async def _final_mark(self) -> None:
        if self._failure is not None or self._halted.is_set() or self._ledger_end is None:
            return
        mark = self._watermark_now()
        if mark == self._written_mark:
            return
        # A clean close: every debt paid (runs are over), so the mark is the ledger's end.
        try:
            await self._writer.submit(self._sync_mark, mark)
        except OSError as exc:  # the fail-stop flag makes the close fatal (runtime)
            self._halted.set()
            _log.error("projection_write_failed", error=str(exc), files=1)

    def halt(self, cause: BaseException) -> None:
        """Fail-stop after a fatal error elsewhere: write nothing more, fail what is queued."""
        self._halted_for = self._halted_for or cause
        self._halted.set()
        self._cancel_mark_timer()
        if self._failure is None:
            self._failure = _fatal(cause)
        dropped, self._pending = self._pending, []
        for _, _, done, _ in dropped:
            if not done.done():
                done.set_exception(self._failure)

    def _flush_next(self) -> None:
        """Hand every queued run's files to the writer thread as one batch."""
        batch, self._pending = self._pending, []
        writes = [w for ws, _, _, _ in batch for w in ws]
        remove = [r for _, rs, _, _ in batch for r in rs]
        # The ledger's end as this batch starts: every debt owed before now is in this
        # batch or still open, so after the sync the watermark may move up to here.
        end = self._ledger_end() if self._ledger_end is not None else 0
        mark = self._mark if self._mark_owed() and self._clock() >= self._mark_due else None
        self._inflight = True
        then = functools.partial(self._flushed, batch, len(writes), end, mark)
        try:
            self._writer.call(self._write, (writes, remove, mark), then)
        except BaseException as exc:  # no thread to write with: fail the batch, as a write would
            then(None, exc)

    def _flushed(
        self,
        batch: list[_Job],
        files: int,
        end: int,
        mark: int | None,
        _r: None,
        exc: BaseException | None,
    ) -> None:
        """On the loop, after a batch: settle its runs, then start the next batch."""
        self._inflight = False
        if exc is not None:
            _log.error("projection_write_failed", error=str(exc), files=files)
            self._failure = self._failure or _fatal(exc)
            for _, _, done, _ in batch + self._pending:
                if not done.done():
                    done.set_exception(self._failure)
            self._pending.clear()
        else:
            if mark is not None:
                self._written_mark = mark
                self._mark_due = self._clock() + self._mark_every_s
            for _, _, done, debt in batch:
                if debt is not None:
                    self._debts.pop(debt, None)
                if not done.done():  # a cancelled run (halt) no longer waits
                    done.set_result(None)
            self._mark = max(self._mark, min([end, *self._debts.values()]))
            self._last_batch = self._clock()
            if self._pending and self._failure is None:
                self._flush_next()
                return
            self._arm_mark_timer()
        self._idle.wake()

    def _mark_owed(self) -> bool:
        return self._ledger is not None and self._mark != self._written_mark

    def _arm_mark_timer(self) -> None:
        """Idle with a moved mark not yet written: write it alone once it is due and no
        batch came for ``mark_every_s`` (while batches come, they carry it)."""
        if self._mark_timer is None and self._mark_owed() and not self._stopped():
            loop = asyncio.get_running_loop()
            self._mark_timer = loop.call_later(self._until_quiet_and_due(), self._on_mark_timer)

    def _until_quiet_and_due(self) -> float:
        ready = max(self._mark_due, self._last_batch + self._mark_every_s)
        return max(0.0, ready - self._clock())

    def _on_mark_timer(self) -> None:
        self._mark_timer = None
        if self._inflight or self._stopped():
            return  # a batch in flight carries it, or settles and arms this again
        if self._mark_owed() and self._until_quiet_and_due() == 0.0:
            self._flush_next()  # no files: the watermark alone, and its sync
        else:
            self._arm_mark_timer()

    def _stopped(self) -> bool:
        return self._closing or self._failure is not None or self._halted.is_set()

    def _cancel_mark_timer(self) -> None:
        if self._mark_timer is not None:
            self._mark_timer.cancel()
            self._mark_timer = None

    def _watermark_now(self) -> int:
        assert self._ledger_end is not None
        return max(self._mark, min([self._ledger_end(), *self._debts.values()]))

    def _write(
        self, writes: list[tuple[Path, bytes]], remove: list[Path], mark: int | None
    ) -> None:
        """In the writer thread: a failure stops the daemon's other writers at once."""
        try:
            fsio.write_many_unsynced(writes, remove=remove, halted=self._halted)
            dirs = dict.fromkeys([p.parent for p, _ in writes] + [p.parent for p in remove])
            if mark is not None and self._ledger is not None:
                watermark.write(self._ledger, mark)  # made durable by the sync below
                dirs[self._ledger.parent] = None
            for directory in _one_per_filesystem(dirs):
                fsio.sync_bulk(directory, self._halted)
        except OSError:
            self._halted.set()
            raise

    def _sync_mark(self, mark: int) -> None:
        assert self._ledger is not None
        fsio.check_halted(self._halted)
        watermark.write(self._ledger, mark)
        fsio.sync_bulk(self._ledger.parent, self._halted)
        self._mark = self._written_mark = mark


def _one_per_filesystem(dirs: Iterable[Path]) -> list[Path]:
    """One directory per filesystem: a syncfs covers every file on it."""
    seen: dict[int, Path] = {}
    for d in dirs:
        seen.setdefault(os.stat(d).st_dev, d)
    return list(seen.values())


def _fatal(exc: BaseException) -> DurabilityError:
    if isinstance(exc, DurabilityError):
        return exc
    if isinstance(exc, OSError):
        return DurabilityError(exc.errno, fsio.failure_text(exc, "state write failed: projection"))
    return DurabilityError(f"state write failed: {exc!r}")
