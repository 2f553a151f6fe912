"""The log sink: logs the envelope and answers with a synthetic schedule id.

For demos, dry runs and benchmarks; it wakes nobody.
"""

from __future__ import annotations

import logging

import orjson
import structlog

_log = structlog.get_logger("anu_watchd.sinks.log")


class LogSink:
    delivery_method = "log"
    supports_update = False

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        if _log.is_enabled_for(logging.INFO):  # no decode for a line nobody will see
            doc = orjson.loads(envelope)  # the daemon's own encoding: valid UTF-8 JSON
            # task_id at top level too: every line about a task carries it (docs/operations.md).
            task_id = doc.get("task_id") if isinstance(doc, dict) else None
            _log.info("wake_logged", task_id=task_id, envelope=doc, idempotency_key=idempotency_key)
        # Deterministic, so a re-fire after a crash reports the same id.
        return "log-" + idempotency_key.removeprefix("ik1-")[:16]

    async def update(self, envelope: bytes, *, idempotency_key: str) -> None:
        return None

    async def aclose(self) -> None:
        return None
