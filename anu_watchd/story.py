"""``anu-watchd show TASK``: one task's whole story, oldest first, and what happens next.

:func:`assemble` is pure: the facts about one task (its result file, its
ledger lines, its evidence lines, its quarantine entries, its markers) in,
the story out — a document ``show --json`` prints as is and :func:`render`
prints for a terminal. :func:`gather` is the thin reading side. It only
reads, takes no lock and works while the daemon runs: the ledger and the
evidence log are searched for the task's lines (``ledger.task_history``),
not parsed whole, and a line still being written is left out.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import attrs

from anu_watchd import fsio, markers
from anu_watchd.appendlog import lines_with
from anu_watchd.config import Config
from anu_watchd.errors import InputError
from anu_watchd.ledger import task_field, task_history
from anu_watchd.model import LedgerEntry, LedgerState, Verdict
from anu_watchd.quarantine import QuarantineEntry, list_quarantined
from anu_watchd.spool import TaskFiles
from anu_watchd.terminal import shown

MARKERS = ("done", "failed", "acked", "retry")


class Next(enum.StrEnum):
    """Where the task stands: what happens next, and who acts."""

    PENDING = "pending"
    NOT_ACTIVATED = "not_activated"
    IN_FLIGHT = "in_flight"
    RETRY_SCHEDULED = "retry_scheduled"
    FAILED = "failed"
    AWAITING_ACK = "awaiting_ack"
    ACKED = "acked"
    QUARANTINED = "quarantined"
    UNKNOWN = "unknown"


@attrs.frozen
class ResultFile:
    """The task's current result file as read now; ``error`` when it could not be read."""

    path: str
    sha256: str | None = None
    size: int | None = None
    error: str | None = None


@attrs.frozen
class Facts:
    """Everything known about one task, as read from the spool."""

    task_id: str
    result: ResultFile | None
    ledger: list[LedgerEntry]
    evidence: list[dict[str, Any]]
    quarantined: list[QuarantineEntry]
    markers: dict[str, dict[str, Any] | None]
    envelope: dict[str, Any] | None


# -- the story (pure) -------------------------------------------------------------------


def assemble(facts: Facts) -> dict[str, Any]:
    """The document ``show --json`` prints: history oldest first, then the next step."""
    state, say = decide_next(facts)
    return {
        "task_id": facts.task_id,
        "result": attrs.asdict(facts.result) if facts.result is not None else None,
        "history": sorted(_history(facts), key=lambda e: e["ts"] or ""),
        "markers": {k: v is not None for k, v in facts.markers.items()},
        "receipt": (facts.envelope or {}).get("collector_receipt_status"),
        "next": {"state": str(state), "say": say},
    }


def _history(facts: Facts) -> list[dict[str, Any]]:
    events = [_ledger_event(e) for e in facts.ledger]
    events += [_evidence_event(e) for e in facts.evidence]
    events += [_quarantine_event(q) for q in facts.quarantined]
    for name in MARKERS:
        doc = facts.markers.get(name)
        if doc is not None:
            events.append(_event(doc.get("ts"), "marker", f"{name} marker", {}))
    return events


