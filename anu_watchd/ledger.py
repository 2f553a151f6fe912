"""The write-ahead ledger: the source of truth and the dedupe index (docs/durability.md).

One JSON line per state change (``LedgerEntry.to_json()``), appended through
:class:`~anu_watchd.appendlog.AppendLog` with group commit; the in-memory index
is updated only once a line is durable. Single writer: the caller holds the
instance lock, so no file locking here.

Recovery at open trusts only what is durable. A torn tail (bytes after the
last newline: a write that never completed, so no caller was told it had) is
truncated off and logged. A complete line anywhere that does not parse or
lacks a field raises :class:`~anu_watchd.errors.LedgerCorruptError`: fatal,
never skipped, because skipping could forget a DONE and wake twice.

Why the index holds offsets, not entries: a 1,000,000-line ledger must load in
a few seconds within 150 MiB. Holding each key's latest entry (strings for the
key, sha256, task id, timestamp, schedule id) costs ~400 bytes a key in
CPython. So the index keeps, per key, one int ``offset << 3 | state code`` (the
key itself as its 20 raw digest bytes), and per task id the same int object
for the task's latest line. Counting and filtering by state need no I/O; a
full entry is one ``pread`` of that line, from the page cache in practice,
with a small cache of recent entries in front.

Parsing: lines this daemon wrote have one fixed shape, so a canonical line is
split on quotes and compared with a template, about twice as fast as
``json.loads``; any other line (another key order, escapes, non-ASCII) goes
through ``json.loads`` and full validation. The fast path accepts only lines
``json.loads`` would read identically.

Even so, a full parse of 1,000,000 lines takes ~4 s. A clean close of a
healthy ledger writes the index to a checkpoint (:mod:`~anu_watchd.ledgerindex`,
which also says what it trades), and the next open parses only the lines after
the size it covers, under the same torn-tail and corrupt-line rules. It is
written only when known to agree with the file: the lines indexed since open
are the lines appended, and the last one ends at the file's end. The ledger
only grows, so it stays valid after a later crash (the suffix is longer).
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import functools
import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from anu_watchd import fsio, ledgerindex
from anu_watchd.appendlog import AppendLog, encode, lines_with
from anu_watchd.errors import DurabilityError, LedgerCorruptError
from anu_watchd.model import LedgerEntry, LedgerState

_log = structlog.get_logger("anu_watchd.ledger")

_CHUNK = 1 << 20
# A smaller ledger gets no checkpoint at close, and a checkpoint is rewritten only once this
# much was appended after what it covers (~14,000 lines, whose parse takes ~50 ms at open):
# a one-shot command that appends a line does not rewrite an index of tens of MB.
CHECKPOINT_MIN_BYTES = 4 << 20
_CACHE_MAX = 4096
_STATES: tuple[LedgerState, ...] = tuple(LedgerState)  # code = position + 1; 0 is never used
_CODES = {s: i + 1 for i, s in enumerate(_STATES)}
_BYTE_CODES = {s.value.encode(): c for s, c in _CODES.items()}
_BY_NAME = {s.value: s for s in _STATES}
_SCHEMA = " ".join(s.value for s in _STATES).encode()  # a checkpoint's codes must mean the same
_UNFINISHED = frozenset(_CODES[s] for s in (LedgerState.CLAIMED, LedgerState.RETRY))
_TERMINAL = frozenset(_CODES[s] for s in _STATES if s.terminal)
_REQUIRED = frozenset(LedgerEntry("k", "t", "s", "c", LedgerState.DONE, 1, "ts").to_json())
_STRINGS = ("key", "task_id", "sha256", "collector", "kind", "state", "ts")
# Bytes a canonical line never holds: escapes and control characters need json.loads.
_UNSAFE = bytes([*range(0x0A), *range(0x0B, 0x20), 0x5C, 0x7F])

KeyId = bytes | str


# -- the canonical-line template ----------------------------------------------------


def _shape(schedule_id: str | None) -> list[bytes]:
    sample = LedgerEntry(
        key="@key",
        task_id="@task",
        sha256="@sha",
        collector="@col",
        kind="@kind",
        state=LedgerState.CLAIMED,
        attempt=7,
        schedule_id=schedule_id,
        ts="@ts",
    )
    return encode(sample.to_json())[:-1].split(b'"')


_S, _N = _shape("@sid"), _shape(None)
_KEY, _TASK, _SHA = _S.index(b"@key"), _S.index(b"@task"), _S.index(b"@sha")
_COL, _KIND, _STATE = _S.index(b"@col"), _S.index(b"@kind"), _S.index(b"CLAIMED")
_ATTEMPT, _SID, _TS = _S.index(b":7,"), _S.index(b"@sid"), -2
# Both shapes must agree up to schedule_id and end with the timestamp, or the parser is wrong.
if _N[: _SID - 1] != _S[: _SID - 1] or _N[_TS] != b"@ts" or _S[_TS] != b"@ts" or _ATTEMPT > _SID:
    raise ImportError("LedgerEntry.to_json() no longer fits the ledger's fast parser")


def _template(parts: list[bytes], *variable: int) -> list[bytes]:
    """The shape with its variable fields blanked, as _canonical blanks them."""
    tpl = list(parts)
    for i in (_KEY, _TASK, _SHA, _COL, _KIND, _STATE, _ATTEMPT, _TS, *variable):
        tpl[i] = b""
    return tpl


_T_SID, _T_NULL = _template(_S, _SID), _template(_N)
_N_SID, _N_NULL = len(_T_SID), len(_T_NULL)
# Attempts are small; a bigger one simply takes the json.loads path.
_ATTEMPTS = frozenset(b":%d," % i for i in range(1000))


def _plain(data: bytes) -> bool:
    """ASCII without escapes or control characters: safe for :func:`_canonical`."""
    return data.isascii() and len(data.translate(None, _UNSAFE)) == len(data)


def _canonical(line: bytes) -> tuple[KeyId, bytes, int] | None:
    """(key id, task_id, state code) of a line in this daemon's own shape, else None.

    The caller has checked :func:`_plain`, so every quoted run is a complete
    JSON string that means exactly its bytes.
    """
    p = line.split(b'"')
    n = len(p)
    if n == _N_SID:
        tpl = _T_SID
        p[_SID] = b""
    elif n == _N_NULL:
        tpl = _T_NULL
    else:
        return None
    key, task, code, att = p[_KEY], p[_TASK], _BYTE_CODES.get(p[_STATE]), p[_ATTEMPT]
    p[_KEY] = p[_TASK] = p[_SHA] = p[_COL] = p[_KIND] = p[_STATE] = p[_ATTEMPT] = p[_TS] = b""
    if code is None or att not in _ATTEMPTS or p != tpl:
        return None
    return _key_id(key), task, code


# -- full validation ----------------------------------------------------------------


def _entry(doc: Any) -> LedgerEntry:
    """A LedgerEntry from a parsed line; ValueError names what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    missing = _REQUIRED - doc.keys()
    if missing:
        raise ValueError(f"missing field(s) {', '.join(sorted(missing))}")
    if type(doc["v"]) is not int or doc["v"] != 1:
        raise ValueError(f"unsupported version {doc['v']!r}")
    for name in _STRINGS:
        if type(doc[name]) is not str:
            raise ValueError(f"{name} is not a string")
    if type(doc["attempt"]) is not int or doc["attempt"] < 0:
        raise ValueError("attempt is not a non-negative integer")
    if doc["schedule_id"] is not None and type(doc["schedule_id"]) is not str:
        raise ValueError("schedule_id is neither null nor a string")
    return _build(doc, LedgerState(doc["state"]))


