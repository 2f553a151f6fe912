"""ledger: recovery, the dedupe index and durable group-committed records, on real files.

Faults are injected only at ``anu_watchd.fsio.fsync`` (EIO) and at
``anu_watchd.appendlog._write`` (a short write, ENOSPC).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from anu_watchd import appendlog, fsio, ledger
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


def entry(
    task: str = "task-1",
    content: str = "v1",
    state: LedgerState = CLAIMED,
    attempt: int = 1,
    schedule_id: str | None = None,
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
        schedule_id=schedule_id,
        ts="2026-01-02T03:04:05.678901Z",
    )


def line(e: LedgerEntry) -> bytes:
    return encode(e.to_json())


class FsyncCounter:
    """The fsync seam: counts calls and raises EIO while ``failing``."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)


@pytest.fixture
def seam(monkeypatch: pytest.MonkeyPatch) -> FsyncCounter:
    counter = FsyncCounter()
    monkeypatch.setattr(fsio, "fsync", counter)
    return counter


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "callback_4tuple_index.jsonl"


# -- recovery ----------------------------------------------------------------------


async def test_missing_file_is_an_empty_ledger_created_on_first_record(path: Path) -> None:
    """A missing ledger loads empty and is only created by the first record."""
    led = Ledger.open(path)
    assert (len(led), led.get(entry().key), led.unfinished()) == (0, None, [])
    assert not path.exists()
    await led.record(entry())
    await led.aclose()
    assert path.read_bytes() == line(entry())


def test_torn_tail_is_truncated_to_the_last_newline_and_logged(
    path: Path, seam: FsyncCounter
) -> None:
    """A last line cut mid-write is dropped, the file truncated and synced, and it is logged."""
    good = line(entry("task-1")) + line(entry("task-2"))
    path.write_bytes(good + line(entry("task-3"))[:40])
    with structlog.testing.capture_logs() as logs:
        led = Ledger.open(path)
    assert path.read_bytes() == good
    assert len(led) == 2 and led.latest_for_task("task-3") is None
    assert seam.calls == 1
    assert [(e["event"], e["log_level"], e["dropped_bytes"]) for e in logs] == [
        ("ledger_tail_truncated", "warning", 40)
    ]


def test_an_unterminated_last_line_is_dropped_even_if_it_parses(path: Path) -> None:
    """Without its newline a line was never acknowledged as durable, so recovery drops it."""
    good = line(entry("task-1"))
    path.write_bytes(good + line(entry("task-2"))[:-1])
    led = Ledger.open(path)
    assert path.read_bytes() == good
    assert led.latest_for_task("task-2") is None


def test_a_corrupt_middle_line_is_fatal_and_names_its_line(path: Path) -> None:
    """A complete line that does not parse raises LedgerCorruptError and the file is untouched."""
    data = line(entry("task-1")) + b'{"v":1,"key":\n' + line(entry("task-3"))
    path.write_bytes(data)
    with pytest.raises(LedgerCorruptError) as info:
        Ledger.open(path)
    assert (info.value.path, info.value.lineno) == (str(path), 2)
    assert path.read_bytes() == data


def test_a_corrupt_complete_last_line_is_fatal_not_truncated(path: Path) -> None:
    """Only an unterminated tail counts as torn; a newline-terminated bad line is corruption."""
    path.write_bytes(line(entry("task-1")) + b"\x00\x00\x00\n")
    with pytest.raises(LedgerCorruptError) as info:
        Ledger.open(path)
    assert info.value.lineno == 2


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.pop("state"), r"missing field\(s\) state"),
        (lambda d: d.update(attempt="1"), "attempt"),
        (lambda d: d.update(attempt=True), "attempt"),
        (lambda d: d.update(v=2), "unsupported version"),
        (lambda d: d.update(state="LOST"), "LOST"),
        (lambda d: d.update(schedule_id=7), "schedule_id"),
        (lambda d: d.update(sha256=None), "sha256"),
    ],
)
def test_a_complete_line_with_a_bad_field_is_fatal(path: Path, mutate: object, reason: str) -> None:
    """A line that parses but lacks a field or has a wrong type is corruption, never skipped."""
    doc = entry().to_json()
    mutate(doc)  # type: ignore[operator]
    path.write_bytes(line(entry("task-0")) + encode(doc))
    with pytest.raises(LedgerCorruptError, match=reason) as info:
        Ledger.open(path)
    assert info.value.lineno == 2


