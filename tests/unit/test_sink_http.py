"""Tests for the http sink, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from anu_watchd.errors import PermanentWakeError, TransientWakeError
from anu_watchd.secret import SealedKey
from anu_watchd.sinks.base import RetryPolicy, WakeFailed, register_with_retries
from anu_watchd.sinks.http import HttpSink, schedule_id_from_body
from tests.sinkhelpers import Reply, TestHttpServer, unused_port

ENVELOPE = json.dumps({"task_id": "task-7", "status": "ok"}).encode()
IK = "ik1-0123456789abcdef"
POLICY = RetryPolicy(attempts=3, initial_s=1.0, max_s=2.0)


@pytest.fixture
def key(tmp_path: Path) -> SealedKey:
    return SealedKey(path=tmp_path / "anu-key", value=secrets.token_hex(16))


@pytest.fixture
def server(key: SealedKey) -> Iterator[TestHttpServer]:
    with TestHttpServer(key=key.value) as srv:
        yield srv


@pytest.fixture
async def sink(server: TestHttpServer, key: SealedKey) -> AsyncIterator[HttpSink]:
    http = HttpSink(server.url, key=key, timeout_s=5.0)
    yield http
    await http.aclose()


async def no_sleep(_seconds: float) -> None:
    return None


async def test_register_posts_a_signed_envelope(
    sink: HttpSink, server: TestHttpServer, key: SealedKey
) -> None:
    """A 2xx answers its schedule_id; the server saw the body, headers and a valid HMAC."""
    assert await sink.register(ENVELOPE, idempotency_key=IK) == "H-1"
    [req] = server.requests
    assert req.body == ENVELOPE
    assert req.signature_ok is True
    assert req.headers["content-type"] == "application/json"
    assert req.headers["idempotency-key"] == IK
    assert req.headers["x-anu-envelope"] == "initial"
    expected = hmac.new(key.value.encode(), ENVELOPE, hashlib.sha256).hexdigest()
    assert req.headers["x-anu-signature"] == f"sha256={expected}"


async def test_numeric_id_field_is_accepted(sink: HttpSink, server: TestHttpServer) -> None:
    """A 2xx body with an integer "id" (no schedule_id) answers it as a string."""
    server.queue(Reply(201, {"id": 42}))
    assert await sink.register(ENVELOPE, idempotency_key=IK) == "42"


async def test_success_without_an_id_is_permanent(sink: HttpSink, server: TestHttpServer) -> None:
    """A 2xx whose body names no schedule id is a PermanentWakeError."""
    server.queue(Reply(200, {"ok": True}))
    with pytest.raises(PermanentWakeError, match="without a schedule_id"):
        await sink.register(ENVELOPE, idempotency_key=IK)


async def test_server_error_then_success_takes_two_attempts(
    sink: HttpSink, server: TestHttpServer
) -> None:
    """A 500 then a 200 through the retry policy registers once, on attempt 2."""
    server.queue(500, 200)
    result = await register_with_retries(
        sink, ENVELOPE, idempotency_key=IK, policy=POLICY, sleep=no_sleep
    )
    assert result == ("H-2", 2)
    assert [r.headers["idempotency-key"] for r in server.requests] == [IK, IK]


async def test_client_error_is_permanent_after_one_attempt(
    sink: HttpSink, server: TestHttpServer
) -> None:
    """A 400 is permanent: one request, then WakeFailed carrying the status."""
    server.queue(400)
    with pytest.raises(WakeFailed) as info:
        await register_with_retries(
            sink, ENVELOPE, idempotency_key=IK, policy=POLICY, sleep=no_sleep
        )
    assert isinstance(info.value.error, PermanentWakeError)
    assert info.value.attempts == 1
    assert "HTTP 400" in str(info.value)
    assert len(server.requests) == 1


async def test_too_many_requests_is_transient(sink: HttpSink, server: TestHttpServer) -> None:
    """A 429 is a TransientWakeError."""
    server.queue(429)
    with pytest.raises(TransientWakeError, match="HTTP 429"):
        await sink.register(ENVELOPE, idempotency_key=IK)


async def test_redirect_is_not_followed_and_is_permanent(
    sink: HttpSink, server: TestHttpServer
) -> None:
    """A 3xx is a PermanentWakeError and its Location is never requested."""
    server.queue(Reply(307, {}, headers={"Location": server.url + "/elsewhere"}))
    with pytest.raises(PermanentWakeError, match="HTTP 307"):
        await sink.register(ENVELOPE, idempotency_key=IK)
    assert [r.path for r in server.requests] == ["/wake"]


async def test_connection_refused_is_transient(key: SealedKey) -> None:
    """Nobody listening on the port is a TransientWakeError."""
    http = HttpSink(f"http://127.0.0.1:{unused_port()}/wake", key=key, timeout_s=5.0)
    try:
        with pytest.raises(TransientWakeError, match="HTTP request failed"):
            await http.register(ENVELOPE, idempotency_key=IK)
    finally:
        await http.aclose()


async def test_slow_server_times_out_as_transient(server: TestHttpServer, key: SealedKey) -> None:
    """A server answering later than timeout_s is a TransientWakeError."""
    server.queue(Reply(200, delay_s=30.0))
    http = HttpSink(server.url, key=key, timeout_s=0.3)
    try:
        with pytest.raises(TransientWakeError, match="timed out"):
            await http.register(ENVELOPE, idempotency_key=IK)
    finally:
        await http.aclose()


async def test_errors_never_carry_the_key_or_signature(
    sink: HttpSink, server: TestHttpServer, key: SealedKey
) -> None:
    """A server echoing the key and the signature back does not get them into the error."""
    sig = hmac.new(key.value.encode(), ENVELOPE, hashlib.sha256).hexdigest()
    server.queue(Reply(400, f"key={key.value} sig=sha256={sig}".encode()))
    with pytest.raises(PermanentWakeError) as info:
        await sink.register(ENVELOPE, idempotency_key=IK)
    assert key.value not in str(info.value)
    assert sig not in str(info.value)
    assert "[REDACTED]" in str(info.value)


async def test_long_error_body_is_truncated(sink: HttpSink, server: TestHttpServer) -> None:
    """Only about 200 characters of an error body reach the message."""
    server.queue(Reply(503, b"x" * 100_000))
    with pytest.raises(TransientWakeError) as info:
        await sink.register(ENVELOPE, idempotency_key=IK)
    assert len(str(info.value)) < 250


async def test_wrong_key_is_refused_by_the_server(server: TestHttpServer, tmp_path: Path) -> None:
    """A sink signing with another key gets the server's 401, a PermanentWakeError."""
    wrong = SealedKey(path=tmp_path / "other", value=secrets.token_hex(16))
    http = HttpSink(server.url, key=wrong, timeout_s=5.0)
    try:
        with pytest.raises(PermanentWakeError, match="HTTP 401"):
            await http.register(ENVELOPE, idempotency_key=IK)
    finally:
        await http.aclose()
    assert server.requests[0].signature_ok is False


