"""What one run needs: the frozen ``Stages`` and the per-task locks they share.

``runtime`` builds the stages for a config (and rebuilds them on reload);
the pipeline, the receipt sweep and reconcile read them. A reload swaps the
whole value between runs; the task locks and the durable writers carry over
unchanged, so a run and a receipt write for the same task never overlap
across a reload.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime

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
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def enter(self) -> None:
        """One run more (a batch's runs enter here and leave when each of them ends)."""
        self._count += 1
        self._idle.clear()

    def leave(self) -> None:
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
    """At most one holder per task id, handed over in arrival order.

    ``try_take`` takes a free lock without awaiting: a batch's front half takes
    the locks of all its runs in one pass and leaves a busy task to a run of its
    own (pipeline.py). A lock lives only while someone holds or awaits it.
    """

    def __init__(self) -> None:
        self._held: dict[str, collections.deque[asyncio.Future[None]]] = {}

    def try_take(self, name: str) -> bool:
        if name in self._held:
            return False
        self._held[name] = collections.deque()
        return True

    async def take(self, name: str) -> None:
        if self.try_take(name):
            return
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held[name].append(handed)
        try:
            await handed
        except asyncio.CancelledError:
            if handed.done() and not handed.cancelled():
                self.release(name)  # handed over as we were cancelled: pass it on
            raise

    def release(self, name: str) -> None:
        waiters = self._held[name]
        while waiters:
            handed = waiters.popleft()
            if not handed.done():  # a cancelled waiter's future is done: skipped
                handed.set_result(None)
                return
        del self._held[name]

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        await self.take(name)
        try:
            yield
        finally:
            self.release(name)


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