@pytest.mark.parametrize("bad", [b"", b"[]", b"{}", b"NaN", b'"x"', b'{"v":1,"attempt":01}'])
def test_lines_that_are_not_ledger_objects_are_fatal(path: Path, bad: bytes) -> None:
    """Empty lines, non-objects and invalid JSON are corruption too."""
    path.write_bytes(line(entry()) + bad + b"\n")
    with pytest.raises(LedgerCorruptError):
        Ledger.open(path)


def test_a_leading_zero_attempt_in_an_otherwise_canonical_line_is_fatal(path: Path) -> None:
    """The fast parser accepts no number that json.loads would refuse."""
    bad = line(entry(attempt=1)).replace(b'"attempt":1,', b'"attempt":01,')
    path.write_bytes(bad)
    with pytest.raises(LedgerCorruptError):
        Ledger.open(path)


def test_lines_in_another_shape_are_read_through_json(path: Path) -> None:
    """Reordered keys, escapes, non-ASCII and foreign key formats load like canonical lines."""
    a = entry("task-a", state=DONE, schedule_id="sched-é")
    b = LedgerEntry(
        key="legacy-key",
        task_id="task-b",
        sha256="0" * 64,
        collector="anu",
        state=FAILED,
        attempt=3,
        ts="t",
    )
    c = entry("task-c", state=RETRY, attempt=2)
    reordered = json.dumps(dict(reversed(list(c.to_json().items())))).encode() + b"\n"
    escaped = json.dumps(a.to_json(), ensure_ascii=True).encode() + b"\n"
    path.write_bytes(escaped + line(b) + reordered)
    led = Ledger.open(path)
    assert (led.get(a.key), led.get(b.key), led.get(c.key)) == (a, b, c)
    assert led.unfinished() == [c]


# -- index semantics ---------------------------------------------------------------


async def test_claimed_then_done_keeps_only_the_latest_state(path: Path) -> None:
    """get returns the DONE that followed the CLAIMED, with its schedule id."""
    led = Ledger.open(path)
    claimed = entry()
    done = entry(state=DONE, schedule_id="sched-1")
    await led.record(claimed)
    assert led.get(claimed.key) == claimed
    await led.record(done)
    assert led.get(claimed.key) == done
    assert (len(led), led.unfinished(), list(led.terminal_entries())) == (1, [], [done])
    assert led.counts() == {"CLAIMED": 0, "DONE": 1, "FAILED": 0, "RETRY": 0}
    await led.aclose()


async def test_retry_after_failed_is_unfinished_again(path: Path) -> None:
    """A RETRY recorded after FAILED makes the key unfinished and no longer terminal."""
    led = Ledger.open(path)
    for e in (entry(), entry(state=FAILED), entry(state=RETRY, attempt=2)):
        await led.record(e)
    assert led.unfinished() == [entry(state=RETRY, attempt=2)]
    assert list(led.terminal_entries()) == []
    assert list(led.terminal_tasks()) == []
    await led.aclose()


async def test_unfinished_lists_claimed_and_retry_keys_in_file_order(path: Path) -> None:
    """Every key whose latest state is CLAIMED or RETRY is re-fired, oldest line first."""
    path.write_bytes(
        b"".join(
            line(e)
            for e in (
                entry("task-1"),
                entry("task-2"),
                entry("task-2", state=DONE),
                entry("task-3", state=FAILED),
                entry("task-3", state=RETRY, attempt=2),
                entry("task-1", state=RETRY, attempt=2),
            )
        )
    )
    led = Ledger.open(path)
    assert led.unfinished() == [
        entry("task-3", state=RETRY, attempt=2),
        entry("task-1", state=RETRY, attempt=2),
    ]
    assert led.counts() == {"CLAIMED": 0, "DONE": 1, "FAILED": 0, "RETRY": 2}


