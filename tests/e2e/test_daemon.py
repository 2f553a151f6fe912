"""The real daemon process, driven by real signals, seen through a real notify socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.daemonproc import DaemonProc, wait_for
from tests.spool import Spool, run_cli, valid_doc


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path)


def _done(spool: Spool, task_id: str) -> bool:
    return (spool.events / f"{task_id}.pickup.done").exists()


def test_ready_then_a_dropped_file_is_woken(spool: Spool, daemon: DaemonProc) -> None:
    """After READY=1 a result dropped by a worker is woken once, with marker and envelope."""
    spool.drop("task-1")
    envelope_file = spool.events / "task-1.callback-envelope.json"
    # The envelope is the last file a wake writes; the marker comes before it.
    wait_for(lambda: _done(spool, "task-1") and envelope_file.exists(), 20, "marker and envelope")
    assert [e["state"] for e in spool.ledger_lines()] == ["CLAIMED", "DONE"]
    env = json.loads(envelope_file.read_text())
    assert env["registration_result_status"] == "REGISTERED"
    assert env["cron_schedule_id"]


def test_results_present_at_start_are_woken_by_the_startup_scan(spool: Spool) -> None:
    """Files written while no daemon ran are picked up by the reconcile scan after READY."""
    for i in range(5):
        spool.drop(f"task-{i}")
    d = DaemonProc(spool)
    try:
        d.wait_notify("READY=1")
        wait_for(lambda: all(_done(spool, f"task-{i}") for i in range(5)), 20, "all done")
    finally:
        assert d.stop() == 0


def test_sigterm_sends_stopping_and_exits_0(spool: Spool, daemon: DaemonProc) -> None:
    """SIGTERM -> STOPPING=1 and a clean exit 0."""
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    assert daemon.notified("STOPPING=1")


def test_second_instance_and_one_shot_scan_exit_75(spool: Spool, daemon: DaemonProc) -> None:
    """A second daemon and `scan --once` both exit 75 while the daemon holds the lock."""
    second = run_cli(["--config", str(spool.config), "run"], timeout=30)
    assert second.returncode == 75
    scan = spool.cli("scan", "--once")
    assert scan.returncode == 75 and "another instance" in scan.stderr


def test_sighup_reloads_a_good_config_and_refuses_a_broken_one(
    spool: Spool, daemon: DaemonProc
) -> None:
    """SIGHUP: RELOADING=1 with MONOTONIC_USEC in one datagram, then READY=1; a broken
    config is refused, logged and the daemon keeps running on the old one."""
    spool.write_config(activated=False)
    daemon.signal(signal.SIGHUP)
    reloading = daemon.wait_notify("RELOADING=1")[0]
    assert any(f.startswith("MONOTONIC_USEC=") for f in reloading.splitlines())
    daemon.wait_notify("READY=1", count=2)
    daemon.wait_event("config_reloaded")
    spool.drop("task-inactive")
    wait_for(
        lambda: any(e["verdict"] == "FIRE_NOT_ACTIVATED" for e in spool.evidence()),
        20,
        "FIRE_NOT_ACTIVATED after reload",
    )
    spool.config.write_text("[wake]\nsink = 'carrier-pigeon'\n")
    daemon.signal(signal.SIGHUP)
    refused = daemon.wait_event("config_reload_refused")
    assert "wake.sink" in refused["error"]
    daemon.wait_notify("READY=1", count=3)
    assert daemon.proc.poll() is None


def test_reload_command_reports_applied_refused_and_absent(spool: Spool) -> None:
    """`anu-watchd reload` exits 0 when applied, 78 when refused, 75 with no daemon."""
    assert spool.cli("reload").returncode == 75
    d = DaemonProc(spool)
    try:
        d.wait_notify("READY=1")
        ok = spool.cli("reload")
        assert ok.returncode == 0, ok.stderr
        spool.config.write_text(spool.config.read_text().replace('"log"', '"bogus"', 1))
        refused = spool.cli("reload", "--pid", str(d.proc.pid))
        assert refused.returncode == 78 and "wake.sink" in refused.stderr
    finally:
        d.stop()


def test_enable_flag_turned_on_at_runtime_triggers_a_scan(tmp_path: Path) -> None:
    """While disabled nothing is touched; writing the flag wakes what is waiting at once."""
    spool = Spool(tmp_path, enabled=False)
    d = DaemonProc(spool)
    try:
        d.wait_notify("READY=1")
        spool.drop("task-1")
        d.wait_event("rescan_skipped_disabled")
        assert not _done(spool, "task-1") and spool.ledger_lines() == []
        assert spool.cli("enable").returncode == 0
        wait_for(lambda: _done(spool, "task-1"), 20, "task-1 woken after enable")
    finally:
        d.stop()


def test_watchdog_pings_arrive(spool: Spool) -> None:
    """With WATCHDOG_USEC set, WATCHDOG=1 arrives repeatedly at half the interval."""
    d = DaemonProc(spool, watchdog_usec=200_000)
    try:
        d.wait_notify("READY=1")
        d.wait_notify("WATCHDOG=1", count=3, timeout=10)
    finally:
        d.stop()


def test_losing_the_events_directory_exits_70(spool: Spool, daemon: DaemonProc) -> None:
    """Deleting the watched directory is fatal: exit 70 so systemd restarts the service,
    and the logs name that cause only (no state write failed: no durability_failure)."""
    shutil.rmtree(spool.events)
    assert daemon.wait_exit() == 70
    assert daemon.events("watched_directory_lost")
    assert daemon.events("durability_failure") == []


def test_symlink_and_fifo_made_in_place_are_quarantined_at_once(
    spool: Spool, daemon: DaemonProc
) -> None:
    """A symlink and a FIFO created under result names are quarantined NOT_REGULAR_FILE on
    their IN_CREATE, not left for the backstop rescan (300 s)."""
    os.symlink("/etc/hostname", spool.events / "task-link.result.json")
    os.mkfifo(spool.events / "task-fifo.result.json")
    found = wait_for(lambda: len(spool.quarantined()) == 2 and spool.quarantined(), 10, "both")
    assert {q["reason"] for q in found} == {"NOT_REGULAR_FILE"}


def test_status_line_carries_counters(spool: Spool, daemon: DaemonProc) -> None:
    """STATUS= reports the state now (enabled, activated, pending), then the counters."""
    spool.drop("task-1")
    wait_for(
        lambda: any("woken=1" in d for d in daemon.notified_prefix("STATUS=")),
        20,
        "STATUS with woken=1",
    )
    states = daemon.notified_prefix("STATUS=")
    assert all("STATUS=enabled, activated; pending=" in d for d in states), states


@pytest.mark.slow
def test_burst_beyond_the_kernel_queue_is_woken_exactly_once(tmp_path: Path) -> None:
    """40,000 results (more than max_queued_events) are all woken exactly once; the
    overflow is counted and answered by a rescan."""
    n = 40_000
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    assert n > limit
    spool = Spool(tmp_path)
    d = DaemonProc(spool)
    try:
        d.wait_notify("READY=1")
        body = json.dumps(valid_doc("task-X"))
        for i in range(n):
            tid = f"task-b{i}"
            tmp = spool.events / f".tmp-w{i}"
            tmp.write_text(body.replace("task-X", tid))
            os.rename(tmp, spool.events / f"{tid}.result.json")
        wait_for(
            lambda: len(list(spool.events.glob("*.pickup.done"))) >= n,
            900,
            f"{n} done markers",
            poll=1.0,
        )
        assert d.events("inotify_overflow"), "the burst should overflow the kernel queue"
    finally:
        assert d.stop() == 0
    done = [e for e in spool.ledger_lines() if e["state"] == "DONE"]
    assert len(done) == n and len({e["task_id"] for e in done}) == n
    woken = [e for e in spool.evidence() if e["verdict"] == "WAKE_BUILT"]
    assert len(woken) == n
