"""appendlog: JSON lines, group commit and the poisoning failure contract, on real files.

Faults are injected only at two narrow seams: ``anu_watchd.fsio.fsync`` (EIO)
and ``anu_watchd.appendlog._write`` (a short write, ENOSPC).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from anu_watchd import appendlog, fsio
from anu_watchd.appendlog import AppendLog, Counters
from anu_watchd.errors import DurabilityError

WAIT_S = 10.0


@attrs.define
class FsyncSeam:
    """Counts fsyncs; raises EIO while ``failing``; can hold a call until released."""

    calls: int = 0
    failing: bool = False
    gate: threading.Event | None = None
    entered: threading.Event = attrs.Factory(threading.Event)

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.entered.set()
        if self.gate is not None and not self.gate.wait(WAIT_S):
            raise AssertionError("the fsync gate was never released")
        if self.failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)

    async def wait_entered(self) -> None:
        """Wait, bounded, until a flush thread is inside fsync."""
        assert await asyncio.to_thread(self.entered.wait, WAIT_S)


@pytest.fixture
def seam(monkeypatch: pytest.MonkeyPatch) -> FsyncSeam:
    s = FsyncSeam()
    monkeypatch.setattr(fsio, "fsync", s)
    return s


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


@pytest.fixture
def log(log_path: Path) -> Iterator[AppendLog]:
    opened = AppendLog.open(log_path)
    yield opened
    opened.close()  # a no-op when the test closed it already


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_bytes().splitlines()]


# -- format and open ---------------------------------------------------------------


async def test_append_writes_one_compact_utf8_line_and_returns_its_offset(
    log: AppendLog, log_path: Path
) -> None:
    """Each record is one compact JSON line, non-ASCII kept as UTF-8, at the returned offset."""
    first = await log.append({"a": 1, "b": "é"})
    second = await log.append({"n": None})
    data = log_path.read_bytes()
    assert data == '{"a":1,"b":"é"}\n{"n":null}\n'.encode()
    assert (first, second) == (0, data.index(b'{"n"'))


def test_open_creates_the_file_and_syncs_its_directory_once(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating the log makes its directory entry durable; reopening an existing log does not."""
    synced: list[Path] = []
    monkeypatch.setattr(fsio, "fsync_dir", synced.append)
    AppendLog.open(log_path).close()
    AppendLog.open(log_path).close()
    assert synced == [log_path.parent]
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o644 & ~_umask()


def test_open_fails_with_durability_error_when_the_directory_fsync_fails(
    log_path: Path, seam: FsyncSeam
) -> None:
    """A failed directory fsync while creating the log is a DurabilityError, chained to EIO."""
    seam.failing = True
    with pytest.raises(DurabilityError) as info:
        AppendLog.open(log_path)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EIO


async def test_reopen_appends_after_existing_lines(log_path: Path) -> None:
    """A reopened log continues at the end, and offsets count from the existing size."""
    first = AppendLog.open(log_path)
    await first.append({"i": 1})
    await first.aclose()
    second = AppendLog.open(log_path)
    offset = await second.append({"i": 2})
    await second.aclose()
    assert offset == len(b'{"i":1}\n')
    assert lines(log_path) == [{"i": 1}, {"i": 2}]


# -- group commit ------------------------------------------------------------------


async def test_concurrent_appends_share_writes_and_fsyncs(
    log: AppendLog, log_path: Path, seam: FsyncSeam
) -> None:
    """Fifty concurrent appends are all durable with fewer flushes (and fsyncs) than appends."""
    offsets = await asyncio.gather(*(log.append({"i": i}) for i in range(50)))
    assert sorted(r["i"] for r in lines(log_path)) == list(range(50))
    assert log.counters.appends == 50
    assert log.counters.flushes < 50
    assert seam.calls == log.counters.flushes
    assert len(set(offsets)) == 50