def _event(ts: Any, source: str, what: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {"ts": ts if isinstance(ts, str) else None, "source": source, "what": what, **detail}


def _ledger_event(e: LedgerEntry) -> dict[str, Any]:
    detail = {"attempt": e.attempt, "key": e.key, "schedule_id": e.schedule_id, "sha256": e.sha256}
    return _event(e.ts, "ledger", str(e.state), detail)


def _evidence_event(line: dict[str, Any]) -> dict[str, Any]:
    keep = ("reason", "attempts", "schedule_id", "error", "duration_ms", "sha256", "run_id")
    detail = {k: line.get(k) for k in keep if line.get(k) is not None}
    return _event(line.get("ts"), "evidence", str(line.get("verdict")), detail)


def _quarantine_event(q: QuarantineEntry) -> dict[str, Any]:
    return _event(q.ts, "quarantine", "QUARANTINED", {"name": q.name, "reason": q.reason})


def decide_next(facts: Facts) -> tuple[Next, str]:
    """What happens next for the task, and a sentence an operator can act on."""
    latest = facts.ledger[-1] if facts.ledger else None
    if facts.markers.get("retry") is not None:
        return Next.RETRY_SCHEDULED, "a retry request waits for the daemon to re-run it"
    current = facts.result.sha256 if facts.result is not None else None
    if facts.result is not None and (latest is None or latest.sha256 != current):
        return _unsettled(facts, current)
    if latest is None:
        if facts.quarantined:
            name = facts.quarantined[-1].name
            return Next.QUARANTINED, f"fix it, then `anu-watchd quarantine release {name}`"
        return Next.UNKNOWN, "no result, ledger line, evidence or quarantine entry names it"
    return _settled(facts, latest)


def _unsettled(facts: Facts, sha: str | None) -> tuple[Next, str]:
    runs = [e for e in facts.evidence if e.get("sha256") == sha and sha is not None]
    if runs and runs[-1].get("verdict") == str(Verdict.FIRE_NOT_ACTIVATED):
        return Next.NOT_ACTIVATED, "it is woken once wake.activated = true"
    return Next.PENDING, "the result waits for its run (the daemon, or `scan --once`)"


def _settled(facts: Facts, latest: LedgerEntry) -> tuple[Next, str]:
    task = facts.task_id
    if latest.state is LedgerState.RETRY:
        return Next.RETRY_SCHEDULED, "retry accepted: it is re-run with the same key"
    if latest.state is LedgerState.CLAIMED:
        return Next.IN_FLIGHT, "its wake is in flight; a restart re-fires it with the same key"
    if latest.state is LedgerState.FAILED:
        return Next.FAILED, f"FIRE_FAILED: fix the cause, then run `anu-watchd retry {task}`"
    if facts.markers.get("acked") is not None:
        return Next.ACKED, "woken and acked by the collector: nothing more happens"
    receipt = (facts.envelope or {}).get("collector_receipt_status") or "UNCONFIRMED"
    return Next.AWAITING_ACK, f"woken; the collector has not acked it (receipt {receipt})"


def render(doc: dict[str, Any]) -> str:
    """Human form of :func:`assemble`'s document; every name and text escaped for a terminal."""
    lines = [f"task: {doc['task_id']}"]
    r = doc["result"]
    if r is None:
        lines.append("result: none in the events directory")
    else:
        what = f"sha256 {r['sha256']} ({r['size']} bytes)" if r["sha256"] else str(r["error"])
        lines.append(f"result: {shown(r['path'])} {shown(what)}")
    lines.append("history (oldest first):")
    lines += [f"  {_line(e)}" for e in doc["history"]] or ["  (none)"]
    if doc["receipt"] is not None:
        lines.append(f"receipt: {shown(str(doc['receipt']))}")
    lines.append(f"next: {doc['next']['state']}: {shown(doc['next']['say'])}")
    return "\n".join(lines)


def _line(e: dict[str, Any]) -> str:
    head = (e["ts"] or "?", e["source"], e["what"])
    rest = (f"{k}={v}" for k, v in e.items() if k not in ("ts", "source", "what") and v is not None)
    return " ".join(shown(str(part)) for part in (*head, *rest))


# -- reading (thin) ---------------------------------------------------------------------


def gather(config: Config, task_id: str) -> Facts:
    """Read everything about ``task_id``: read-only, no lock, beside a running daemon."""
    spool = config.spool
    files = TaskFiles(spool.events_dir, task_id)
    return Facts(
        task_id=task_id,
        result=_result(files.result, spool.max_result_bytes),
        ledger=task_history(spool.ledger, task_id),
        evidence=_evidence(spool.evidence_log, task_id),
        quarantined=_quarantined(spool.quarantine_dir, files.result.name),
        markers={name: markers.read_json(getattr(files, name)) for name in MARKERS},
        envelope=markers.read_json(files.envelope),
    )


def collect(config: Config, task_id: str) -> dict[str, Any]:
    """The document ``show --json`` prints."""
    return assemble(gather(config, task_id))


def _result(path: Path, max_bytes: int) -> ResultFile | None:
    try:
        inp = fsio.read_input(path, max_bytes)
    except FileNotFoundError:
        return None
    except (OSError, InputError) as exc:  # a symlink, a FIFO, oversize, no permission
        return ResultFile(str(path), error=f"unreadable: {exc}")
    return ResultFile(str(path), hashlib.sha256(inp.data).hexdigest(), len(inp.data))


def _evidence(path: Path, task_id: str) -> list[dict[str, Any]]:
    found = []
    for _offset, line in lines_with(path, task_field(task_id)):
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(doc, dict) and doc.get("task_id") == task_id:
            found.append(doc)
    return found


def _quarantined(qdir: Path, result_name: str) -> list[QuarantineEntry]:
    def ours(q: QuarantineEntry) -> bool:
        original = os.path.basename(q.original_path or "")
        return original == result_name or q.name.startswith(result_name + ".")

    return [q for q in list_quarantined(qdir) if ours(q)]
