"""One long-lived thread that runs a durable writer's blocking calls, in order.

Every wake hands its ledger lines, its evidence line and its projection batch
to a thread. ``asyncio.to_thread`` costs ~55 us of the event loop's CPU a hop
(a ``contextvars`` copy, the executor's bookkeeping, a ``concurrent.futures``
future chained to an asyncio one); a thread of the writer's own, fed by a
``queue.SimpleQueue`` and answering with one ``call_soon_threadsafe``, ~40 us
(bench/PROFILE.md, section 9).

``submit(fn, *args)`` returns a loop future for ``fn(*args)``: its result or
its exception, whatever it is, so no waiter hangs. Jobs run one at a time in
submit order. Cancelling the future does not stop a job already queued or
running: an owner that must see the job end keeps the future (shielded).
The thread starts at the first submit, is a daemon thread (a crash path never
hangs interpreter exit) and is named, so ``py-spy dump`` and thread lists show
whose it is. It ends at ``stop``, once the jobs before it are done (a later
``submit`` starts a new one), or when its owner is garbage collected. A job
that ends after its loop was closed is dropped quietly: nobody is left to
hear of it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class WriterThread:
    """A named daemon thread that runs submitted callables in order; see the module docstring."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] | None = None
        self._thread: threading.Thread | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)`` for the thread; a future of the running loop for its outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        jobs = self._jobs if self._jobs is not None else self._start()
        jobs.put((loop, future, fn, args))
        return future

    def stop(self) -> None:
        """Let the jobs already submitted finish, then end the thread and join it.

        Blocks while they run: an owner awaits its jobs' futures first. A later
        ``submit`` starts a new thread.
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
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    try:
        result = fn(*args)
    except BaseException as exc:  # whatever it is, the waiter hears of it
        _hand_back(loop, future, None, exc)
    else:
        _hand_back(loop, future, result, None)


def _hand_back(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    try:
        loop.call_soon_threadsafe(_settle, future, result, exc)
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
