"""The exec sink's co-process mode (``wake.exec.process = true``): handlers that stay alive.

A per-wake command costs a process start every time; like git's long-running
filter process, this keeps up to ``wake.concurrency`` handler processes
running ``wake.exec.argv`` and sends each one request line at a time
(``coproto.py`` has the protocol, docs/operations.md a reference handler).
Each gets the per-wake command's clean environment, less the per-wake
``ANU_WATCHD_IDEMPOTENCY_KEY`` (the key is in each request)::

    PATH=/usr/local/bin:/usr/bin:/bin  LANG=C.UTF-8
    ANU_WATCHD_KEY_FILE=<path of the sealed key>   a path, never the key

How a request ends::

    {"schedule_id": ...}                       registered; the handler is reused
    {"error": ..., "transient": true|false}    Transient/PermanentWakeError; reused
    ... "updates": false (in any answer)       no update requests from then on
    exit, closed stdout, a malformed or
    unasked line, or no answer in timeout_s    TransientWakeError; the handler is
                                               killed (its whole process group)
    cannot exec argv[0]                        PermanentWakeError
    handlers keep dying before any answer      PermanentWakeError (coproto.py)

Handlers start on demand. ``resize`` (a reload) and ``aclose`` retire idle
handlers at once and busy ones after their answer: stdin is closed, which is
the handler's signal to exit, and after ``CLOSE_GRACE_S`` its group is killed.
A call after ``aclose`` (a run from before a reload) still gets a handler,
retired after its answer.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import structlog

from anu_watchd.errors import PermanentWakeError, TransientWakeError
from anu_watchd.secret import redact_cut, redact_text
from anu_watchd.sinks import coproto
from anu_watchd.sinks.coproto import Admit, Answer, Malformed, Restarts
from anu_watchd.sinks.linechild import ChildGone, LineChild
from anu_watchd.sinks.spawn import clean_env
from anu_watchd.slots import Slots

if TYPE_CHECKING:
    from anu_watchd.secret import SealedKey

CLOSE_GRACE_S = 2.0
_log = structlog.get_logger("anu_watchd.sinks.coprocess")
_LINE_LIMIT = 64 * 1024


@attrs.define(eq=False)
class _Handler:
    child: LineChild
    answered: int = 0


class CoprocessSink:
    """Sends each wake to one of up to ``concurrency`` long-running handler processes."""

    delivery_method = "exec"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        key_file: Path | None,
        timeout_s: float,
        concurrency: int,
        restarts: Restarts,
        key: SealedKey | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not argv:
            raise ValueError("CoprocessSink needs a non-empty argv")
        self._argv = tuple(argv)
        self._timeout_s = timeout_s
        self._key = key
        self._clock = clock
        self._env = clean_env()
        if key_file is not None:
            self._env["ANU_WATCHD_KEY_FILE"] = str(key_file)
        self._slots = Slots(concurrency)
        self._idle: list[_Handler] = []
        self._busy = 0
        self._restarts = restarts
        self._closed = False
        self._retiring: set[asyncio.Task[int]] = set()
        # Every handler runs the same argv: one that declines updates speaks for the pool.
        self._updates = True

    @property
    def handlers(self) -> int:
        """Handler processes alive now, idle or busy."""
        return len(self._idle) + self._busy

    @property
    def supports_update(self) -> bool:
        """True until a handler answers ``"updates": false``; a new handler argv is a new sink."""
        return self._updates

    def child_env(self) -> dict[str, str]:
        """The whole environment a handler sees; nothing is inherited."""
        return dict(self._env)

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        answer = await self._call("register", envelope, idempotency_key)
        return answer.schedule_id

    async def update(self, envelope: bytes, *, idempotency_key: str) -> None:
        await self._call("update", envelope, idempotency_key)

    def resize(self, concurrency: int) -> None:
        """At most ``concurrency`` handlers from now on; idle ones over it are retired."""
        self._slots.resize(concurrency)
        while self._idle and self.handlers > concurrency:
            self._retire(self._idle.pop())

    def restarts_policy(self, initial_s: float, max_s: float) -> None:
        """New restart waits (a reload); what past handlers did still counts."""
        self._restarts = attrs.evolve(self._restarts, initial_s=initial_s, max_s=max_s)

    async def aclose(self) -> None:
        """Retire every idle handler now, and every busy one after its answer."""
        self._closed = True
        for handler in self._idle:
            self._retire(handler)
        self._idle = []
        await asyncio.gather(*self._retiring)

    # -- one request ---------------------------------------------------------------

    async def _call(self, op: str, envelope: bytes, idempotency_key: str) -> Answer:
        line = coproto.request_line(op, idempotency_key, envelope)
        async with self._slots:
            handler = await self._take_idle() or await self._start()
            self._busy += 1
            try:
                answer = await self._exchange(handler, line, op, idempotency_key)
            finally:
                self._busy -= 1
        if not answer.updates and self._updates:
            self._updates = False
            _log.info("coprocess_updates_declined", pid=handler.child.pid)
        if answer.error is not None:
            # The handler's own words may quote the key: redact them, then cut them to a
            # bounded length, then redact the cut edge, so no part of a split key survives.
            raise type(answer.error)(_quoted(str(answer.error), self._key))
        return answer

    async def _take_idle(self) -> _Handler | None:
        """The most recently used idle handler still alive; dead ones are reaped on the way."""
        while self._idle:
            handler = self._idle.pop()
            if handler.child.alive:
                return handler
            await self._drop(handler, "it ended while idle", ended=True)
        return None

    async def _exchange(self, handler: _Handler, line: bytes, op: str, key: str) -> Answer:
        """Ask ``handler``; keep it if it answered in the protocol, else kill it."""
        try:
            async with asyncio.timeout(self._timeout_s):
                raw = await handler.child.ask(line)
            answer = coproto.parse_answer(raw, key, op=op, program=self._argv[0])
        except TimeoutError:
            raise await self._drop(handler, f"no answer in {self._timeout_s:g}s") from None
        except Malformed as exc:
            raise await self._drop(handler, str(exc)) from None
        except ChildGone as exc:
            raise await self._drop(handler, str(exc), ended=True) from None
        except BaseException:  # cancelled: its answer would come to the next request
            await handler.child.kill()
            raise
        handler.answered += 1
        self._check_in(handler)
        return answer

    def _check_in(self, handler: _Handler) -> None:
        if self._closed or self.handlers > self._slots.size:
            self._retire(handler)
        else:
            self._idle.append(handler)

    def _retire(self, handler: _Handler) -> None:
        # Kept referenced until closed: the loop holds tasks only weakly.
        task = asyncio.get_running_loop().create_task(handler.child.close(grace_s=CLOSE_GRACE_S))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drop(
        self, handler: _Handler, why: str, *, ended: bool = False
    ) -> TransientWakeError:
        """Kill a handler that failed its request; the error for that request."""
        returncode = await handler.child.kill()
        error = f"{self._argv[0]} handler failed: {why}"
        if ended:  # it ended on its own: how is worth saying (else the kill was ours)
            error += f"; it {_describe_exit(returncode)}"
        stderr = handler.child.stderr_tail().decode("utf-8", "replace")
        error = _with_stderr(redact_text(error, self._key), stderr, self._key)
        self._restarts = coproto.ended(
            self._restarts, answered=handler.answered, now=self._clock(), error=error
        )
        _log.warning(
            "coprocess_handler_dropped",
            pid=handler.child.pid,
            answered=handler.answered,
            failures_in_a_row=self._restarts.failures,
            error=error,
        )
        return TransientWakeError(error)

    async def _start(self) -> _Handler:
        while True:
            decision, self._restarts = coproto.admit(self._restarts, self._clock())
            if decision is Admit.START:
                break
            if decision is Admit.REFUSE:
                raise PermanentWakeError(
                    f"handlers keep ending before any answer, not restarted for now: "
                    f"{self._restarts.last_error}"
                )
            await asyncio.sleep(max(0.0, self._restarts.not_before - self._clock()))
        try:
            child = LineChild.start(self._argv, self.child_env(), line_limit=_LINE_LIMIT)
        except OSError as exc:
            # ENOENT, EACCES, ENOEXEC: the configuration is wrong, retrying cannot help.
            raise PermanentWakeError(f"cannot run {self._argv[0]}: {exc.strerror or exc}") from None
        _log.info("coprocess_handler_started", pid=child.pid, handlers=self.handlers + 1)
        return _Handler(child)


def _describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


def _quoted(text: str, key: SealedKey | None) -> str:
    """``text`` redacted, then cut to ``coproto.QUOTE_CHARS`` (plus the program's name) with
    its cut edge redacted too (``secret.redact_cut``); an uncut text keeps every character."""
    text = redact_text(text, key)
    limit = coproto.QUOTE_CHARS + 100
    if len(text) <= limit:
        return text
    return redact_cut(text[:limit], key, head=False, tail=True)


def _with_stderr(error: str, stderr: str, key: SealedKey | None) -> str:
    """``error`` plus the last lines of the handler's stderr, bounded and redacted.

    Redacted before the cut and again at the cut edge: a key the cut splits
    leaves no suffix of itself behind (``secret.redact_cut``).
    """
    lines = stderr.strip().splitlines()
    if not lines:
        return error
    quoted = redact_text(" | ".join(lines[-5:]), key)
    cut = quoted[-coproto.QUOTE_CHARS :]
    return f"{error}: {redact_cut(cut, key, head=len(cut) < len(quoted), tail=False)}"
