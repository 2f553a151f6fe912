"""The ledger's index checkpoint: the in-memory index as a file, so start-up need not parse it all.

Parsing a ledger line costs ~4 us in CPython, so a 1,000,000-line ledger takes
~4 s to load (the target is < 3 s). :class:`~anu_watchd.ledger.Ledger`
writes a checkpoint next to the ledger at a clean close; the next open loads
the index from it and parses only the lines appended after the part it covers.
This module is the file: its format (pure :func:`encode` and ``decode_*``),
:func:`load` and :func:`save`, and the policy around them (:func:`try_load`,
:func:`try_save`): a checkpoint is an optimisation, never state, so an unusable
one is ignored with one warning, and a failed write is a warning. Whether a
checkpoint agrees with the index is the ledger's business.

Format, little-endian (``<ledger>.ckpt``)::

    header   magic "ANULIDX\\n", version u32, covered u64 (ledger bytes),
             lines u64 (in those bytes), fingerprint 32s, schema length u16, schema
    frames   kind u8, count u32 (1 to 8,192), then by kind:
               1 digest keys   count * 20-byte key ids; count * i64 values
               2 other keys    count * u32 lengths; count * i64 values; the keys, UTF-8
               3 extra values  count * i64: task values that are no key's latest line
               4 tasks         count * u32 lengths; count * u32 refs; the task ids
             ... in any order, then kind 0 (end) with count 0
    trailer  sha256 of everything before it

A value is the index's ``offset << 3 | state code``; the schema is the state
names in code order, so a checkpoint from a build that numbers them otherwise
is refused. The *value table* is the values of frames 1-3 in file order; a
task refers into it (to a value already read), so a key and a task whose
latest line is the same share one int object, as after a full parse (memory:
the target allows 150 MiB for 1,000,000 lines). Each dict keeps its
order. Frames are small so that a load holds little beyond the index it builds.

Trust. The trailer catches a damaged checkpoint; the fingerprint,
sha256(covered as u64 + the first and the last 4 KiB of the covered bytes),
ties it to the ledger it describes: a shorter, rewritten or replaced ledger
does not match. The covered lines were checked in full when they were
indexed; they are not re-read. Hashing all of a 288 MB prefix would cost
about a second at every start, most of what the checkpoint saves, so a
same-length change in the middle of the covered part after a clean close goes
unseen at the next start, where a full parse would refuse to start (a change
that moves bytes shifts the tail and fails the fingerprint). Delete the
checkpoint to force a full parse (docs/durability.md).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sized
from pathlib import Path
from typing import BinaryIO, TypeVar

import attrs
import structlog

from anu_watchd import fsio
from anu_watchd.errors import CheckpointError

_log = structlog.get_logger("anu_watchd.ledger")

MAGIC = b"ANULIDX\n"
VERSION = 1
# Entries a frame at most. Its buffers (160 KiB of key ids) stay under what glibc serves
# from the heap, so the dicts' big tables come and go by mmap and leave no holes: 64 Ki
# entries a frame cost ~6 MiB more RSS for a 1M-line load.
FRAME = 8192
SUFFIX = ".ckpt"

_HEAD = struct.Struct("<8sIQQ32sH")
_FRAME = struct.Struct("<BI")
_END, _DIGESTS, _OTHERS, _EXTRA, _TASKS = range(5)
_DIGEST = 20  # our own keys, as raw digest bytes (ledger._key_id)
_SUM = 32
_EDGE = 4096  # bytes of the ledger's head and tail that the fingerprint hashes
_SLACK = 4096  # a checkpoint is never bigger than its ledger by more than this
_BLOCK = 1 << 20
_SWAP = sys.byteorder == "big"

KeyId = bytes | str
Read = Callable[[int], bytes]
_T = TypeVar("_T")

if array("I").itemsize != 4 or array("q").itemsize != 8:
    raise ImportError("array typecodes I and q are not 4 and 8 bytes here")


@attrs.frozen
class Covered:
    """The ledger prefix a checkpoint describes: its size, its lines, its fingerprint."""

    size: int
    lines: int
    fingerprint: bytes


@attrs.frozen
class Index:
    """A loaded checkpoint: what it covers and the index of those bytes."""

    covered: Covered
    keys: dict[KeyId, int]
    tasks: dict[bytes, int]


def path_for(ledger: Path) -> Path:
    """The checkpoint of ``ledger``: next to it, its name + ``.ckpt``."""
    return ledger.with_name(ledger.name + SUFFIX)


# -- encoding -------------------------------------------------------------------------


def encode(
    keys: dict[KeyId, int], tasks: dict[bytes, int], covered: Covered, schema: bytes
) -> bytearray:
    """The checkpoint's bytes; ValueError if the index is malformed.

    Tasks go in their order, each after the key frame holding its value: a
    key's first line comes at or after its task's (the key hashes the task
    id), so keys go out in their own order just ahead of the tasks, and both
    dicts grow together at load, as in a full parse.
    """
    enc = _Encoder(_header(covered, schema))
    kchunks = _chunks(keys.items())
    for tchunk in _chunks(tasks.items()):
        for _, v in tchunk:
            while v not in enc.pos and (kchunk := next(kchunks, None)) is not None:
                enc.keys(kchunk)
        enc.tasks(tchunk)
    for kchunk in kchunks:
        enc.keys(kchunk)
    return enc.finish()


def _header(covered: Covered, schema: bytes) -> bytes:
    size, lines, fp = covered.size, covered.lines, covered.fingerprint
    return _HEAD.pack(MAGIC, VERSION, size, lines, fp, len(schema)) + schema


class _Encoder:
    """Frames into one buffer, hashed as they go; ``pos`` places the values no task took yet."""

    def __init__(self, header: bytes) -> None:
        self.out = bytearray()
        self.digest = hashlib.sha256()
        self.pos: dict[int, int] = {}
        self.placed = 0
        self._add(header)

    def keys(self, items: list[tuple[KeyId, int]]) -> None:
        """A frame per run of digest keys or of other keys: the dict's order is kept."""
        for digest, run in itertools.groupby(items, lambda kv: isinstance(kv[0], bytes)):
            if digest:
                self._digests([(k, v) for k, v in run if isinstance(k, bytes)])
            else:
                self._others([(k, v) for k, v in run if isinstance(k, str)])

    def _digests(self, items: list[tuple[bytes, int]]) -> None:
        if any(len(k) != _DIGEST for k, _ in items):
            raise ValueError("a bytes key id is not a 20-byte digest")
        vals = self._place([v for _, v in items])
        self._frame(_DIGESTS, vals, b"".join(k for k, _ in items), _pack("q", vals))

    def _others(self, items: list[tuple[str, int]]) -> None:
        names = [k.encode("utf-8", "surrogatepass") for k, _ in items]
        vals = self._place([v for _, v in items])
        self._frame(_OTHERS, vals, _pack("I", map(len, names)), _pack("q", vals), b"".join(names))

    def tasks(self, items: list[tuple[bytes, int]]) -> None:
        extra = self._place([v for _, v in items if v not in self.pos])
        if extra:
            self._frame(_EXTRA, extra, _pack("q", extra))
        ids = [t for t, _ in items]
        try:
            refs = [self.pos.pop(v) for _, v in items]
        except KeyError as exc:
            raise ValueError("two task ids hold the same line") from exc
        self._frame(_TASKS, ids, _pack("I", map(len, ids)), _pack("I", refs), b"".join(ids))

    def finish(self) -> bytearray:
        self._add(_FRAME.pack(_END, 0))
        self.out += self.digest.digest()
        return self.out

    def _place(self, vals: list[int]) -> list[int]:
        self.pos.update(zip(vals, itertools.count(self.placed)))
        self.placed += len(vals)
        return vals

    def _frame(self, kind: int, entries: Sized, *parts: bytes) -> None:
        self._add(_FRAME.pack(kind, len(entries)))
        for part in parts:
            self._add(part)

    def _add(self, data: bytes) -> None:
        self.digest.update(data)
        self.out += data


