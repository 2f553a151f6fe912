"""ledger checkpoint: the index saved at a clean close, loaded at open, on real files.

Every loaded index is compared with a full parse of the same bytes (a copy of
the ledger without its checkpoint). Faults are injected only at
``anu_watchd.fsio.fsync`` (EIO).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from anu_watchd import fsio, ledger, ledgerindex
from anu_watchd.appendlog import encode
from anu_watchd.errors import DurabilityError, LedgerCorruptError
from anu_watchd.ledger import Ledger
from anu_watchd.model import FourTuple, LedgerEntry, LedgerState

CLAIMED, DONE, FAILED, RETRY = (
    LedgerState.CLAIMED,
    LedgerState.DONE,
    LedgerState.FAILED,
    LedgerState.RETRY,
)
HEAD = struct.Struct("<8sIQQ32sH")  # the documented header: magic, version, covered, lines, ...


def entry(
    task: str = "task-1", content: str = "v1", state: LedgerState = CLAIMED, attempt: int = 1
) -> LedgerEntry:
    """A ledger line for ``task`` whose result bytes were ``content``."""
    four = FourTuple(task, hashlib.sha256(content.encode()).hexdigest(), "anu")
    return LedgerEntry(
        key=four.idempotency_key,
        task_id=task,
        sha256=four.sha256,
        collector="anu",
        kind=four.kind,
        state=state,
        attempt=attempt,
        schedule_id="s-1" if state is DONE else None,
        ts="2026-01-02T03:04:05.678901Z",
    )


def foreign(key: str, task: str, state: LedgerState) -> LedgerEntry:
    """A line in a shape the fast parser does not take: a key that is not ``ik1-`` + hex."""
    return LedgerEntry(key, task, "0" * 64, "anu", state, 1, "ts-é", schedule_id="sché")


def history(n: int = 6) -> list[LedgerEntry]:
    """Every state, a task woken twice with new bytes, and foreign keys shared by two tasks."""
    out = []
    for i in range(n):
        task = f"task-{i}"
        out += [entry(task), entry(task, state=DONE if i % 3 else FAILED)]
    out += [entry("task-0", "v2"), entry("task-0", "v2", state=RETRY, attempt=2)]
    out += [entry("task-1", state=RETRY, attempt=2), entry("task-1", state=CLAIMED, attempt=2)]
    out += [foreign("legacy", "task-a", DONE), foreign("legacy", "task-b", CLAIMED)]
    out += [foreign("ключ", "task-ü", FAILED), entry("task-late")]
    return out


def raw(entries: list[LedgerEntry]) -> bytes:
    return b"".join(encode(e.to_json()) for e in entries)


def view(led: Ledger, entries: list[LedgerEntry]) -> dict[str, Any]:
    """Everything the ledger answers, for comparison with another load."""
    return {
        "len": len(led),
        "get": {e.key: led.get(e.key) for e in entries},
        "latest": {e.task_id: led.latest_for_task(e.task_id) for e in entries},
        "unfinished": led.unfinished(),
        "terminal": list(led.terminal_entries()),
        "terminal_tasks": list(led.terminal_tasks()),
        "counts": led.counts(),
        "index": (led._keys, led._tasks),
    }


def full_parse(path: Path, tmp_path: Path, entries: list[LedgerEntry]) -> dict[str, Any]:
    """What a load without any checkpoint answers for the same bytes."""
    copy = tmp_path / "fresh" / path.name
    copy.parent.mkdir(exist_ok=True)
    shutil.copyfile(path, copy)
    assert not ledgerindex.path_for(copy).exists()
    return view(Ledger.open(copy), entries)


def events(logs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in logs]


class FsyncSeam:
    """The fsync seam: fails with EIO on the call numbers in ``fail`` (counting from 1)."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: set[int] = set()

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls in self.fail:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)


@pytest.fixture
def seam(monkeypatch: pytest.MonkeyPatch) -> FsyncSeam:
    counter = FsyncSeam()
    monkeypatch.setattr(fsio, "fsync", counter)
    return counter


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "callback_4tuple_index.jsonl"


@pytest.fixture
def ckpt(path: Path) -> Path:
    return ledgerindex.path_for(path)


def open_(path: Path) -> Ledger:
    return Ledger.open(path, checkpoint_min_bytes=0)


