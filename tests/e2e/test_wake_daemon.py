"""Issue 4 against the real daemon process: the activation gate, receipts, retry, HTTP.

The daemon is ``python -m anu_watchd run`` with a test-owned NOTIFY_SOCKET
(``tests.daemonproc``); sinks and escalations are the real recording
commands and a real 127.0.0.1 HTTP server.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anu_watchd import envelope
from tests.daemonproc import DaemonProc, wait_for
from tests.integration.test_wake import (
    Recorders,
    assert_all_envelopes_valid,
    exec_wake,
    http_wake,
    stored_envelope,
)
from tests.sinkhelpers import TestHttpServer, set_sink_behaviour
from tests.spool import Spool

DEADLINE_S = 20.0


@pytest.fixture(autouse=True)
def every_envelope_passes_check(tmp_path: Path) -> Iterator[None]:
    yield
    assert_all_envelopes_valid(tmp_path)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path)


def started(spool: Spool) -> DaemonProc:
    # DaemonProc binds its notify socket by name; a restart needs the old one gone.
    (spool.root / "notify.sock").unlink(missing_ok=True)
    d = DaemonProc(spool)
    d.wait_notify("READY=1")
    return d


def assert_stopped(d: DaemonProc) -> None:
    """SIGTERM exits 0; on failure the daemon's log is printed for the report."""
    code = d.stop()
    if code != 0:
        print(d.log_text())
    assert code == 0


def receipt_of(spool: Spool, task_id: str) -> str | None:
    path = spool.events / f"{task_id}.callback-envelope.json"
    try:
        return str(json.loads(path.read_bytes())["collector_receipt_status"])
    except (OSError, ValueError):
        return None


def sink_calls_per_task(rec: Recorders) -> Counter[str]:
    return Counter(json.loads(c["stdin"])["task_id"] for c in rec.calls())


def verdict_count(spool: Spool, verdict: str) -> int:
    """Evidence lines with ``verdict``, read while the daemon may be appending one."""
    path = spool.events / "p0b_driver_runs.jsonl"
    text = path.read_text() if path.exists() else ""
    return sum(f'"verdict":"{verdict}"' in line for line in text.splitlines())


def test_backlog_waits_for_activation_then_fires_exactly_once(spool: Spool) -> None:
    """activated = false: FIRE_NOT_ACTIVATED, evidence only; after `reload` with activated =
    true, each waiting task gets exactly one DONE and one sink call."""
    rec = exec_wake(spool, activated=False, update=False)
    tasks = [f"task-{i}" for i in range(4)]
    for t in tasks:
        spool.drop(t)
    d = started(spool)
    try:
        wait_for(lambda: verdict_count(spool, "FIRE_NOT_ACTIVATED") >= 4, DEADLINE_S, "gated")
        logged = d.wait_event("wake_not_activated")["envelope"]
        assert envelope.check(logged) == []
        assert logged["registration_result_status"] == "SKIPPED_WITH_EXPLICIT_REASON"
        assert spool.ledger_lines() == [] and rec.calls() == []
        assert not list(spool.events.glob("*.pickup.*"))
        assert not list(spool.events.glob("*.callback-envelope.json"))
        exec_wake(spool, activated=True, update=False)
        reload = spool.cli("reload")
        assert reload.returncode == 0, reload.stderr
        wait_for(lambda: verdict_count(spool, "WAKE_BUILT") >= 4, DEADLINE_S, "backlog fired")
    finally:
        assert_stopped(d)
    done = Counter(e["task_id"] for e in spool.ledger_lines() if e["state"] == "DONE")
    assert done == dict.fromkeys(tasks, 1)
    assert sink_calls_per_task(rec) == dict.fromkeys(tasks, 1)
    assert all(spool.marker(t) is not None for t in tasks)


def test_ack_moves_the_stored_envelope_to_received(spool: Spool) -> None:
    """`ack TASK` while the daemon runs: the daemon sees the marker and writes RECEIVED."""
    d = started(spool)
    try:
        spool.drop("task-1")
        wait_for(lambda: receipt_of(spool, "task-1") == "UNCONFIRMED", DEADLINE_S, "delivered")
        assert spool.cli("ack", "task-1").returncode == 0
        wait_for(lambda: receipt_of(spool, "task-1") == "RECEIVED", DEADLINE_S, "RECEIVED")
        d.wait_event("receipt_received")
    finally:
        assert_stopped(d)


