"""Waiting on a condition with a deadline, never sleeping as synchronisation.

``wait_for`` blocks (for tests driving a subprocess); ``eventually`` and
``until`` yield to the event loop between polls (for in-process tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

POLL_S = 0.01


def wait_for(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    """Poll ``cond`` until it is truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


def settles(cond: Callable[[], bool], deadline_s: float = 5.0) -> bool:
    """Poll ``cond`` (blocking) until it holds; False if it still does not at the deadline."""
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(POLL_S)
    return True


async def eventually(cond: Callable[[], bool], deadline_s: float = 5.0) -> bool:
    """Poll ``cond`` without blocking the loop; False if it still does not hold at the deadline."""
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def until(cond: Callable[[], bool], *, deadline_s: float = 10.0, what: str = "") -> None:
    """Like ``eventually``, but fail the test at the deadline."""
    assert await eventually(cond, deadline_s), f"not reached by the deadline: {what or cond}"
