"""Intake: inotify as a hint, turned into typed events. The only asyncinotify importer.

Watches the events directory for ``CLOSE_WRITE | MOVED_TO`` plus its own
``DELETE_SELF`` / ``MOVE_SELF`` / ``IGNORED``, and the enable flag's
directory for the flag coming and going. ``classify`` (pure) decides what a
name is; the daemon's own markers, envelopes, logs and temp files classify as
nothing, so they never feed back as work. A lost queue (``IN_Q_OVERFLOW``)
becomes an ``Overflow`` event: the daemon answers with a full rescan.

asyncinotify owns the inotify instance and its watches; the events are read
here, from its descriptor. Its own ``get()`` builds a ``Path``, an enum and
an object for every event; a wake makes ~9 events (the worker's temp file
and rename, our two projections' temp files and renames), most of them ours
and dropped here by name before anything is built, so that cost was most of
intake's (docs/design.md, "Intake reads the inotify descriptor itself").
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import os
import stat
import struct
import termios
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
from asyncinotify import Inotify, Mask

from anu_watchd import fsio
from anu_watchd.spool import ACKED_SUFFIX, RETRY_SUFFIX, is_result_name, task_id_with_suffix

DIR_MASK = (
    Mask.CLOSE_WRITE
    | Mask.MOVED_TO
    | Mask.CREATE  # only for what no CLOSE_WRITE follows: see made_in_place_unsafe
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
    | Mask.DONT_FOLLOW
    | Mask.EXCL_UNLINK
)
FLAG_MASK = (
    Mask.CLOSE_WRITE
    | Mask.MOVED_TO
    | Mask.DELETE
    | Mask.MOVED_FROM
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
    | Mask.DONT_FOLLOW
)
LOST = Mask.IGNORED | Mask.DELETE_SELF | Mask.MOVE_SELF
# The events directory's own DELETE_SELF waits until every file open inside it (our ledger
# and evidence log) is closed, so its removal is also watched from the parent directory.
PARENT_MASK = Mask.DELETE | Mask.MOVED_FROM | Mask.ONLYDIR | Mask.DONT_FOLLOW
# Read many events per syscall: a burst of thousands is the normal case.
CACHE_EVENTS = 4096
# struct inotify_event: wd, mask, cookie, len, then len bytes of NUL-padded name.
_EVENT = struct.Struct("iIII")
READ_BYTES = CACHE_EVENTS * (_EVENT.size + 256)
_Q_OVERFLOW = int(Mask.Q_OVERFLOW)
_CREATE = int(Mask.CREATE)
_GONE = int(Mask.DELETE | Mask.MOVED_FROM)
_LOST = int(LOST)

NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "fuse",
    "9p",
    "ceph",
    "glusterfs",
    "lustre",
    "afs",
    "virtiofs",
    "davfs",
    "sshfs",
}


class Kind(enum.Enum):
    RESULT = "result"
    ACKED = "acked"
    RETRY = "retry"
    FLAG = "flag"
    OVERFLOW = "overflow"
    LOST = "lost"


@attrs.frozen
class IntakeEvent:
    kind: Kind
    path: Path | None = None
    task_id: str | None = None
    detail: str = ""


def classify(name: str, glob: str) -> tuple[Kind, str | None] | None:
    """What a name in the events directory is; None for anything that is not work."""
    if fsio.is_temp_name(name):
        return None
    if is_result_name(name, glob):
        return Kind.RESULT, None
    for suffix, kind in ((ACKED_SUFFIX, Kind.ACKED), (RETRY_SUFFIX, Kind.RETRY)):
        if name.endswith(suffix):
            tid = task_id_with_suffix(name, suffix)
            return (kind, tid) if tid is not None else None
    return None


def made_in_place_unsafe(path: Path) -> bool:
    """A name created as a symlink, FIFO, directory, socket or hard link: no CLOSE_WRITE will
    follow, so the pipeline must see it now (and quarantine it NOT_REGULAR_FILE)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False  # gone already
    return not stat.S_ISREG(st.st_mode) or st.st_nlink > 1


def filesystem_type(path: Path) -> str:
    """The filesystem type of the mount holding ``path``, from /proc/self/mountinfo."""
    target = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount = fields[4].replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, fstype = mount, right.split()[0]
    except OSError:
        return "unknown"
    return fstype


def is_network_fs(fstype: str) -> bool:
    return fstype in NETWORK_FS or fstype.startswith("fuse.") or fstype.startswith("nfs")