def _parse(line: bytes) -> LedgerEntry:
    try:
        return _entry(json.loads(line.decode("utf-8")))
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def _reread(line: bytes) -> LedgerEntry:
    """An entry from a line that passed validation at load or was written by us."""
    doc = json.loads(line)
    return _build(doc, _BY_NAME[doc["state"]])


def _build(doc: dict[str, Any], state: LedgerState) -> LedgerEntry:
    return LedgerEntry(
        key=doc["key"],
        task_id=doc["task_id"],
        sha256=doc["sha256"],
        collector=doc["collector"],
        kind=doc["kind"],
        state=state,
        attempt=doc["attempt"],
        schedule_id=doc["schedule_id"],
        ts=doc["ts"],
    )


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _key_id(key: bytes) -> KeyId:
    """Our own keys (``ik1-`` + 40 lowercase hex) as their 20 raw bytes; any other as str."""
    if len(key) == 44 and key.startswith(b"ik1-") and key.islower():
        try:
            return binascii.unhexlify(key[4:])
        except binascii.Error:
            pass
    return key.decode("utf-8", "surrogatepass")


# -- loading and recovery -----------------------------------------------------------


class _Loader:
    """Builds the index from complete lines, in file order."""

    def __init__(self, path: Path, index: ledgerindex.Index | None = None) -> None:
        self.path = path
        self.keys: dict[KeyId, int] = {} if index is None else index.keys
        self.tasks: dict[bytes, int] = {} if index is None else index.tasks
        self.lineno = 0 if index is None else index.covered.lines
        self.offset = 0 if index is None else index.covered.size

    def feed(self, block: bytes) -> None:
        """Index ``block``: whole lines, each ending in a newline."""
        lines = block.split(b"\n")
        lines.pop()
        fast = _plain(block)
        keys, tasks, offset, lineno = self.keys, self.tasks, self.offset, self.lineno
        for line in lines:
            lineno += 1
            parsed = _canonical(line) if fast or _plain(line) else None
            if parsed is None:
                parsed = self._slow(line, lineno)
            v = offset << 3 | parsed[2]
            keys[parsed[0]] = v
            tasks[parsed[1]] = v
            offset += len(line) + 1
        self.lineno = lineno
        self.offset = offset

    def _slow(self, line: bytes, lineno: int) -> tuple[KeyId, bytes, int]:
        try:
            entry = _parse(line)
        except ValueError as exc:
            raise LedgerCorruptError(str(self.path), lineno, str(exc)) from exc
        return _key_id(_utf8(entry.key)), _utf8(entry.task_id), _CODES[entry.state]


