"""Hostile and unlucky against the real daemon: in-place writers, acks and signals mid-drain."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.daemonproc import DaemonProc, wait_for
from tests.spool import Spool, valid_doc


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path)


def test_an_in_place_writer_caught_half_way_by_a_rescan_is_not_quarantined(spool: Spool) -> None:
    """A worker writing the result in place (no rename) is half-way through when a rescan
    lists it: the rescan leaves it to settle, and its CLOSE_WRITE wakes the finished file."""
    body = json.dumps(valid_doc("task-1", summary="x" * 2000)).encode()
    d = DaemonProc(spool)
    try:
        d.wait_notify("READY=1")
        d.wait_event("rescan_started")
        fd = os.open(spool.result_path("task-1"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, body[:1000])
            d.signal(signal.SIGHUP)  # a reload rescans the spool
            left = lambda: d.events("result_unsettled") or spool.quarantined()  # noqa: E731
            wait_for(left, 20, "the rescan to decide")
            assert spool.quarantined() == []
            os.write(fd, body[1000:])
        finally:
            os.close(fd)
        wait_for(lambda: spool.marker("task-1"), 20, "the finished file woken")
        assert [e["state"] for e in spool.ledger_lines()] == ["CLAIMED", "DONE"]
        assert spool.quarantined() == []
    finally:
        assert d.stop() == 0


def test_a_half_written_file_abandoned_past_the_settle_time_is_quarantined(spool: Spool) -> None:
    """A writer that stops half-way and never closes: once the settle time has passed the
    rescan's re-check quarantines it as it would any invalid result."""
    fd = os.open(spool.result_path("task-2"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b'{"schema": "anu.res')
        d = DaemonProc(spool)
        try:
            d.wait_notify("READY=1")
            wait_for(lambda: spool.quarantined(), 20, "the abandoned file quarantined")
            assert spool.quarantined()[0]["reason"] == "INVALID_JSON"
            assert d.events("result_unsettled")
        finally:
            assert d.stop() == 0
    finally:
        os.close(fd)
