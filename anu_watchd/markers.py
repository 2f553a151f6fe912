"""The projections beside a result: what its done/failed markers and stored envelope say.

Markers and envelope files are durable *projections* of the ledger: the
ledger decides, these let a reader (or a scan) see the decision without it.
``marker_doc`` is pure; reading and writing go through fsio. ``settled`` is
the scan's cheap check; ``repair_marker`` and ``repair_envelope`` rebuild a
missing, stale or foreign projection from the ledger entry. Their paths are
``spool.TaskFiles``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from anu_watchd import compactjson, envelope, fsio
from anu_watchd.errors import EnvelopeError
from anu_watchd.fsio import durable
from anu_watchd.model import LedgerEntry, LedgerState, Verdict
from anu_watchd.spool import FileStamp, TaskFiles

_log = structlog.get_logger("anu_watchd.pipeline")  # the repairs are steps of a pipeline run

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
    return compactjson.dumps(doc) + b"\n"


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


# -- the settled check and the repairs: a projection rebuilt from the ledger ------------------


def settled(files: TaskFiles, ledger_get: Callable[[str], LedgerEntry | None]) -> bool:
    """True when a marker records exactly the current file and the ledger settled its wake.

    A marker alone is never proof (it may be planted beside a result never woken,
    docs/durability.md, "The settled shortcut"): the ledger's latest line for the
    marker's key must be terminal, for this task and the marker's hash, and be the
    state this marker projects. ``ledger_get`` (``Ledger.get``) is asked only once a
    marker's stamp matches, so an unsettled file costs no ledger read.
    """
    try:
        st = files.result.lstat()
    except OSError:
        return False
    stamp = FileStamp.of(st)
    for path in (files.done, files.failed):
        doc = read_json(path)
        if doc is None or not stamp_matches(doc, stamp):
            continue
        key = doc.get("idempotency_key")
        entry = ledger_get(key) if isinstance(key, str) else None
        if entry is not None and _projects(doc, entry, files, path):
            return True
    return False


def _projects(doc: dict[str, Any], entry: LedgerEntry, files: TaskFiles, path: Path) -> bool:
    """``path``'s marker ``doc`` is the projection of the terminal ledger ``entry``."""
    if entry.state not in (LedgerState.DONE, LedgerState.FAILED):
        return False
    same = (entry.task_id, entry.sha256) == (files.task_id, doc.get("sha256"))
    return same and path == files.marker_for(entry.state)


def projections_hold(files: TaskFiles, entry: LedgerEntry) -> bool:
    """True when this wake's marker and envelope file are both there and its own (blocking).

    Start-up repair's check of a terminal ledger line after the watermark: a
    projection a power cut left missing, empty, torn or stale (another wake's)
    reads as None or foreign here.
    """
    doc = read_json(files.marker_for(entry.state))
    if doc is None or doc.get("idempotency_key") != entry.key:
        return False
    env = read_json(files.envelope)
    return env is not None and env.get("idempotency_key") == entry.key


def encoded(log: Any, env: dict[str, Any]) -> bytes | None:
    """The envelope's bytes, or None (logged) when it fails the validator."""
    try:
        return envelope.encode(env)
    except EnvelopeError as exc:
        # Never write an envelope that fails the validator; the marker already settles it.
        log.error("envelope_invalid", error=str(exc))
        return None


async def store_envelope(files: TaskFiles, body: bytes | None) -> None:
    if body is not None:
        await durable(fsio.atomic_write, files.envelope, body)


async def repair_marker(files: TaskFiles, entry: LedgerEntry, stamp: FileStamp) -> str | None:
    """Rewrite a missing, unreadable or stale marker from the ledger; return its error."""
    path = files.marker_for(entry.state)
    doc = await asyncio.to_thread(read_json, path)
    # Only a marker of this very wake lends its fields, and only well-typed ones: the file
    # may be another wake's, or planted ({"attempts": {}} must not stop the daemon).
    own = doc if doc is not None and doc.get("idempotency_key") == entry.key else {}
    error = own.get("error") if isinstance(own.get("error"), str) else None
    if own and stamp_matches(own, stamp):
        return error
    attempts = own.get("attempts")
    if type(attempts) is not int or attempts < 1:
        attempts = entry.attempt
    fresh = marker_doc(entry, attempts=attempts, ts=entry.ts, error=error, stamp=stamp)
    await durable(write_json, path, fresh)
    _log.info("marker_repaired", task_id=files.task_id, marker=path.name)
    return error


async def repair_envelope(
    files: TaskFiles,
    entry: LedgerEntry,
    built: Callable[[], dict[str, Any]],
    error: str | None,
    log: Any,
) -> None:
    """Rebuild a missing or foreign envelope file from the ledger (it is a projection).

    ``built`` makes the envelope as first built for this result. The receipt axis
    comes back as RECEIVED if an ack is present, else UNCONFIRMED: a TIMED_OUT lost
    with the file is re-decided by the next receipt sweep.
    """
    doc = await asyncio.to_thread(read_json, files.envelope)
    if doc is not None and doc.get("idempotency_key") == entry.key:
        return
    env = built()
    if entry.state is LedgerState.DONE and entry.schedule_id:
        env = envelope.registered(env, schedule_id=entry.schedule_id, registered_at=entry.ts)
        if await asyncio.to_thread(files.acked.exists):
            env = envelope.received(env)
    else:
        env = envelope.register_failed(env, error=error or "wake failed")
    await store_envelope(files, encoded(log, env))
    log.info("envelope_repaired")