async def test_an_unsynced_log_writes_each_line_at_once_and_fsyncs_only_at_close(
    log_path: Path, seam: FsyncSeam
) -> None:
    """synced=False (the evidence log): a line is in the file when append returns, with
    no fsync of its own; the one fsync is the clean close's."""
    unsynced = AppendLog.open(log_path, synced=False)
    opened = seam.calls  # creating the log makes its directory entry durable
    for i in range(3):
        await unsynced.append({"i": i})
        assert [r["i"] for r in lines(log_path)] == list(range(i + 1))
    assert seam.calls == opened
    await unsynced.aclose()
    assert seam.calls == opened + 1


def _thread_named(name: str) -> bool:
    return any(t.name == name for t in threading.enumerate())


async def test_an_idle_unsynced_log_writes_on_the_loop_without_starting_its_thread(
    log_path: Path,
) -> None:
    """One line a loop iteration, nothing in flight (a steady trickle): each is written on
    the loop, in order, with its offset and hook, and the writer thread never starts."""
    unsynced = AppendLog.open(log_path, synced=False, thread_name="anu-test-idle")
    seen: list[int] = []
    offsets = []
    for i in range(3):
        offsets.append(await unsynced.append({"i": i}, on_durable=seen.append))
        await asyncio.sleep(0)  # the next line comes in a later loop iteration
    assert [r["i"] for r in lines(log_path)] == [0, 1, 2]
    assert offsets == seen == [0, 8, 16]
    assert not _thread_named("anu-test-idle")
    await unsynced.aclose()


async def test_an_unsynced_logs_lines_of_one_iteration_after_the_first_go_to_its_thread(
    log_path: Path,
) -> None:
    """Twenty runs ending in one loop iteration (a burst): the first line is written on the
    loop, the rest by the writer thread in fewer writes than lines, all in order."""
    unsynced = AppendLog.open(log_path, synced=False, thread_name="anu-test-burst")
    offsets = await asyncio.gather(*(unsynced.append({"i": i}) for i in range(20)))
    assert [r["i"] for r in lines(log_path)] == list(range(20))
    assert offsets == sorted(offsets) and len(set(offsets)) == 20
    assert unsynced.counters.flushes < 20
    assert _thread_named("anu-test-burst")
    await unsynced.aclose()


