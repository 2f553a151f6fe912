"""Escalation: tell a human that a wake failed or was never acknowledged.

Runs ``wake.escalate_argv`` once, no shell, the clean child environment of
``sinks.spawn``, the JSON document on stdin, bounded by a timeout. It starts
like every other command the daemon runs (``spawn.Child``), with one
difference kept on purpose: its output goes to /dev/null and only its own
exit is awaited, so whatever an escalation script starts in the background
(a mailer, a pager client) keeps running after it exits; a timeout kills the
script alone, not its group (docs/design.md, "Escalation"). An escalation
that itself fails is logged at ``critical`` and never retried: the failed
marker and the log line already carry the facts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import structlog

from anu_watchd.sinks.spawn import Child, clean_env

_log = structlog.get_logger("anu_watchd.escalate")


async def escalate(argv: Sequence[str], doc: dict[str, Any], *, timeout_s: float) -> bool:
    """Run the escalation command; True if it exited 0."""
    if not argv:
        return False
    body = json.dumps(doc, separators=(",", ":")).encode()
    try:
        child = Child.start(argv, clean_env(), body, limit=0, keep_output=False)
    except OSError as exc:
        _log.critical("escalation_failed", error=f"cannot start: {exc.strerror}", **_ids(doc))
        return False
    try:
        # Not asyncio.wait_for: on 3.11 it can swallow a cancellation that races the child's
        # exit (gh-86296), and a sweeper that never sees its cancel hangs the daemon's stop.
        async with asyncio.timeout(timeout_s):
            done = await child.finished()
    except TimeoutError:
        await child.kill(group=False)
        _log.critical("escalation_failed", error="timed out", **_ids(doc))
        return False
    if done.returncode != 0:
        _log.critical("escalation_failed", error=f"exit {done.returncode}", **_ids(doc))
        return False
    _log.info("escalation_sent", **_ids(doc))
    return True


def _ids(doc: dict[str, Any]) -> dict[str, Any]:
    return {"task_id": doc.get("task_id"), "escalation": doc.get("verdict")}
