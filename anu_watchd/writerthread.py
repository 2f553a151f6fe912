"""One long-lived thread that runs a durable writer's blocking calls, in order.

Every wake hands its ledger lines, its evidence line and its projection batch
to a thread. ``asyncio.to_thread`` costs ~55 us of the event loop's CPU a hop
(a ``contextvars`` copy, the executor's bookkeeping, a ``concurrent.futures``
future chained to an asyncio one); a thread of the writer's own, fed by a
``queue.SimpleQueue`` and answering with one ``call_soon_threadsafe``, ~40 us
(bench/PROFILE.md, section 9).

``call(fn, args, then)`` runs ``fn(*args)`` in the thread and ``then(result,
exc)`` on the loop, with one ``call_soon_threadsafe`` and no future: the
append logs and the projection writer settle their callers from ``then``, so a
hop costs the event loop two iterations (that callback, the callers' wake-up)
instead of the eight that a flush task awaiting ``asyncio.to_thread`` through
``asyncio.shield`` took (bench/PROFILE.md, section 10). ``submit(fn, *args)``
is the same with a loop future for the outcome. Either way the outcome is
delivered whatever it is (a result, any exception), so no waiter hangs. Jobs
run one at a time in submission order. Cancelling a future does not stop a
job already queued or running.

The thread starts with the first job, is a daemon thread (a crash path never
hangs interpreter exit) and is named, so ``py-spy dump`` and thread lists show
whose it is. It ends at ``stop``, once the jobs before it are done (a later
job starts a new one), or when its owner is garbage collected. A job
that ends after its loop was closed is dropped quietly: nobody is left to
hear of it.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# What the loop is handed: the job's result, or the exception it raised.
Then = Callable[[Any, "BaseException | None"], None]
_Job = tuple[asyncio.AbstractEventLoop, Then, Callable[..., Any], tuple[Any, ...]]


class WriterThread:
    """A named daemon thread that runs submitted callables in order; see the module docstring."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] | None = None
        self._thread: threading.Thread | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], then: Then) -> None:
        """Queue ``fn(*args)`` for the thread; ``then(result, exc)`` runs on the running loop."""
        loop = asyncio.get_running_loop()
        jobs = self._jobs if self._jobs is not None else self._start()
        jobs.put((loop, then, fn, args))

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)`` for the thread; a future of the running loop for its outcome."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.call(fn, args, functools.partial(_settle, future))
        return future

    def stop(self) -> None:
        """Let the jobs already submitted finish, then end the thread and join it.

        Blocks while they run: an owner waits for its jobs first. A later job starts a
        new thread.
        """
        if self._jobs is None or self._thread is None or self._finalizer is None:
            return
        self._finalizer.detach()
        self._jobs.put(None)
        self._thread.join()
        self._jobs = self._thread = self._finalizer = None

    def _start(self) -> queue.SimpleQueue[_Job | None]:
        jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # The thread holds the queue, not this object: dropping the owner ends the thread.
        self._thread = threading.Thread(target=_serve, args=(jobs,), name=self.name, daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, jobs.put, None)
        self._jobs = jobs
        return jobs


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        _run(*job)
        del job  # nothing of a finished job (a log, its descriptor) outlives it here


def _run(
    loop: asyncio.AbstractEventLoop, then: Then, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    try:
        result = fn(*args)
    except BaseException as exc:  # whatever it is, the owner hears of it
        _hand_back(loop, then, None, exc)
    else:
        _hand_back(loop, then, result, None)


def _hand_back(
    loop: asyncio.AbstractEventLoop, then: Then, result: Any, exc: BaseException | None
) -> None:
    try:
        loop.call_soon_threadsafe(then, result, exc)
    except RuntimeError:
        if not loop.is_closed():
            raise
        # The loop is closed: its futures are unreachable; the thread goes on to the next job.


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """On the loop: the outcome, unless the future was cancelled meanwhile."""
    if future.done():
        return
    if isinstance(exc, StopIteration):  # a future refuses it (TypeError); asyncio wraps it so
        wrapped = RuntimeError(f"a writer job raised {exc!r}")
        wrapped.__cause__ = exc
        future.set_exception(wrapped)
    elif exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class Idle:
    """Who waits for a writer to have no batch in flight (its ``aclose``), woken together."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
