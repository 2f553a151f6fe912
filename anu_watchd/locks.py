"""The single-instance lock: one process at a time may write the spool's ledger.

An ``flock`` on a lock file, not an ``O_EXCL`` file: the kernel releases it
when the holder dies, so there is no stale-lock reclaim to get wrong (the
TypeScript lock of seed 003 needs a page of reasoning for exactly that).
The holder writes its pid and role into the file so ``anu-watchd reload``
can find the daemon and a refused caller can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from types import TracebackType

import attrs

from anu_watchd import fsio
from anu_watchd.errors import LockHeldError

_HOLDER_MAX_BYTES = 4096


@attrs.frozen
class Holder:
    pid: int
    role: str


class InstanceLock:
    """Hold with ``with InstanceLock(path, role="run"):``; raises LockHeldError if taken."""

    def __init__(self, path: Path, *, role: str) -> None:
        self.path = path
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Never through a planted symlink: the pid written below would overwrite its target.
        fd = fsio.open_state(self.path, os.O_RDWR | os.O_CREAT, op="take the instance lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.path)
            who = f"pid {holder.pid} ({holder.role})" if holder else "another process"
            raise LockHeldError(f"{self.path} is held by {who}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "role": self.role}).encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def read_holder(path: Path) -> Holder | None:
    """Who holds (or last held) the lock, from its content; None if unknown."""
    try:
        doc = json.loads(fsio.read_state(path, _HOLDER_MAX_BYTES))
        return Holder(pid=int(doc["pid"]), role=str(doc["role"]))
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def is_held(path: Path) -> bool:
    """True while some process holds the lock (probed without keeping it)."""
    try:
        fd = fsio.open_state(path, os.O_RDONLY, op="probe the instance lock")
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


PROC_LOCKS = Path("/proc/locks")


def flock_holders(path: Path, *, table: Path = PROC_LOCKS) -> set[int] | None:
    """The pids holding an flock on ``path``, from ``/proc/locks``; None if it cannot be read.

    A line reads ``1: FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF``
    (major and minor in hex), so a holder is matched by device and inode,
    never by the lock file's content, which anyone who can write it may forge.
    """
    try:
        st = os.stat(path)
        text = table.read_text()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    return {pid for pid, where in _flock_lines(text) if where == want}


def _flock_lines(text: str) -> list[tuple[int, tuple[int, int, int]]]:
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":  # a blocked waiter's line has "->" there
            continue
        try:
            major, minor, inode = fields[5].split(":")
            found.append((int(fields[4]), (int(major, 16), int(minor, 16), int(inode))))
        except ValueError:
            continue  # not the shape above: skip rather than guess
    return found
