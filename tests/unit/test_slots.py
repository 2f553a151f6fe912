"""Wake slots: a counting limiter a reload can resize, first come first served."""

from __future__ import annotations

import asyncio

import pytest

from anu_watchd.slots import Slots


class Holders:
    """Tasks that take a slot and keep it until released; records the most at once."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.inside: list[int] = []
        self.most = 0
        self.gates: dict[int, asyncio.Event] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def start(self, n: int) -> None:
        self.gates[n] = asyncio.Event()
        self.tasks[n] = asyncio.create_task(self._hold(n))

    async def _hold(self, n: int) -> None:
        async with self.slots:
            self.inside.append(n)
            self.most = max(self.most, len(self.inside))
            await self.gates[n].wait()
            self.inside.remove(n)

    async def settle(self) -> None:
        """Let every task that can run get as far as it can (a bounded number of turns)."""
        for _ in range(10):
            await asyncio.sleep(0)


async def test_at_most_size_hold_a_slot_and_the_rest_wait_in_order() -> None:
    """Two slots, four callers: the first two are in, the others follow as they leave."""
    h = Holders(Slots(2))
    for n in range(4):
        h.start(n)
    await h.settle()
    assert h.inside == [0, 1] and h.slots.in_use == 2
    h.gates[0].set()
    await h.settle()
    assert h.inside == [1, 2]
    for n in (1, 2, 3):
        h.gates[n].set()
    await asyncio.gather(*h.tasks.values())
    assert h.most == 2 and h.slots.in_use == 0


async def test_shrinking_binds_the_callers_already_waiting() -> None:
    """Resized from 2 to 1 with two in and two waiting: no one enters until one is left
    in, so never more than the two already in (a swapped semaphore would let a third in)."""
    h = Holders(Slots(2))
    for n in range(4):
        h.start(n)
    await h.settle()
    h.slots.resize(1)
    h.gates[0].set()
    await h.settle()
    assert h.inside == [1]  # 0 left; 2 may not enter while 1 is in
    h.gates[1].set()
    await h.settle()
    assert h.inside == [2]
    for n in (2, 3):
        h.gates[n].set()
    await asyncio.gather(*h.tasks.values())
    assert h.most == 2 and h.slots.in_use == 0


async def test_growing_lets_waiters_in_at_once() -> None:
    """Resized from 1 to 3: two waiters enter without anyone leaving."""
    h = Holders(Slots(1))
    for n in range(3):
        h.start(n)
    await h.settle()
    assert h.inside == [0]
    h.slots.resize(3)
    await h.settle()
    assert h.inside == [0, 1, 2]
    for gate in h.gates.values():
        gate.set()
    await asyncio.gather(*h.tasks.values())


async def test_a_cancelled_waiter_leaks_no_slot() -> None:
    """A waiter cancelled before its turn is dropped; the next one still gets the slot."""
    h = Holders(Slots(1))
    for n in range(3):
        h.start(n)
    await h.settle()
    h.tasks[1].cancel()
    await h.settle()
    h.gates[0].set()
    await h.settle()
    assert h.inside == [2] and h.slots.in_use == 1
    h.gates[2].set()
    await asyncio.gather(h.tasks[0], h.tasks[2])
    with pytest.raises(asyncio.CancelledError):
        await h.tasks[1]
    assert h.slots.in_use == 0


async def test_a_waiter_cancelled_as_its_holder_leaves_is_skipped() -> None:
    """Cancelled in the same turn the holder leaves: the slot goes to the next waiter."""
    h = Holders(Slots(1))
    for n in range(3):
        h.start(n)
    await h.settle()
    h.gates[0].set()
    h.tasks[1].cancel()  # in the same turn: 0 leaves and grants 1, which is cancelled
    await h.settle()
    assert h.inside == [2] and h.slots.in_use == 1
    h.gates[2].set()
    await asyncio.gather(h.tasks[0], h.tasks[2])
    assert h.slots.in_use == 0


async def test_a_waiter_cancelled_after_its_grant_hands_the_slot_on() -> None:
    """Granted (the holder left, the slot counted as its) but cancelled before it ran:
    it gives the slot back, and the next waiter gets it."""
    slots = Slots(1)
    h = Holders(slots)
    await slots.__aenter__()  # the test holds the only slot
    for n in range(2):
        h.start(n)
    await h.settle()
    await slots.__aexit__(None, None, None)  # grants 0 at once, before 0 runs
    h.tasks[0].cancel()
    await h.settle()
    assert h.inside == [1] and slots.in_use == 1
    h.gates[1].set()
    await h.tasks[1]
    with pytest.raises(asyncio.CancelledError):
        await h.tasks[0]
    assert slots.in_use == 0