def _pack(code: str, values: Iterable[int]) -> bytes:
    arr = array(code, values)
    if _SWAP:
        arr.byteswap()
    return arr.tobytes()


def _chunks(items: Iterable[_T]) -> Iterator[list[_T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, FRAME)):
        yield chunk


# -- decoding -------------------------------------------------------------------------


def verify(read: Read, size: int) -> None:
    """Check the trailer against the ``size`` bytes ``read`` gives from the start."""
    if size < _HEAD.size + _FRAME.size + _SUM:
        raise CheckpointError(f"too short: {size} bytes")
    digest = hashlib.sha256()
    left = size - _SUM
    while left:
        block = read(min(left, _BLOCK))
        digest.update(block)
        left -= len(block)
    if read(_SUM) != digest.digest():
        raise CheckpointError("checksum mismatch")


def decode_header(read: Read, schema: bytes) -> Covered:
    """What the checkpoint covers; CheckpointError unless it is ours, this version and schema."""
    magic, version, size, lines, fp, n = _HEAD.unpack(read(_HEAD.size))
    if magic != MAGIC:
        raise CheckpointError("not a ledger checkpoint")
    if version != VERSION:
        raise CheckpointError(f"format version {version}, this build reads {VERSION}")
    if read(n) != schema:
        raise CheckpointError("written by a build with other ledger states")
    return Covered(size, lines, fp)


