"""Tests for the bounded retry policy every sink shares."""

from __future__ import annotations

import pytest

from anu_watchd.errors import PermanentWakeError, TransientWakeError
from anu_watchd.sinks.base import RetryPolicy, WakeFailed, register_with_retries

ENVELOPE = b'{"task_id": "task-7"}'
IK = "ik1-0123456789abcdef"


class ScriptedSink:
    """Raises the scripted errors in order, then answers ``schedule_id`` forever."""

    delivery_method = "fake"
    supports_update = False

    def __init__(self, errors: list[Exception], schedule_id: str = "S-1") -> None:
        self.errors = list(errors)
        self.schedule_id = schedule_id
        self.calls: list[tuple[bytes, str]] = []

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        self.calls.append((envelope, idempotency_key))
        if self.errors:
            raise self.errors.pop(0)
        return self.schedule_id

    async def update(self, envelope: bytes, *, idempotency_key: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


class AlwaysTransientSink(ScriptedSink):
    """Every call is a TransientWakeError."""

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        self.calls.append((envelope, idempotency_key))
        raise TransientWakeError(f"busy (call {len(self.calls)})")


class RecordingSleep:
    """An injected no-op sleep that remembers every wait it was asked for."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def test_two_transient_errors_then_success_takes_three_attempts() -> None:
    """Transient, transient, ok registers on attempt 3 with the same key each time."""
    sink = ScriptedSink([TransientWakeError("a"), TransientWakeError("b")])
    sleep = RecordingSleep()
    result = await register_with_retries(
        sink, ENVELOPE, idempotency_key=IK, policy=RetryPolicy(attempts=3), sleep=sleep
    )
    assert result == ("S-1", 3)
    assert sink.calls == [(ENVELOPE, IK)] * 3
    assert len(sleep.waits) == 2


async def test_permanent_error_is_not_retried() -> None:
    """A PermanentWakeError fails at once: one call, WakeFailed with attempts 1."""
    error = PermanentWakeError("HTTP 400")
    sink = ScriptedSink([error])
    sleep = RecordingSleep()
    with pytest.raises(WakeFailed) as info:
        await register_with_retries(
            sink, ENVELOPE, idempotency_key=IK, policy=RetryPolicy(attempts=5), sleep=sleep
        )
    assert (info.value.error, info.value.attempts) == (error, 1)
    assert len(sink.calls) == 1
    assert sleep.waits == []


@pytest.mark.parametrize("attempts", [1, 3, 6])
async def test_always_transient_stops_after_exactly_attempts_calls(attempts: int) -> None:
    """A sink that never recovers is called exactly `attempts` times, then WakeFailed."""
    sink = AlwaysTransientSink([])
    with pytest.raises(WakeFailed) as info:
        await register_with_retries(
            sink,
            ENVELOPE,
            idempotency_key=IK,
            policy=RetryPolicy(attempts=attempts, initial_s=1.0, max_s=4.0),
            sleep=RecordingSleep(),
        )
    assert len(sink.calls) == attempts
    assert info.value.attempts == attempts
    assert isinstance(info.value.error, TransientWakeError)
    assert f"after {attempts} attempt(s)" in str(info.value)


async def test_backoff_waits_grow_and_never_exceed_max() -> None:
    """The waits asked of the injected sleep never shrink, do grow, and stay <= max_s."""
    policy = RetryPolicy(attempts=7, initial_s=1.0, max_s=5.0)
    sleep = RecordingSleep()
    with pytest.raises(WakeFailed):
        await register_with_retries(
            AlwaysTransientSink([]), ENVELOPE, idempotency_key=IK, policy=policy, sleep=sleep
        )
    assert len(sleep.waits) == policy.attempts - 1
    assert sleep.waits == sorted(sleep.waits)
    assert sleep.waits[-1] > sleep.waits[0]
    assert all(0 < w <= policy.max_s for w in sleep.waits)


async def test_on_retry_sees_each_failed_attempt() -> None:
    """on_retry is called before each wait with the attempt number and its error."""
    errors = [TransientWakeError("a"), TransientWakeError("b")]
    seen: list[tuple[int, BaseException]] = []
    await register_with_retries(
        ScriptedSink(list(errors)),
        ENVELOPE,
        idempotency_key=IK,
        policy=RetryPolicy(attempts=3, initial_s=1.0),
        sleep=RecordingSleep(),
        on_retry=lambda n, exc: seen.append((n, exc)),
    )
    assert seen == [(1, errors[0]), (2, errors[1])]


async def test_a_bug_in_a_sink_is_neither_retried_nor_disguised() -> None:
    """An exception that is not a WakeError propagates as itself after one call."""
    sink = ScriptedSink([RuntimeError("bug")])
    with pytest.raises(RuntimeError, match="bug"):
        await register_with_retries(
            sink, ENVELOPE, idempotency_key=IK, policy=RetryPolicy(), sleep=RecordingSleep()
        )
    assert len(sink.calls) == 1


async def test_each_wait_is_exponential_in_its_attempt_with_bounded_jitter() -> None:
    """The wait after attempt n is initial * 2**(n-1) plus at most one initial of jitter."""
    policy = RetryPolicy(attempts=6, initial_s=1.0, max_s=100.0)
    sleep = RecordingSleep()
    with pytest.raises(WakeFailed):
        await register_with_retries(
            AlwaysTransientSink([]), ENVELOPE, idempotency_key=IK, policy=policy, sleep=sleep
        )
    for n, wait in enumerate(sleep.waits, start=1):
        base = policy.initial_s * 2 ** (n - 1)
        assert base <= wait <= base + policy.initial_s, (n, wait)
