"""Tests for intake: name classification, and the descriptor's reader on a real inotify."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from anu_watchd.intake import Intake, IntakeEvent, Kind, classify

GLOB = "task-*.result.json"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("task-7.result.json", (Kind.RESULT, None)),
        ("task-7.pickup.acked", (Kind.ACKED, "task-7")),
        ("task-7.pickup.retry", (Kind.RETRY, "task-7")),
        ("task-.pickup.acked", None),
        ("task-\n.pickup.retry", None),
        ("task-7.pickup.done", None),
        ("task-7.pickup.failed", None),
        ("task-7.callback-envelope.json", None),
        (".tmp-task-7.result.json.0123456789ab", None),
        (".tmp-task-7.pickup.acked.0123456789ab", None),
        ("ledger.jsonl", None),
        ("other.json", None),
    ],
)
def test_classify(name: str, expected: tuple[Kind, str | None] | None) -> None:
    """Results, acks and retry requests are work; the daemon's own files and temps are not."""
    assert classify(name, GLOB) == expected


def test_classify_follows_the_configured_glob() -> None:
    """A name outside the result glob is not a result, whatever it ends with."""
    assert classify("task-7.result.json", "job-*.result.json") is None


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[Intake]:
    events = tmp_path / "events"
    events.mkdir()
    watch = Intake(events, tmp_path / "enabled", GLOB)
    watch.arm()
    yield watch
    watch.close()


def drop(intake: Intake, task: str) -> None:
    """A worker's atomic drop: write a temp in the directory, rename it onto the result name."""
    tmp = intake.events_dir / f".tmp-{task}"
    tmp.write_bytes(b"{}")
    os.rename(tmp, intake.events_dir / f"{task}.result.json")


async def until(predicate: object, what: str, iterations: int = 1000) -> None:
    """Let the loop run (no sleeping) until ``predicate()`` holds."""
    for _ in range(iterations):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError(f"not within {iterations} loop iterations: {what}")


def registered(intake: Intake) -> bool:
    assert intake._inotify is not None
    loop = asyncio.get_running_loop()
    return intake._inotify.fd in loop._selector.get_map()  # type: ignore[attr-defined]


async def next_result(events: AsyncIterator[IntakeEvent]) -> IntakeEvent:
    async with asyncio.timeout(10):
        while True:
            ev = await anext(events)
            if ev.kind is Kind.RESULT:
                return ev


async def test_the_reader_stays_registered_from_one_wait_to_the_next(intake: Intake) -> None:
    """At a steady rate each wake-up costs no epoll_ctl: the reader is added once."""
    loop = asyncio.get_running_loop()
    added = 0
    add_reader = loop.add_reader

    def counting(*args: object) -> None:
        nonlocal added
        added += 1
        add_reader(*args)  # type: ignore[arg-type]

    loop.add_reader = counting  # type: ignore[method-assign]
    events = intake.events()
    for i in range(5):
        waiting = asyncio.ensure_future(next_result(events))
        await until(lambda: registered(intake), "intake waiting on its descriptor")
        drop(intake, f"task-{i}")
        assert (await waiting).path == intake.events_dir / f"task-{i}.result.json"
    assert added == 1
    await events.aclose()
    assert not registered(intake)


async def test_events_while_nobody_waits_unregister_the_reader_and_are_kept(
    intake: Intake,
) -> None:
    """A consumer that holds on (the daemon's queue full) sees no busy loop and loses nothing."""
    events = intake.events()
    waiting = asyncio.ensure_future(next_result(events))
    await until(lambda: registered(intake), "intake waiting on its descriptor")
    drop(intake, "task-1")
    await waiting
    # Nobody asks for the next event: the descriptor turns readable, and stays so.
    drop(intake, "task-2")
    await until(lambda: not registered(intake), "the reader unregistered while nobody waits")
    for _ in range(50):  # a reader left registered would be called on every iteration
        await asyncio.sleep(0)
        assert not registered(intake)
    ev = await next_result(events)  # read at once: no wait for a readiness already seen
    assert ev.path == intake.events_dir / "task-2.result.json"
    await events.aclose()
