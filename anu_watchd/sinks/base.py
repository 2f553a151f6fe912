"""The Sink protocol and the bounded retry policy every sink shares.

A sink registers a wake and answers with a schedule id, or raises
``TransientWakeError`` (worth retrying) or ``PermanentWakeError`` (not).
Retries are tenacity's: ``wake.attempts`` calls in total, exponential
backoff with jitter, transient errors only. There is no infinite retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import tenacity

from anu_watchd.errors import PermanentWakeError, TransientWakeError, WakeError
from anu_watchd.errors import WakeFailed as WakeFailed  # its home is errors; kept importable here
from anu_watchd.secret import SealedKey, holds_key, redact_text


class Sink(Protocol):
    """What the pipeline needs from a wake sink."""

    @property
    def delivery_method(self) -> str: ...

    @property
    def supports_update(self) -> bool: ...

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        """Register the wake; return the schedule id (non-empty)."""
        ...

    async def update(self, envelope: bytes, *, idempotency_key: str) -> None:
        """Push the final envelope (only called when ``supports_update``)."""
        ...

    async def aclose(self) -> None: ...


class RedactedSink:
    """A sink whose answers pass the key's redaction before anything records them.

    Whatever a sink hands back comes from outside (a command's output, an
    HTTP body) and ends up in the ledger, markers, envelope and evidence, so
    error text is redacted here, once for every sink, and a schedule id
    holding the key is refused as a permanent error (docs/durability.md).
    """

    def __init__(self, inner: Sink, key: SealedKey) -> None:
        self._inner = inner
        self._key = key

    @property
    def inner(self) -> Sink:
        """The sink this one wraps."""
        return self._inner

    @property
    def delivery_method(self) -> str:
        return self._inner.delivery_method

    @property
    def supports_update(self) -> bool:
        return self._inner.supports_update

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        try:
            schedule_id = await self._inner.register(envelope, idempotency_key=idempotency_key)
        except WakeError as exc:
            raise self._redacted(exc) from None
        if holds_key(schedule_id, self._key):
            raise PermanentWakeError("the sink answered a schedule id that holds the sealed key")
        return schedule_id

    async def update(self, envelope: bytes, *, idempotency_key: str) -> None:
        try:
            await self._inner.update(envelope, idempotency_key=idempotency_key)
        except WakeError as exc:
            raise self._redacted(exc) from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    def _redacted(self, exc: WakeError) -> WakeError:
        # Same type and attributes (a Retry-After, say); only the text is redacted.
        exc.args = (redact_text(str(exc), self._key),)
        exc.__cause__ = exc.__context__ = None
        return exc


# The longest schedule id any sink accepts from outside: it goes into every marker,
# envelope and evidence line, so a runaway answer is a permanent error, not a file.
MAX_ID_CHARS = 200


def signature(key: bytes, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(key, body)>``: the http and nats sinks' signature header.

    Here, not in either sink, so that the nats sink does not load aiohttp.
    """
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def innermost(sink: Sink) -> Sink:
    """The sink under every wrapper (redaction, metering): what the config built."""
    while (inner := getattr(sink, "inner", None)) is not None:
        sink = inner
    return sink


@attrs.frozen
class RetryPolicy:
    attempts: int = 3
    initial_s: float = 0.5
    max_s: float = 8.0


Sleep = Callable[[float], Awaitable[None]]


async def register_with_retries(
    sink: Sink,
    envelope: bytes,
    *,
    idempotency_key: str,
    policy: RetryPolicy,
    sleep: Sleep = asyncio.sleep,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> tuple[str, int]:
    """Register with bounded retries; return ``(schedule_id, attempts)`` or raise WakeFailed.

    The first attempt is a plain call: nearly every wake succeeds at once, and
    building tenacity's retry loop costs ~0.14 ms of event-loop CPU a wake
    (bench/PROFILE.md). Only a transient failure enters tenacity, for the rest.
    """
    try:
        return await _register_once(sink, envelope, idempotency_key), 1
    except TransientWakeError as exc:
        if policy.attempts <= 1:
            raise WakeFailed(exc, 1) from exc
        first = exc
    except WakeError as exc:
        raise WakeFailed(exc, 1) from exc
    if on_retry is not None:
        on_retry(1, first)
    # The wait after attempt 1 is what wait_exponential_jitter gives attempt 1.
    jitter = random.uniform(0, policy.initial_s)  # noqa: S311 (spreads retries; not a secret)
    await sleep(_honoured(first, min(policy.max_s, policy.initial_s + jitter), policy.max_s))
    return await _retry_rest(sink, envelope, idempotency_key, policy, sleep, on_retry)


async def _retry_rest(
    sink: Sink,
    envelope: bytes,
    idempotency_key: str,
    policy: RetryPolicy,
    sleep: Sleep,
    on_retry: Callable[[int, BaseException], None] | None,
) -> tuple[str, int]:
    """Attempts 2..N under tenacity; its attempt k is attempt k + 1 overall."""
    attempts = 1

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(state.attempt_number + 1, exc)

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(policy.attempts - 1),
        # Jitter up to one initial step: spreads a thundering herd, yet waits never shrink.
        # The multiplier is doubled because tenacity counts from attempt 2 here.
        wait=_retry_after_or(
            tenacity.wait_exponential_jitter(
                multiplier=2 * policy.initial_s, max=policy.max_s, jitter=policy.initial_s
            ),
            policy.max_s,
        ),
        retry=tenacity.retry_if_exception_type(TransientWakeError),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number + 1
                schedule_id = await _register_once(sink, envelope, idempotency_key)
    except WakeError as exc:
        raise WakeFailed(exc, attempts) from exc
    return schedule_id, attempts


def _honoured(exc: BaseException | None, backoff_s: float, max_s: float) -> float:
    """The wait before the next attempt: the server's ``Retry-After`` if it gave one (RFC 9110),
    never more than ``max_s`` (``wake.backoff_max_s``) and never less than the backoff."""
    asked = getattr(exc, "retry_after_s", None)
    if not isinstance(asked, float | int):
        return backoff_s
    return min(max_s, max(backoff_s, float(asked)))


def _retry_after_or(
    backoff: Callable[[tenacity.RetryCallState], float], max_s: float
) -> Callable[[tenacity.RetryCallState], float]:
    """tenacity's wait, with a ``Retry-After`` from the last error honoured (``_honoured``)."""

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return _honoured(exc, backoff(state), max_s)

    return wait


async def _register_once(sink: Sink, envelope: bytes, idempotency_key: str) -> str:
    schedule_id = await sink.register(envelope, idempotency_key=idempotency_key)
    if not schedule_id:
        # REGISTERED needs a real schedule id (docs/protocol.md); never invent one.
        raise PermanentWakeError("the sink answered without a schedule id")
    return schedule_id
