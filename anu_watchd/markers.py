"""What the done/failed markers beside a result say (their paths: ``spool.TaskFiles``).

Markers and envelope files are durable *projections* of the ledger: the
ledger decides, these let a reader (or a scan) see the decision without it.
``marker_doc`` is pure; reading and writing go through fsio.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anu_watchd import fsio
from anu_watchd.model import LedgerEntry, LedgerState, Verdict
from anu_watchd.spool import FileStamp

# A marker is a few hundred bytes; anything longer is not one of ours.
_MARKER_MAX_BYTES = 64 << 10


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
    return fsio.read_json_object(path, _MARKER_MAX_BYTES)


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
