"""What one run needs: the frozen ``Stages`` and the per-task locks they share.

``runtime`` builds the stages for a config (and rebuilds them on reload);
the pipeline, the receipt sweep and reconcile read them. A reload swaps the
whole value between runs; the task locks and the durable writers carry over
unchanged, so a run and a receipt write for the same task never overlap
across a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
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


class Users:
    """How many runs started under one ``Stages``: a reload closes a replaced sink only
    once none is left, never under a run that is still calling it."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if not self._count:
                self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


async def close_when_idle(users: Users, sink: Sink) -> None:
    """Close ``sink`` once no run holds ``users``: a sink a reload replaced outlives its runs."""
    await users.idle()
    await sink.aclose()


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
    users: Users = attrs.field(factory=Users)  # fresh for every reload's stages (runtime.rebuilt)
    metrics: Metrics = attrs.field(factory=Metrics)

    def halt(self, exc: BaseException) -> None:
        """Fail-stop every durable writer at once: nothing queued is written after ``exc``."""
        self.ledger.halt(exc)
        self.evidence.halt(exc)
        self.projections.halt(exc)
