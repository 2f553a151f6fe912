#!/usr/bin/env python3
"""A reference co-process handler for anu-watchd (`wake.exec.process = true`).

The daemon starts up to `wake.concurrency` of these with `wake.exec.argv`, a
clean environment and `ANU_WATCHD_KEY_FILE` (the key's path, never the key),
and writes one request per line on stdin:

    {"op": "register" | "update", "idempotency_key": "...", "envelope": {...}}

Answer each with one line on stdout, in order, and flush:

    {"idempotency_key": "...", "schedule_id": "..."}                 registered
    {"idempotency_key": "...", "error": "...", "transient": true}    retried later
    {"idempotency_key": "...", "error": "...", "transient": false}   FIRE_FAILED

A handler with no use for the final envelope may add "updates": false to its
answers; no update requests come after that.

Exit when stdin ends. Never print anything else on stdout (logs go to
stderr) and never print the key. Replace `register` and `update` with the
calls to your scheduler; an idempotency key may come again after a crash, so
register it idempotently.

Usage: coprocess_handler.py [RECORD]   RECORD: a file to append each request's
op, idempotency key, task id and this process's pid to (a demo, and the tests).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


class TryLater(Exception):
    """The scheduler is unavailable for now: the daemon retries with backoff."""


def register(envelope: dict[str, Any], idempotency_key: str) -> str:
    """Schedule the collector's wake; return the schedule id (your scheduler's call goes here)."""
    return f"local-{idempotency_key}"


def update(envelope: dict[str, Any], idempotency_key: str) -> None:
    """The final envelope, with the schedule id in it (optional: may do nothing)."""


def answer(request: dict[str, Any]) -> dict[str, Any]:
    key = request["idempotency_key"]
    try:
        if request["op"] == "register":
            return {"idempotency_key": key, "schedule_id": register(request["envelope"], key)}
        update(request["envelope"], key)
        return {"idempotency_key": key}
    except TryLater as exc:
        return {"idempotency_key": key, "error": str(exc), "transient": True}
    except Exception as exc:
        return {"idempotency_key": key, "error": str(exc), "transient": False}


def main() -> int:
    record = open(sys.argv[1], "a", buffering=1) if len(sys.argv) > 1 else None  # noqa: SIM115
    for line in sys.stdin:
        request = json.loads(line)
        if record is not None:
            task_id = request["envelope"].get("task_id")
            note = {"pid": os.getpid(), "op": request["op"], "task_id": task_id}
            record.write(json.dumps({**note, "idempotency_key": request["idempotency_key"]}) + "\n")
        sys.stdout.write(json.dumps(answer(request)) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
