"""Durable writes and defensive reads: the one module that does either (docs/durability.md).

Every file we create goes tmp (same directory, ``O_EXCL``) -> write all ->
fsync(file) -> rename -> fsync(parent dir). The failure contract, which the
producer reports and the daemon treats as fatal::

    before the rename   NotWrittenError      the target is untouched, no temp file remains
    the dir fsync       OutcomeUnknownError  renamed, but a crash may still undo it

Every fsync in the package, files and directories alike, goes through
``fsync`` below so that a test can patch that one seam to inject EIO. A failed
fsync is never retried on the same descriptor: Linux may already have dropped
the dirty pages and cleared the error, so a second fsync that "succeeds"
proves nothing.

Inputs written by workers are opened as if hostile: never through a symlink,
never blocking on a FIFO, one link only, the size decided before reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import json
import math
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from anu_watchd.errors import (
    DurabilityError,
    InputVanishedError,
    NotWrittenError,
    OutcomeUnknownError,
    StatePathError,
    UnsafeInputError,
)
from anu_watchd.model import QuarantineReason

TMP_PREFIX = ".tmp-"
_TEMP_TOKEN_BYTES = 6  # a temp's random suffix: 12 hex digits
NAME_MAX = 255

_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_AT_FDCWD = -100
_READ_TRIES = 4  # reads of an input replaced under us before it counts as vanished
_RENAME_NOREPLACE = 1
T = TypeVar("T")


# -- the fsync seam -------------------------------------------------------------


def fsync(fd: int) -> None:
    """The single fsync of the package; patch ``anu_watchd.fsio.fsync`` to inject faults."""
    os.fsync(fd)


def syncfs(fd: int) -> None:
    """syncfs(2) of the filesystem holding ``fd``: the bulk sync of projections.

    A second seam beside ``fsync`` (patch ``anu_watchd.fsio.syncfs``). Since
    Linux 5.8 it reports a writeback error of any file on the filesystem once
    per descriptor, like fsync; a failure is fatal and never retried.
    """
    if _libc_syncfs()(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs failed: {os.strerror(err)}")


@functools.cache
def _libc_syncfs() -> Any:
    fn = ctypes.CDLL(None, use_errno=True).syncfs
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def sync_bulk(directory: Path, halted: threading.Event | None = None) -> None:
    """Make every write renamed so far on ``directory``'s filesystem durable: one syncfs."""
    fd = os.open(directory, _DIR_FLAGS)
    try:
        check_halted(halted)
        syncfs(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, *, mode: int = 0o750) -> bool:
    """Create ``path`` (and missing parents) durably; False if it already existed."""
    if path.is_dir():
        return False
    if path.parent != path:  # the recursion ends at the root, or at a vanished cwd
        ensure_dir(path.parent, mode=mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    _sync_dir_after(path.parent, f"directory {path.name!r}")
    return True


def check_real_dir(path: Path, op: str) -> None:
    """Raise StatePathError unless ``path`` is itself a directory: never a symlink to one.

    A state directory swapped for a symlink after start would carry our
    renames (quarantine moves) elsewhere; the config check refuses it at start.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise StatePathError(path, op, exc.strerror or str(exc)) from None
    if not stat.S_ISDIR(mode):
        raise StatePathError(path, op, f"it is a {describe_mode(mode)}, not a directory")


# -- atomic write ---------------------------------------------------------------


def is_temp_name(name: str) -> bool:
    """Our temp files are ``.tmp-<final name>.<random>``; they are never inputs."""
    return name.startswith(TMP_PREFIX)


def temp_name(final: str) -> str:
    """A fresh temp name for ``final``, clipped so it never exceeds NAME_MAX."""
    suffix = "." + secrets.token_hex(_TEMP_TOKEN_BYTES)
    room = NAME_MAX - len(TMP_PREFIX) - len(suffix)
    return TMP_PREFIX + os.fsdecode(os.fsencode(final)[:room]) + suffix


def is_temp_of(name: str, final: str) -> bool:
    """``name`` is one that ``temp_name(final)`` makes (``final`` short enough not to clip)."""
    stem, dot, token = name.rpartition(".")
    return (
        dot == "."
        and stem == TMP_PREFIX + final
        and len(token) == 2 * _TEMP_TOKEN_BYTES
        and all(c in "0123456789abcdef" for c in token)
    )


def atomic_write(path: Path, data: bytes | bytearray, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` durably, all or nothing (see the module docstring)."""
    _write_renamed(path, data, mode=mode, synced=True)
    _sync_dir_after(path.parent, repr(path.name))


def write_many_unsynced(
    writes: Sequence[tuple[Path, bytes]],
    *,
    remove: Sequence[Path] = (),
    halted: threading.Event | None = None,
) -> None:
    """Projections: each file tmp -> write -> rename, atomic to readers, not yet durable.

    No fsync here: the caller makes a whole batch durable with ``sync_bulk``
    and start-up repair rewrites what a power cut took (docs/durability.md,
    "Projections"). A failure may leave earlier files renamed: callers treat
    it as fatal. ``halted`` stops the batch before its next file.
    """
    for path, data in writes:
        check_halted(halted)
        _write_renamed(path, data, mode=0o644, synced=False)
    for path in remove:
        check_halted(halted)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _write_renamed(path: Path, data: bytes | bytearray, *, mode: int, synced: bool) -> None:
    """``data`` into a fresh temp beside ``path`` (fsynced if ``synced``), renamed onto it.

    Any failure removes the temp and raises ``NotWrittenError`` naming ``path``.
    """
    tmp = path.parent / temp_name(path.name)
    try:
        fd = os.open(tmp, _WRITE_FLAGS, mode)
    except OSError as exc:
        raise _not_written(path, exc, "not written") from exc
    try:
        _fill(fd, data, synced=synced)
        # os.rename, not a copy: the rename is what makes the new content appear atomically.
        os.rename(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise _not_written(path, exc, "not written") from exc
    except BaseException:
        _discard(tmp)
        raise


def check_halted(halted: threading.Event | None) -> None:
    """Raise ECANCELED once ``halted`` is set: a writer thread's check before its next step."""
    if halted is not None and halted.is_set():
        raise OSError(errno.ECANCELED, "halted after a fatal error elsewhere")


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # cannot happen on a regular file, but never spin on it
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


def _fill(fd: int, data: bytes | bytearray, *, synced: bool) -> None:
    """Write all of ``data``, fsync if ``synced``, close; closed whatever happens."""
    try:
        _write_all(fd, data)
        if synced:
            fsync(fd)
    finally:
        os.close(fd)


def _discard(tmp: Path) -> None:
    # Best effort: a temp left by a failing disk is removed by remove_stale_temps at start.
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def failure_text(exc: OSError, op: str) -> str:
    """``<op>: <path>[ -> <path2>]: <reason>``: what an operator needs from a fatal OSError."""
    where = "" if exc.filename is None else f"{os.fsdecode(exc.filename)}"
    if exc.filename2 is not None:
        where += f" -> {os.fsdecode(exc.filename2)}"
    reason = exc.strerror or str(exc)
    return f"{op}: {where}: {reason}" if where else f"{op}: {reason}"


def _not_written(path: Path, exc: OSError, what: str) -> NotWrittenError:
    return NotWrittenError(exc.errno, f"{what}: {exc.strerror or exc}", str(path))


def _sync_dir_after(directory: Path, what: str) -> None:
    """fsync ``directory`` after a change in it; failure means the outcome is unknown."""
    try:
        fsync_dir(directory)
    except OSError as exc:
        msg = f"directory fsync failed, {what} may not survive a crash: {exc.strerror or exc}"
        raise OutcomeUnknownError(exc.errno, msg, str(directory)) from exc


# -- opening the daemon's own state files ---------------------------------------

_STATE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def open_state(path: Path, flags: int, mode: int = 0o644, *, op: str = "open") -> int:
    """Open a state file (ledger, evidence log, lock, checkpoint): a regular file, or refuse.

    Never through a symlink (``O_NOFOLLOW``: a planted link must not aim our
    writes at another file), never blocking (``O_NONBLOCK``: a planted FIFO
    must not hang the daemon or ``status``), and the opened file must be a
    regular file. FileNotFoundError and FileExistsError pass through for the
    caller to create or skip; any other wrong type is a StatePathError naming
    the path and ``op`` (exit 70; docs/operations.md).
    """
    try:
        fd = os.open(path, flags | _STATE_FLAGS, mode)
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "it is a symlink; state files are never followed"
            raise StatePathError(path, op, reason) from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise StatePathError(path, op, f"{_kind_at(path)}, not a regular file") from None
        raise StatePathError(path, op, exc.strerror or str(exc)) from exc
    try:
        st_mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st_mode):
        os.close(fd)
        raise StatePathError(path, op, f"it is a {describe_mode(st_mode)}, not a regular file")
    return fd


def _kind_at(path: Path) -> str:
    try:
        return f"it is a {describe_mode(os.lstat(path).st_mode)}"
    except OSError:
        return "it is a special file"


# -- defensive read of worker-written input -------------------------------------


@attrs.frozen
class InputFile:
    """An input's bytes and the fstat taken before they were read."""

    data: bytes = attrs.field(repr=False)  # never in a log line: it may hold the key
    st: os.stat_result


def read_input(path: Path, max_bytes: int) -> InputFile:
    """Read a worker's result without trusting it.

    Raises UnsafeInputError (quarantine it), InputVanishedError (ignore it).
    The returned ``st`` predates the read, so if the file changes while it is
    read, a later scan sees a different stamp and runs it again (dedupe-safe).

    A worker's atomic replace (a rename over the path) between our lstat and
    open, or after the open (the opened inode then has 0 links), is a normal
    event, not an attack: the path is read again, up to ``_READ_TRIES`` times.
    A path replaced at every try is reported vanished; the last rename brings
    its own event (docs/durability.md).
    """
    for _ in range(_READ_TRIES):
        got = _read_input_once(path, max_bytes)
        if got is not None:
            return got
    raise InputVanishedError(errno.ENOENT, "replaced at every read", str(path))


def _read_input_once(path: Path, max_bytes: int) -> InputFile | None:
    """One read of the path; None when it was replaced under us (read it again)."""
    try:
        lst = os.lstat(path)
    except FileNotFoundError as exc:
        raise _vanished(path) from exc
    if not stat.S_ISREG(lst.st_mode):
        raise _not_regular(f"not a regular file: {describe_mode(lst.st_mode)}", identity(lst))
    fd = _open_input(path)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if _replaced(lst, st):
            return None
        _check_opened(st, max_bytes)
        data = _read_at_most(fd, max_bytes + 1, st.st_size)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        detail = f"grew past {max_bytes} bytes"
        raise UnsafeInputError(QuarantineReason.OVERSIZE, detail, identity(st))
    return InputFile(data, st)


def identity(st: os.stat_result) -> tuple[int, int]:
    """Which file a stat describes: (st_dev, st_ino)."""
    return (st.st_dev, st.st_ino)


def _replaced(lst: os.stat_result, st: os.stat_result) -> bool:
    """The opened file is not the one lstat saw, or was unlinked since: a replace, not an attack."""
    moved = (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino)
    return moved or (stat.S_ISREG(st.st_mode) and st.st_nlink == 0)


def read_state(path: Path, max_bytes: int, *, follow: bool = False) -> bytes:
    """Up to ``max_bytes`` of a small state file (a marker, an envelope, the enable flag).

    These live in directories others can write to: a FIFO, socket or symlink
    planted at the path raises OSError here instead of blocking the event
    loop in open() or read() (O_NONBLOCK, O_NOFOLLOW, then fstat).
    ``follow=True`` (the operator's enable flag) accepts a symlink to a
    regular file.
    """
    fd = os.open(path, _READ_FLAGS & ~os.O_NOFOLLOW if follow else _READ_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = describe_mode(st.st_mode)
            raise OSError(errno.EINVAL, f"not a regular file: {kind}", str(path))
        return _read_at_most(fd, max_bytes, st.st_size)
    finally:
        os.close(fd)


def _open_input(path: Path) -> int | None:
    """The opened input; None when a symlink or special file was swapped in after the
    lstat (ELOOP, ENXIO): read again, so that the lstat judges what is there now."""
    try:
        return os.open(path, _READ_FLAGS)
    except FileNotFoundError as exc:
        raise _vanished(path) from exc
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            return None
        raise


def _check_opened(st: os.stat_result, max_bytes: int) -> None:
    """What was opened is the file lstat saw: it must be regular, have one link, be small."""
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(f"not a regular file: {describe_mode(st.st_mode)}", identity(st))
    if st.st_nlink != 1:
        raise _not_regular(f"{st.st_nlink} hard links", identity(st))
    if st.st_size > max_bytes:
        detail = f"{st.st_size} bytes, limit {max_bytes}"
        raise UnsafeInputError(QuarantineReason.OVERSIZE, detail, identity(st))


def _read_at_most(fd: int, limit: int, size: int = -1) -> bytes:
    """Up to ``limit`` bytes of an opened file; ``size`` is what its fstat said, if known."""
    chunks: list[bytes] = []
    left = limit
    got = 0
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        left -= len(chunk)
        # A short read that ends where the fstat said the file ends is the end: no second
        # read() to see b"" (two system calls a run, the input's and the enable flag's,
        # ~17 us each on a busy host: bench/PROFILE.md section 8). A file that grew, or a
        # /proc-like one whose size says nothing, is read on until b"" as before.
        if got == size and left > 0:
            break
    return b"".join(chunks)


def describe_mode(mode: int) -> str:
    """A short human name for a file type, for quarantine details."""
    kinds = (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISREG, "regular file"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def _not_regular(detail: str, judged: tuple[int, int]) -> UnsafeInputError:
    return UnsafeInputError(QuarantineReason.NOT_REGULAR_FILE, detail, judged)


def _vanished(path: Path) -> InputVanishedError:
    return InputVanishedError(errno.ENOENT, "vanished before it could be read", str(path))


# -- moves and removals ---------------------------------------------------------


def atomic_move(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` without ever replacing ``dst``, then fsync both dirs.

    Works on any file type without following or opening it. Raises
    FileExistsError if ``dst`` exists, NotWrittenError if the rename failed,
    OutcomeUnknownError if a directory fsync failed after it.
    """
    try:
        _rename_noreplace(src, dst)
    except FileExistsError:
        raise
    except OSError as exc:
        raise _not_written(dst, exc, f"{src.name!r} not moved") from exc
    what = f"the move of {src.name!r}"
    _sync_dir_after(dst.parent, what)
    if os.path.abspath(src.parent) != os.path.abspath(dst.parent):
        _sync_dir_after(src.parent, what)


def _rename_noreplace(src: Path, dst: Path) -> None:
    err = _renameat2_noreplace(os.fsencode(src), os.fsencode(dst))
    if err == 0:
        return
    if err is not None and err not in (errno.EINVAL, errno.ENOSYS):
        raise OSError(err, os.strerror(err), str(src), None, str(dst))
    # No RENAME_NOREPLACE here (old libc, or a filesystem such as older NFS or some
    # FUSE answering EINVAL). link()+unlink() is not the fallback: it cannot move
    # directories, and it briefly gives the file a second link. A check then a
    # rename leaves a window in which a file created at ``dst`` would be replaced;
    # our destinations are either ours alone (quarantine, under the instance lock)
    # or names a worker would only write for a task the operator is releasing.
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def _renameat2_noreplace(src: bytes, dst: bytes) -> int | None:
    """0 on success, the errno on failure, None if libc has no renameat2."""
    fn = _libc_renameat2()
    if fn is None:
        return None
    if fn(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE) == 0:
        return 0
    return ctypes.get_errno()


@functools.cache
def _libc_renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, or no shared libc
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def remove_durably(path: Path) -> bool:
    """Unlink ``path`` and fsync its directory; False if it was already absent."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _not_written(path, exc, "not removed") from exc
    _sync_dir_after(path.parent, f"the removal of {path.name!r}")
    return True


def _never(name: str) -> bool:
    return False


def remove_stale_temps(
    directory: Path, *, min_age_s: float = 0.0, dead_writer: Callable[[str], bool] = _never
) -> list[str]:
    """Remove our own ``.tmp-*`` regular files left in ``directory`` by a crash.

    Nothing else is touched: not other names, not symlinks, FIFOs or
    directories that happen to carry the prefix. ``min_age_s`` spares temp
    files a live writer may still be about to rename; temps for which
    ``dead_writer(name)`` is true go whatever their age (their only writer is
    the caller's dead predecessor, e.g. the previous holder of the instance lock).
    """
    stale = _stale_temps(directory, min_age_s, dead_writer)
    removed = [name for name in stale if _unlink_quietly(directory / name)]
    if removed:
        _sync_dir_after(directory, f"the removal of {len(removed)} temp files")
    return sorted(removed)


def _stale_temps(
    directory: Path, min_age_s: float, dead_writer: Callable[[str], bool]
) -> list[str]:
    cutoff = time.time() - min_age_s
    with os.scandir(directory) as it:
        return [
            e.name
            for e in it
            if is_temp_name(e.name) and _is_old_file(e, math.inf if dead_writer(e.name) else cutoff)
        ]


def _is_old_file(entry: os.DirEntry[str], cutoff: float) -> bool:
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_mtime <= cutoff


def _unlink_quietly(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


# -- state files: the one small-JSON reader, the one state-write helper, the tail cut ----


def read_json_object(path: Path, max_bytes: int, *, follow: bool = False) -> dict[str, Any] | None:
    """A small JSON object read through ``read_state``; None if missing, unreadable or not one.

    RecursionError counts as unreadable: a hostile nesting depth must not stop a reader.
    """
    try:
        doc = json.loads(read_state(path, max_bytes, follow=follow))
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


async def durable(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking state write off the loop; any write failure is a DurabilityError.

    The daemon's state writes (markers, envelopes, removals, quarantine moves) all
    go through here: a failure to make state durable stops it (docs/durability.md).
    """
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except (DurabilityError, InputVanishedError):
        raise
    except OSError as exc:  # WriteError included
        op = f"state write failed in {getattr(fn, '__name__', 'a state write')}"
        raise DurabilityError(exc.errno, failure_text(exc, op)) from exc


def cut_to(fd: int, size: int) -> None:
    """Cut an append-only file back to ``size`` bytes (a torn tail), durably.

    Safe only for the file's single writer (the instance-lock holder).
    """
    os.ftruncate(fd, size)
    fsync(fd)
