"""Stages: what runs share, and how a reload retires what it replaced."""

from __future__ import annotations

import asyncio

from anu_watchd.stages import TaskLocks, Users, close_when_idle


class RecordingSink:
    """A sink that only records that it was closed."""

    delivery_method = "log"
    supports_update = False

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        return "s"

    async def update(self, envelope: bytes, *, idempotency_key: str) -> None:
        return None

    async def aclose(self) -> None:
        self.closed.set()


async def test_a_replaced_sink_is_closed_only_once_its_runs_have_ended() -> None:
    """close_when_idle waits for every run holding the old stages, then closes the sink."""
    users, sink = Users(), RecordingSink()
    with users.hold(), users.hold():
        closing = asyncio.ensure_future(close_when_idle(users, sink))
        done, _ = await asyncio.wait([closing], timeout=0.2)
        assert not done and not sink.closed.is_set()
    await asyncio.wait_for(closing, 5)
    assert sink.closed.is_set()


async def test_a_sink_with_no_runs_is_closed_at_once() -> None:
    """No run holds the stages: the replaced sink is closed straight away."""
    sink = RecordingSink()
    await asyncio.wait_for(close_when_idle(Users(), sink), 5)
    assert sink.closed.is_set()


# -- task locks ------------------------------------------------------------------------


async def test_a_taken_task_lock_is_not_taken_again_until_released() -> None:
    """try_take takes a free lock at once and refuses a held one (a batch never waits)."""
    locks = TaskLocks()
    assert locks.try_take("task-1")
    assert not locks.try_take("task-1")
    assert locks.try_take("task-2")
    locks.release("task-1")
    assert locks.try_take("task-1")


async def test_a_task_lock_goes_to_its_waiters_in_arrival_order() -> None:
    """A released lock is handed to the first waiter still waiting, never to a newcomer."""
    locks, order = TaskLocks(), []
    assert locks.try_take("t")

    async def holder(name: str) -> None:
        async with locks.hold("t"):
            order.append(name)

    first = asyncio.ensure_future(holder("first"))
    second = asyncio.ensure_future(holder("second"))
    await asyncio.sleep(0)  # both are waiting now
    locks.release("t")
    assert not locks.try_take("t"), "handed over to the first waiter, not free for a newcomer"
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert order == ["first", "second"]
    assert locks.try_take("t"), "free once nobody holds or waits"


async def test_a_cancelled_waiter_neither_keeps_nor_loses_the_lock() -> None:
    """A waiter cancelled while waiting is skipped; one cancelled just as the lock reached
    it passes the lock on, so nobody waits for ever."""
    locks = TaskLocks()
    assert locks.try_take("t")
    gone = asyncio.ensure_future(locks.take("t"))
    late = asyncio.ensure_future(locks.take("t"))
    last = asyncio.ensure_future(locks.take("t"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    locks.release("t")  # skips `gone`, hands over to `late`
    late.cancel()  # ... which is cancelled before it resumes: it must pass the lock on
    await asyncio.wait_for(last, 5)
    assert gone.cancelled() and late.cancelled()
    assert not locks.try_take("t")  # `last` holds it
    locks.release("t")
    assert locks.try_take("t")