async def test_a_failed_write_on_the_loop_poisons_the_unsynced_log(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on a line written on the loop: a DurabilityError for its caller, chained to the
    OS error, the shared fail-stop flag set, every later append refused without a write."""
    fail_stop = threading.Event()
    unsynced = AppendLog.open(log_path, synced=False, fail_stop=fail_stop)
    writes: list[int] = []

    def full(fd: int, data: bytes) -> int:
        writes.append(len(data))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(appendlog, "_write", full)
    with pytest.raises(DurabilityError) as info:
        await unsynced.append({"i": 0})
    assert isinstance(info.value.__cause__, OSError)  # chained, as a flush's failure is
    assert info.value.__cause__.errno == errno.ENOSPC
    assert fail_stop.is_set() and not unsynced.healthy
    await asyncio.sleep(0)
    with pytest.raises(DurabilityError):
        await unsynced.append({"i": 1})
    assert len(writes) == 1 and log_path.stat().st_size == 0
    await unsynced.aclose()


async def test_an_unsynced_log_whose_close_fsync_fails_stops_its_daemon(
    log_path: Path, seam: FsyncSeam
) -> None:
    """A failed fsync at close is as fatal as any: the shared fail-stop flag is set."""
    fail_stop = threading.Event()
    unsynced = AppendLog.open(log_path, synced=False, fail_stop=fail_stop)
    await unsynced.append({"i": 1})
    seam.failing = True
    await unsynced.aclose()
    assert fail_stop.is_set()


async def test_appends_arriving_during_a_flush_form_the_next_group(
    log: AppendLog, seam: FsyncSeam
) -> None:
    """Lines queued while one fsync runs are written together by exactly one more flush."""
    seam.gate = threading.Event()
    first = asyncio.create_task(log.append({"i": 0}))
    await seam.wait_entered()
    rest = [asyncio.create_task(log.append({"i": i})) for i in range(1, 11)]
    seam.gate.set()
    await asyncio.gather(first, *rest)
    assert log.counters == Counters(appends=11, flushes=2)
    assert seam.calls == 2


async def test_on_durable_hooks_run_in_line_order_with_offsets(
    log: AppendLog, log_path: Path
) -> None:
    """Hooks see each line's offset, in file order, once the line is durable."""
    seen: list[int] = []
    await asyncio.gather(*(log.append({"i": i}, on_durable=seen.append) for i in range(5)))
    data = log_path.read_bytes()
    assert seen == sorted(seen)
    assert [json.loads(data[o : data.index(b"\n", o)])["i"] for o in seen] == list(range(5))


async def test_a_cancelled_caller_line_is_still_written_and_its_hook_runs(
    log: AppendLog, log_path: Path, seam: FsyncSeam
) -> None:
    """Cancelling a waiting caller does not un-queue its line: it becomes durable all the same."""
    seam.gate = threading.Event()
    seen: list[int] = []
    task = asyncio.create_task(log.append({"i": 1}, on_durable=seen.append))
    await seam.wait_entered()
    task.cancel()
    seam.gate.set()
    await log.aclose()
    assert task.cancelled()
    assert lines(log_path) == [{"i": 1}]
    assert seen == [0]


# -- failure contract --------------------------------------------------------------


async def test_fsync_failure_fails_every_waiter_and_poisons_the_log(
    log: AppendLog, log_path: Path, seam: FsyncSeam
) -> None:
    """EIO from fsync reaches every waiting caller as a chained DurabilityError."""
    seam.failing = True
    results = await asyncio.gather(
        *(log.append({"i": i}) for i in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, DurabilityError) for r in results)
    assert all(
        isinstance(r.__cause__, OSError) and r.__cause__.errno == errno.EIO
        for r in results
        if isinstance(r, BaseException)
    )
    assert not log.healthy


async def test_a_poisoned_log_refuses_appends_without_writing_or_fsyncing(
    log: AppendLog, log_path: Path, seam: FsyncSeam
) -> None:
    """After a failed fsync, appends raise at once: no byte written, the fsync never retried."""
    seam.failing = True
    with pytest.raises(DurabilityError):
        await log.append({"i": 0})
    size, calls = log_path.stat().st_size, seam.calls
    seam.failing = False
    with pytest.raises(DurabilityError):
        await log.append({"i": 1})
    assert (log_path.stat().st_size, seam.calls) == (size, calls)
    await log.aclose()


async def test_queued_appends_fail_with_the_flush_that_poisons_the_log(
    log: AppendLog, seam: FsyncSeam
) -> None:
    """Lines waiting behind a failing flush are failed too, not written afterwards."""
    seam.gate = threading.Event()
    seam.failing = True
    first = asyncio.create_task(log.append({"i": 0}))
    await seam.wait_entered()
    queued = [asyncio.create_task(log.append({"i": i})) for i in range(1, 4)]
    seam.gate.set()
    results = await asyncio.gather(first, *queued, return_exceptions=True)
    assert all(isinstance(r, DurabilityError) for r in results)
    assert seam.calls == 1


async def test_a_short_write_is_a_durability_error(
    log: AppendLog, log_path: Path, monkeypatch: pytest.MonkeyPatch, seam: FsyncSeam
) -> None:
    """A write that stores fewer bytes than asked poisons the log; no fsync is attempted."""
    monkeypatch.setattr(appendlog, "_write", lambda fd, data: os.write(fd, data[:5]))
    with pytest.raises(DurabilityError) as info:
        await log.append({"i": 0, "pad": "x" * 100})
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert (log.healthy, seam.calls, log_path.stat().st_size) == (False, 0, 5)


async def test_enospc_from_write_is_a_durability_error(
    log: AppendLog, log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC raised by os.write reaches the caller as a DurabilityError and poisons the log."""

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(appendlog, "_write", full)
    with pytest.raises(DurabilityError):
        await log.append({"i": 0})
    assert not log.healthy
    assert log_path.stat().st_size == 0


async def test_cancelling_every_task_at_shutdown_leaves_no_line_behind_and_aclose_returns(
    log: AppendLog, log_path: Path
) -> None:
    """A shutdown that cancels all tasks: the flush has no task to lose, the line is written,
    aclose returns and refuses what comes after."""
    task = asyncio.create_task(log.append({"i": 0}))
    await asyncio.sleep(0)  # one loop turn: the append queues its line and starts its flush
    for other in asyncio.all_tasks():
        if other is not asyncio.current_task():
            other.cancel()
    await asyncio.wait_for(log.aclose(), WAIT_S)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lines(log_path) == [{"i": 0}]
    assert not log.healthy
    with pytest.raises(ValueError, match="closed"):
        await log.append({"i": 1})


# -- closing -----------------------------------------------------------------------


async def test_aclose_waits_for_queued_lines_then_refuses_appends(
    log: AppendLog, log_path: Path
) -> None:
    """aclose lets queued lines become durable; appending afterwards is an error."""
    tasks = [asyncio.create_task(log.append({"i": i})) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*tasks, log.aclose()), WAIT_S)
    assert len(lines(log_path)) == 3
    assert not log.healthy
    with pytest.raises(ValueError, match="closed"):
        await log.append({"i": 9})


async def test_close_refuses_while_appends_are_in_flight(log: AppendLog, seam: FsyncSeam) -> None:
    """The synchronous close never closes the descriptor under a running flush."""
    seam.gate = threading.Event()
    task = asyncio.create_task(log.append({"i": 0}))
    await seam.wait_entered()
    with pytest.raises(RuntimeError):
        log.close()
    seam.gate.set()
    assert await task == 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_an_evidence_log_planted_as_a_symlink_or_fifo_is_refused(tmp_path: Path, kind: str) -> None:
    """Opening the log never appends through a symlink nor blocks on a FIFO: it is refused."""
    from anu_watchd.errors import StatePathError

    path, target = tmp_path / "evidence.jsonl", tmp_path / "target"
    target.write_text("kept\n")
    if kind == "symlink":
        path.symlink_to(target)
    else:
        os.mkfifo(path)
    with pytest.raises(StatePathError, match=f"{path}: cannot "):
        AppendLog.open(path)
    assert target.read_text() == "kept\n"


async def test_many_lines_appended_at_once_go_in_one_flush_in_order(
    log: AppendLog, log_path: Path, seam: FsyncSeam
) -> None:
    """append_many writes its lines in order with one write and one fsync, each line's hook
    told its own offset before the call returns."""
    seen: list[int] = []
    await log.append({"i": -1})
    before = log.counters
    await log.append_many([({"i": i}, seen.append) for i in range(5)])
    assert [r["i"] for r in lines(log_path)] == [-1, 0, 1, 2, 3, 4]
    assert log.counters == Counters(appends=before.appends + 5, flushes=before.flushes + 1)
    assert seam.calls == log.counters.flushes
    raw = log_path.read_bytes()
    assert seen == [raw.index(b'{"i":%d}' % i) for i in range(5)]


async def test_a_failed_flush_fails_a_many_lines_append(
    log: AppendLog, log_path: Path, seam: FsyncSeam
) -> None:
    """append_many raises DurabilityError when its flush's fsync fails, as append does."""
    seam.failing = True
    with pytest.raises(DurabilityError):
        await log.append_many([({"i": i}, None) for i in range(3)])
    with pytest.raises(DurabilityError):
        await log.append({"i": 9})


async def test_a_failing_hook_fails_a_many_lines_append_after_every_hook_ran(
    log: AppendLog, log_path: Path
) -> None:
    """One line's on_durable hook raising (a bug in its caller) fails the append_many call with
    that error, even when it is not the first line; the other lines' hooks still ran."""
    seen: list[int] = []

    def broken(offset: int) -> None:
        raise RuntimeError("the index hook is broken")

    hooks = [seen.append, broken, seen.append]
    with pytest.raises(RuntimeError, match="index hook"):
        await log.append_many([({"i": i}, hook) for i, hook in enumerate(hooks)])
    assert len(seen) == 2
    assert [r["i"] for r in lines(log_path)] == [0, 1, 2]
