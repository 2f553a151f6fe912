"""fsync / write failure: "failure return + restart observation" (seed 004, issue 6 item 2).

The contract for daemon state is *fatal* (docs/durability.md): the failing run gets a
DurabilityError, the daemon stops (exit 70) and writes nothing more, never retries
an fsync; the restart trusts only the ledger. After it, no DONE exists for a wake the
sink never saw, and every task left CLAIMED is woken again with the same key.

The fault is injected at the one seam, ``anu_watchd.fsio.fsync``, at *every* fsync
position of a pipeline run (once, or for good), and each failure is observed after a
plain restart and after a simulated power cut that loses whatever was not durable.
Where the machine allows, a real failing device (a loop device running out of
backing store, or device-mapper's error target) does the same to the real daemon.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from anu_watchd import cli, fsio
from anu_watchd.appendlog import AppendLog
from anu_watchd.config import load_config
from anu_watchd.daemon import Daemon
from anu_watchd.errors import DurabilityError
from anu_watchd.ledger import Ledger
from anu_watchd.model import LedgerEntry, LedgerState
from anu_watchd.runtime import open_pipeline
from anu_watchd.secret import load_key
from tests.deadline import until
from tests.fsyncgate import FsyncGate
from tests.reliability.blockdev import FailingDisk, why_not
from tests.reliability.harness import (
    EVIDENCE,
    LEDGER,
    FsyncFault,
    LedgerView,
    Produced,
    RecordingSink,
    assert_woken_exactly_once,
    done_markers,
    duplicates,
    exec_spool,
    finish,
    life,
    produce,
    sink_keys,
    start,
    tree,
    wait_done,
)
from tests.spool import Spool

RESULTS = 3  # per position: enough for a failure before, during and after other runs
# What writes already inside a thread at the failure may still fsync: each writer thread
# that passed its check of the shared fail-stop flag just before it was set (a log flush, a
# projection file and its directory), and a one-off state write (a failed marker) in flight.
# Without the flag a projection batch ran on until the loop halted it (14 seen under
# `make soak`); a daemon that kept going would make hundreds.
IN_FLIGHT_FSYNCS = 3 * 3 + 2


def _spool(root: Path, n: int = RESULTS) -> tuple[Spool, dict[str, Produced]]:
    spool = Spool(root)
    produced = {f"task-f{i}": produce(spool.events, f"task-f{i}") for i in range(n)}
    return spool, produced


def _count_fsyncs(root: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many fsyncs a healthy first life makes: the positions to fail at."""
    spool, _ = _spool(root)
    counter = FsyncFault(None)
    counter.install(monkeypatch)
    asyncio.run(life(spool, RecordingSink(), recover=False))
    monkeypatch.undo()
    assert counter.bulk >= 1, "the projections were never made durable in bulk"
    return counter.count


def _no_temps(snapshot: dict[str, tuple[str, int, str]]) -> dict[str, tuple[str, int, str]]:
    return {k: v for k, v in snapshot.items() if not fsio.is_temp_name(Path(k).name)}


@attrs.frozen
class Scenario:
    at: int
    sticky: bool
    power_cut: bool

    def __str__(self) -> str:
        how = "from then on" if self.sticky else "once"
        after = "a power cut" if self.power_cut else "a restart"
        return f"fsync #{self.at} fails {how}, then {after}"


