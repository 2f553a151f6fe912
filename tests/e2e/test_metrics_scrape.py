"""The real daemon's metrics, scraped over real HTTP on 127.0.0.1 and read from the textfile."""

from __future__ import annotations

import collections
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemonproc import DaemonProc, wait_for
from tests.spool import Spool, python_exec_spool

# Registers every task at once, except: "fail" in the id -> a permanent error (exit 1), and
# "slow" -> waits until the gate file exists, so a test can scrape while that run is in flight.
HANDLER = """\
import json, os, sys, time
env = json.loads(sys.stdin.read())
tid = env["task_id"]
if "fail" in tid:
    sys.exit(1)
gate = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gate")
while "slow" in tid and not os.path.exists(gate):
    time.sleep(0.01)
print("sched-" + tid)
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _metrics_table(listen: str, textfile: Path) -> str:
    return f'[metrics]\nlisten = "{listen}"\ntextfile = "{textfile}"\n'


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    metrics = _metrics_table("127.0.0.1:0", tmp_path / "m.prom")
    return python_exec_spool(tmp_path, HANDLER, extra=f"rescan_interval_s = 300\n{metrics}")


def parse(text: str) -> Samples:
    """Every sample of an exposition by name and sorted labels, read by prometheus_client."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def scrape(daemon: DaemonProc, nth: int = 1) -> Samples:
    """GET /metrics from the address the daemon logged (the ``nth`` bind, counting reloads)."""
    wait_for(lambda: len(daemon.events("metrics_listening")) >= nth, 20, "metrics endpoint")
    host, port = daemon.events("metrics_listening")[nth - 1]["address"]
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        return parse(resp.read().decode())


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name and v}


def evidence_counts(spool: Spool, field: str) -> dict[str, float]:
    counts = collections.Counter(str(e[field]) for e in spool.evidence() if e[field] is not None)
    return {k: float(v) for k, v in counts.items()}


def _quarantine_reasons(spool: Spool) -> dict[str, float]:
    lines = [e for e in spool.evidence() if e["verdict"] == "QUARANTINE"]
    return {k: float(v) for k, v in collections.Counter(e["reason"] for e in lines).items()}


def test_scrape_during_and_after_a_run_matches_the_evidence_log(
    spool: Spool, daemon: DaemonProc
) -> None:
    """Woken, quarantined, failed and skipped runs: the scraped counts equal the evidence log's."""
    spool.drop("task-ok-1")
    spool.drop("task-ok-2")
    spool.drop("task-fail-1")
    spool.drop("task-bad", raw=b"{not json")
    spool.drop("task-slow-1")
    wait_for(lambda: len(spool.evidence()) == 4, 30, "four runs")
    in_flight = ("anu_watchd_runs_in_flight", ())
    during = wait_for(lambda: (s := scrape(daemon))[in_flight] == 1 and s, 30, "the slow run")
    assert by_label(during, "anu_watchd_results_total", "verdict") == evidence_counts(
        spool, "verdict"
    )
    (spool.root / "gate").touch()
    wait_for(lambda: len(spool.evidence()) == 5, 30, "the slow run")
    spool.drop("task-ok-1")  # the same bytes again: PICKUP_SKIP
    wait_for(lambda: len(spool.evidence()) == 6, 30, "the skipped run")
    after = scrape(daemon)
    verdicts = by_label(after, "anu_watchd_results_total", "verdict")
    assert verdicts == evidence_counts(spool, "verdict")
    assert verdicts == {"WAKE_BUILT": 3, "FIRE_FAILED": 1, "QUARANTINE": 1, "PICKUP_SKIP": 1}
    assert by_label(after, "anu_watchd_quarantines_total", "reason") == _quarantine_reasons(spool)
    outcomes = by_label(after, "anu_watchd_wake_attempts_total", "outcome")
    assert outcomes == {"registered": 3, "permanent": 1}
    assert after[("anu_watchd_wake_latency_seconds_count", ())] == 3
    assert after[("anu_watchd_sink_call_seconds_count", (("sink", "exec"),))] == 4
    assert after[("anu_watchd_runs_in_flight", ())] == 0
    assert after[("anu_watchd_failed_tasks", ())] == 1
    assert after[("anu_watchd_unacked_tasks", ())] == 3
    assert after[("anu_watchd_pending_results", ())] == 0
    assert after[("anu_watchd_ledger_entries", ())] == len(spool.ledger_lines())
    assert after[("anu_watchd_last_successful_scan_timestamp_seconds", ())] > 0
    assert after[("anu_watchd_rescans_total", (("reason", "startup"),))] == 1