async def checkpointed(path: Path, entries: list[LedgerEntry]) -> None:
    """A ledger holding ``entries``, closed cleanly: it has its checkpoint."""
    path.write_bytes(raw(entries))
    await open_(path).aclose()
    assert ledgerindex.path_for(path).exists()


# -- the round trip -----------------------------------------------------------------


async def test_a_clean_close_writes_a_checkpoint_that_loads_the_same_index(
    path: Path, ckpt: Path, tmp_path: Path
) -> None:
    """Open after a clean close loads the index from the checkpoint, equal to a full parse."""
    entries = history()
    await checkpointed(path, entries)
    with structlog.testing.capture_logs() as logs:
        led = open_(path)
    assert events(logs) == ["ledger_checkpoint_loaded"]
    assert logs[0]["covered_bytes"] == path.stat().st_size
    assert view(led, entries) == full_parse(path, tmp_path, entries)


async def test_records_made_before_the_close_are_in_the_checkpoint(
    path: Path, ckpt: Path, tmp_path: Path
) -> None:
    """Lines recorded through the ledger are covered by the checkpoint its close writes."""
    await checkpointed(path, history())
    led = open_(path)
    more = [entry("task-new"), entry("task-new", state=DONE), entry("task-2", "v9")]
    for e in more:
        await led.record(e)
    await led.aclose()
    assert HEAD.unpack_from(ckpt.read_bytes())[2] == path.stat().st_size
    with structlog.testing.capture_logs() as logs:
        again = open_(path)
    assert logs[0]["covered_bytes"] == path.stat().st_size
    entries = history() + more
    assert view(again, entries) == full_parse(path, tmp_path, entries)


async def test_lines_appended_after_the_checkpoint_are_parsed_on_top_of_it(
    path: Path, ckpt: Path, tmp_path: Path
) -> None:
    """After a crash that followed the checkpoint, the lines after it are parsed at open."""
    await checkpointed(path, history())
    covered = path.stat().st_size
    more = [entry("task-3", "v2"), entry("task-3", "v2", state=DONE), entry("task-z")]
    with open(path, "ab") as fh:
        fh.write(raw(more))
    with structlog.testing.capture_logs() as logs:
        led = open_(path)
    assert [(e["event"], e["covered_bytes"]) for e in logs] == [
        ("ledger_checkpoint_loaded", covered)
    ]
    entries = history() + more
    assert view(led, entries) == full_parse(path, tmp_path, entries)


async def test_a_halted_ledger_writes_none_and_the_old_checkpoint_still_serves(
    path: Path, ckpt: Path, tmp_path: Path
) -> None:
    """No checkpoint after a fatal error; the one before it still covers a prefix of the file."""
    await checkpointed(path, history())
    before = ckpt.read_bytes()
    led = open_(path)
    await led.record(entry("task-q"))
    led.halt(RuntimeError("boom"))
    await led.aclose()
    assert ckpt.read_bytes() == before
    entries = [*history(), entry("task-q")]
    assert view(open_(path), entries) == full_parse(path, tmp_path, entries)


async def test_a_close_with_nothing_new_leaves_the_checkpoint_alone(path: Path, ckpt: Path) -> None:
    """Reopening and closing an unchanged ledger rewrites nothing (a path unit sees no change)."""
    await checkpointed(path, history())
    before = os.stat(ckpt)
    await open_(path).aclose()
    after = os.stat(ckpt)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_a_short_tail_is_parsed_at_open_not_rewritten_at_close(
    path: Path, ckpt: Path, tmp_path: Path
) -> None:
    """Under ``checkpoint_min_bytes`` appended after it (a one-shot command's line), the
    checkpoint stays as it is; the next open loads it and parses the tail."""
    await checkpointed(path, history())
    before = os.stat(ckpt)
    led = Ledger.open(path, checkpoint_min_bytes=path.stat().st_size)
    await led.record(entry("task-t"))
    await led.aclose()
    after = os.stat(ckpt)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    entries = [*history(), entry("task-t")]
    with structlog.testing.capture_logs() as logs:
        again = open_(path)
    assert "ledger_checkpoint_loaded" in events(logs)
    assert view(again, entries) == full_parse(path, tmp_path, entries)


