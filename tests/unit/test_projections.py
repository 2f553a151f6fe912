"""Projection files: fsio.write_many_unsynced, sync_bulk and ProjectionWriter.

Real files in tmp_path; faults only at the ``anu_watchd.fsio.fsync`` and ``syncfs`` seams.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from anu_watchd import fsio, watermark
from anu_watchd.appendlog import AppendLog
from anu_watchd.errors import DurabilityError, NotWrittenError
from anu_watchd.projections import ProjectionWriter
from tests.deadline import until


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


# -- write_many_unsynced and sync_bulk -----------------------------------------------


def test_unsynced_writes_rename_each_file_without_an_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Projections land whole under their names and no fsync is made; removals follow."""
    seam = Seam()
    monkeypatch.setattr(fsio, "fsync", seam)
    (tmp_path / "stale").write_bytes(b"old")
    fsio.write_many_unsynced(
        [(tmp_path / "x", b"1"), (tmp_path / "y", b"2")], remove=[tmp_path / "stale"]
    )
    assert _names(tmp_path) == {"x", "y"}
    assert seam.kinds == []


def test_an_unsynced_write_onto_a_directory_leaves_no_temp(tmp_path: Path) -> None:
    """A rename that fails (a directory at the path) raises NotWrittenError, no temp left."""
    (tmp_path / "d").mkdir()
    with pytest.raises(NotWrittenError):
        fsio.write_many_unsynced([(tmp_path / "d", b"1")])
    assert _names(tmp_path) == {"d"}


def test_a_set_halt_flag_stops_unsynced_writes_and_the_bulk_sync(tmp_path: Path) -> None:
    """After a fatal error elsewhere neither a file nor a syncfs is attempted: ECANCELED."""
    halted = threading.Event()
    halted.set()
    with pytest.raises(OSError) as info:
        fsio.write_many_unsynced([(tmp_path / "x", b"1")], halted=halted)
    assert info.value.errno == errno.ECANCELED
    with pytest.raises(OSError):
        fsio.sync_bulk(tmp_path, halted)
    assert _names(tmp_path) == set()


def test_sync_bulk_calls_the_real_syncfs(tmp_path: Path) -> None:
    """syncfs(2) through ctypes succeeds on a healthy filesystem."""
    (tmp_path / "x").write_bytes(b"1")
    fsio.sync_bulk(tmp_path)


# -- ProjectionWriter ------------------------------------------------------------


async def test_concurrent_writes_share_batches_and_all_become_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 runs writing at once: every file lands, no file is fsynced on its own, and the
    runs share fewer syncfs calls than there are runs."""
    seam, bulk = Seam(), Seam()
    monkeypatch.setattr(fsio, "fsync", seam)
    monkeypatch.setattr(fsio, "syncfs", bulk)
    writer = ProjectionWriter()
    await asyncio.gather(
        *(writer.write([(tmp_path / f"m{i}", b"m"), (tmp_path / f"e{i}", b"e")]) for i in range(40))
    )
    assert len(_names(tmp_path)) == 80
    assert seam.kinds == []
    assert 1 <= len(bulk.kinds) < 40


async def test_a_failed_batch_fails_its_callers_and_every_later_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO at a batch's syncfs: DurabilityError for its callers and for any write after it;
    the sync is never tried again."""
    bulk = Seam(fail_at=1)
    monkeypatch.setattr(fsio, "syncfs", bulk)
    writer = ProjectionWriter()
    results = await asyncio.gather(
        *(writer.write([(tmp_path / f"m{i}", b"m")]) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, DurabilityError) for r in results), results
    with pytest.raises(DurabilityError):
        await writer.write([(tmp_path / "later", b"x")])
    assert not (tmp_path / "later").exists()
    assert len(bulk.kinds) == 1


async def test_halt_fails_queued_and_later_writes(tmp_path: Path) -> None:
    """After halt nothing is written: a write raises the halt's DurabilityError."""
    writer = ProjectionWriter()
    await writer.write([(tmp_path / "before", b"x")])
    writer.halt(DurabilityError(errno.EIO, "ledger fsync failed"))
    with pytest.raises(DurabilityError, match="ledger fsync failed"):
        await writer.write([(tmp_path / "after", b"x")])
    assert _names(tmp_path) == {"before"}


