"""Group commit of projection files: fsio.atomic_write_many and ProjectionWriter.

Real files in tmp_path; faults only at the ``anu_watchd.fsio.fsync`` seam.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from anu_watchd import fsio
from anu_watchd.appendlog import AppendLog
from anu_watchd.errors import DurabilityError, NotWrittenError
from anu_watchd.projections import ProjectionWriter


class Seam:
    """Records each fsync as "file" or "dir"; fails the ``fail_at``-th call with EIO."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.kinds: list[str] = []
        self.fail_at = fail_at
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self.lock:
            self.kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
            if len(self.kinds) == self.fail_at:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)


def _names(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


# -- atomic_write_many ------------------------------------------------------------


def test_many_writes_in_two_directories_fsync_each_file_and_each_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file is fsynced, each touched directory exactly once, after the renames."""
    seam = Seam()
    monkeypatch.setattr(fsio, "fsync", seam)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "stale").write_bytes(b"old")
    writes = [(a / "x", b"1"), (b / "y", b"2"), (a / "z", b"3")]
    fsio.atomic_write_many(writes, remove=[a / "stale", b / "never-was"])
    assert [p.read_bytes() for p, _ in writes] == [b"1", b"2", b"3"]
    assert _names(a) == {"x", "z"} and _names(b) == {"y"}
    assert seam.kinds == ["file"] * 3 + ["dir"] * 2


def test_a_failed_file_fsync_leaves_no_trace_and_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO at the second file's fsync: nothing renamed, no temp left, NotWrittenError."""
    monkeypatch.setattr(fsio, "fsync", Seam(fail_at=2))
    (tmp_path / "x").write_bytes(b"old")
    with pytest.raises(NotWrittenError):
        fsio.atomic_write_many([(tmp_path / "x", b"new"), (tmp_path / "y", b"2")])
    assert _names(tmp_path) == {"x"}
    assert (tmp_path / "x").read_bytes() == b"old"


def test_a_halted_batch_stops_before_its_next_fsync_and_leaves_no_trace(tmp_path: Path) -> None:
    """A set halt flag stops the batch: ECANCELED, nothing renamed, no temp left."""
    halted = threading.Event()
    halted.set()
    with pytest.raises(NotWrittenError) as info:
        fsio.atomic_write_many([(tmp_path / "x", b"1")], halted=halted)
    assert info.value.errno == errno.ECANCELED
    assert _names(tmp_path) == set()


# -- ProjectionWriter ------------------------------------------------------------


async def test_concurrent_writes_share_batches_and_all_become_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 runs writing at once: every file lands, in fewer directory fsyncs than runs."""
    seam = Seam()
    monkeypatch.setattr(fsio, "fsync", seam)
    writer = ProjectionWriter()
    await asyncio.gather(
        *(writer.write([(tmp_path / f"m{i}", b"m"), (tmp_path / f"e{i}", b"e")]) for i in range(40))
    )
    assert len(_names(tmp_path)) == 80
    assert seam.kinds.count("file") == 80
    assert seam.kinds.count("dir") < 40


async def test_a_failed_batch_fails_its_callers_and_every_later_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO in a batch: DurabilityError for its callers and for any write after it."""
    monkeypatch.setattr(fsio, "fsync", Seam(fail_at=1))
    writer = ProjectionWriter()
    results = await asyncio.gather(
        *(writer.write([(tmp_path / f"m{i}", b"m")]) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, DurabilityError) for r in results), results
    monkeypatch.undo()
    with pytest.raises(DurabilityError):
        await writer.write([(tmp_path / "later", b"x")])
    assert not (tmp_path / "later").exists()


async def test_halt_fails_queued_and_later_writes(tmp_path: Path) -> None:
    """After halt nothing is written: a write raises the halt's DurabilityError."""
    writer = ProjectionWriter()
    await writer.write([(tmp_path / "before", b"x")])
    writer.halt(DurabilityError(errno.EIO, "ledger fsync failed"))
    with pytest.raises(DurabilityError, match="ledger fsync failed"):
        await writer.write([(tmp_path / "after", b"x")])
    assert _names(tmp_path) == {"before"}


async def test_a_failed_append_log_fsync_stops_a_batch_already_in_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger fsync fails while a projection batch is inside its first fsync: the shared
    fail-stop flag, set in the ledger's thread, stops the batch before its next fsync,
    with no halt() from the event loop."""
    fail_stop = threading.Event()
    log = AppendLog.open(tmp_path / "ledger.jsonl", fail_stop=fail_stop)
    writer = ProjectionWriter(fail_stop)
    out = tmp_path / "events"
    out.mkdir()
    entered, release = threading.Event(), threading.Event()
    projection_fsyncs: list[str] = []

    def seam(fd: int) -> None:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name == "ledger.jsonl":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        projection_fsyncs.append(name)
        if len(projection_fsyncs) == 1:
            entered.set()
            assert release.wait(10), "never released"
        os.fsync(fd)

    monkeypatch.setattr(fsio, "fsync", seam)
    batch = asyncio.ensure_future(writer.write([(out / f"f{i}", b"x") for i in range(4)]))
    await asyncio.to_thread(entered.wait, 10)  # the batch is inside its first fsync
    with pytest.raises(DurabilityError):
        await log.append({"n": 1})  # the ledger's fsync fails in its own thread
    assert fail_stop.is_set()
    release.set()
    with pytest.raises(DurabilityError):
        await batch
    assert len(projection_fsyncs) == 1
    assert sorted(p.name for p in out.iterdir() if not fsio.is_temp_name(p.name)) == []
    await log.aclose()
