"""The exec sink: registers the wake by running an operator-configured command.

The command gets the envelope JSON on stdin and a clean environment built
from nothing (never inherited, so no ``NOTIFY_SOCKET`` and no stray secret)::

    PATH=/usr/local/bin:/usr/bin:/bin  LANG=C.UTF-8
    ANU_WATCHD_KEY_FILE=<path of the sealed key>   a path, never the key
    ANU_WATCHD_IDEMPOTENCY_KEY=<idempotency key>

It runs in its own session, so a timeout (or a cancellation) kills everything
it started that is still in its process group. It is spawned without asyncio's
subprocess transports (``spawn.py`` says why and how).
How its end maps to an outcome:

    exit 0 with an id on stdout      registered
    exit 0 without one               PermanentWakeError
    exit 75 (EX_TEMPFAIL), a signal,
    or the timeout                   TransientWakeError
    any other exit, or cannot exec   PermanentWakeError

The id is the ``schedule_id`` of a JSON object on stdout, else the first
non-empty line. An id longer than 200 characters is refused rather than cut,
because a truncated id names some other schedule.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from anu_watchd.errors import PermanentWakeError, TransientWakeError, WakeError
from anu_watchd.secret import redact_cut
from anu_watchd.sinks.base import MAX_ID_CHARS
from anu_watchd.sinks.spawn import CHILD_PATH as CHILD_PATH  # its home is spawn
from anu_watchd.sinks.spawn import Child, Finished, clean_env

if TYPE_CHECKING:
    from anu_watchd.secret import SealedKey

EX_TEMPFAIL = 75
_OUTPUT_LIMIT = 64 * 1024  # kept of each of stdout and stderr; the rest is drained
_STDERR_QUOTE_CHARS = 500


class ExecSink:
    """Runs ``argv`` to register and ``update_argv`` (if any) to push the final envelope.

    ``key`` is optional and only used to scrub the key out of child output quoted
    in error messages; the child itself is handed ``key_file``, a path.
    """

    delivery_method = "exec"

    def __init__(
        self,
        argv: Sequence[str],
        update_argv: Sequence[str],
        *,
        key_file: Path | None,
        timeout_s: float,
        key: SealedKey | None = None,
    ) -> None:
        if not argv:
            raise ValueError("ExecSink needs a non-empty argv")
        self._argv = tuple(argv)
        self._update_argv = tuple(update_argv)
        self._timeout_s = timeout_s
        self._key = key
        # Built once: a spawn only adds the idempotency key to a copy.
        self._base_env = clean_env()
        if key_file is not None:
            self._base_env["ANU_WATCHD_KEY_FILE"] = str(key_file)

    @property
    def supports_update(self) -> bool:
        return bool(self._update_argv)

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        done = await self._run(self._argv, envelope, idempotency_key)
        return schedule_id_from_stdout(done.stdout, program=self._argv[0])

    async def update(self, envelope: bytes, *, idempotency_key: str) -> None:
        if self._update_argv:
            await self._run(self._update_argv, envelope, idempotency_key)

    async def aclose(self) -> None:
        return None

    def child_env(self, idempotency_key: str) -> dict[str, str]:
        """The whole environment the command sees; nothing is inherited."""
        return {**self._base_env, "ANU_WATCHD_IDEMPOTENCY_KEY": idempotency_key}

    async def _run(self, argv: tuple[str, ...], envelope: bytes, idempotency_key: str) -> Finished:
        child = _start(argv, self.child_env(idempotency_key), envelope)
        try:
            async with asyncio.timeout(self._timeout_s):
                done = await child.finished()
        except TimeoutError:
            raise TransientWakeError(f"{argv[0]} timed out after {self._timeout_s:g}s") from None
        finally:
            # Also on cancellation: never leave a registration command (or its group) behind.
            await child.kill()
        _raise_for_exit(argv[0], done.returncode, self._scrub(done.stderr))
        return done

    def _scrub(self, raw: bytes) -> str:
        """The end of stderr, for an error message: redacted, then cut, then its edge redacted.

        Only the first ``_OUTPUT_LIMIT`` bytes are kept, so a key may straddle
        that cut; the quote is then cut again to its last characters. Neither
        cut may leave a prefix or suffix of the key behind (``redact_cut``).
        """
        cut = len(raw) >= _OUTPUT_LIMIT
        text = redact_cut(raw.decode("utf-8", errors="replace"), self._key, head=False, tail=cut)
        text = text.strip()
        if len(text) <= _STDERR_QUOTE_CHARS:
            return text
        return redact_cut(text[-_STDERR_QUOTE_CHARS:], self._key, head=True, tail=False)


def _start(argv: tuple[str, ...], env: dict[str, str], envelope: bytes) -> Child:
    try:
        return Child.start(argv, env, envelope, limit=_OUTPUT_LIMIT)
    except OSError as exc:
        # ENOENT, EACCES, ENOEXEC: the configuration is wrong, retrying cannot help.
        raise PermanentWakeError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def _raise_for_exit(program: str, returncode: int, stderr: str) -> None:
    if returncode == 0:
        return
    detail = f": {stderr}" if stderr else ""
    if returncode < 0:
        name = _signal_name(-returncode)
        raise TransientWakeError(f"{program} was killed by {name}{detail}")
    error: type[WakeError] = TransientWakeError if returncode == EX_TEMPFAIL else PermanentWakeError
    raise error(f"{program} exited {returncode}{detail}")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def schedule_id_from_stdout(stdout: bytes, *, program: str) -> str:
    """The ``schedule_id`` of a JSON object on stdout, else its first non-empty line."""
    text = stdout.decode("utf-8", errors="replace")
    try:
        answer = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: a hostile nesting depth
        answer = None
    if isinstance(answer, dict):
        found = answer.get("schedule_id")
        candidate = str(found) if _is_id_scalar(found) else ""
        where = "no usable schedule_id in its JSON answer"
    else:
        candidate = next((s for s in (ln.strip() for ln in text.splitlines()) if s), "")
        where = "no schedule id on stdout"
    candidate = candidate.strip()
    if not candidate:
        raise PermanentWakeError(f"{program} exited 0 but printed {where}")
    if len(candidate) > MAX_ID_CHARS:
        raise PermanentWakeError(f"{program} printed a schedule id over {MAX_ID_CHARS} chars")
    return candidate


def _is_id_scalar(value: object) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)