class Intake:
    """Watches armed by ``arm()`` (before the first scan); ``events()`` yields what they see."""

    def __init__(self, events_dir: Path, flag: Path, glob: str) -> None:
        self.events_dir = events_dir
        self.flag = flag
        self.glob = glob
        self.overflows = 0
        self._inotify: Inotify | None = None
        self._reading: asyncio.AbstractEventLoop | None = None  # where our reader is registered
        self._waiter: asyncio.Future[None] | None = None  # events() waiting for the descriptor
        self._ready = False  # seen readable while nobody waited: read before waiting again
        self._flag_here = flag.parent == events_dir  # the flag lives in the events directory

    def arm(self) -> None:
        ino = Inotify(cache_size=CACHE_EVENTS)
        try:
            events_wd = ino.add_watch(self.events_dir, DIR_MASK).wd
            flag_wd = None
            parent_mask = PARENT_MASK
            if self.flag.parent == self.events_dir.parent:
                parent_mask |= FLAG_MASK  # one inode, one watch: masks must be combined
            elif self.flag.parent != self.events_dir:
                flag_wd = ino.add_watch(self.flag.parent, FLAG_MASK).wd
            parent_wd = ino.add_watch(self.events_dir.parent, parent_mask).wd
            if self.flag.parent == self.events_dir.parent:
                flag_wd = parent_wd
            # asyncinotify opens it blocking; a spurious wake-up must not block the loop.
            os.set_blocking(ino.fd, False)
        except BaseException:
            ino.close()
            raise
        self._events_wd, self._flag_wd, self._parent_wd = events_wd, flag_wd, parent_wd
        self._inotify = ino

    def close(self) -> None:
        if self._inotify is not None:
            self._stop_reading()
            self._inotify.close()
            self._inotify = None

    async def events(self) -> AsyncIterator[IntakeEvent]:
        assert self._inotify is not None, "arm() first"
        fd = self._inotify.fd
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._ready:
                    await self._readable(loop, fd)
                self._ready = False
                try:
                    data = os.read(fd, READ_BYTES)
                except BlockingIOError:
                    continue
                for out in self._translate_all(data):
                    yield out
                    if out.kind is Kind.LOST:
                        return
        finally:
            self._stop_reading()

    async def _readable(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        """Wait until the descriptor is readable.

        The reader stays registered from one wait to the next (two epoll_ctl calls a
        wake-up fewer, at a steady rate most of intake's system calls). But not while
        nobody waits with events unread: with the daemon's queue full the descriptor
        stays readable, and a reader left there would make every loop iteration return
        from epoll at once, spinning. So a callback that finds nobody waiting asks the
        kernel whether anything is unread: nothing (the usual case: epoll saw the
        readiness that the task then read before this callback ran), and the reader
        stays; something, and it is unregistered until the next wait, which reads first.
        """
        self._waiter = loop.create_future()
        if self._reading is None:
            loop.add_reader(fd, self._on_readable)
            self._reading = loop
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            return
        if self._inotify is None or not _unread_bytes(self._inotify.fd):
            return
        self._ready = True
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self._reading is not None and self._inotify is not None:
            self._reading.remove_reader(self._inotify.fd)
        self._reading = None

    def _translate_all(self, data: bytes) -> Iterator[IntakeEvent]:
        at, end = 0, len(data)
        while at < end:
            wd, mask, _cookie, size = _EVENT.unpack_from(data, at)
            at += _EVENT.size
            name = None
            if size:
                raw = data[at : at + size].split(b"\0", 1)[0]
                at += size
                name = os.fsdecode(raw) if raw else None
            out = self._translate(mask, wd, name)
            if out is not None:
                yield out

    def _translate(self, mask: int, wd: int, name: str | None) -> IntakeEvent | None:
        if mask & _Q_OVERFLOW:
            self.overflows += 1
            return IntakeEvent(Kind.OVERFLOW)
        if wd == self._events_wd:
            return self._from_events_dir(mask, name)
        if wd == self._parent_wd and name == self.events_dir.name:
            if mask & _GONE:
                return IntakeEvent(Kind.LOST, self.events_dir, detail=_mask_names(mask))
            return None
        if wd == self._flag_wd:
            return self._from_flag_dir(mask, name)
        return None

    def _from_events_dir(self, mask: int, name: str | None) -> IntakeEvent | None:
        if name is None:
            if mask & _LOST:
                return IntakeEvent(Kind.LOST, self.events_dir, detail=_mask_names(mask))
            return None
        if self._flag_here and name == self.flag.name:
            return IntakeEvent(Kind.FLAG, self.flag)
        kind = classify(name, self.glob)
        if kind is None:
            return None
        path = self.events_dir / name
        if mask & _CREATE and not (kind[0] is Kind.RESULT and made_in_place_unsafe(path)):
            return None  # a regular file: its CLOSE_WRITE (or the rename onto it) follows
        return IntakeEvent(kind[0], path, task_id=kind[1])

    def _from_flag_dir(self, mask: int, name: str | None) -> IntakeEvent | None:
        if name is None:
            if mask & _LOST:
                return IntakeEvent(Kind.LOST, self.flag.parent, detail=_mask_names(mask))
            return None
        return IntakeEvent(Kind.FLAG, self.flag) if name == self.flag.name else None


def _unread_bytes(fd: int) -> int:
    """How many bytes of events the inotify descriptor holds (FIONREAD); 1 if it cannot say."""
    try:
        (count,) = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))
    except OSError:
        return 1  # unknown: the safe answer is "something", which stops the reader
    return int(count)


def _mask_names(mask: int) -> str:
    shown = (Mask.IGNORED, Mask.DELETE_SELF, Mask.MOVE_SELF, Mask.DELETE, Mask.MOVED_FROM)
    return "|".join(m.name or "?" for m in shown if m & mask)
