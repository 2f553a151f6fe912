"""Wake slots: at most ``size`` calls out at once, a size a reload may change.

``asyncio.Semaphore`` cannot be resized, and replacing it on a reload leaves
the runs already waiting on the old one under the old bound while new runs
take the new one: for a while both bounds apply side by side, and more calls
go out than either allows (and a crash then repeats more of them). Here a
reload changes the size in place: the calls already out finish, and no call
starts until fewer than the new size are out, so the count never exceeds
the larger of the two sizes, and only until the holders from before finish.

    slots = Slots(4)
    async with slots:          # waits, first come first served
        await sink.register(...)
    slots.resize(2)            # from a reload: applies to every waiter at once
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from types import TracebackType


class Slots:
    """A first-come-first-served counting limiter whose size can change."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def size(self) -> int:
        return self._size

    @property
    def in_use(self) -> int:
        return self._used

    def resize(self, size: int) -> None:
        """Take ``size`` as the bound from now on; a larger one lets waiters in at once."""
        self._size = size
        self._grant()

    async def __aenter__(self) -> None:
        if self._used < self._size and not self._waiters:
            self._used += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # _grant counts the slot as ours before it resolves the future
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted, but cancelled before running: hand it on
            else:
                with contextlib.suppress(ValueError):  # _grant may have dropped it already
                    self._waiters.remove(waiter)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        self._used -= 1
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._used < self._size:
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled: its task is about to see that
                continue
            self._used += 1
            waiter.set_result(None)