async def test_latest_for_task_follows_the_newest_key_of_the_task(path: Path) -> None:
    """A rewritten result is a new key; the task's latest line is the new key's."""
    led = Ledger.open(path)
    old_done = entry(content="v1", state=DONE, schedule_id="s1")
    new_claim = entry(content="v2")
    await led.record(old_done)
    await led.record(new_claim)
    assert led.latest_for_task("task-1") == new_claim
    assert led.get(old_done.key) == old_done
    assert list(led.terminal_entries()) == [old_done]
    assert list(led.terminal_tasks()) == []
    await led.record(entry(content="v2", state=DONE, schedule_id="s2"))
    assert list(led.terminal_tasks()) == [("task-1", DONE)]
    assert len(led) == 2 and led.latest_for_task("task-9") is None
    await led.aclose()


async def test_reopening_after_records_yields_the_same_index(path: Path) -> None:
    """Everything recorded is read back identically by the next start."""
    led = Ledger.open(path)
    written = [
        entry(
            f"task-{i % 7}",
            content=str(i),
            state=(CLAIMED, DONE, FAILED)[i % 3],
            schedule_id=f"s{i}" if i % 3 == 1 else None,
        )
        for i in range(40)
    ]
    for e in written:
        await led.record(e)
    before = _snapshot(led, written)
    await led.aclose()
    again = Ledger.open(path)
    assert _snapshot(again, written) == before


def _snapshot(led: Ledger, entries: list[LedgerEntry]) -> object:
    return (
        [led.get(e.key) for e in entries],
        [led.latest_for_task(e.task_id) for e in entries],
        led.unfinished(),
        list(led.terminal_entries()),
        sorted(led.terminal_tasks()),
        led.counts(),
        len(led),
    )


# -- durability and group commit ----------------------------------------------------


async def test_fifty_concurrent_records_share_fsyncs_and_are_all_durable(
    path: Path, seam: FsyncCounter
) -> None:
    """Concurrent records are group-committed: all durable, fewer fsyncs than records."""
    led = Ledger.open(path)
    entries = [entry(f"task-{i}") for i in range(50)]
    await asyncio.gather(*(led.record(e) for e in entries))
    file_fsyncs = seam.calls - 1  # creating the file synced its directory once
    assert file_fsyncs < 50
    assert all(led.get(e.key) == e for e in entries)
    await led.aclose()
    assert len(Ledger.open(path)) == 50


async def test_fsync_failure_fails_every_record_and_poisons_the_ledger(
    path: Path, seam: FsyncCounter
) -> None:
    """EIO reaches every waiter; later records raise at once and write nothing."""
    led = Ledger.open(path)
    await led.record(entry("task-0"))
    seam.failing = True
    results = await asyncio.gather(
        *(led.record(entry(f"task-{i}")) for i in range(1, 6)), return_exceptions=True
    )
    assert all(isinstance(r, DurabilityError) for r in results)
    assert not led.healthy
    size, calls = path.stat().st_size, seam.calls
    with pytest.raises(DurabilityError):
        await led.record(entry("task-9"))
    assert (path.stat().st_size, seam.calls) == (size, calls)
    assert [led.get(entry(f"task-{i}").key) for i in range(1, 6)] == [None] * 5
    await led.aclose()