async def test_a_close_whose_last_flush_fails_writes_no_checkpoint(
    path: Path, ckpt: Path, seam: FsyncSeam
) -> None:
    """A line still queued at close (its caller cancelled, as in a halt) whose fsync fails
    poisons the log: the close then attempts no checkpoint at all, and the old one stays."""
    await checkpointed(path, history())
    before = ckpt.read_bytes()
    led = open_(path)
    await led.record(entry("task-y"))  # the log is open, this line durable
    seam.fail = {seam.calls + 1}
    queued = asyncio.ensure_future(led.record(entry("task-z")))
    await asyncio.sleep(0)  # one loop turn: the line is queued before the close
    queued.cancel()  # a queued line is still written; nobody is left to see it fail
    with structlog.testing.capture_logs() as logs:
        await led.aclose()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert "ledger_checkpoint_not_written" not in events(logs)
    assert ckpt.read_bytes() == before


def test_an_fsync_failure_at_open_is_fatal_and_says_what_failed(
    path: Path, seam: FsyncSeam
) -> None:
    """The open's fsync fails: DurabilityError (exit 70), naming durability, not reading."""
    path.write_bytes(raw(history()))
    seam.fail = {seam.calls + 1}
    with pytest.raises(DurabilityError, match="cannot make the ledger durable"):
        Ledger.open(path)


def test_open_makes_what_it_indexed_durable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines a killed writer left unsynced are fsynced at open, before anything relies on them."""
    path.write_bytes(raw(history()))
    synced: list[str] = []
    monkeypatch.setattr(fsio, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    Ledger.open(path)
    assert synced == [str(path)]


async def test_a_small_ledger_gets_no_checkpoint_by_default(path: Path, ckpt: Path) -> None:
    """Under CHECKPOINT_MIN_BYTES a full parse is cheap: nothing is written beside the ledger."""
    path.write_bytes(raw(history()))
    led = Ledger.open(path)
    await led.record(entry("task-x"))
    await led.aclose()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


async def test_many_keys_span_several_frames_and_round_trip(
    path: Path, ckpt: Path, tmp_path: Path
) -> None:
    """A ledger of more than a frame of keys, some tasks woken twice, loads the same index."""
    entries = []
    for i in range(ledgerindex.FRAME + 900):
        entries.append(entry(f"task-{i}", state=DONE))
        if i % 7 == 0:
            entries.append(entry(f"task-{i // 2}", "v2", state=RETRY))
    await checkpointed(path, entries)
    assert view(open_(path), entries) == full_parse(path, tmp_path, entries)


# -- checkpoints that must be ignored --------------------------------------------------


def reseal(data: bytes) -> bytes:
    """``data`` with its trailer recomputed: only the field changed on purpose is wrong."""
    return data[:-32] + hashlib.sha256(data[:-32]).digest()


def set_version(data: bytes) -> bytes:
    return reseal(data[:8] + struct.pack("<I", ledgerindex.VERSION + 1) + data[12:])


def set_schema(data: bytes) -> bytes:
    n = HEAD.unpack_from(data)[5]
    schema = data[HEAD.size : HEAD.size + n]
    return reseal(data[: HEAD.size] + schema.replace(b"DONE", b"DUNE") + data[HEAD.size + n :])


def set_covered(data: bytes) -> bytes:
    """Claim one line less: the fingerprint no longer matches the ledger's bytes there."""
    fields = list(HEAD.unpack_from(data))
    fields[2] -= 10
    return reseal(HEAD.pack(*fields) + data[HEAD.size :])


def flip(data: bytes) -> bytes:
    at = len(data) // 2
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(flip, id="a-flipped-bit"),
        pytest.param(lambda d: d[: len(d) // 2], id="truncated"),
        pytest.param(lambda d: d[:-1], id="last-byte-missing"),
        pytest.param(lambda d: d + b"\0", id="trailing-byte"),
        pytest.param(lambda d: b"", id="empty"),
        pytest.param(lambda d: b"x" * 200, id="garbage"),
        pytest.param(lambda d: reseal(b"NOTOURS!" + d[8:]), id="other-magic"),
        pytest.param(set_version, id="other-version"),
        pytest.param(set_schema, id="other-states"),
        pytest.param(set_covered, id="other-covered-size"),
    ],
)
async def test_an_unusable_checkpoint_is_ignored_once_with_a_full_parse(
    path: Path, ckpt: Path, tmp_path: Path, spoil: Any
) -> None:
    """A damaged or foreign checkpoint: one warning, removed, and the full parse's index."""
    entries = history()
    await checkpointed(path, entries)
    ckpt.write_bytes(spoil(ckpt.read_bytes()))
    with structlog.testing.capture_logs() as logs:
        led = open_(path)
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("ledger_checkpoint_ignored", "warning")
    ]
    assert not ckpt.exists()
    assert view(led, entries) == full_parse(path, tmp_path, entries)