def _run_scenario(root: Path, sc: Scenario, monkeypatch: pytest.MonkeyPatch) -> str:
    """One failure, observed; returns what failed (for the failure message)."""
    spool, produced = _spool(root)
    listing = set(os.listdir(spool.events))
    snapshots: list[dict[str, tuple[str, int, str]]] = []
    fault = FsyncFault(sc.at, sticky=sc.sticky, on_fail=lambda: snapshots.append(tree(root)))
    sink = RecordingSink()
    fault.install(monkeypatch)
    with pytest.raises(DurabilityError):
        asyncio.run(life(spool, sink, recover=False))
    monkeypatch.undo()
    what = f"{sc} ({Path(fault.failed or '?').name})"
    # Fatal means fatal: not one fsync more (none retried), not one byte more written.
    assert fault.after == [], f"{what}: fsyncs after the failure: {fault.after}"
    assert _no_temps(tree(root)) == _no_temps(snapshots[0]), f"{what}: written after the failure"
    if sc.power_cut:
        fault.crash(spool.events, logs=(LEDGER, EVIDENCE), before=listing)
    view = LedgerView.read(spool.events)
    ghosts = {e.key for e in view.entries if e.state is LedgerState.DONE} - set(sink.keys)
    assert not ghosts, f"{what}: DONE without a wake: {ghosts}"
    in_flight, woken_before = view.in_flight(), len(sink.keys)

    asyncio.run(life(spool, sink, recover=True))
    assert in_flight <= set(sink.keys[woken_before:]), f"{what}: CLAIMED not woken again"
    assert_woken_exactly_once(spool.events, produced, sink.keys)
    assert set(duplicates(sink.keys)) <= in_flight, f"{what}: woken twice though settled"
    return what


def test_every_fsync_position_failing_is_fatal_and_recovers_without_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For each fsync of three wakes failing once or for good, observed after a restart and
    after a power cut: DurabilityError, nothing more written, no ghost DONE, CLAIMED woken
    again with the same key, and in the end every result woken exactly once."""
    positions = _count_fsyncs(tmp_path / "dry", monkeypatch)
    seen = []
    for at in range(1, positions + 1):
        for sticky in (False, True):
            for power_cut in (False, True):
                sc = Scenario(at, sticky, power_cut)
                seen.append(
                    _run_scenario(tmp_path / f"{at}-{sticky:d}{power_cut:d}", sc, monkeypatch)
                )
    targets = {w.rsplit("(", 1)[1] for w in seen}
    # Every kind of durable write was hit: both logs and the directory (its fsync, and the
    # projections' syncfs, which names it: markers and envelopes have no fsync of their own).
    assert {LEDGER + ")", EVIDENCE + ")", "events)"} <= targets


# -- the fail-stop pieces ---------------------------------------------------------------------


async def test_a_halted_append_log_drops_queued_lines_and_refuses_new_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """halt(): the flush already inside fsync finishes, queued lines are never written
    (their callers get DurabilityError), later appends raise without touching the file."""
    log = AppendLog.open(tmp_path / "log.jsonl")
    gate = FsyncGate()
    monkeypatch.setattr(fsio, "fsync", gate)
    first = asyncio.ensure_future(log.append({"n": 1}))
    await asyncio.to_thread(gate.entered.wait, 10)  # line 1 is being made durable
    queued = asyncio.ensure_future(log.append({"n": 2}))
    await asyncio.sleep(0)  # one loop turn: the task above queues line 2 behind the flush
    log.halt(OSError(5, "a fatal error elsewhere"))
    gate.release.set()
    assert await first == 0
    with pytest.raises(DurabilityError):
        await queued
    with pytest.raises(DurabilityError):
        await log.append({"n": 3})
    await log.aclose()
    assert (tmp_path / "log.jsonl").read_bytes() == b'{"n":1}\n'
    assert not log.healthy


async def test_a_halted_ledger_refuses_records(tmp_path: Path) -> None:
    """Ledger.halt(): the next record raises DurabilityError and the file is untouched."""
    ledger = Ledger.open(tmp_path / "ledger.jsonl")
    entry = LedgerEntry("ik1-" + "0" * 40, "task-1", "0" * 64, "anu", LedgerState.CLAIMED, 1, "t")
    await ledger.record(entry)
    size = (tmp_path / "ledger.jsonl").stat().st_size
    ledger.halt(OSError(5, "elsewhere"))
    with pytest.raises(DurabilityError):
        await ledger.record(attrs.evolve(entry, state=LedgerState.DONE))
    await ledger.aclose()
    assert (tmp_path / "ledger.jsonl").stat().st_size == size
    assert not ledger.healthy


def test_scan_once_exits_70_on_an_fsync_failure_and_writes_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`scan --once` (four workers) hitting EIO exits 70, not a traceback, and stops dead."""
    spool, _ = _spool(tmp_path, 30)
    snapshots: list[dict[str, tuple[str, int, str]]] = []
    fault = FsyncFault(10, on_fail=lambda: snapshots.append(tree(tmp_path)))
    fault.install(monkeypatch)
    assert cli.main(["--config", str(spool.config), "scan", "--once"]) == 70
    assert "fatal" in capsys.readouterr().err
    assert len(fault.after) <= IN_FLIGHT_FSYNCS, fault.after


