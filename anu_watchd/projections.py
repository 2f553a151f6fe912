"""Group commit for projection files: done markers, envelope files, stale-marker removals.

Every wake ends by writing its done marker and its envelope file. Written
one run at a time, each wake pays a thread hop and a directory fsync of its
own; under a burst the writer instead takes every run's files that queued
while the previous batch was on disk and makes them durable together with
``fsio.atomic_write_many`` (one thread hop, one fsync per file, one
directory fsync per batch), the way ``AppendLog`` group-commits lines. A
caller's ``write`` returns once its files are durable.

A failed batch fails every caller in it with ``DurabilityError``, and every
later write too: the daemon stops (docs/durability.md); nothing retries. After a
fatal error elsewhere, ``halt`` stops a batch already in its thread before
its next fsync or rename.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog

from anu_watchd import fsio
from anu_watchd.errors import DurabilityError

_log = structlog.get_logger("anu_watchd.projections")

_Job = tuple[Sequence[tuple[Path, bytes]], Sequence[Path], "asyncio.Future[None]"]


class ProjectionWriter:
    """Batches concurrent runs' projection writes; one flusher task at a time."""

    def __init__(self, fail_stop: threading.Event | None = None) -> None:
        self._pending: list[_Job] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failure: DurabilityError | None = None
        self._halted_for: BaseException | None = None  # halt(): a fatal error seen elsewhere
        # Read by the writer thread before each fsync and rename; shared with the append
        # logs of the same daemon, so a failed ledger fsync stops a batch already in its
        # thread at once, not when the event loop gets to halt() (see AppendLog).
        self._halted = fail_stop if fail_stop is not None else threading.Event()

    async def write(
        self, writes: Sequence[tuple[Path, bytes]], *, remove: Sequence[Path] = ()
    ) -> None:
        """Make ``writes`` (then ``remove``) durable, sharing the disk work with other runs."""
        if self._failure is not None:
            raise self._failure
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((writes, remove, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="projection-writer")
        await done

    @property
    def halted(self) -> bool:
        """True once ``halt`` was called: the fatal error was seen, and is being handled."""
        return self._halted_for is not None

    async def aclose(self) -> None:
        """Wait for the batches in flight: their runs may be gone (cancelled), not their fate."""
        while self._flusher is not None:
            await asyncio.wait([self._flusher])

    def halt(self, cause: BaseException) -> None:
        """Fail-stop after a fatal error elsewhere: write nothing more, fail what is queued."""
        self._halted_for = self._halted_for or cause
        self._halted.set()
        if self._failure is None:
            self._failure = _fatal(cause)
        dropped, self._pending = self._pending, []
        for _, _, done in dropped:
            if not done.done():
                done.set_exception(self._failure)

    async def _flush_loop(self) -> None:
        try:
            while self._pending and self._failure is None:
                batch, self._pending = self._pending, []
                await self._flush(batch)
            for _, _, done in self._pending:
                if self._failure is not None and not done.done():
                    done.set_exception(self._failure)
            if self._failure is not None:
                self._pending.clear()
        finally:
            self._flusher = None

    async def _flush(self, batch: list[_Job]) -> None:
        writes = [w for ws, _, _ in batch for w in ws]
        remove = [r for _, rs, _ in batch for r in rs]
        try:
            await asyncio.to_thread(self._write, writes, remove)
        except BaseException as exc:
            if isinstance(exc, Exception):  # its callers may be gone: say it here, once
                _log.error("projection_write_failed", error=str(exc), files=len(writes))
            self._failure = self._failure or _fatal(exc)
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(self._failure)
            if not isinstance(exc, Exception):
                raise  # cancellation: the daemon is halting
            return
        for _, _, done in batch:
            if not done.done():  # a cancelled run (halt) no longer waits
                done.set_result(None)

    def _write(self, writes: list[tuple[Path, bytes]], remove: list[Path]) -> None:
        """In the writer thread: a failure stops the daemon's other writers at once."""
        try:
            fsio.atomic_write_many(writes, remove=remove, halted=self._halted)
        except OSError:
            self._halted.set()
            raise


def _fatal(exc: BaseException) -> DurabilityError:
    if isinstance(exc, DurabilityError):
        return exc
    if isinstance(exc, OSError):
        return DurabilityError(exc.errno, fsio.failure_text(exc, "state write failed: projection"))
    return DurabilityError(f"state write failed: {exc!r}")