async def test_a_short_write_is_a_durability_error(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that stores only part of the line poisons the ledger; recovery drops the part."""
    led = Ledger.open(path)
    await led.record(entry("task-0"))
    monkeypatch.setattr(appendlog, "_write", lambda fd, data: os.write(fd, data[:10]))
    with pytest.raises(DurabilityError):
        await led.record(entry("task-1"))
    assert not led.healthy
    await led.aclose()
    monkeypatch.undo()
    assert Ledger.open(path).get(entry("task-0").key) == entry("task-0")
    assert path.read_bytes() == line(entry("task-0"))


async def test_enospc_from_write_is_a_durability_error(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk reported by os.write poisons the ledger."""

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    led = Ledger.open(path)
    monkeypatch.setattr(appendlog, "_write", full)
    with pytest.raises(DurabilityError):
        await led.record(entry())
    assert not led.healthy and led.get(entry().key) is None
    await led.aclose()


async def test_a_closed_ledger_refuses_records(path: Path) -> None:
    """Recording after aclose is a programming error, and aclose may be called twice."""
    led = Ledger.open(path)
    await led.aclose()
    await led.aclose()
    assert not led.healthy
    with pytest.raises(ValueError, match="closed"):
        await led.record(entry())


# -- the fast parser agrees with json.loads -----------------------------------------

_text = st.text(max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    key=_text,
    task=_text,
    sha=_text,
    sid=st.none() | _text,
    ts=_text,
    attempt=st.integers(0, 5000),
    state=st.sampled_from(list(LedgerState)),
)
def test_the_fast_parser_agrees_with_json_on_every_line_it_accepts(
    key: str, task: str, sha: str, sid: str | None, ts: str, attempt: int, state: LedgerState
) -> None:
    """Whenever the canonical-line parser accepts a line, it reads what json.loads reads."""
    e = LedgerEntry(
        key=key,
        task_id=task,
        sha256=sha,
        collector="anu",
        state=state,
        attempt=attempt,
        schedule_id=sid,
        ts=ts,
    )
    raw = line(e)[:-1]
    fast = ledger._canonical(raw) if ledger._plain(raw) else None
    assert ledger._parse(raw) == e
    code = list(LedgerState).index(state) + 1
    assert fast is None or fast == (ledger._key_id(key.encode()), task.encode(), code)


def test_the_fast_parser_accepts_the_daemon_own_lines() -> None:
    """Lines this daemon writes take the fast path, with or without a schedule id."""
    for e in (entry(), entry(state=DONE, attempt=3, schedule_id="sched-9")):
        assert ledger._canonical(line(e)[:-1]) is not None


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_ledger_planted_as_a_symlink_or_fifo_is_refused_not_followed_or_hung(
    tmp_path: Path, kind: str
) -> None:
    """Recovery refuses a symlinked or FIFO ledger, naming the path, instead of hanging."""
    from anu_watchd.errors import StatePathError

    path, target = tmp_path / "ledger.jsonl", tmp_path / "target"
    target.write_text("")
    if kind == "symlink":
        path.symlink_to(target)
    else:
        os.mkfifo(path)
    with pytest.raises(StatePathError, match=f"{path}: cannot read the ledger"):
        Ledger.open(path)


def test_task_history_finds_every_line_of_one_task_and_no_other(tmp_path: Path) -> None:
    """A task's lines come back in file order; a longer id that starts the same and a torn
    last line are left out; a line in another key order is found too."""
    from anu_watchd.appendlog import encode
    from anu_watchd.ledger import task_history

    def line(task: str, state: LedgerState, attempt: int = 1) -> bytes:
        return encode(LedgerEntry(f"k-{task}", task, "s", "anu", state, attempt, "t").to_json())

    other_order = (
        json.dumps(
            dict(
                reversed(
                    LedgerEntry("k-task-1", "task-1", "s", "anu", LedgerState.RETRY, 1, "t")
                    .to_json()
                    .items()
                )
            )
        ).encode()
        + b"\n"
    )
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(
        line("task-1", LedgerState.CLAIMED)
        + line("task-10", LedgerState.CLAIMED)
        + line("task-1", LedgerState.FAILED)
        + other_order
        + line("task-1", LedgerState.DONE, 2)[:-20]  # torn: still being written
    )
    assert [e.state for e in task_history(path, "task-1")] == [
        LedgerState.CLAIMED,
        LedgerState.FAILED,
        LedgerState.RETRY,
    ]
    assert task_history(tmp_path / "none.jsonl", "task-1") == []
