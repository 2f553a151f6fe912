"""Escalation: tell a human that a wake failed or was never acknowledged.

Runs ``wake.escalate_argv`` once, no shell, a clean environment, the JSON
document on stdin, bounded by a timeout. An escalation that itself fails is
logged at ``critical`` and never retried: the failed marker and the log line
already carry the facts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import structlog

_log = structlog.get_logger("anu_watchd.escalate")

CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


async def escalate(argv: Sequence[str], doc: dict[str, Any], *, timeout_s: float) -> bool:
    """Run the escalation command; True if it exited 0."""
    if not argv:
        return False
    body = json.dumps(doc, separators=(",", ":")).encode()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=dict(CLEAN_ENV),
            start_new_session=True,
        )
    except OSError as exc:
        _log.critical("escalation_failed", error=f"cannot start: {exc.strerror}", **_ids(doc))
        return False
    try:
        # Not asyncio.wait_for: on 3.11 it can swallow a cancellation that races the child's
        # exit (gh-86296), and a sweeper that never sees its cancel hangs the daemon's stop.
        async with asyncio.timeout(timeout_s):
            await proc.communicate(body)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        _log.critical("escalation_failed", error="timed out", **_ids(doc))
        return False
    if proc.returncode != 0:
        _log.critical("escalation_failed", error=f"exit {proc.returncode}", **_ids(doc))
        return False
    _log.info("escalation_sent", **_ids(doc))
    return True


def _ids(doc: dict[str, Any]) -> dict[str, Any]:
    return {"task_id": doc.get("task_id"), "escalation": doc.get("verdict")}
