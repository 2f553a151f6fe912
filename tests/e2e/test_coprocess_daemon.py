"""The exec co-process mode (``wake.exec.process = true``) in the real daemon process.

Handlers are the reference handler in examples/ and the misbehaving test
handler (tests/coprochelpers.py); the daemon is ``python -m anu_watchd run``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.coprochelpers import (
    pid_alive,
    read_requests,
    read_starts,
    wait_gone,
    write_coprocess_handler,
)
from tests.daemonproc import DaemonProc, wait_for
from tests.integration.test_wake import assert_all_envelopes_valid, toml_list
from tests.spool import Spool

DEADLINE_S = 30.0
REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "coprocess_handler.py"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path)


def coprocess_wake(spool: Spool, argv: list[str], *, concurrency: int = 2, more: str = "") -> None:
    """Configure the exec sink in co-process mode with ``argv`` as the handler."""
    spool.write_config(
        sink="exec",
        wake_extra=(
            f"concurrency = {concurrency}\ntimeout_s = 5.0\n"
            f"exec.argv = {toml_list(argv)}\nexec.process = true\n{more}"
        ),
    )


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@contextlib.contextmanager
def serving(spool: Spool) -> Iterator[DaemonProc]:
    """The daemon, ready; stopped (exit 0, else its log printed) when the block ends."""
    d = DaemonProc(spool)
    try:
        d.wait_notify("READY=1")
        yield d
    finally:
        code = d.stop()
        if code != 0:
            print(d.log_text())
        assert code == 0


def wake_all(spool: Spool, tasks: list[str]) -> None:
    for t in tasks:
        spool.drop(t)
    wait_for(lambda: all(spool.marker(t) for t in tasks), DEADLINE_S, "every wake")


def test_a_burst_is_registered_once_each_by_long_running_handlers(spool: Spool) -> None:
    """Forty results: each registered and updated exactly once, by at most two processes, with
    the handler's schedule ids in the markers; stopping the daemon stops the handlers."""
    record = spool.root / "record.jsonl"
    coprocess_wake(spool, [sys.executable, str(REFERENCE), str(record)])
    tasks = [f"task-{i:03d}" for i in range(40)]
    with serving(spool):
        wake_all(spool, tasks)
        wait_for(lambda: len(records(record)) == 80, DEADLINE_S, "every update")
    notes = records(record)
    assert Counter((n["op"], n["task_id"]) for n in notes) == Counter(
        {(op, t): 1 for t in tasks for op in ("register", "update")}
    )
    handler_pids = {n["pid"] for n in notes}
    assert 1 <= len(handler_pids) <= 2
    for t in tasks:
        marker = spool.marker(t)
        assert marker is not None
        assert marker["schedule_id"] == f"local-{marker['idempotency_key']}"
    wait_gone(sorted(handler_pids), "the handlers after the daemon stopped")
    assert assert_all_envelopes_valid(spool.root) == 40


def test_a_handler_that_declines_updates_is_sent_registers_only(spool: Spool) -> None:
    """Its answers say ``"updates": false``: ten wakes, ten register requests and no update,
    one log line saying so, and every final envelope still written beside its result."""
    hdir = spool.root / "handler"
    coprocess_wake(spool, write_coprocess_handler(hdir, behaviour="ok-no-updates"), concurrency=1)
    with serving(spool) as d:
        wake_all(spool, [f"task-{i}" for i in range(10)])
    assert [r["op"] for r in read_requests(hdir)] == ["register"] * 10
    assert len(d.events("coprocess_updates_declined")) == 1
    assert assert_all_envelopes_valid(spool.root) == 10


def test_a_crash_mid_request_is_retried_on_a_new_handler(spool: Spool) -> None:
    """The handler crashes on the first request: the wake is retried on a fresh process and
    registered on attempt 2, exactly once."""
    hdir = spool.root / "handler"
    coprocess_wake(spool, write_coprocess_handler(hdir, behaviour="crash-until:1"))
    with serving(spool) as d:
        spool.drop("task-crash")
        marker = wait_for(lambda: spool.marker("task-crash"), DEADLINE_S, "the wake")
        dropped = d.wait_event("coprocess_handler_dropped")
    assert "exited 3: handler crashed mid-request" in dropped["error"]
    assert len(d.events("coprocess_handler_started")) == 2
    assert marker["attempts"] == 2 and marker["schedule_id"] == "S-2"
    assert len(read_starts(hdir)) == 2
    assert [r["op"] for r in read_requests(hdir)] == ["register", "register", "update"]


def test_a_handler_that_dies_at_once_is_fire_failed_with_bounded_restarts(spool: Spool) -> None:
    """Handlers that exit before reading anything: every result FIRE_FAILED, a handful of
    process starts for twenty results, and the daemon serves on."""
    hdir = spool.root / "handler"
    coprocess_wake(spool, write_coprocess_handler(hdir, behaviour="die-at-start"))
    # Restart waits double from 0.01 s without the spool's usual 0.05 s cap: starts grow with
    # the log of the run's duration, so the bound below holds on a slow, loaded machine too.
    spool.config.write_text(
        spool.config.read_text().replace("backoff_max_s = 0.05", "backoff_max_s = 30.0")
    )
    with serving(spool):
        tasks = [f"task-{i:02d}" for i in range(20)]
        for t in tasks:
            spool.drop(t)
        wait_for(
            lambda: all(spool.marker(t, ".pickup.failed") for t in tasks), DEADLINE_S, "failures"
        )
        assert len(read_starts(hdir)) <= 15
    errors = [str((spool.marker(t, ".pickup.failed") or {}).get("error")) for t in tasks]
    assert all("cannot load my configuration" in e for e in errors)
    assert sum("not restarted for now" in e for e in errors) >= 10


def test_a_reload_resizes_the_pool_in_place_and_a_new_argv_replaces_it(spool: Spool) -> None:
    """A reload that only changes concurrency keeps the running handlers; one that changes the
    handler's argv stops them and starts the new one."""
    hdir = spool.root / "handler"
    argv = write_coprocess_handler(hdir, behaviour="ok")
    coprocess_wake(spool, argv)
    with serving(spool) as d:
        spool.drop("task-a")
        wait_for(lambda: spool.marker("task-a"), DEADLINE_S, "the first wake")
        first = [s["pid"] for s in read_starts(hdir)]
        coprocess_wake(spool, argv, concurrency=1)
        assert spool.cli("reload").returncode == 0
        d.wait_notify("READY=1", count=2)
        spool.drop("task-b")
        wait_for(lambda: spool.marker("task-b"), DEADLINE_S, "the second wake")
        assert [s["pid"] for s in read_starts(hdir)] == first
        assert all(pid_alive(p) for p in first)
        coprocess_wake(spool, [*argv, "--new"], concurrency=1)
        assert spool.cli("reload").returncode == 0
        d.wait_notify("READY=1", count=3)
        wait_gone(first, "the old handlers after the argv changed")
        spool.drop("task-c")
        wait_for(lambda: spool.marker("task-c"), DEADLINE_S, "the third wake")
        assert len(read_starts(hdir)) == len(first) + 1