def _start(path: Path, fh: BinaryIO) -> tuple[_Loader, int | None]:
    """A loader primed from a usable checkpoint, ``fh`` at the size it covers; or a fresh one."""
    index = ledgerindex.try_load(path, fh.fileno(), _SCHEMA)
    if index is None:
        return _Loader(path), None
    fh.seek(index.covered.size)
    return _Loader(path, index), index.covered.size


def _load(loader: _Loader, fh: BinaryIO) -> int:
    """Index every complete line from ``fh``'s position on; return the torn tail's length."""
    pending = bytearray()
    while chunk := fh.read(_CHUNK):
        cut = chunk.rfind(b"\n") + 1
        if not cut:  # a long line, or a long torn tail: keep collecting
            pending += chunk
            continue
        pending += chunk[:cut]
        loader.feed(bytes(pending))
        pending = bytearray(chunk[cut:])
    return len(pending)


def _cut(path: Path, size: int, covered: int | None) -> None:
    """Cut the torn tail; first remove a checkpoint that covers bytes to be cut (defence only:
    recovery cuts after the covered size, where the loader starts)."""
    if covered is not None and size < covered:
        try:
            fsio.remove_durably(ledgerindex.path_for(path))
        except OSError as exc:
            raise DurabilityError(f"{path}: cannot remove the checkpoint: {exc}") from exc
    _truncate(path, size)


def _sync(path: Path, fd: int) -> None:
    """A process killed between its write and its fsync leaves lines that are only in the
    page cache: make what was indexed durable before anything relies on it (a skipped
    wake, a checkpoint over those bytes)."""
    try:
        fsio.fsync(fd)
    except OSError as exc:
        raise DurabilityError(f"{path}: cannot make the ledger durable: {exc}") from exc


def _truncate(path: Path, size: int) -> None:
    """Cut the file to ``size`` bytes, durably; safe only for the single writer."""
    try:
        fd = fsio.open_state(path, os.O_WRONLY, op="truncate the ledger's torn tail")
        try:
            fsio.cut_to(fd, size)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DurabilityError(f"{path}: cannot truncate the torn tail: {exc}") from exc


