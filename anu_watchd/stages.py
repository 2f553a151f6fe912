"""What one run needs: the frozen ``Stages`` and the per-task locks they share.

``runtime`` builds the stages for a config (and rebuilds them on reload);
the pipeline, the receipt sweep and reconcile read them. A reload swaps the
whole value between runs; the task locks and the durable writers carry over
unchanged, so a run and a receipt write for the same task never overlap
across a reload.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import attrs

from anu_watchd.appendlog import AppendLog
from anu_watchd.config import Config
from anu_watchd.ledger import Ledger
from anu_watchd.metrics import Metrics
from anu_watchd.model import utc_now
from anu_watchd.projections import ProjectionWriter
from anu_watchd.sinks.base import Sink, Sleep
from anu_watchd.validate import Rules


class TaskLocks:
    """At most one holder per task id; a lock lives only while someone holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, list[Any]] = {}

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        entry = self._locks.get(name)
        if entry is None:
            entry = self._locks[name] = [asyncio.Lock(), 0]
        entry[1] += 1  # holders and waiters; the lock is dropped when none remain
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[name]


@attrs.frozen
class Stages:
    """Everything one run needs, wired once by ``runtime``; swapped whole on reload."""

    config: Config
    ledger: Ledger
    evidence: AppendLog
    sink: Sink
    rules: Rules
    clock: Callable[[], datetime] = utc_now
    sleep: Sleep = asyncio.sleep
    projections: ProjectionWriter = attrs.field(factory=ProjectionWriter)
    task_locks: TaskLocks = attrs.field(factory=TaskLocks)
    metrics: Metrics = attrs.field(factory=Metrics)

    def halt(self, exc: BaseException) -> None:
        """Fail-stop every durable writer at once: nothing queued is written after ``exc``."""
        self.ledger.halt(exc)
        self.evidence.halt(exc)
        self.projections.halt(exc)
