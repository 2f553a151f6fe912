"""Per-task files beside a result: where they live and what markers say.

Markers and envelope files are durable *projections* of the ledger: the
ledger decides, these let a reader (or a scan) see the decision without it.
``marker_doc`` is pure; reading and writing go through fsio.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs

from anu_watchd import fsio
from anu_watchd.model import RESULT_SUFFIX, LedgerEntry, LedgerState, Verdict

DONE_SUFFIX = ".pickup.done"
FAILED_SUFFIX = ".pickup.failed"
ACKED_SUFFIX = ".pickup.acked"
RETRY_SUFFIX = ".pickup.retry"
ENVELOPE_SUFFIX = ".callback-envelope.json"
# A marker is a few hundred bytes; anything longer is not one of ours.
_MARKER_MAX_BYTES = 64 << 10


@attrs.frozen
class TaskFiles:
    """The paths of one task's files in the events directory."""

    events_dir: Path
    task_id: str

    def _p(self, suffix: str) -> Path:
        return self.events_dir / (self.task_id + suffix)

    @property
    def result(self) -> Path:
        return self._p(RESULT_SUFFIX)

    @property
    def done(self) -> Path:
        return self._p(DONE_SUFFIX)

    @property
    def failed(self) -> Path:
        return self._p(FAILED_SUFFIX)

    @property
    def acked(self) -> Path:
        return self._p(ACKED_SUFFIX)

    @property
    def retry(self) -> Path:
        return self._p(RETRY_SUFFIX)

    @property
    def envelope(self) -> Path:
        return self._p(ENVELOPE_SUFFIX)

    def marker_for(self, state: LedgerState) -> Path:
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


def marker_doc(
    entry: LedgerEntry,
    *,
    attempts: int,
    ts: str,
    error: str | None = None,
    stamp: FileStamp | None = None,
) -> dict[str, Any]:
    """The JSON a done/failed marker holds, from the terminal ledger entry."""
    verdict = Verdict.WAKE_BUILT if entry.state is LedgerState.DONE else Verdict.FIRE_FAILED
    return {
        "task_id": entry.task_id,
        "sha256": entry.sha256,
        "idempotency_key": entry.key,
        "verdict": str(verdict),
        "schedule_id": entry.schedule_id,
        "attempts": attempts,
        "ts": ts,
        "error": error,
        "size": stamp.size if stamp else None,
        "mtime_ns": stamp.mtime_ns if stamp else None,
        "inode": stamp.inode if stamp else None,
    }


def encode_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def read_json(path: Path) -> dict[str, Any] | None:
    """A marker's content, or None if it is missing, unreadable or not a JSON object."""
    try:
        doc = json.loads(fsio.read_state(path, _MARKER_MAX_BYTES))
    except (OSError, ValueError, RecursionError):  # RecursionError: a hostile nesting depth
        return None
    return doc if isinstance(doc, dict) else None


def stamp_matches(doc: dict[str, Any] | None, stamp: FileStamp) -> bool:
    """True when a marker settles exactly this file (size, mtime_ns and inode)."""
    if doc is None:
        return False
    return (doc.get("size"), doc.get("mtime_ns"), doc.get("inode")) == (
        stamp.size,
        stamp.mtime_ns,
        stamp.inode,
    )


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Atomic and durable; the caller decides what a failure means."""
    fsio.atomic_write(path, encode_json(doc))