async def test_a_failed_append_log_fsync_stops_the_next_projection_batch_in_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger fsync fails in its own thread: the shared fail-stop flag stops the next
    projection batch before its first file, with no halt() from the event loop."""
    fail_stop = threading.Event()
    log = AppendLog.open(tmp_path / "ledger.jsonl", fail_stop=fail_stop)
    writer = ProjectionWriter(fail_stop)
    out = tmp_path / "events"
    out.mkdir()

    def seam(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fsio, "fsync", seam)
    with pytest.raises(DurabilityError):
        await log.append({"n": 1})
    assert fail_stop.is_set()
    with pytest.raises(DurabilityError) as info:
        await writer.write([(out / f"f{i}", b"x") for i in range(4)])
    assert "halted" in str(info.value) or info.value.errno == errno.ECANCELED
    assert _names(out) == set()
    await log.aclose()


# -- the watermark -------------------------------------------------------------------


async def test_the_watermark_stays_behind_an_open_debt_and_reaches_the_end_at_close(
    tmp_path: Path,
) -> None:
    """A projection owed and not yet written holds the watermark at the ledger end it was
    owed at; once paid and closed cleanly, the watermark is the ledger's end."""
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_bytes(b"x" * 99 + b"\n")
    end = [100]
    writer = ProjectionWriter(ledger=ledger, ledger_end=lambda: end[0], mark_every_s=0.0)
    owed = writer.owe()  # a run about to record its DONE line at offset 100
    end[0] = 200
    await writer.write([(tmp_path / "other", b"x")])  # another run's batch
    await writer.write([(tmp_path / "third", b"x")])  # the watermark of the first is written
    assert watermark.read(ledger) == 100
    end[0] = 300
    await writer.write([(tmp_path / "done", b"x")], debt=owed)
    await writer.aclose()
    assert watermark.read(ledger) == 300


async def test_a_moved_watermark_is_written_at_most_once_a_second_batch_or_none(
    tmp_path: Path,
) -> None:
    """A due mark rides on the next batch; a batch within ``mark_every_s`` of that write
    leaves the file alone; after ``mark_every_s`` with no batch the mark is written alone.
    A mark of 0 (nothing known yet) never replaces the one a previous life left."""
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_bytes((b"x" * 99 + b"\n") * 4)  # lines start at 0, 100, 200, 300; end 400
    watermark.write(ledger, 100)  # a previous life's
    end, now = [200], [0.0]
    writer = ProjectionWriter(
        ledger=ledger, ledger_end=lambda: end[0], clock=lambda: now[0], mark_every_s=0.2
    )
    await writer.write([(tmp_path / "a", b"x")])  # carries no mark: 0 is not written
    assert watermark.read(ledger) == 100
    end[0], now[0] = 300, 0.1
    await writer.write([(tmp_path / "b", b"x")])  # due: carries 200
    assert watermark.read(ledger) == 200
    end[0], now[0] = 400, 0.2
    await writer.write([(tmp_path / "c", b"x")])  # 0.1 s after the last write: 300 waits
    assert watermark.read(ledger) == 200
    now[0] = 0.5  # due, and no batch for 0.3 s
    await until(lambda: watermark.read(ledger) == 400, what="the mark, alone")
    await writer.aclose()


def test_a_torn_empty_or_foreign_watermark_reads_as_zero(tmp_path: Path) -> None:
    """Anything but a whole watermark of this very ledger (its inode) means: read it all."""
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_bytes(b"{}\n")
    mark = watermark.path_for(ledger)
    inode = ledger.stat().st_ino
    whole = watermark.encode(3, inode)
    mark.write_bytes(whole)
    assert watermark.read(ledger) == 3
    for spoilt in (b"", whole[:9], watermark.encode(3, inode + 1), b"[]"):
        mark.write_bytes(spoilt)
        assert watermark.read(ledger) == 0, spoilt
    mark.unlink()
    assert watermark.read(ledger) == 0