# -- the daemon, in process -------------------------------------------------------------------


async def _serve_until(d: Daemon, done: Callable[[], bool], timeout: float) -> int:
    """Run the daemon until ``done()``, then stop it; its exit code."""
    task = asyncio.ensure_future(d.serve())
    await until(lambda: done() or task.done(), deadline_s=timeout, what="the daemon")
    assert not task.done(), f"the daemon exited {task.result()} before it was done"
    d.request_stop()
    return await asyncio.wait_for(task, 30)


async def _fail_daemon_then_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, at: int, concurrency: int, n: int
) -> tuple[FsyncFault, list[Any], LedgerView, list[str], dict[str, Produced]]:
    sink_dir = tmp_path / "sink"
    spool = exec_spool(tmp_path / "spool", sink_dir, concurrency=concurrency)
    produced = {f"task-d{i}": produce(spool.events, f"task-d{i}") for i in range(n)}
    snapshots: list[Any] = []
    fault = FsyncFault(at, on_fail=lambda: snapshots.append(tree(spool.events)))
    fault.install(monkeypatch)
    code = await asyncio.wait_for(Daemon(spool.config, environ={}).serve(), 30)
    assert code == 70, f"fsync #{at} failing: exit {code}, not 70"
    monkeypatch.undo()
    snapshots.append(tree(spool.events))
    view = LedgerView.read(spool.events)
    woken_before = len(sink_keys(sink_dir))
    ghosts = {e.key for e in view.entries if e.state is LedgerState.DONE} - set(sink_keys(sink_dir))
    assert not ghosts, f"DONE without a wake: {ghosts}"
    d = Daemon(spool.config, environ={})
    code = await _serve_until(d, lambda: done_markers(spool.events) >= n, 60)
    assert code == 0
    woken = sink_keys(sink_dir)
    assert view.in_flight() <= set(woken[woken_before:]), "CLAIMED not woken again"
    assert_woken_exactly_once(spool.events, produced, woken)
    assert set(duplicates(woken)) <= view.in_flight()
    return fault, snapshots, view, woken, produced


async def test_daemon_with_one_wake_slot_stops_at_an_fsync_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Daemon (one wake slot, many runs) exits 70 at a failed fsync; only fsyncs the
    other writer threads had already started follow it, and the next start completes
    every result."""
    # 8 wakes through one slot make 22 syncs (measured): a CLAIMED group commit, each
    # wake's DONE commit and its projection batch's syncfs, the close's; 15 is mid-run.
    fault, _snaps, _view, _woken, _ = await _fail_daemon_then_restart(
        tmp_path, monkeypatch, at=15, concurrency=1, n=8
    )
    assert len(fault.after) <= IN_FLIGHT_FSYNCS, fault.after


async def test_daemon_with_four_workers_exits_70_at_any_fsync_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four workers, EIO at random fsyncs: exit 70 every time (a worker's error is never a
    silent death), then no ghost DONE and every result woken, CLAIMED ones again."""
    seed = int(os.environ.get("ANU_FSYNC_SEED") or secrets.randbelow(2**32))
    print(f"ANU_FSYNC_SEED={seed}")
    rng = random.Random(seed)  # noqa: S311 - a replayable fault schedule
    for round_ in range(4):
        # Projections are synced once a batch (syncfs), not per file, the evidence log not
        # at all until close, and group commits share fsyncs between runs: but each of the
        # >= 10 waves of four wake slots needs its own DONE commit and batch sync, so 40
        # wakes make 30 or more (44-48 measured).
        at = rng.randint(1, 30)
        fault, _, _, _, _ = await _fail_daemon_then_restart(
            tmp_path / str(round_), monkeypatch, at=at, concurrency=4, n=40
        )
        assert len(fault.after) <= IN_FLIGHT_FSYNCS, (at, fault.after)


