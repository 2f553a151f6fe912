"""Frozen values and closed vocabularies shared by every stage.

Nothing here does I/O; these are the words the pipeline speaks.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import attrs

from anu_watchd import compactjson

TASK_ID_RE = re.compile(r"^task-[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_KIND = "result"


def utc_now() -> datetime:
    """The wall clock, in UTC: the default ``clock`` of every stage that stamps a time."""
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``: the one timestamp format on disk.

    Ledger lines, markers, envelopes, evidence lines, acks, retry requests and
    quarantine sidecars all stamp their times with this, e.g.
    ``2026-01-02T03:04:05.000006Z``.
    """
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    # isoformat is several times cheaper than strftime, and this runs ~5 times a wake.
    return dt.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class Verdict(enum.StrEnum):
    """What one pipeline run decided; the evidence log's ``verdict``."""

    WAKE_BUILT = "WAKE_BUILT"
    PICKUP_SKIP = "PICKUP_SKIP"
    QUARANTINE = "QUARANTINE"
    FIRE_FAILED = "FIRE_FAILED"
    FIRE_NOT_ACTIVATED = "FIRE_NOT_ACTIVATED"


class QuarantineReason(enum.StrEnum):
    """Why an input was rejected; the quarantine sidecar's ``reason``."""

    NOT_REGULAR_FILE = "NOT_REGULAR_FILE"
    OVERSIZE = "OVERSIZE"
    ENCODING = "ENCODING"
    INVALID_JSON = "INVALID_JSON"
    SCHEMA = "SCHEMA"
    TASK_ID_MISMATCH = "TASK_ID_MISMATCH"
    FOREIGN_COLLECTOR = "FOREIGN_COLLECTOR"
    SELF_COLLECTOR = "SELF_COLLECTOR"
    KEY_LITERAL = "KEY_LITERAL"
    # An addition to docs/protocol.md's list: a result the daemon may not open (EACCES). Quarantined
    # rather than retried forever; see docs/design.md.
    UNREADABLE = "UNREADABLE"


class TaskStatus(enum.StrEnum):
    """A result's ``status`` field."""

    DONE = "DONE"
    FAILED = "FAILED"
    BLOCKED = "BLOCKED"
    PARTIAL = "PARTIAL"


class LedgerState(enum.StrEnum):
    """One ledger line records one of these state changes."""

    CLAIMED = "CLAIMED"
    DONE = "DONE"
    FAILED = "FAILED"
    RETRY = "RETRY"

    @property
    def terminal(self) -> bool:
        return self in (LedgerState.DONE, LedgerState.FAILED)


@attrs.frozen
class Result:
    """A validated result document (schema ``anu.result/v1``)."""

    task_id: str
    status: TaskStatus
    executor: str
    collector: str
    finished_at: str
    summary: str
    report_path: str | None = None
    commit: str | None = None
    # The whole parsed document, unknown keys included, passed through untouched.
    document: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen
class Rejected:
    """Validation said no: quarantine for ``reason``; ``detail`` never holds the key."""

    reason: QuarantineReason
    detail: str


@attrs.frozen
class FourTuple:
    """The dedupe identity of a wake: the same four values are the same wake."""

    task_id: str
    sha256: str
    collector: str
    kind: str = DEFAULT_KIND

    @functools.cached_property
    def idempotency_key(self) -> str:  # read ~3 times a wake: hashed once
        return idempotency_key(self)


def idempotency_key(t: FourTuple) -> str:
    """A stable hash of the 4-tuple; the same on every host and every restart."""
    canon = compactjson.dumps_ascii([t.task_id, t.sha256, t.collector, t.kind])
    return "ik1-" + hashlib.sha256(canon).hexdigest()[:40]


@attrs.frozen
class LedgerEntry:
    """One line of the write-ahead ledger."""

    key: str
    task_id: str
    sha256: str
    collector: str
    state: LedgerState
    attempt: int
    ts: str
    kind: str = DEFAULT_KIND
    schedule_id: str | None = None
    v: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "key": self.key,
            "task_id": self.task_id,
            "sha256": self.sha256,
            "collector": self.collector,
            "kind": self.kind,
            "state": str(self.state),
            "attempt": self.attempt,
            "schedule_id": self.schedule_id,
            "ts": self.ts,
        }


@attrs.frozen
class Outcome:
    """What one pipeline run did; serialised as one evidence line."""

    run_id: str
    path: str
    task_id: str | None
    verdict: Verdict
    ts: str
    sha256: str | None = None
    reason: str | None = None
    wake_built: bool = False
    schedule_id: str | None = None
    attempts: int = 0
    duration_ms: float = 0.0
    error: str | None = None
    idempotency_key: str | None = None
    host_id: str | None = None  # a fleet host's id (the nats sink); absent otherwise

    def evidence(self) -> dict[str, Any]:
        line = {
            "ts": self.ts,
            "run_id": self.run_id,
            "path": self.path,
            "task_id": self.task_id,
            "sha256": self.sha256,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "wake_built": self.wake_built,
            "schedule_id": self.schedule_id,
            "attempts": self.attempts,
            "duration_ms": round(self.duration_ms, 3),
            "error": self.error,
        }
        if self.idempotency_key is not None:
            line["idempotency_key"] = self.idempotency_key
        if self.host_id is not None:
            line["host_id"] = self.host_id
        return line
