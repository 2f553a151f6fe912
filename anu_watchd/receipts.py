"""The receipt axis: an ack moves it to RECEIVED; silence past the TTL to TIMED_OUT, once.

The stored envelope file is the durable record of this axis. A timeout is
written *before* its escalation runs, so a restart never escalates twice
(at most once; a crash between the two loses that one escalation, and the
envelope and the log still say TIMED_OUT). A lost ack event costs nothing:
the sweep looks for the ``.pickup.acked`` file before it times anything out.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from anu_watchd import envelope, fsio, markers
from anu_watchd.errors import EnvelopeError
from anu_watchd.escalate import escalate
from anu_watchd.markers import ACKED_SUFFIX, DONE_SUFFIX, TaskFiles
from anu_watchd.pipeline import Stages, _durable, iso

_log = structlog.get_logger("anu_watchd.receipts")
SETTLED = (str(envelope.ReceiptStatus.RECEIVED), str(envelope.ReceiptStatus.TIMED_OUT))


def _read_envelope(path: Path) -> dict[str, Any] | None:
    try:
        return envelope.decode(path.read_bytes())
    except (OSError, EnvelopeError, ValueError):
        return None


async def mark_received(events_dir: Path, task_id: str) -> bool:
    """The collector acked: RECEIVED in the stored envelope. True if it changed."""
    files = TaskFiles(events_dir, task_id)
    env = await asyncio.to_thread(_read_envelope, files.envelope)
    if env is None or env.get("collector_receipt_status") == envelope.ReceiptStatus.RECEIVED:
        return False
    try:
        body = envelope.encode(envelope.received(env))
    except EnvelopeError as exc:
        _log.warning("ack_ignored", task_id=task_id, reason=str(exc))
        return False
    await _durable(fsio.atomic_write, files.envelope, body)
    _log.info("receipt_received", task_id=task_id)
    return True


def _unacked_done(events_dir: Path) -> tuple[list[str], set[str]]:
    names = set(os.listdir(events_dir))
    done = [n[: -len(DONE_SUFFIX)] for n in names if n.endswith(DONE_SUFFIX)]
    acked = {n[: -len(ACKED_SUFFIX)] for n in names if n.endswith(ACKED_SUFFIX)}
    return sorted(done), acked


class ReceiptWatch:
    """Sweeps delivered wakes for acks and timeouts; remembers what it has settled."""

    def __init__(self) -> None:
        self._settled: set[str] = set()

    async def sweep(self, stages: Stages) -> int:
        """One pass; returns how many envelopes changed."""
        events_dir = stages.config.spool.events_dir
        done, acked = await asyncio.to_thread(_unacked_done, events_dir)
        changed = 0
        for task_id in done:
            if task_id in self._settled:
                continue
            if task_id in acked:
                changed += await mark_received(events_dir, task_id)
                self._settled.add(task_id)
            else:
                changed += await self._maybe_time_out(stages, TaskFiles(events_dir, task_id))
        return changed

    async def _maybe_time_out(self, stages: Stages, files: TaskFiles) -> bool:
        env = await asyncio.to_thread(_read_envelope, files.envelope)
        if env is None or env.get("collector_receipt_status") in SETTLED:
            self._settled.add(files.task_id)
            return False
        now = stages.clock()
        if not _expired(env.get("registered_at_ts"), now, stages.config.wake.receipt_ttl_s):
            return False
        try:
            body = envelope.encode(envelope.timed_out(env))
        except EnvelopeError:
            self._settled.add(files.task_id)
            return False
        await _durable(fsio.atomic_write, files.envelope, body)
        self._settled.add(files.task_id)
        _log.critical(
            "receipt_timed_out", task_id=files.task_id, idempotency_key=env.get("idempotency_key")
        )
        marker = await asyncio.to_thread(markers.read_json, files.done) or {}
        wake = stages.config.wake
        await escalate(
            wake.escalate_argv,
            {
                "task_id": files.task_id,
                "verdict": "RECEIPT_TIMED_OUT",
                "reason": f"no ack within {wake.receipt_ttl_s:g} s",
                "error": None,
                "attempts": marker.get("attempts"),
                "idempotency_key": env.get("idempotency_key"),
                "ts": iso(now),
            },
            timeout_s=wake.timeout_s,
        )
        return True


def _expired(registered_at: object, now: datetime, ttl_s: float) -> bool:
    if not isinstance(registered_at, str):
        return False
    try:
        when = datetime.fromisoformat(registered_at.replace("Z", "+00:00"))
    except ValueError:
        return False
    return now - when >= timedelta(seconds=ttl_s)