def _read_line(fd: int, offset: int) -> bytes:
    """The line starting at ``offset``, without its newline."""
    size = 1024
    while True:
        data = os.pread(fd, size, offset)
        end = data.find(b"\n")
        if end >= 0:
            return data[:end]
        if len(data) < size:
            raise ValueError("no complete line there")
        size *= 4


def task_field(task_id: str) -> list[bytes]:
    """The bytes a JSON line holds for ``"task_id": task_id`` (task ids need no escapes)."""
    tid = _utf8(task_id)
    return [b'"task_id":"' + tid + b'"', b'"task_id": "' + tid + b'"']


def task_history(path: Path, task_id: str) -> list[LedgerEntry]:
    """Every ledger line of ``task_id``, oldest first; read-only, beside a running daemon.

    The index holds only each task's latest line, and only in the daemon's memory,
    so the lines are found by a byte search for the task's field (see
    :func:`~anu_watchd.appendlog.lines_with`), and each is validated as at load.
    """
    found = []
    for _offset, line in lines_with(path, task_field(task_id)):
        try:
            entry = _parse(line)
        except ValueError:
            continue  # not this command's business to judge: the daemon refuses to start
        if entry.task_id == task_id:
            found.append(entry)
    return found


# -- the ledger ---------------------------------------------------------------------


