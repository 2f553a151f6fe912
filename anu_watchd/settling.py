"""Results a rescan found still being written in place, each due for a re-check later.

A rescan that reads an invalid result changed within ``spool.settle_s`` does not
quarantine it: a worker may be writing it in place (docs/durability.md, "A writer
that writes in place"). The pipeline hands it here through ``defer``; the daemon's
settler task takes it back, through the same queue as every run, once it is due.
Its CLOSE_WRITE usually comes first and wakes it; the re-check then finds it settled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path


class Settling:
    """Paths waiting for their settle time; ``due()`` returns those whose time has come."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._due: dict[Path, float] = {}
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def defer(self, path: Path, delay_s: float) -> None:
        """Re-check ``path`` in ``delay_s`` seconds (a later deferral of it replaces this one)."""
        self._due[path] = self._clock() + max(delay_s, 0.0)
        self._changed.set()

    async def due(self) -> list[Path]:
        """Wait until at least one path is due; return (and forget) every due path."""
        while True:
            self._changed.clear()
            now = self._clock()
            ready = [p for p, t in self._due.items() if t <= now]
            if ready:
                for p in ready:
                    del self._due[p]
                return ready
            wait = min(self._due.values()) - now if self._due else None
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            except TimeoutError:
                continue
