"""writerthread: a named daemon thread runs callables in order and answers on a loop future."""

from __future__ import annotations

import asyncio
import errno
import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from anu_watchd.writerthread import WriterThread

WAIT_S = 10.0


@pytest.fixture
def writer() -> Iterator[WriterThread]:
    w = WriterThread("anu-test-writer")
    yield w
    w.stop()


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """What escaped any thread's target: the writer thread must let nothing escape."""
    seen: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    return seen


async def test_a_job_returns_its_result_from_a_named_daemon_thread(writer: WriterThread) -> None:
    """The future holds what the callable returned, computed in a daemon thread named as asked."""
    ran_in = await asyncio.wait_for(writer.submit(threading.current_thread), WAIT_S)
    assert ran_in is not threading.main_thread()
    assert (ran_in.name, ran_in.daemon) == ("anu-test-writer", True)
    assert await asyncio.wait_for(writer.submit(divmod, 7, 2), WAIT_S) == (3, 1)


async def test_a_jobs_exception_reaches_the_caller_and_the_thread_carries_on(
    writer: WriterThread,
) -> None:
    """An OSError raised in the thread is raised by the await; the next job runs as usual."""

    def full() -> None:
        raise OSError(errno.ENOSPC, "no space")

    with pytest.raises(OSError) as info:
        await asyncio.wait_for(writer.submit(full), WAIT_S)
    assert info.value.errno == errno.ENOSPC
    assert await asyncio.wait_for(writer.submit(len, b"abc"), WAIT_S) == 3


async def test_jobs_run_one_at_a_time_in_submit_order(writer: WriterThread) -> None:
    """Jobs queued behind a blocked one wait for it, then run in the order they were submitted."""
    gate, order = threading.Event(), []
    first = writer.submit(gate.wait, WAIT_S)
    rest = [writer.submit(order.append, i) for i in range(200)]
    assert order == [] and not first.done()
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), WAIT_S)
    assert order == list(range(200))


async def test_stop_lets_submitted_jobs_finish_then_joins_the_thread(writer: WriterThread) -> None:
    """stop() returns once every job submitted before it ran and the thread has ended."""
    thread = await asyncio.wait_for(writer.submit(threading.current_thread), WAIT_S)
    order: list[int] = []
    futures = [writer.submit(order.append, i) for i in range(50)]
    writer.stop()
    assert order == list(range(50))
    assert not thread.is_alive()
    await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)


async def test_a_submit_after_stop_starts_a_new_thread(writer: WriterThread) -> None:
    """A stopped writer is not broken: the next job gets a fresh thread of the same name."""
    before = await asyncio.wait_for(writer.submit(threading.current_thread), WAIT_S)
    writer.stop()
    after = await asyncio.wait_for(writer.submit(threading.current_thread), WAIT_S)
    assert after is not before and after.name == "anu-test-writer" and after.is_alive()


async def test_a_cancelled_future_does_not_stop_its_job_or_upset_the_loop(
    writer: WriterThread,
) -> None:
    """The job runs to its end after its future was cancelled; its outcome is dropped quietly."""
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    gate, ran = threading.Event(), threading.Event()

    def gated() -> None:
        gate.wait(WAIT_S)
        ran.set()

    future = writer.submit(gated)
    future.cancel()
    gate.set()
    # Jobs answer in order: once the next one has, the gated one's answer was handled first.
    await asyncio.wait_for(writer.submit(int), WAIT_S)
    assert ran.is_set() and future.cancelled()
    assert loop_errors == []


def test_a_job_ending_after_its_loop_closed_is_dropped_and_the_thread_survives(
    writer: WriterThread, thread_errors: list[BaseException | None]
) -> None:
    """call_soon_threadsafe on a closed loop raises in the thread: swallowed, the next job runs."""
    gate = threading.Event()

    async def submit_gated() -> asyncio.Future[bool]:
        return writer.submit(gate.wait, WAIT_S)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(submit_gated())
    loop.close()
    gate.set()  # the job ends now, its loop closed

    async def next_job() -> int:
        return await asyncio.wait_for(writer.submit(abs, -5), WAIT_S)

    assert asyncio.run(next_job()) == 5
    assert thread_errors == []


async def test_a_writer_dropped_without_stop_ends_its_thread() -> None:
    """The thread holds only its queue: when its owner is collected, the thread ends."""
    dropped = WriterThread("anu-test-dropped")
    thread = await asyncio.wait_for(dropped.submit(threading.current_thread), WAIT_S)
    del dropped
    gc.collect()
    await asyncio.to_thread(thread.join, WAIT_S)
    assert not thread.is_alive()