async def test_a_ledger_shorter_than_the_covered_size_ignores_it(
    path: Path, ckpt: Path, tmp_path: Path
) -> None:
    """Cut below what the checkpoint covers, the ledger is parsed in full."""
    entries = history()
    await checkpointed(path, entries)
    os.truncate(path, len(raw(entries[:-1])))
    with structlog.testing.capture_logs() as logs:
        led = open_(path)
    assert [(e["event"], "covers" in e["reason"]) for e in logs] == [
        ("ledger_checkpoint_ignored", True)
    ]
    assert view(led, entries) == full_parse(path, tmp_path, entries)
    assert led.latest_for_task("task-late") is None


async def test_a_ledger_replaced_by_a_longer_one_does_not_match(
    path: Path, ckpt: Path, tmp_path: Path
) -> None:
    """Other bytes up to the covered size (another ledger, longer) fail the fingerprint."""
    await checkpointed(path, history())
    other = [entry(e.task_id.replace("task-", "task-o"), e.sha256[:2]) for e in history()]
    path.write_bytes(raw(other) + raw(history()))
    with structlog.testing.capture_logs() as logs:
        led = open_(path)
    assert events(logs) == ["ledger_checkpoint_ignored"]
    assert view(led, other) == full_parse(path, tmp_path, other)


async def test_a_checkpoint_without_its_ledger_is_ignored(path: Path, ckpt: Path) -> None:
    """No ledger but a checkpoint: an empty ledger, the checkpoint removed with a warning."""
    await checkpointed(path, history())
    path.unlink()
    with structlog.testing.capture_logs() as logs:
        led = open_(path)
    assert (len(led), events(logs), ckpt.exists()) == (0, ["ledger_checkpoint_ignored"], False)


# -- recovery rules after the covered part ------------------------------------------------


async def test_a_torn_tail_after_the_covered_part_is_still_truncated(
    path: Path, ckpt: Path, tmp_path: Path
) -> None:
    """A torn last line after the checkpoint is cut off and logged, as without one."""
    await checkpointed(path, history())
    good = path.read_bytes() + raw([entry("task-t")])
    path.write_bytes(good + raw([entry("task-u")])[:50])
    with structlog.testing.capture_logs() as logs:
        led = open_(path)
    assert events(logs) == ["ledger_checkpoint_loaded", "ledger_tail_truncated"]
    assert path.read_bytes() == good and ckpt.exists()
    entries = [*history(), entry("task-t")]
    assert view(led, entries) == full_parse(path, tmp_path, entries)


async def test_a_corrupt_line_after_the_covered_part_is_fatal_and_named(path: Path) -> None:
    """A bad complete line after the checkpoint raises, numbered from the ledger's start."""
    await checkpointed(path, history())
    with open(path, "ab") as fh:
        fh.write(raw([entry("task-v")]) + b'{"v":1,"key":\n')
    with pytest.raises(LedgerCorruptError) as info:
        open_(path)
    assert info.value.lineno == len(history()) + 2


def test_cutting_below_the_covered_size_removes_the_checkpoint_first(
    path: Path, ckpt: Path
) -> None:
    """The recovery cut never reaches the covered part; if it did, the checkpoint goes too."""
    path.write_bytes(raw(history()))
    ckpt.write_bytes(b"stands in for a checkpoint covering the whole file")
    ledger._cut(path, 10, covered=path.stat().st_size)
    assert (path.stat().st_size, ckpt.exists()) == (10, False)


# -- writing it ---------------------------------------------------------------------------


async def test_a_failed_checkpoint_write_is_a_warning_and_leaves_no_file(
    path: Path, ckpt: Path, seam: FsyncSeam
) -> None:
    """EIO on the checkpoint's fsync: the close succeeds, no checkpoint and no temp file."""
    path.write_bytes(raw(history()))
    led = open_(path)
    seam.fail = {seam.calls + 1}
    with structlog.testing.capture_logs() as logs:
        await led.aclose()
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("ledger_checkpoint_not_written", "warning")
    ]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