def test_receipt_timeout_escalates_once_and_a_restart_does_not_repeat_it(spool: Spool) -> None:
    """No ack within receipt_ttl_s: TIMED_OUT and one RECEIPT_TIMED_OUT escalation, which a
    restarted daemon does not send again; a late ack still counts."""
    rec = exec_wake(spool, update=False, more="receipt_ttl_s = 1.0\n")
    d = started(spool)
    try:
        spool.drop("task-1")
        wait_for(lambda: receipt_of(spool, "task-1") == "TIMED_OUT", DEADLINE_S, "TIMED_OUT")
        wait_for(lambda: rec.escalations(), DEADLINE_S, "the escalation")
        assert d.events("receipt_timed_out")[0]["level"] == "critical"
    finally:
        assert_stopped(d)
    d = started(spool)
    try:
        # A second task timing out proves the restarted sweeper ran past task-1 many times.
        spool.drop("task-2")
        wait_for(lambda: len(rec.escalations()) >= 2, DEADLINE_S, "task-2's escalation")
        assert spool.cli("ack", "task-1").returncode == 0
        wait_for(lambda: receipt_of(spool, "task-1") == "RECEIVED", DEADLINE_S, "late ack")
    finally:
        assert_stopped(d)
    docs = rec.escalations()
    assert [(x["task_id"], x["verdict"]) for x in docs] == [
        ("task-1", "RECEIPT_TIMED_OUT"),
        ("task-2", "RECEIPT_TIMED_OUT"),
    ]
    assert docs[0]["idempotency_key"] == stored_envelope(spool, "task-1")["idempotency_key"]
    assert docs[0]["attempts"] == 1 and docs[0]["ts"].endswith("Z")


def test_a_stop_during_a_receipt_escalation_waits_for_it(spool: Spool) -> None:
    """SIGTERM while a RECEIPT_TIMED_OUT escalation runs: the daemon exits 0 only after the
    escalation finished, since a restart will not send it again."""
    delivered = spool.root / "escalation.json"
    script = spool.root / "slow_escalation.py"
    script.write_text(
        "import sys, time\ndata = sys.stdin.read()\ntime.sleep(1.0)\n"
        "open(sys.argv[1], 'w').write(data)\n"
    )
    argv = [sys.executable, str(script), str(delivered)]
    exec_wake(spool, update=False, escalate_argv=argv, more="receipt_ttl_s = 1.0\n")
    d = started(spool)
    try:
        spool.drop("task-1")
        wait_for(lambda: receipt_of(spool, "task-1") == "TIMED_OUT", DEADLINE_S, "TIMED_OUT")
    finally:
        assert_stopped(d)
    assert json.loads(delivered.read_text())["verdict"] == "RECEIPT_TIMED_OUT"


def test_retry_request_is_consumed_by_the_running_daemon(spool: Spool) -> None:
    """`retry TASK` with a daemon running writes the request; the daemon adds RETRY, re-runs
    with the same key, wakes the task and removes the request."""
    rec = exec_wake(spool, behaviour="fail", update=False)
    d = started(spool)
    try:
        spool.drop("task-1")
        wait_for(lambda: spool.marker("task-1", ".pickup.failed"), DEADLINE_S, "FIRE_FAILED")
        set_sink_behaviour(rec.sink, "ok")
        res = spool.cli("retry", "task-1")
        assert res.returncode == 0 and "retry requested" in res.stdout, res.stderr
        wait_for(lambda: spool.marker("task-1"), DEADLINE_S, "woken after retry")
        wait_for(lambda: receipt_of(spool, "task-1") == "UNCONFIRMED", DEADLINE_S, "envelope")
    finally:
        assert_stopped(d)
    ledger = spool.ledger_lines()
    assert [e["state"] for e in ledger] == ["CLAIMED", "FAILED", "RETRY", "CLAIMED", "DONE"]
    assert len({e["key"] for e in ledger}) == 1
    assert not (spool.events / "task-1.pickup.retry").exists()
    assert spool.marker("task-1", ".pickup.failed") is None
    assert [c["env"]["ANU_WATCHD_IDEMPOTENCY_KEY"] for c in rec.calls()] == [ledger[0]["key"]] * 2
    assert [x["verdict"] for x in rec.escalations()] == ["FIRE_FAILED"]


def test_http_sink_in_the_daemon_retries_a_500(spool: Spool) -> None:
    """The daemon's HTTP sink: 500 then 200 is WAKE_BUILT on attempt 2, signed, same key."""
    with TestHttpServer(key=spool.key, replies=[500]) as server:
        http_wake(spool, server.url)
        d = started(spool)
        try:
            spool.drop("task-1")
            server.wait_for_requests(3, timeout_s=DEADLINE_S)
            wait_for(lambda: receipt_of(spool, "task-1"), DEADLINE_S, "stored envelope")
        finally:
            assert_stopped(d)
        requests = server.requests
    key = spool.ledger_lines()[0]["key"]
    assert all(r.signature_ok for r in requests)
    assert [r.headers["idempotency-key"] for r in requests] == [key, key, key + ".final"]
    marker: dict[str, Any] | None = spool.marker("task-1")
    assert marker is not None and (marker["attempts"], marker["schedule_id"]) == (2, "H-2")
