"""A fault at the one fsync seam (``anu_watchd.fsio.fsync``): hold every fsync until released.

gate = FsyncGate()
monkeypatch.setattr(fsio, "fsync", gate)
...start work...
await asyncio.to_thread(gate.entered.wait, 10)   # a flush is now caught mid-way
gate.release.set()
"""

from __future__ import annotations

import os
import threading


class FsyncGate:
    """At the fsync seam: holds every fsync until released, so a flush is caught mid-way."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, fd: int) -> None:
        self.entered.set()
        assert self.release.wait(10), "the fsync gate was never released"
        os.fsync(fd)
