"""The log sink's line about a task carries task_id at top level, like every line about a task."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from anu_watchd import logs
from anu_watchd.sinks.log import LogSink


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


async def test_wake_logged_has_task_id_at_top_level() -> None:
    """wake_logged names the task at top level, not only inside the envelope."""
    out = io.StringIO()
    logs.configure(level="info", fmt="json", key=None, stream=out, environ={})
    envelope = json.dumps({"task_id": "task-7", "status": "DONE"}).encode()
    await LogSink().register(envelope, idempotency_key="ik1-abc")
    [line] = [json.loads(x) for x in out.getvalue().splitlines()]
    assert (line["event"], line["task_id"]) == ("wake_logged", "task-7")
    assert line["envelope"]["task_id"] == "task-7"