class Ledger:
    """The write-ahead ledger and dedupe index; use :meth:`open`."""

    def __init__(
        self,
        path: Path,
        keys: dict[KeyId, int],
        tasks: dict[bytes, int],
        *,
        end: int = 0,
        lines: int = 0,
        saved: int | None = None,
        checkpoint_min_bytes: int = CHECKPOINT_MIN_BYTES,
        fail_stop: threading.Event | None = None,
    ) -> None:
        self.path = path
        self._fail_stop = fail_stop
        self._keys = keys
        self._tasks = tasks
        self._counts = collections.Counter(map((7).__and__, keys.values()))
        self._end = end  # the file's size after recovery, and its lines
        self._lines = lines
        self._saved = saved  # the size the checkpoint on disk covers
        self._min_bytes = checkpoint_min_bytes
        self._appended = 0  # lines indexed since open, and the offset of the last one
        self._last: int | None = None
        self._cache: dict[int, LedgerEntry] = {}
        self._rfd: int | None = None
        self._log: AppendLog | None = None  # opened on the first record: a missing file is fine
        self._open_lock = asyncio.Lock()
        self._broken: DurabilityError | None = None
        self._closed = False

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        checkpoint_min_bytes: int = CHECKPOINT_MIN_BYTES,
        fail_stop: threading.Event | None = None,
    ) -> Ledger:
        """Load and recover the ledger at ``path`` (blocking; run at start-up, under the lock).

        ``checkpoint_min_bytes``: a smaller ledger gets no checkpoint at close, and a
        checkpoint is rewritten only once that many bytes follow what it covers.
        ``fail_stop``: shared with the daemon's other writers (see ``AppendLog``).
        """
        try:
            fd = fsio.open_state(path, os.O_RDONLY, op="read the ledger")
            with os.fdopen(fd, "rb", buffering=0) as fh:
                loader, covered = _start(path, fh)
                torn = _load(loader, fh)
                if not torn:  # else the truncation's fsync below does it
                    _sync(path, fh.fileno())
        except FileNotFoundError:
            ledgerindex.discard(path, "there is no ledger")
            return cls(path, {}, {}, checkpoint_min_bytes=checkpoint_min_bytes, fail_stop=fail_stop)
        except DurabilityError:  # LedgerCorruptError is an OSError too: let it through as is
            raise
        except OSError as exc:
            raise DurabilityError(f"{path}: cannot read the ledger: {exc}") from exc
        if torn:
            _cut(path, loader.offset, covered)
            _log.warning("ledger_tail_truncated", path=str(path), dropped_bytes=torn)
        return cls(
            path,
            loader.keys,
            loader.tasks,
            end=loader.offset,
            lines=loader.lineno,
            saved=covered if covered is not None and covered <= loader.offset else None,
            checkpoint_min_bytes=checkpoint_min_bytes,
            fail_stop=fail_stop,
        )

    # -- queries ----------------------------------------------------------------

    def __len__(self) -> int:
        """The number of distinct idempotency keys."""
        return len(self._keys)

    def get(self, key: str) -> LedgerEntry | None:
        """The latest state recorded for the idempotency ``key``."""
        v = self._keys.get(_key_id(_utf8(key)))
        return None if v is None else self._at(v >> 3)

    def latest_for_task(self, task_id: str) -> LedgerEntry | None:
        """The most recent line, of any key, for ``task_id``."""
        v = self._tasks.get(_utf8(task_id))
        return None if v is None else self._at(v >> 3)

    def unfinished(self) -> list[LedgerEntry]:
        """Keys whose latest state is CLAIMED or RETRY, in file order: re-fire them."""
        return [self._at(v >> 3) for v in self._latest(_UNFINISHED)]

    def terminal_entries(self) -> Iterator[LedgerEntry]:
        """The latest DONE or FAILED entry of every key that has one, in file order."""
        for v in self._latest(_TERMINAL):
            yield self._at(v >> 3)

    def terminal_tasks(self) -> Iterator[tuple[str, LedgerState]]:
        """(task_id, DONE or FAILED) for every task whose latest line is terminal; no I/O.

        What a marker rebuild needs to find missing markers cheaply; fetch the
        full entry with :meth:`latest_for_task` only for those.
        """
        for task, v in list(self._tasks.items()):
            if (v & 7) in _TERMINAL:
                yield task.decode("utf-8", "surrogatepass"), _STATES[(v & 7) - 1]

    @property
    def lines(self) -> int:
        """Lines in the ledger (recovered at open plus appended since)."""
        return self._lines + self._appended

    @property
    def durable_end(self) -> int:
        """The offset after the last durable line: where the next line will start."""
        return self._end if self._log is None else self._log.end

    def lines_after(self, offset: int) -> Iterator[tuple[int, LedgerEntry]]:
        """Every durable line from ``offset`` (a line start) on, parsed; blocking.

        Start-up repair reads only this tail, after the projections' watermark
        (docs/durability.md, "Projections"); an offset that is not a line start
        (a watermark from another ledger) reads the whole file. Read in 1 MiB
        blocks: a missing watermark (the first start) reads it all.
        """
        end = self.durable_end
        try:
            fd = fsio.open_state(self.path, os.O_RDONLY, op="read the ledger")
        except FileNotFoundError:
            return
        try:
            if not 0 < offset <= end or os.pread(fd, 1, offset - 1) != b"\n":
                offset = 0
            rest = b""
            while offset + len(rest) < end:
                block = os.pread(fd, min(1 << 20, end - offset - len(rest)), offset + len(rest))
                if not block:
                    break
                *lines, rest = (rest + block).split(b"\n")
                for line in lines:
                    yield offset, _reread(line)
                    offset += len(line) + 1
        finally:
            os.close(fd)

    def counts(self) -> dict[str, int]:
        """How many keys are in each latest state."""
        return {s.value: self._counts[_CODES[s]] for s in _STATES}

    @property
    def healthy(self) -> bool:
        """False once a write failed (the ledger is poisoned) or after close."""
        log_ok = self._log is None or self._log.healthy
        stopped = self._fail_stop is not None and self._fail_stop.is_set()
        return self._broken is None and not self._closed and log_ok and not stopped

    # -- writing ----------------------------------------------------------------

    async def record(self, entry: LedgerEntry) -> None:
        """Append ``entry`` durably, then index it; DurabilityError poisons the ledger."""
        log = await self._writer()
        await log.append(entry.to_json(), on_durable=functools.partial(self._indexed, entry))

    async def record_many(self, entries: Sequence[LedgerEntry]) -> None:
        """Append ``entries`` in order as one group (one flush, one waiter), then index them."""
        log = await self._writer()
        await log.append_many([(e.to_json(), functools.partial(self._indexed, e)) for e in entries])

    def halt(self, cause: BaseException) -> None:
        """Fail-stop: refuse every later record, drop queued ones unwritten (docs/durability.md)."""
        if self._broken is None:
            self._broken = DurabilityError(f"{self.path}: halted after a fatal error")
            self._broken.__cause__ = cause
        if self._log is not None:
            self._log.halt(cause)

    async def aclose(self) -> None:
        """Let queued records become durable, close the files, then write the checkpoint."""
        healthy = self.healthy
        self._closed = True
        if self._log is not None:
            await self._log.aclose()
            healthy = healthy and self._log.failure is None  # the last flush may have failed
        if self._rfd is not None:
            os.close(self._rfd)
            self._rfd = None
        if healthy and self._broken is None:
            await asyncio.to_thread(self._checkpoint)

    async def _writer(self) -> AppendLog:
        if self._closed:
            raise ValueError(f"{self.path}: record on a closed ledger")
        if self._broken is not None:
            raise DurabilityError(f"{self.path}: the ledger is poisoned") from self._broken
        if self._log is None:
            async with self._open_lock:
                if self._log is None:
                    self._log = await self._open_log()
        return self._log

    async def _open_log(self) -> AppendLog:
        try:
            return await asyncio.to_thread(
                AppendLog.open, self.path, fail_stop=self._fail_stop, thread_name="anu-ledger"
            )
        except DurabilityError as exc:
            self._broken = exc
            raise

    def _indexed(self, entry: LedgerEntry, offset: int) -> None:
        v = offset << 3 | _CODES[entry.state]
        key = _key_id(_utf8(entry.key))
        old = self._keys.get(key)
        if old is not None:
            self._counts[old & 7] -= 1
        self._counts[v & 7] += 1
        self._keys[key] = v
        self._tasks[_utf8(entry.task_id)] = v
        self._remember(offset, entry)
        self._appended += 1
        self._last = offset

    # -- the checkpoint ---------------------------------------------------------------

    def _checkpoint(self) -> None:
        """Write the checkpoint if one is due; a failure is only a warning."""
        try:
            covered = self._covered()
            if covered is not None:
                ledgerindex.try_save(self.path, self._keys, self._tasks, covered, _SCHEMA)
        except Exception as exc:  # an optimisation is never a reason for a failed close
            ledgerindex.not_written(self.path, exc)

    def _covered(self) -> ledgerindex.Covered | None:
        """What a checkpoint written now covers, or None if none is due."""
        try:
            fd = fsio.open_state(self.path, os.O_RDONLY, op="checkpoint the ledger")
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size == self._saved or size - (self._saved or 0) < self._min_bytes:
                return None  # nothing new, or a tail the next start parses in ~50 ms
            self._check_covers(fd, size)
            fp = ledgerindex.fingerprint(fd, size)
        finally:
            os.close(fd)
        return ledgerindex.Covered(size, self._lines + self._appended, fp)

    def _check_covers(self, fd: int, size: int) -> None:
        """ValueError unless the index holds every line of the file and nothing more."""
        appends = 0 if self._log is None else self._log.counters.appends
        if self._last is None:
            agree = size == self._end and appends == 0
        else:
            last = os.pread(fd, size - self._last, self._last)  # the last line we indexed
            agree = appends == self._appended and last.find(b"\n") == size - self._last - 1
        if not agree:
            raise ValueError("the index does not match the ledger's bytes; not checkpointed")

    # -- reading entries back ---------------------------------------------------------

    def _latest(self, codes: frozenset[int]) -> list[int]:
        return sorted(v for v in self._keys.values() if (v & 7) in codes)

    def _at(self, offset: int) -> LedgerEntry:
        entry = self._cache.get(offset)
        if entry is None:
            entry = self._read(offset)
            self._remember(offset, entry)
        return entry

    def _read(self, offset: int) -> LedgerEntry:
        try:
            if self._rfd is None:
                self._rfd = fsio.open_state(self.path, os.O_RDONLY, op="read the ledger")
            return _reread(_read_line(self._rfd, offset))
        except OSError as exc:
            raise DurabilityError(f"{self.path}: cannot read the ledger: {exc}") from exc
        except (ValueError, KeyError) as exc:  # the line changed under us: not a single writer
            raise LedgerCorruptError(str(self.path), 0, f"offset {offset}: {exc}") from exc

    def _remember(self, offset: int, entry: LedgerEntry) -> None:
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()  # cheaper than LRU bookkeeping; it only saves re-reads
        self._cache[offset] = entry