def decode_index(read: Read, covered: int) -> tuple[dict[KeyId, int], dict[bytes, int]]:
    """The keys and tasks of the frames; every offset must lie within ``covered`` bytes."""
    keys: dict[KeyId, int] = {}
    tasks: dict[bytes, int] = {}
    table: list[int] = []
    while True:
        kind, n = _FRAME.unpack(read(_FRAME.size))
        if kind == _END:
            return keys, tasks
        if kind not in _DECODERS or not 0 < n <= FRAME:
            raise CheckpointError(f"bad frame: kind {kind}, {n} entries")
        vals = _DECODERS[kind](read, n, keys, tasks, table)
        if vals and (min(vals) < 0 or max(vals) >> 3 >= covered):
            raise CheckpointError("an offset outside the covered bytes")
        table += vals


# Each reads one frame of n entries into keys or tasks and returns its values for the table.


def _digests(read: Read, n: int, keys: dict[KeyId, int], _: object, __: object) -> list[int]:
    blob = read(n * _DIGEST)
    ids = map(blob.__getitem__, map(slice, range(0, n * _DIGEST, _DIGEST), _ends(n)))
    vals = _unpack(read, "q", n)
    keys.update(zip(ids, vals, strict=True))
    return vals


def _others(read: Read, n: int, keys: dict[KeyId, int], _: object, __: object) -> list[int]:
    lengths = _unpack(read, "I", n)
    vals = _unpack(read, "q", n)
    names = _split(read, lengths)
    keys.update(zip((k.decode("utf-8", "surrogatepass") for k in names), vals, strict=True))
    return vals


def _extra(read: Read, n: int, _: object, __: object, ___: object) -> list[int]:
    return _unpack(read, "q", n)


def _tasks(read: Read, n: int, _: object, tasks: dict[bytes, int], table: list[int]) -> list[int]:
    lengths = _unpack(read, "I", n)
    refs = _unpack(read, "I", n)
    names = _split(read, lengths)
    try:
        tasks.update(zip(names, list(map(table.__getitem__, refs)), strict=True))
    except IndexError as exc:
        raise CheckpointError("a task refers past the value table") from exc
    return []


_Decoder = Callable[[Read, int, dict[KeyId, int], dict[bytes, int], list[int]], list[int]]
_DECODERS: dict[int, _Decoder]
_DECODERS = {_DIGESTS: _digests, _OTHERS: _others, _EXTRA: _extra, _TASKS: _tasks}


def _ends(n: int) -> range:
    return range(_DIGEST, (n + 1) * _DIGEST, _DIGEST)


def _unpack(read: Read, code: str, n: int) -> list[int]:
    arr = array(code)
    arr.frombytes(read(n * arr.itemsize))
    if _SWAP:
        arr.byteswap()
    return arr.tolist()


def _split(read: Read, lengths: list[int]) -> list[bytes]:
    """The next ``sum(lengths)`` bytes, cut into pieces of those lengths."""
    ends = list(itertools.accumulate(lengths))
    blob = read(ends[-1])
    return list(map(blob.__getitem__, map(slice, itertools.chain((0,), ends), ends)))


# -- the file -------------------------------------------------------------------------


