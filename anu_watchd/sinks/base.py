"""The Sink protocol and the bounded retry policy every sink shares.

A sink registers a wake and answers with a schedule id, or raises
``TransientWakeError`` (worth retrying) or ``PermanentWakeError`` (not).
Retries are tenacity's: ``wake.attempts`` calls in total, exponential
backoff with jitter, transient errors only. There is no infinite retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import tenacity

from anu_watchd.errors import PermanentWakeError, TransientWakeError, WakeError


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


@attrs.frozen
class RetryPolicy:
    attempts: int = 3
    initial_s: float = 0.5
    max_s: float = 8.0


@attrs.frozen
class WakeFailed(Exception):
    """Retries are exhausted, or the error was permanent."""

    error: WakeError
    attempts: int

    def __str__(self) -> str:
        return f"{type(self.error).__name__} after {self.attempts} attempt(s): {self.error}"


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
    """Register with bounded retries; return ``(schedule_id, attempts)`` or raise WakeFailed."""
    attempts = 0

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(state.attempt_number, exc)

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        # Jitter up to one initial step: spreads a thundering herd, yet waits never shrink.
        wait=tenacity.wait_exponential_jitter(
            multiplier=policy.initial_s, max=policy.max_s, jitter=policy.initial_s
        ),
        retry=tenacity.retry_if_exception_type(TransientWakeError),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                schedule_id = await sink.register(envelope, idempotency_key=idempotency_key)
                if not schedule_id:
                    # REGISTERED needs a real schedule id (SPEC section 5); never invent one.
                    raise PermanentWakeError("the sink answered without a schedule id")
    except WakeError as exc:
        raise WakeFailed(exc, attempts) from exc
    return schedule_id, attempts
