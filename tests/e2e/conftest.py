"""Fixtures the end-to-end modules share: each module defines its own ``spool``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemonproc import DaemonProc
from tests.spool import Spool


@pytest.fixture
def daemon(spool: Spool) -> Iterator[DaemonProc]:
    """The real daemon on the module's spool, once it said READY=1; stopped after the test."""
    d = DaemonProc(spool)
    d.wait_notify("READY=1")
    yield d
    d.stop()
