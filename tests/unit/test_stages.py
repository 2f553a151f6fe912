"""Stages: what runs share, and how a reload retires what it replaced."""

from __future__ import annotations

import asyncio

from anu_watchd.stages import Users, close_when_idle


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
