"""``retry TASK``: clear a FIRE_FAILED so the task is woken again, with the same key.

The request is a file (``task-<id>.pickup.retry``) so that it works while the
daemon runs: only the ledger's single writer turns it into a RETRY line,
removes the failed marker and re-runs the result.
"""

from __future__ import annotations

import attrs
import structlog

from anu_watchd import fsio
from anu_watchd.markers import TaskFiles, encode_json
from anu_watchd.model import LedgerState
from anu_watchd.pipeline import Stages, _durable, iso

_log = structlog.get_logger("anu_watchd.retry")


def request_retry(files: TaskFiles, ts: str) -> None:
    """Write the retry request (any process; the daemon consumes it)."""
    fsio.atomic_write(files.retry, encode_json({"task_id": files.task_id, "ts": ts}))


async def consume_retry(stages: Stages, task_id: str) -> bool:
    """Ledger RETRY + failed marker removed + request removed; True if the task should re-run."""
    files = TaskFiles(stages.config.spool.events_dir, task_id)
    latest = stages.ledger.latest_for_task(task_id)
    ok = latest is not None and latest.state is LedgerState.FAILED
    if latest is not None and ok:
        await stages.ledger.record(
            attrs.evolve(latest, state=LedgerState.RETRY, ts=iso(stages.clock()))
        )
        await _durable(fsio.remove_durably, files.failed)
        _log.info("retry_accepted", task_id=task_id, idempotency_key=latest.key)
    else:
        state = latest.state if latest is not None else None
        _log.warning(
            "retry_ignored", task_id=task_id, reason=f"latest state is {state}, not FAILED"
        )
    await _durable(fsio.remove_durably, files.retry)
    return ok
