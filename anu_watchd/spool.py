"""The spool's on-disk layout: which names are what, where a task's files live.

One home for the file-name protocol of the events directory
(docs/design.md, "The spool"): a result is ``task-<id>.result.json``; beside
it the daemon writes ``.pickup.done`` / ``.pickup.failed`` markers and the
``.callback-envelope.json``; collectors write ``.pickup.acked`` and operators
``.pickup.retry``. Temp files (``fsio.TMP_PREFIX``) are never inputs. The
operator's enable flag is read here too: every caller that asks "is the
driver enabled?" asks ``is_enabled``.

Listings return names, not paths: a rescan after an overflow lists every
result in the directory, and 100,000 ``Path`` objects take ~40 MiB where
their names take ~8.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import time
from pathlib import Path

import attrs

from anu_watchd import fsio
from anu_watchd.model import TASK_ID_RE, LedgerState

RESULT_SUFFIX = ".result.json"
DONE_SUFFIX = ".pickup.done"
FAILED_SUFFIX = ".pickup.failed"
ACKED_SUFFIX = ".pickup.acked"
RETRY_SUFFIX = ".pickup.retry"
ENVELOPE_SUFFIX = ".callback-envelope.json"

_OWN_TEMP_RE = re.compile(
    re.escape(fsio.TMP_PREFIX)
    + TASK_ID_RE.pattern.strip("^$")
    + "(?:"
    + "|".join(re.escape(s) for s in (DONE_SUFFIX, FAILED_SUFFIX, ENVELOPE_SUFFIX))
    + r")\.[0-9a-f]{12}"
)


@attrs.frozen
class TaskFiles:
    """The paths of one task's files in the events directory."""

    events_dir: Path
    task_id: str

    def _p(self, suffix: str) -> Path:
        return self.events_dir / (self.task_id + suffix)

    # Each path is built once per TaskFiles: a run reads them ~10 times (~2 us a Path).
    @functools.cached_property
    def result(self) -> Path:
        return self._p(RESULT_SUFFIX)

    @functools.cached_property
    def done(self) -> Path:
        return self._p(DONE_SUFFIX)

    @functools.cached_property
    def failed(self) -> Path:
        return self._p(FAILED_SUFFIX)

    @functools.cached_property
    def acked(self) -> Path:
        return self._p(ACKED_SUFFIX)

    @functools.cached_property
    def retry(self) -> Path:
        return self._p(RETRY_SUFFIX)

    @functools.cached_property
    def envelope(self) -> Path:
        return self._p(ENVELOPE_SUFFIX)

    def marker_for(self, state: LedgerState) -> Path:
        """The marker that projects a terminal ledger state."""
        return self.done if state is LedgerState.DONE else self.failed


@attrs.frozen
class FileStamp:
    """What identifies the result file a marker settles, without hashing it."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


def settling_for(st: os.stat_result, now_ns: int, settle_s: float) -> float:
    """Seconds until a file last changed at ``st`` has been left alone for ``settle_s``.

    Positive: a writer may still be writing it in place (docs/durability.md, "A writer
    that writes in place"). ctime, not mtime: every write moves both, but only the kernel
    sets ctime, so a writer cannot hold a file off (or hurry it) with ``touch -d``. A
    ctime in the future (a file server's clock ahead) waits ``settle_s`` at most a time.
    """
    return min(settle_s, settle_s - (now_ns - st.st_ctime_ns) / 1e9)


def task_id_from_name(name: str) -> str | None:
    """``task-7.result.json`` -> ``task-7``; None when the name is not a valid result name."""
    if not name.endswith(RESULT_SUFFIX):
        return None
    tid = name[: -len(RESULT_SUFFIX)]
    return tid if TASK_ID_RE.fullmatch(tid) else None


def task_id_with_suffix(name: str, suffix: str) -> str | None:
    """The valid task id of ``<task id><suffix>``, or None."""
    if not name.endswith(suffix):
        return None
    tid = name[: -len(suffix)]
    return tid if TASK_ID_RE.fullmatch(tid) else None


def is_result_name(name: str, glob: str) -> bool:
    """Only names matching the result glob are inputs; our own temp files never are."""
    return fnmatch.fnmatchcase(name, glob) and not fsio.is_temp_name(name)


def is_own_temp(name: str) -> bool:
    """A temp of a marker or envelope: only the instance-lock holder writes those."""
    return _OWN_TEMP_RE.fullmatch(name) is not None


# A flag's answer, by the stat it was read under. Only a flag left alone for this long
# before it was read is kept: a change after the read moves its ctime on (git's rule
# for racily clean files), so a same-size rewrite within one clock tick is never missed.
_FLAG_QUIET_NS = 1_000_000_000
_flag_seen: dict[Path, tuple[tuple[int, int, int, int, int], bool]] = {}


def is_enabled(flag: Path) -> bool:
    """The operator's enable flag: present and exactly ``true`` (whitespace aside).

    Asked on every run: one stat when the flag is as it was at the last read, instead
    of open, fstat, read and close (bench/PROFILE.md section 8).
    """
    started = time.time_ns()
    try:
        st = os.stat(flag)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    seen = _flag_seen.get(flag)
    if seen is not None and seen[0] == key:
        return seen[1]
    try:
        # The operator's file, which may be a symlink; never a FIFO that blocks the loop.
        enabled = fsio.read_state(flag, 64, follow=True).strip() == b"true"
    except OSError:
        return False
    if max(st.st_mtime_ns, st.st_ctime_ns) < started - _FLAG_QUIET_NS:
        _flag_seen[flag] = (key, enabled)
    return enabled


def list_names(directory: Path) -> list[str]:
    """Every name in ``directory``; none when it is missing."""
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def list_results(events_dir: Path, glob: str) -> list[str]:
    """The names of the result files in the events directory, in name order."""
    try:
        with os.scandir(events_dir) as it:
            return sorted(e.name for e in it if is_result_name(e.name, glob))
    except FileNotFoundError:
        return []


def list_retry_requests(events_dir: Path) -> list[str]:
    """Task ids with a pending ``.pickup.retry`` request, in order."""
    ids = (task_id_with_suffix(n, RETRY_SUFFIX) for n in list_names(events_dir))
    return sorted(t for t in ids if t is not None)