def fingerprint(fd: int, size: int) -> bytes:
    """The fingerprint of the first ``size`` bytes of the ledger open at ``fd``."""
    n = min(size, _EDGE)
    head, tail = os.pread(fd, n, 0), os.pread(fd, n, size - n)
    if len(head) != n or len(tail) != n:
        raise CheckpointError("the ledger is shorter than the covered size")
    return hashlib.sha256(struct.pack("<Q", size) + head + tail).digest()


def load(path: Path, ledger_fd: int, schema: bytes) -> Index:
    """The checkpoint at ``path`` if it describes the ledger open at ``ledger_fd``.

    Raises FileNotFoundError if there is none, CheckpointError (or another
    OSError) if it is unusable: corrupt, another version or schema, or made
    for other bytes than the ledger now holds.
    """
    ledger_size = os.fstat(ledger_fd).st_size
    with os.fdopen(fsio.open_state(path, os.O_RDONLY, op="read the checkpoint"), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > ledger_size + _SLACK:
            raise CheckpointError(f"{size} bytes, more than its {ledger_size}-byte ledger")
        read = _exact(fh)
        covered = decode_header(read, schema)
        _check_covers(covered, ledger_fd, ledger_size)
        fh.seek(0)
        verify(read, size)
        fh.seek(_HEAD.size + len(schema))
        keys, tasks = decode_index(read, covered.size)
        if fh.tell() != size - _SUM:
            raise CheckpointError("bytes after the end frame")
    return Index(covered, keys, tasks)


def _check_covers(covered: Covered, ledger_fd: int, ledger_size: int) -> None:
    if covered.size > ledger_size:
        raise CheckpointError(f"covers {covered.size} bytes; the ledger has {ledger_size}")
    if fingerprint(ledger_fd, covered.size) != covered.fingerprint:
        raise CheckpointError(f"the ledger's first {covered.size} bytes are not those it covers")


def _exact(fh: BinaryIO) -> Read:
    def read(n: int) -> bytes:
        data = fh.read(n)
        if len(data) != n:
            raise CheckpointError("truncated")
        return data

    return read


def save(
    path: Path, keys: dict[KeyId, int], tasks: dict[bytes, int], covered: Covered, schema: bytes
) -> None:
    """Write the checkpoint durably (fsio.atomic_write: all or nothing, no temp left)."""
    fsio.atomic_write(path, encode(keys, tasks, covered, schema))


# -- policy: an optimisation, never state --------------------------------------------


def try_load(ledger: Path, ledger_fd: int, schema: bytes) -> Index | None:
    """The usable checkpoint of ``ledger`` (open at ``ledger_fd``), or None.

    An unusable one is logged once and removed: the next clean close writes a
    fresh one. Nothing here can stop the daemon from starting.
    """
    try:
        index = load(path_for(ledger), ledger_fd, schema)
    except FileNotFoundError:
        return None
    except Exception as exc:  # an optimisation is never a reason not to start
        discard(ledger, str(exc))
        return None
    _log.info(
        "ledger_checkpoint_loaded", path=str(path_for(ledger)), covered_bytes=index.covered.size
    )
    return index


def discard(ledger: Path, reason: str) -> None:
    """Remove ``ledger``'s checkpoint, if there is one, with a warning saying why."""
    ckpt = path_for(ledger)
    try:
        os.unlink(ckpt)
    except FileNotFoundError:
        return
    except OSError:
        pass  # left in place, it is ignored again at each open until a clean close replaces it
    _log.warning("ledger_checkpoint_ignored", path=str(ckpt), reason=reason)


def try_save(
    ledger: Path, keys: dict[KeyId, int], tasks: dict[bytes, int], covered: Covered, schema: bytes
) -> None:
    """Save ``ledger``'s checkpoint; a failure is a warning, and leaves no partial file."""
    try:
        save(path_for(ledger), keys, tasks, covered, schema)
    except (OSError, ValueError) as exc:  # fsio's WriteError is an OSError
        not_written(ledger, exc)
        return
    _log.info("ledger_checkpoint_written", path=str(path_for(ledger)), covered_bytes=covered.size)


def not_written(ledger: Path, exc: BaseException) -> None:
    """Warn that the checkpoint of ``ledger`` was not written, and why."""
    _log.warning("ledger_checkpoint_not_written", path=str(path_for(ledger)), error=str(exc))