def test_a_reload_that_moves_the_endpoint_keeps_the_counters(
    spool: Spool, daemon: DaemonProc
) -> None:
    """SIGHUP with a new [metrics] rebinds the endpoint and the textfile; counts carry over."""
    spool.drop("task-ok-1")
    spool.drop("task-bad", raw=b"{not json")
    wait_for(lambda: len(spool.evidence()) == 2, 30, "two runs")
    before = scrape(daemon)
    old_address = tuple(daemon.events("metrics_listening")[0]["address"])
    moved = spool.root / "moved.prom"
    spool.write_config(
        sink="exec",
        extra=_metrics_table("localhost:0", moved),
        wake_extra=f'[wake.exec]\nargv = ["{sys.executable}", "{spool.root / "handler.py"}"]\n',
    )
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config_reloaded")
    after = scrape(daemon, nth=2)
    with pytest.raises(OSError):
        socket.create_connection(old_address, timeout=5).close()
    name = "anu_watchd_results_total"
    assert by_label(after, name, "verdict") == by_label(before, name, "verdict")
    assert by_label(after, name, "verdict") == {"WAKE_BUILT": 1, "QUARANTINE": 1}
    text = wait_for(lambda: moved.exists() and moved.read_text(), 20, "the moved textfile")
    assert by_label(parse(text), name, "verdict") == {"WAKE_BUILT": 1, "QUARANTINE": 1}


def test_the_textfile_holds_the_final_counts_after_a_stop(spool: Spool, daemon: DaemonProc) -> None:
    """At a clean stop the textfile is rewritten with the last counts, matching the evidence."""
    spool.drop("task-ok-1")
    spool.drop("task-fail-1")
    wait_for(lambda: len(spool.evidence()) == 2, 30, "two runs")
    assert daemon.stop() == 0
    samples = parse((spool.root / "m.prom").read_text())
    verdicts = by_label(samples, "anu_watchd_results_total", "verdict")
    assert verdicts == evidence_counts(spool, "verdict") == {"WAKE_BUILT": 1, "FIRE_FAILED": 1}
    assert by_label(samples, "anu_watchd_build_info", "version") == {"0.1.0": 1}


def test_an_invalid_listen_is_a_configuration_error(tmp_path: Path) -> None:
    """`check-config` refuses a [metrics] listen without a port, naming the key."""
    sp = Spool(tmp_path)
    sp.write_config(extra='[metrics]\nlisten = "9464"\n')
    out = sp.cli("check-config")
    assert out.returncode == 78
    assert "metrics.listen" in out.stderr


def test_results_are_still_woken_when_the_port_is_taken(spool: Spool, tmp_path: Path) -> None:
    """A listen address already in use is logged as an error; the daemon wakes all the same."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spool.write_config(sink="log", extra=_metrics_table(f"127.0.0.1:{port}", tmp_path / "x"))
        d = DaemonProc(spool)
        try:
            d.wait_notify("READY=1")
            assert d.wait_event("metrics_listen_failed")["listen"] == f"127.0.0.1:{port}"
            spool.drop("task-1")
            wait_for(lambda: (spool.events / "task-1.pickup.done").exists(), 20, "the wake")
        finally:
            assert d.stop() == 0
