"""The receipt axis: an ack moves it to RECEIVED; silence past the TTL to TIMED_OUT, once.

The stored envelope file is the durable record of this axis. A timeout is
written *before* its escalation runs, so a restart never escalates twice
(at most once; a crash between the two loses that one escalation, and the
envelope and the log still say TIMED_OUT). A lost ack event costs nothing:
the sweep looks for the ``.pickup.acked`` file before it times anything out.

An ack answers one wake. The pipeline removes a leftover ack before it
registers a new wake of the same task (a rewritten result), and the sweep
tells wakes apart by their done marker: it acts only on the envelope whose
idempotency key is the marker's, so a sweep that runs between the pipeline's
marker and envelope writes waits for the envelope instead of settling.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from anu_watchd import decide, envelope, fsio, markers
from anu_watchd.errors import EnvelopeError
from anu_watchd.escalate import escalate
from anu_watchd.fsio import durable
from anu_watchd.model import iso
from anu_watchd.spool import ACKED_SUFFIX, DONE_SUFFIX, TaskFiles
from anu_watchd.stages import Stages

_log = structlog.get_logger("anu_watchd.receipts")


def _read_envelope(path: Path) -> dict[str, Any] | None:
    try:
        # One byte over the limit: an oversized file fails decoding instead of being cut to fit.
        return envelope.decode(fsio.read_state(path, envelope.MAX_ENVELOPE_BYTES + 1))
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
    await durable(fsio.atomic_write, files.envelope, body)
    _log.info("receipt_received", task_id=task_id)
    return True


def _done_and_acked(events_dir: Path) -> tuple[dict[str, int], set[str]]:
    """Task ids with a done marker (and that marker's inode), and task ids with an ack."""
    done: dict[str, int] = {}
    acked: set[str] = set()
    with os.scandir(events_dir) as it:
        for entry in it:  # inode() comes from the listing itself: no stat per marker
            if entry.name.endswith(DONE_SUFFIX):
                done[entry.name[: -len(DONE_SUFFIX)]] = entry.inode()
            elif entry.name.endswith(ACKED_SUFFIX):
                acked.add(entry.name[: -len(ACKED_SUFFIX)])
    return done, acked


def _current_envelope(files: TaskFiles) -> dict[str, Any] | None:
    """The stored envelope, only once it is the one for the wake the done marker settles.

    The pipeline writes the done marker before the envelope, so for a moment
    the file is missing, or still the previous wake's (a rewritten result).
    """
    env = _read_envelope(files.envelope)
    if env is None:
        return None
    marker = markers.read_json(files.done)
    if marker is None or marker.get("idempotency_key") != env.get("idempotency_key"):
        return None
    return env


class ReceiptWatch:
    """Sweeps delivered wakes for acks and timeouts; remembers the wakes it has settled.

    A wake is known by its done marker's inode: every new wake of a task
    replaces the marker with a new file, so a rewritten result is swept
    afresh, while a settled one costs nothing but its directory entry.
    """

    def __init__(self) -> None:
        self._settled: dict[str, int] = {}

    async def sweep(self, stages: Stages) -> int:
        """One pass; returns how many envelopes changed.

        Each task is swept under its task lock (the pipeline's too), so a receipt write
        never races the pipeline writing a new wake's envelope for the same task.
        """
        events_dir = stages.config.spool.events_dir
        done, acked = await asyncio.to_thread(_done_and_acked, events_dir)
        changed = 0
        for task_id, inode in sorted(done.items()):
            if self._settled.get(task_id) == inode:
                continue
            files = TaskFiles(events_dir, task_id)
            async with stages.task_locks.hold(task_id):
                wrote, settled = await self._sweep_one(stages, files, acked=task_id in acked)
            changed += wrote
            if settled:
                self._settled[task_id] = inode
        return changed

    async def _sweep_one(
        self, stages: Stages, files: TaskFiles, *, acked: bool
    ) -> tuple[bool, bool]:
        """``(changed, settled)`` for one delivered wake."""
        env = await asyncio.to_thread(_current_envelope, files)
        if env is None:
            return False, False  # not stored yet for this wake: look again next sweep
        receipt = env.get("collector_receipt_status")
        if acked and receipt != envelope.ReceiptStatus.RECEIVED:
            return await mark_received(files.events_dir, files.task_id), True
        if receipt != envelope.ReceiptStatus.UNCONFIRMED:
            return False, True
        if not _expired(
            env.get("registered_at_ts"), stages.clock(), stages.config.wake.receipt_ttl_s
        ):
            return False, False
        return await self._time_out(stages, files, env), True

    async def _time_out(self, stages: Stages, files: TaskFiles, env: dict[str, Any]) -> bool:
        try:
            body = envelope.encode(envelope.timed_out(env))
        except EnvelopeError:
            return False
        # Once TIMED_OUT is durable no restart escalates again, so a stop (a cancellation)
        # that arrives from here on waits for the escalation instead of losing it.
        await _see_through(self._record_and_escalate(stages, files, env, body))
        return True

    async def _record_and_escalate(
        self, stages: Stages, files: TaskFiles, env: dict[str, Any], body: bytes
    ) -> None:
        if not stages.ledger.healthy:
            return  # the daemon is failing stop: nothing more is written or sent
        await durable(fsio.atomic_write, files.envelope, body)
        _log.critical(
            "receipt_timed_out", task_id=files.task_id, idempotency_key=env.get("idempotency_key")
        )
        marker = await asyncio.to_thread(markers.read_json, files.done) or {}
        wake = stages.config.wake
        report = decide.escalation(
            files.task_id,
            "RECEIPT_TIMED_OUT",
            reason=f"no ack within {wake.receipt_ttl_s:g} s",
            error=None,
            attempts=marker.get("attempts"),
            idempotency_key=env.get("idempotency_key"),
            ts=iso(stages.clock()),
        )
        await escalate(wake.escalate_argv, report, timeout_s=wake.timeout_s)


async def _see_through(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end even if the caller is cancelled meanwhile, then re-raise.

    Bounded by ``work`` itself (the escalation's timeout). A second cancellation
    (the loop shutting down after a fatal error) is not held up.
    """
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        task.result()  # a failure of its own (a DurabilityError) wins over the cancellation
        raise


def _expired(registered_at: object, now: datetime, ttl_s: float) -> bool:
    if not isinstance(registered_at, str):
        return False
    try:
        when = datetime.fromisoformat(registered_at.replace("Z", "+00:00"))
    except ValueError:
        return False
    return now - when >= timedelta(seconds=ttl_s)
