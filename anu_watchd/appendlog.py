"""A JSON-lines append-only file with group commit: the ledger's and the evidence log's writer.

One record is one line, ``compactjson.dumps(record) + b"\\n"``: compact
JSON in UTF-8. ``append`` returns once its line is durable; a log opened
``synced=False`` (the evidence log) skips the fsync, so there "durable" means
written: durable at the next sync of its filesystem or at close, and a line
that finds the thread idle (at a steady rate, every line) is written on the
loop at once, with no hand-off. Callers that arrive while a flush is running
queue up, and the next flush writes all their lines with ONE ``os.write`` and
ONE fsync (group commit): at a few hundred microseconds per fsync, this is
what lets a burst go faster than one fsync per record. Flushes run in the
log's own writer thread (:mod:`~anu_watchd.writerthread`), which settles the
callers from one callback on the loop and hands it the next batch: no flush
task, so a flush costs the event loop two iterations, not eight.

Failure contract (docs/durability.md; PostgreSQL's "fsyncgate"): when a write
fails, writes short, or the fsync fails, every caller waiting on that flush
gets :class:`~anu_watchd.errors.DurabilityError` and the log is *poisoned*:
every later append raises at once without writing a byte. The fsync is never
retried on the same descriptor, because Linux may already have dropped the
dirty pages and cleared the error, so a second fsync that "succeeds" proves
nothing. The only way on is a restart, whose recovery trusts what is durable.

A single writer is assumed (the caller holds the instance lock), so line
offsets can be computed from the file size at open, and a torn last line (a
short write before a stop) is cut off at open rather than glued to the next.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import structlog

from anu_watchd import compactjson, fsio
from anu_watchd.errors import DurabilityError, StatePathError
from anu_watchd.writerthread import Idle, WriterThread

_log = structlog.get_logger("anu_watchd.appendlog")

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC

# The one write seam: tests patch ``anu_watchd.appendlog._write`` to inject a short write or ENOSPC.
_write = os.write

OnDurable = Callable[[int], None]


def encode(record: dict[str, Any]) -> bytes:
    """One record as one UTF-8 line."""
    try:
        return compactjson.dumps(record) + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate: a path from a file name that is not UTF-8 (a worker may create
        # one). Escaped as \udcXX it is still one valid, ASCII JSON line that round-trips.
        return (json.dumps(record, separators=(",", ":")) + "\n").encode()


@attrs.frozen
class Counters:
    """How much work the log did: ``flushes < appends`` proves that grouping happened."""

    appends: int  # lines made durable
    flushes: int  # write + fsync rounds that succeeded


@attrs.frozen
class _Pending:
    line: bytes
    waiter: asyncio.Future[int]
    on_durable: OnDurable | None
    last: bool = True  # of the lines sharing its waiter: the one whose success settles it


class AppendLog:
    """An append-only JSON-lines file; use :meth:`open`."""

    def __init__(
        self,
        path: Path,
        fd: int,
        size: int,
        fail_stop: threading.Event | None = None,
        *,
        synced: bool = True,
        thread_name: str = "anu-append-log",
    ) -> None:
        self.path = path
        # False: a flush writes without an fsync, and append returns once its line is
        # written; the evidence log's lines are observability, not state (the ledger
        # decides), and a crash of the process loses none of them, only a power cut the
        # last few. They become durable with the next projection batch's syncfs and at
        # close. Their first line a loop iteration is written on the loop while the writer
        # thread is idle (``_write_now``); the rest go to the thread as before: a write on
        # the loop for every line cost more than the hop in a burst (bench/PROFILE.md,
        # sections 9 to 11).
        self._synced = synced
        # Shared by every durable writer of one daemon (ledger, evidence, projections): the
        # first writer thread whose write or fsync fails sets it, and the others stop before
        # their next one, without waiting for the event loop to hear of the failure.
        self._fail_stop = fail_stop if fail_stop is not None else threading.Event()
        self._fd = fd
        self._end = size  # offset of the next line: single writer, O_APPEND
        self._pending: list[_Pending] = []
        self._inflight: list[_Pending] | None = None  # the batch in the writer thread
        self._idle = Idle()  # aclose, waiting for no batch in flight
        self._writer = WriterThread(thread_name)
        self._cause: BaseException | None = None  # set once: the log is poisoned
        self._closed = False
        self._appends = 0
        self._flushes = 0
        self._wrote_now = False  # an unsynced line was written on the loop this iteration

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        fail_stop: threading.Event | None = None,
        synced: bool = True,
        thread_name: str = "anu-append-log",
    ) -> AppendLog:
        """Open (or create, making its directory entry durable) the log at ``path``."""
        try:
            fd = fsio.open_state(path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, op="create the log")
            created = True
        except FileExistsError:
            fd = _open_existing(path)
            created = False
        try:
            if created:
                fsio.fsync_dir(path.parent)
            size = _cut_torn_tail(path, fd)
        except OSError as exc:
            os.close(fd)
            raise _error(f"{path}: cannot open for appending: {exc}", exc) from exc
        return cls(path, fd, size, fail_stop, synced=synced, thread_name=thread_name)

    @property
    def end(self) -> int:
        """The offset after the last durable line."""
        return self._end

    @property
    def healthy(self) -> bool:
        """False once poisoned, closed, or another writer failed: the watchdog stops pinging."""
        return self._cause is None and not self._closed and not self._fail_stop.is_set()

    @property
    def failure(self) -> BaseException | None:
        """What poisoned the log (a write or fsync error, a halt), if anything did."""
        return self._cause

    @property
    def counters(self) -> Counters:
        return Counters(appends=self._appends, flushes=self._flushes)

    async def append(self, record: dict[str, Any], *, on_durable: OnDurable | None = None) -> int:
        """Append one line; return its byte offset once it is durable.

        ``on_durable(offset)`` runs in line order as soon as the line is durable
        (written, for a log opened ``synced=False``),
        even if this caller was cancelled meanwhile (a queued line is still
        written), so an in-memory index never lags behind the file.
        """
        self._check_usable()
        line = encode(record)
        if not self._synced and self._inflight is None and not self._wrote_now:
            return self._write_now(line, on_durable)
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(line, waiter, on_durable))
        if self._inflight is None:
            self._flush_next()
        return await waiter

    async def append_many(self, lines: Sequence[tuple[dict[str, Any], OnDurable | None]]) -> None:
        """Append several lines, in order, with one waiter: they go in one flush.

        What a batch of runs saves over ``append`` a line: a future and a resumed caller
        a line. Each ``on_durable`` hook runs as for ``append``; the call returns when all
        the lines are durable (all of them are written by the same flush), or raises the
        first hook's error after every hook ran, as ``append`` raises its own.
        """
        self._check_usable()
        if not lines:
            return
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        last = len(lines) - 1
        self._pending.extend(
            _Pending(encode(record), waiter, hook, i == last)
            for i, (record, hook) in enumerate(lines)
        )
        if self._inflight is None:
            self._flush_next()
        await waiter

    async def aclose(self) -> None:
        """Let queued lines become durable (or fail), then close the file."""
        if self._closed:
            return
        self._closed = True  # no new appends from here on
        while self._inflight is not None:  # queued lines go in the batches that follow it
            await self._idle.wait()
        if not self._synced and self._cause is None and not self._fail_stop.is_set():
            try:
                await self._writer.submit(fsio.fsync, self._fd)
            except OSError as exc:  # fatal as any failed fsync: the caller exits 70
                self._fail_stop.set()
                _log.error("append_log_failed", path=str(self.path), error=str(exc), lost_lines=0)
        self._writer.stop()  # nothing is queued: returns at once
        os.close(self._fd)

    def close(self) -> None:
        """Close at once; only when nothing is in flight (else use :meth:`aclose`)."""
        if self._inflight is not None:
            raise RuntimeError("appends in flight; use aclose()")
        if not self._closed:
            self._closed = True
            self._writer.stop()
            os.close(self._fd)

    # -- the flushes ----------------------------------------------------------

    def _flush_next(self) -> None:
        """Hand every queued line to the writer thread: one write (and fsync) for all."""
        batch, self._pending = self._pending, []
        data = b"".join(p.line for p in batch)
        self._inflight = batch
        try:
            self._writer.call(self._write_durably, (data,), functools.partial(self._flushed, data))
        except BaseException as exc:  # no thread to write with: fail the batch, as a write would
            self._flushed(data, None, exc)

    def _write_now(self, line: bytes, on_durable: OnDurable | None) -> int:
        """One line of an unsynced log, written on the loop: no thread hop.

        At a steady rate each line is a batch of its own, and the hand-off to the writer
        thread and back costs ~70 us of CPU (four cross-thread wake-ups) for a write of a
        few microseconds to the page cache (bench/PROFILE.md, section 11). At most one line
        a loop iteration, and only while the thread is idle: under a burst the lines of
        an iteration's many runs still go to the thread as one write.
        """
        self._wrote_now = True
        asyncio.get_running_loop().call_soon(self._next_iteration)
        try:
            self._write_durably(line)
        except Exception as exc:  # as a flush's: the error chained to the OS failure behind it
            raise self._poison(exc, []) from exc
        offset = self._end
        self._done(1, line)
        if on_durable is not None:
            on_durable(offset)
        return offset

    def _next_iteration(self) -> None:
        self._wrote_now = False

    def _flushed(self, data: bytes, _result: None, exc: BaseException | None) -> None:
        """On the loop, after a flush: settle its callers, then start the next one."""
        batch, self._inflight = self._inflight or [], None
        if exc is not None:
            # OSError is the expected failure; anything else is a bug: either way no waiter
            # may hang, and nothing is written after it.
            self._poison(exc, batch)
        else:
            base = self._end
            self._done(len(batch), data)
            for p in batch:
                _settle(p, base)
                base += len(p.line)
            if self._pending and self._cause is None:
                self._flush_next()
                return
        self._idle.wake()

    def _write_durably(self, data: bytes) -> None:
        fsio.check_halted(self._fail_stop)
        try:
            written = _write(self._fd, data)
            if written != len(data):
                # As PostgreSQL does: a short write without errno is taken as a full disk.
                raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)} bytes")
            if self._synced:
                fsio.fsync(self._fd)
        except OSError:
            self._fail_stop.set()
            raise

    def _done(self, lines: int, data: bytes) -> None:
        self._end += len(data)
        self._appends += lines
        self._flushes += 1

    # -- failure --------------------------------------------------------------

    def halt(self, cause: BaseException) -> None:
        """Fail-stop after a fatal error elsewhere: write nothing more, fail what is queued.

        A flush already running in its thread finishes (its bytes were handed to
        the kernel before the error was known); nothing queued is written after it.
        """
        self._fail_stop.set()
        if self._cause is not None:
            return
        self._cause = cause
        dropped, self._pending = self._pending, []
        for p in dropped:
            if not p.waiter.done():
                p.waiter.set_exception(self._failure())
        _log.warning("append_log_halted", path=str(self.path), dropped_lines=len(dropped))

    def _poison(self, cause: BaseException, batch: list[_Pending]) -> DurabilityError:
        """Fail every waiter and refuse all later appends; returns a fresh error."""
        self._cause = cause
        waiting, self._pending = batch + self._pending, []
        _log.error(
            "append_log_failed", path=str(self.path), error=str(cause), lost_lines=len(waiting)
        )
        for p in waiting:
            if not p.waiter.done():
                p.waiter.set_exception(self._failure())
        return self._failure()

    def _failure(self) -> DurabilityError:
        return _error(f"{self.path}: write or fsync failed; the log is poisoned", self._cause)

    def _check_usable(self) -> None:
        if self._cause is not None:
            raise self._failure()
        if self._closed:
            raise ValueError(f"{self.path}: append to a closed log")


def _settle(p: _Pending, offset: int) -> None:
    """Tell one caller its line is durable, after its on_durable hook ran."""
    try:
        if p.on_durable is not None:
            p.on_durable(offset)
    except Exception as exc:  # a hook's bug belongs to its caller, not to the whole batch
        if not p.waiter.done():
            p.waiter.set_exception(exc)
        return
    if p.last and not p.waiter.done():  # a cancelled caller's line is durable all the same
        p.waiter.set_result(offset)


def _cut_torn_tail(path: Path, fd: int) -> int:
    """The offset to append at, after cutting off a line a failed write left unfinished.

    Without this the next line would be glued onto the torn one, corrupting both. Safe
    because there is a single writer (the caller holds the instance lock).
    """
    size = os.fstat(fd).st_size
    keep = _after_last_newline(path, size)
    if keep < size:
        fsio.cut_to(fd, keep)
        _log.warning("append_log_tail_truncated", path=str(path), dropped_bytes=size - keep)
    return keep


def _after_last_newline(path: Path, size: int) -> int:
    with os.fdopen(fsio.open_state(path, os.O_RDONLY, op="read the log's tail"), "rb") as fh:
        end = size
        while end > 0:
            start = max(0, end - (1 << 16))
            fh.seek(start)
            newline = fh.read(end - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


def _open_existing(path: Path) -> int:
    try:
        return fsio.open_state(path, _OPEN_FLAGS, op="open for appending")
    except StatePathError:
        raise
    except OSError as exc:
        raise _error(f"{path}: cannot open for appending: {exc}", exc) from exc


def _error(message: str, cause: BaseException | None) -> DurabilityError:
    """A fresh DurabilityError per caller, chained to the one OS failure behind it."""
    err = DurabilityError(message)
    err.__cause__ = cause
    return err


def lines_with(path: Path, needles: Iterable[bytes]) -> list[tuple[int, bytes]]:
    """``(offset, line)`` of every complete line holding one of ``needles``, in file order.

    A byte search over a read-only map (about 1 GB/s: ~0.4 s for a 1,000,000-line
    ledger), not a parse of every line; safe beside the running writer, which only
    appends (a line still being written has no newline yet and is left out).
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return []
            with mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) as mm:
                return sorted({hit for n in needles for hit in _hits(mm, n)})
    except FileNotFoundError:
        return []


def _hits(mm: mmap.mmap, needle: bytes) -> Iterable[tuple[int, bytes]]:
    at = mm.find(needle)
    while at >= 0:
        start = mm.rfind(b"\n", 0, at) + 1
        end = mm.find(b"\n", at)
        if end < 0:
            return  # the torn or unfinished last line
        yield start, mm[start:end]
        at = mm.find(needle, end)
