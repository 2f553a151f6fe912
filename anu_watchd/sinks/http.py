"""The http sink: registers the wake with a signed POST.

Every request carries the envelope as its JSON body and::

    Content-Type: application/json
    Idempotency-Key: <idempotency key>          register
    Idempotency-Key: <idempotency key>.final    update
    X-Anu-Envelope: initial | final
    X-Anu-Signature: sha256=<hex HMAC-SHA256(key, body)>

where the HMAC key is the sealed key (the key file's content, stripped) as
UTF-8. ``update()`` POSTs the final envelope to the same URL marked
``X-Anu-Envelope: final``. It uses its own idempotency key (the register key
plus ``.final``) because a server that dedupes on ``Idempotency-Key`` would
otherwise answer the update with the cached registration, or refuse it for a
different body; the envelope's ``idempotency_key`` field still ties the two.

How an answer maps to an outcome (redirects are not followed)::

    2xx with "schedule_id" or "id"    registered
    2xx without one                   PermanentWakeError
    429, 5xx, connect error, timeout  TransientWakeError (a Retry-After on 429/503
                                      sets the next wait, up to wake.backoff_max_s)
    any other status (3xx, 4xx)       PermanentWakeError

Error messages carry the status and at most 200 characters of the body,
scrubbed of the key and the signature; never the URL, which may hold a token.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import TYPE_CHECKING

import aiohttp

from anu_watchd.errors import PermanentWakeError, TransientWakeError
from anu_watchd.sinks.base import MAX_ID_CHARS, signature

if TYPE_CHECKING:
    from anu_watchd.secret import SealedKey

_BODY_LIMIT = 64 * 1024
_BODY_QUOTE_CHARS = 200


class HttpSink:
    """POSTs envelopes to one URL through one lazily created aiohttp session."""

    delivery_method = "http"
    supports_update = True

    def __init__(self, url: str, *, key: SealedKey, timeout_s: float) -> None:
        self._url = url
        self._key = key
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        body = await self._post(envelope, idempotency_key, "initial")
        return schedule_id_from_body(body)

    async def update(self, envelope: bytes, *, idempotency_key: str) -> None:
        await self._post(envelope, idempotency_key + ".final", "final")

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use so it belongs to the loop that runs the pipeline.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s)
            )
        return self._session

    async def _post(self, envelope: bytes, idempotency_key: str, which: str) -> bytes:
        signed = signature(self._key.bytes, envelope)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            "X-Anu-Envelope": which,
            "X-Anu-Signature": signed,
        }
        try:
            async with self._client().post(
                self._url, data=envelope, headers=headers, allow_redirects=False
            ) as resp:
                status, body = resp.status, await _read_bounded(resp.content)
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            raise TransientWakeError(f"HTTP request timed out after {self._timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise _client_error(exc) from None
        _raise_for_status(status, self._quote(body, signed), retry_after_s(retry_after))
        return body

    def _quote(self, body: bytes, signed: str) -> str:
        text = body.decode("utf-8", errors="replace")
        for secret in (self._key.value, signed, signed.removeprefix("sha256=")):
            if secret:
                text = text.replace(secret, "[REDACTED]")
        return " ".join(text.split())[:_BODY_QUOTE_CHARS]


async def _read_bounded(content: aiohttp.StreamReader) -> bytes:
    kept = bytearray()
    while len(kept) < _BODY_LIMIT and (chunk := await content.read(_BODY_LIMIT - len(kept))):
        kept += chunk
    return bytes(kept)


def _client_error(exc: aiohttp.ClientError) -> Exception:
    # Only the class name: aiohttp messages can quote the URL, which may hold a token.
    kind = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.strerror:
        kind = f"{kind} ({exc.os_error.strerror})"
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.ClientConnectorCertificateError):
        return PermanentWakeError(f"HTTP request failed: {kind}")
    return TransientWakeError(f"HTTP request failed: {kind}")


def _raise_for_status(status: int, quoted: str, retry_after: float | None) -> None:
    if 200 <= status < 300:
        return
    message = f"HTTP {status}: {quoted}" if quoted else f"HTTP {status}"
    if status in (429, 503):
        # RFC 9110 section 10.2.3: the server says when to come back; the policy bounds it.
        raise TransientWakeError(message, retry_after_s=retry_after)
    if status >= 500:
        raise TransientWakeError(message)
    raise PermanentWakeError(message)


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks for (delay-seconds or an HTTP-date), else None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # an HTTP-date is always GMT; a date without a zone is not one
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def schedule_id_from_body(body: bytes) -> str:
    """The ``schedule_id`` (or else ``id``) of a 2xx JSON answer, as a string."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: a hostile nesting depth
        answer = None
    if not isinstance(answer, dict):
        raise PermanentWakeError("HTTP 2xx without a JSON object body")
    for field in ("schedule_id", "id"):
        value = answer.get(field)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            found = str(value).strip()
            if len(found) > MAX_ID_CHARS:
                raise PermanentWakeError(f"HTTP 2xx with a schedule id over {MAX_ID_CHARS} chars")
            return found
    raise PermanentWakeError("HTTP 2xx without a schedule_id or id")
