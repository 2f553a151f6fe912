"""Hostile and unlucky against the real daemon: in-place writers, acks and signals mid-drain."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.daemonproc import DaemonProc, wait_for
from tests.integration.test_wake import Recorders, exec_wake
from tests.sinkhelpers import SCRIPT_FILE, set_sink_behaviour
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


def _hung_wake(spool: Spool, *, drain_timeout_s: float) -> tuple[Recorders, DaemonProc]:
    """A daemon whose exec sink hangs on task-1 (attempts 1, timeout 120 s), READY."""
    rec = exec_wake(spool, behaviour="hang", attempts=1, timeout_s=120.0)
    spool.config.write_text(f"drain_timeout_s = {drain_timeout_s}\n" + spool.config.read_text())
    d = DaemonProc(spool)
    d.wait_notify("READY=1")
    spool.drop("task-1")
    wait_for(lambda: len(rec.calls()) == 1, 20, "the sink to hang on task-1")
    return rec, d


def test_an_ack_for_an_in_flight_task_does_not_stall_intake(spool: Spool) -> None:
    """An ``.acked`` file for the task whose wake hangs in the sink: intake goes on, and a
    result dropped after it is woken while the first wake still hangs."""
    rec, d = _hung_wake(spool, drain_timeout_s=1.0)
    try:
        (spool.events / "task-1.pickup.acked").write_text("{}\n")
        set_sink_behaviour(rec.sink, "ok")
        spool.drop("task-2")
        wait_for(lambda: spool.marker("task-2"), 10, "task-2 woken behind the ack")
        assert spool.marker("task-1") is None  # still hung
    finally:
        assert d.stop() == 0


def test_a_second_sigterm_during_a_hung_drain_exits_75_at_once(spool: Spool) -> None:
    """SIGTERM starts a drain that a hung sink would hold for drain_timeout_s (60 s); a
    second SIGTERM ends the process at once with 75, and the hung sink command with it."""
    _, d = _hung_wake(spool, drain_timeout_s=60.0)
    try:
        (hung,) = _sink_commands_running(spool.root)
        d.signal(signal.SIGTERM)
        d.wait_event("stopping")
        d.signal(signal.SIGTERM)
        assert d.wait_exit(timeout=10) == 75
        assert d.events("second_signal_exit_now")
        wait_for(lambda: hung not in _sink_commands_running(spool.root), 10, "the sink killed")
    finally:
        d.stop()


def _sink_commands_running(under: Path) -> list[int]:
    """Live recording sink commands (zombies aside) started for the spool at ``under``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if os.fsencode(under / "sink" / SCRIPT_FILE) in cmdline and state != "Z":
            found.append(int(pid))
    return found
