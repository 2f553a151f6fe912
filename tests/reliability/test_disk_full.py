"""Disk full: the spool on a real small tmpfs, filled mid-run (issue 6, item 3).

ENOSPC is a write failure of daemon state, so it is fatal (exit 70,
docs/durability.md): the daemon stops, nothing is lost, and once space is freed a restart wakes
every result, the ones in flight at the failure again with the same key. The
producer's side of the same disk keeps its own contract: a result that cannot be
written leaves no trace.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
from pathlib import Path

import pytest

from anu_watchd import appendlog, fsio
from anu_watchd.errors import DurabilityError, NotWrittenError
from anu_watchd.model import LedgerState
from anu_watchd.producer import write_result
from tests.reliability.harness import (
    EVIDENCE,
    LedgerView,
    Produced,
    RecordingSink,
    assert_woken_exactly_once,
    duplicates,
    exec_spool,
    file_sha,
    fill,
    finish,
    life,
    produce,
    sink_keys,
    start,
    tmpfs,
    wait_done,
)
from tests.spool import Spool, valid_doc

RESULTS = 300


def test_a_full_disk_stops_the_daemon_with_70_and_a_restart_completes_every_result(
    tmp_path: Path,
) -> None:
    """Filling the spool's filesystem mid-run: exit 70, every result still there unaltered,
    no marker without its DONE; a restart on the full disk exits 70 the same way; after
    freeing space, one wake per result (in-flight ones again) and a whole ledger."""
    seed = int(os.environ.get("ANU_DISK_SEED") or secrets.randbelow(2**32))
    print(f"ANU_DISK_SEED={seed}")
    rng = random.Random(seed)  # noqa: S311 - a replayable fault schedule
    sink_dir = tmp_path / "sink"  # the collector's side is not on the full disk
    with tmpfs(tmp_path / "spool" / "memory", "8m") as mnt:
        spool = exec_spool(tmp_path / "spool", sink_dir)
        produced = {f"task-s{i}": produce(spool.events, f"task-s{i}") for i in range(RESULTS)}
        d = start(spool)
        d.wait_notify("READY=1")
        wait_done(spool.events, rng.randint(10, RESULTS // 2), 60, d)
        fill(mnt)
        code = d.wait_exit(60)
        finish(d)
        assert code == 70, d.log_text()[-3000:]
        assert d.events("daemon_fatal")

        _assert_nothing_lost(spool.events, produced, sink_keys(sink_dir))
        fill(mnt, "filler-2")  # whatever the dead daemon's discarded temps gave back
        _assert_emit_leaves_no_trace(spool.events)
        in_flight = LedgerView.read(spool.events, torn_ok=True).in_flight()
        torn = LedgerView.torn(spool.events)  # ENOSPC may cut a write short

        # systemd restarts it on the still-full disk: the same clean stop, nothing lost.
        d = start(spool)
        code = d.wait_exit(60)
        finish(d)
        assert code == 70, d.log_text()[-3000:]
        assert bool(d.events("ledger_tail_truncated")) == torn
        _assert_nothing_lost(spool.events, produced, sink_keys(sink_dir))
        view = LedgerView.read(spool.events, torn_ok=True)
        in_flight |= view.in_flight()
        torn = LedgerView.torn(spool.events)

        woken_before = len(sink_keys(sink_dir))
        for filler in ("filler", "filler-2"):
            (mnt / filler).unlink()
        d = start(spool)
        d.wait_notify("READY=1")
        wait_done(spool.events, RESULTS, 120, d)
        assert finish(d) == 0
        assert bool(d.events("ledger_tail_truncated")) == torn
        woken = sink_keys(sink_dir)
        assert view.in_flight() <= set(woken[woken_before:]), "CLAIMED not woken again"
        assert_woken_exactly_once(spool.events, produced, woken)  # the ledger is whole again
        assert set(duplicates(woken)) <= in_flight
        print(f"disk full: {len(in_flight)} in flight at the two stops, woken again")


def _assert_nothing_lost(events: Path, produced: dict[str, Produced], woken: list[str]) -> None:
    view = LedgerView.read(events, torn_ok=True)  # every complete line parses
    assert all(file_sha(events / f"{p.task_id}.result.json") == p.sha256 for p in produced.values())
    done = {e.task_id for e in view.entries if e.state is LedgerState.DONE}
    markers = {n.removesuffix(".pickup.done") for n in os.listdir(events) if n.endswith(".done")}
    assert markers <= done, f"markers without a DONE line: {markers - done}"
    assert {e.key for e in view.entries if e.state is LedgerState.DONE} <= set(woken)


def _assert_emit_leaves_no_trace(events: Path) -> None:
    """The producer on the same full disk: NotWrittenError, no file, no temp file."""
    before = set(os.listdir(events))
    with pytest.raises(NotWrittenError):
        fsio.atomic_write(events / "task-late.result.json", b"x" * 8192)
    with pytest.raises(NotWrittenError):
        write_result(events, valid_doc("task-late", summary="y" * 1900))
    assert set(os.listdir(events)) == before


def test_a_line_cut_short_by_a_full_disk_is_cut_off_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short write (the disk filled mid-line) into the evidence log stops the run; the
    next start cuts the torn line off rather than gluing the next line onto it."""
    spool = Spool(tmp_path)
    produced = {f"task-t{i}": produce(spool.events, f"task-t{i}") for i in range(4)}
    calls = 0

    def short_write(fd: int, data: bytes) -> int:  # the appendlog write seam
        nonlocal calls
        if os.readlink(f"/proc/self/fd/{fd}").endswith(EVIDENCE):
            calls += 1
            if calls == 2:
                return os.write(fd, data[: len(data) // 2])
        return os.write(fd, data)

    sink = RecordingSink()
    monkeypatch.setattr(appendlog, "_write", short_write)
    with pytest.raises(DurabilityError):
        asyncio.run(life(spool, sink, recover=False))
    monkeypatch.undo()
    assert not (spool.events / EVIDENCE).read_bytes().endswith(b"\n")
    asyncio.run(life(spool, sink, recover=True))
    # Every line parses; the torn one (observability, not state) is simply gone.
    verdicts = [json.loads(line)["verdict"] for line in (spool.events / EVIDENCE).open("rb")]
    assert verdicts.count("WAKE_BUILT") == len(produced) - 1
    assert_woken_exactly_once(spool.events, produced, sink.keys)