async def test_update_posts_the_final_envelope_marked_final(
    sink: HttpSink, server: TestHttpServer
) -> None:
    """update() POSTs the signed final envelope with X-Anu-Envelope: final and its own key."""
    final = json.dumps({"task_id": "task-7", "registration_result_status": "REGISTERED"}).encode()
    assert sink.supports_update
    await sink.update(final, idempotency_key=IK)
    [req] = server.requests
    assert (req.body, req.signature_ok) == (final, True)
    assert req.headers["x-anu-envelope"] == "final"
    assert req.headers["idempotency-key"] == IK + ".final"


async def test_update_failure_raises_typed_errors(sink: HttpSink, server: TestHttpServer) -> None:
    """A failing update raises the same typed errors as register."""
    server.queue(502, 404)
    with pytest.raises(TransientWakeError):
        await sink.update(ENVELOPE, idempotency_key=IK)
    with pytest.raises(PermanentWakeError):
        await sink.update(ENVELOPE, idempotency_key=IK)


async def test_one_session_is_reused_and_aclose_is_idempotent(
    sink: HttpSink, server: TestHttpServer
) -> None:
    """Several calls share one session; aclose twice is harmless and a later call reopens."""
    await sink.register(ENVELOPE, idempotency_key=IK)
    first = sink._client()
    await sink.register(ENVELOPE, idempotency_key=IK)
    assert sink._client() is first
    await sink.aclose()
    await sink.aclose()
    assert first.closed
    assert await sink.register(ENVELOPE, idempotency_key=IK) == "H-3"


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[1]", b'{"schedule_id": ""}', b'{"id": false}', b'{"id": null}']
)
def test_unusable_success_body_is_permanent(body: bytes) -> None:
    """A 2xx body that is not an object with a usable schedule_id or id is permanent."""
    with pytest.raises(PermanentWakeError):
        schedule_id_from_body(body)


def test_schedule_id_wins_over_id() -> None:
    """When both fields are present, schedule_id is the one answered."""
    assert schedule_id_from_body(b'{"id": "a", "schedule_id": "b"}') == "b"


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_s"),
    [(429, "3", 3.0), (503, "3", 3.0), (429, "3600", 8.0), (503, "nonsense", None)],
)
async def test_retry_after_on_429_or_503_is_honoured_up_to_backoff_max(
    key: SealedKey, status: int, retry_after: str, expected_s: float | None
) -> None:
    """A 429 or 503 with ``Retry-After`` waits that long before the next attempt, never
    longer than ``wake.backoff_max_s``; an unparsable value falls back to the backoff."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    busy = Reply(status, headers={"Retry-After": retry_after})
    with TestHttpServer(key=key.value, replies=[busy, busy, 200]) as server:
        sink = HttpSink(server.url, key=key, timeout_s=5)
        try:
            policy = RetryPolicy(attempts=3, initial_s=0.1, max_s=8.0)
            got = await register_with_retries(
                sink, ENVELOPE, idempotency_key=IK, policy=policy, sleep=record
            )
        finally:
            await sink.aclose()
    assert got[1] == 3
    if expected_s is None:
        assert len(waits) == 2 and max(waits) <= 0.5
    else:
        assert waits == [expected_s, expected_s]


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """``Retry-After`` is delay-seconds or an HTTP-date; anything else is no advice."""
    from anu_watchd.sinks.http import retry_after_s

    now = 1_700_000_000.0
    assert retry_after_s("120", now=now) == 120.0
    assert retry_after_s("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == 30.0
    assert retry_after_s("Tue, 14 Nov 2023 22:00:00 GMT", now=now) == 0.0
    assert retry_after_s("-5", now=now) is None
    assert retry_after_s("soon", now=now) is None
    assert retry_after_s(None, now=now) is None