async def test_a_failed_rewrite_keeps_the_old_checkpoint_which_still_agrees(
    path: Path, ckpt: Path, seam: FsyncSeam, tmp_path: Path
) -> None:
    """When a newer checkpoint cannot be written, the older one still describes a prefix."""
    await checkpointed(path, history())
    before = ckpt.read_bytes()
    led = open_(path)
    await led.record(entry("task-w"))
    seam.fail = {seam.calls + 1}
    await led.aclose()
    assert ckpt.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if fsio.is_temp_name(p.name)] == []
    entries = [*history(), entry("task-w")]
    assert view(open_(path), entries) == full_parse(path, tmp_path, entries)


async def test_a_directory_fsync_failure_leaves_a_complete_checkpoint(
    path: Path, ckpt: Path, seam: FsyncSeam, tmp_path: Path
) -> None:
    """EIO after the rename is only a warning; the checkpoint in place agrees with the ledger."""
    path.write_bytes(raw(history()))
    led = open_(path)
    seam.fail = {seam.calls + 2}  # the file's fsync passes, the directory's fails
    with structlog.testing.capture_logs() as logs:
        await led.aclose()
    assert events(logs) == ["ledger_checkpoint_not_written"]
    entries = history()
    with structlog.testing.capture_logs() as logs:
        again = open_(path)
    assert events(logs) == ["ledger_checkpoint_loaded"]
    assert view(again, entries) == full_parse(path, tmp_path, entries)


async def test_bytes_the_index_does_not_hold_prevent_the_checkpoint(path: Path, ckpt: Path) -> None:
    """A line another writer appended while the ledger was open is not checkpointed over."""
    path.write_bytes(raw(history()))
    led = open_(path)
    with open(path, "ab") as fh:
        fh.write(raw([entry("task-intruder")]))
    with structlog.testing.capture_logs() as logs:
        await led.aclose()
    assert events(logs) == ["ledger_checkpoint_not_written"]
    assert not ckpt.exists()


# -- the format, pure -------------------------------------------------------------------


@st.composite
def indexes(draw: st.DrawFn) -> tuple[dict[Any, int], dict[bytes, int]]:
    """Keys (digests and strings) and tasks, each value one line; most tasks share a key's."""
    values = draw(st.lists(st.integers(0, 2**50), unique=True, max_size=60))
    ids = st.one_of(st.binary(min_size=20, max_size=20), st.text(max_size=12))
    n_keys = draw(st.integers(0, len(values)))
    key_ids = draw(st.lists(ids, unique=True, min_size=n_keys, max_size=n_keys))
    keys = dict(zip(key_ids, values[:n_keys], strict=True))
    names = draw(st.lists(st.binary(max_size=24), unique=True, max_size=len(values)))
    picks = draw(st.permutations(values))
    return keys, dict(zip(names, picks[: len(names)], strict=True))


@settings(max_examples=200, deadline=None)
@given(index=indexes(), lines=st.integers(0, 10**9))
def test_decode_of_encode_is_the_same_index_in_the_same_order(
    index: tuple[dict[Any, int], dict[bytes, int]], lines: int
) -> None:
    """Any index round-trips through the format, dict order included."""
    keys, tasks = index
    covered = ledgerindex.Covered(2**48, lines, b"f" * 32)
    data = bytes(ledgerindex.encode(keys, tasks, covered, b"A B"))
    fh = io.BytesIO(data)
    ledgerindex.verify(fh.read, len(data))
    fh.seek(0)
    assert ledgerindex.decode_header(fh.read, b"A B") == covered
    got_keys, got_tasks = ledgerindex.decode_index(fh.read, covered.size)
    assert list(got_keys.items()) == list(keys.items())
    assert list(got_tasks.items()) == list(tasks.items())
    assert fh.read() == hashlib.sha256(data[:-32]).digest()


def test_two_tasks_on_one_line_is_refused_by_the_encoder() -> None:
    """An index in which two tasks claim the same line is malformed: ValueError, not a file."""
    with pytest.raises(ValueError, match="same line"):
        ledgerindex.encode(
            {b"k" * 20: 8}, {b"a": 8, b"b": 8}, ledgerindex.Covered(9, 1, b"f" * 32), b""
        )