# -- a real failing device ---------------------------------------------------------------------


def _real_device_scenario(tmp_path: Path, kind: str) -> None:
    reason = why_not(kind)
    if reason:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    seed = int(os.environ.get("ANU_DEVICE_SEED") or secrets.randbelow(2**32))
    print(f"ANU_DEVICE_SEED={seed}")
    rng = random.Random(seed)  # noqa: S311 - a replayable fault schedule
    n, sink_dir = 150, tmp_path / "sink"
    with FailingDisk(tmp_path / "disk", tmp_path / "spool" / "memory", kind=kind) as disk:
        spool = exec_spool(tmp_path / "spool", sink_dir)
        fsio.atomic_write(spool.flag, b"true\n")  # as `anu-watchd enable` does: durably
        produced = {f"task-r{i}": produce(spool.events, f"task-r{i}") for i in range(n)}
        d = start(spool)
        d.wait_notify("READY=1")
        wait_done(spool.events, rng.randint(5, 60), 60, d)
        disk.fail()
        code = d.wait_exit(60)
        finish(d)
        assert code == 70, d.log_text()[-3000:]
        assert d.events("daemon_fatal") or d.events("durability_failure")
        woken_before = sink_keys(sink_dir)
        disk.crash()
        view = LedgerView.read(spool.events)
        done = {e.key for e in view.entries if e.state is LedgerState.DONE}
        assert done <= set(woken_before), "a durable DONE for a wake the sink never saw"
        d = start(spool)
        d.wait_notify("READY=1")
        wait_done(spool.events, n, 120, d)
        assert finish(d) == 0
        woken = sink_keys(sink_dir)
        assert view.in_flight() <= set(woken[len(woken_before) :])
        assert_woken_exactly_once(spool.events, produced, woken)
        assert set(duplicates(woken)) <= view.in_flight()
        print(f"{kind}: {len(view.in_flight())} in flight at the failure, woken again")


def test_real_device_running_out_of_blocks_is_fatal_and_recovers(tmp_path: Path) -> None:
    """ext4 on a loop device whose backing store runs out mid-run: the real daemon exits
    70, and after a power-cut-like remount it wakes every result, CLAIMED ones again."""
    _real_device_scenario(tmp_path, "thin")


def test_real_device_mapper_error_target_is_fatal_and_recovers(tmp_path: Path) -> None:
    """The same on device-mapper's error target (every I/O fails with EIO)."""
    _real_device_scenario(tmp_path, "dm-error")


class FailAfterGate:
    """At the bulk sync seam: the first syncfs (a projection batch) waits for ``release``,
    then fails with EIO."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, fd: int) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10), "never released"
        raise OSError(errno.EIO, os.strerror(errno.EIO))


async def test_a_write_failing_after_its_run_was_cancelled_still_ends_in_70(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run waiting for its done marker is cancelled (a drain that timed out), then its
    batch's syncfs fails in the writer thread: nobody is left to raise, yet leaving open_pipeline
    raises DurabilityError (exit 70), and the ledger reports unhealthy (no checkpoint)."""
    spool = Spool(tmp_path)
    path = spool.drop("task-1")
    config = load_config(spool.config)
    gate = FailAfterGate()
    with pytest.raises(DurabilityError, match="after its run was cancelled"):
        async with open_pipeline(config, load_key(config.key.file, root=config.root)) as pipeline:
            ledger = pipeline.stages.ledger
            monkeypatch.setattr(fsio, "syncfs", gate)
            run = asyncio.ensure_future(pipeline.pickup(path))
            await asyncio.to_thread(gate.entered.wait, 10)  # the marker's batch is syncing
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            gate.release.set()
    assert not ledger.healthy
