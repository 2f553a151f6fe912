"""The nats sink: publishes the envelope to a NATS JetStream stream, the sink of a fleet.

Every wake is one JetStream publish (docs/operations.md, "Fleet")::

    subject   wake.nats.subject, {host} = wake.nats.host_id, {key} = the idempotency key
    headers   Nats-Msg-Id: <idempotency key>
              Anu-Envelope: initial
              Anu-Signature: sha256=<hex HMAC-SHA256(key, body)>   (as the http sink)
    body      the envelope JSON

and the final envelope is pushed to ``<subject>.final`` with
``Anu-Envelope: final`` and ``Nats-Msg-Id: <idempotency key>.final``.

How an answer maps to an outcome (the typing of failures: ``natserrors``)::

    PubAck                                  registered, schedule id <stream>:<seq>
    PubAck with duplicate set               registered (the first's seq), wake_duplicate_suppressed
    err_code 10077 (max msgs per subject)   registered: the per-key stream holds it already;
                                            the id is that message's <stream>:<seq>
    err_code 10158 (msg id in process)      TransientWakeError
    other 503 / 5xx, timeout, no connection TransientWakeError
    no responders                           ask which stream captures the subject:
                                            none -> PermanentWakeError, else transient
    other 4xx, permissions violation,       PermanentWakeError
    payload over the server's limit,
    authorization refused, bad credentials

One connection per daemon (per built sink), opened on first use and kept:
the client reconnects by itself, to the server tried least after a pause
doubling with its failures (``reconnect_choice``); a first connect that failed
is not tried again before a pause doubling to ``MAX_CONNECT_PAUSE_S``.
``wake.timeout_s`` bounds one attempt, connect included. The stream check
(``natsstream``) runs when the sink is built and, if no server answered
then, again on the first connect. Error text never carries the credentials
or the key: nats-py's messages are scrubbed before they are raised or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from typing import TYPE_CHECKING, Any

import structlog

from anu_watchd.errors import PermanentWakeError, TransientWakeError, WakeError
from anu_watchd.sinks.base import signature
from anu_watchd.sinks.natserrors import ERR_MAX_MSGS_PER_SUBJECT, classify, refused
from anu_watchd.sinks.natsstream import (
    StreamFacts,
    check_stream,
    dedupe_at_risk,
    render_subject,
)

if TYPE_CHECKING:
    from nats.aio.client import Client, Server
    from nats.js import JetStreamContext
    from nats.js.api import PubAck
    from nats.js.manager import JetStreamManager

    from anu_watchd.config import NatsConfig
    from anu_watchd.secret import SealedKey
    from anu_watchd.sinks.natsauth import NatsAuth

_log = structlog.get_logger("anu_watchd.sinks.nats")

NO_RESPONDERS_PAUSE_S = 0.25  # between publishes while a stream has no leader
RECONNECT_WAIT_S = 0.25  # the client's first pause before it tries a server again ...
MAX_RECONNECT_WAIT_S = 8.0  # ... doubling with that server's failures, to this
FIRST_CONNECT_PAUSE_S = 0.1
MAX_CONNECT_PAUSE_S = 5.0
_ERROR_QUOTE_CHARS = 200


class NatsSink:
    """Publishes envelopes to JetStream over one long-lived connection."""

    delivery_method = "nats"
    supports_update = True

    def __init__(
        self,
        cfg: NatsConfig,
        *,
        key: SealedKey,
        auth: NatsAuth | None,
        timeout_s: float,
    ) -> None:
        self._cfg = cfg
        self._key = key
        self._auth = auth
        self._timeout_s = timeout_s
        self._tls = _tls_context(cfg.tls_ca_file) if cfg.tls_ca_file else None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting = asyncio.Lock()
        self._pause_s = 0.0
        self._not_before = 0.0
        self._connect_error: WakeError | None = None
        self._denied: set[str] = set()
        self._errors_logged = 0
        self._log = _log.bind(host_id=cfg.host_id)
        self.facts: StreamFacts | None = None
        self._check: asyncio.Task[None] | None = None
        with contextlib.suppress(RuntimeError):  # built outside a loop: checked on connect
            self._check = asyncio.get_running_loop().create_task(
                self._check_stream(), name="nats-stream-check"
            )

    # -- the Sink protocol ------------------------------------------------------

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        subject = render_subject(self._cfg.subject, host=self._cfg.host_id, key=idempotency_key)
        headers = self._headers(envelope, idempotency_key, "initial")
        return await self._publish(subject, envelope, headers, idempotency_key)

    async def update(self, envelope: bytes, *, idempotency_key: str) -> None:
        subject = render_subject(self._cfg.subject, host=self._cfg.host_id, key=idempotency_key)
        headers = self._headers(envelope, idempotency_key + ".final", "final")
        await self._publish(subject + ".final", envelope, headers, idempotency_key)

    async def aclose(self) -> None:
        if self._check is not None and not self._check.done():
            self._check.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._check
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            # close, not drain: every publish of ours is awaited to its answer, so nothing
            # is left to flush, and drain waits on the request inbox's subscription.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._timeout_s):
                    await nc.close()

    # -- publishing -------------------------------------------------------------

    def _headers(self, envelope: bytes, msg_id: str, which: str) -> dict[str, str]:
        return {
            "Nats-Msg-Id": msg_id,
            "Anu-Envelope": which,
            "Anu-Signature": signature(self._key.bytes, envelope),
        }

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str], key: str) -> str:
        try:
            async with asyncio.timeout(self._timeout_s):
                ack = await self._send(await self._connected(), subject, body, headers)
        except WakeError:
            raise
        except Exception as exc:
            return await self._answer(exc, subject, headers, key)
        schedule_id = f"{ack.stream}:{ack.seq}"
        if ack.duplicate:
            self._suppressed(headers, key, schedule_id)
        return schedule_id

    def _suppressed(self, headers: dict[str, str], key: str, schedule_id: str) -> None:
        """The broker already held this message: say so for a wake (a final is quiet)."""
        if headers["Anu-Envelope"] == "initial":
            self._log.info(
                "wake_duplicate_suppressed", idempotency_key=key, schedule_id=schedule_id
            )

    async def _send(
        self, js: JetStreamContext, subject: str, body: bytes, headers: dict[str, str]
    ) -> PubAck:
        """Publish; while the stream exists but nobody answers, pause and publish again.

        "No responders" comes back at once while a stream elects a leader or its server
        restarts; within one attempt (``wake.timeout_s``) that is a pause, not a failure.
        A subject that no stream captures is permanent at the first answer.
        """
        from nats.js.errors import NoStreamResponseError

        checked = False
        while True:
            try:
                return await js.publish(
                    subject, body, headers=dict(headers), stream=self._cfg.stream or None
                )
            except NoStreamResponseError:
                if not checked:
                    error = await self._no_responders(subject)
                    if isinstance(error, PermanentWakeError):
                        raise error from None
                    checked = True
                await asyncio.sleep(NO_RESPONDERS_PAUSE_S)

    async def _answer(
        self, exc: Exception, subject: str, headers: dict[str, str], key: str
    ) -> str:
        """Map a failed publish to a schedule id (already held) or a typed error."""
        from nats.js.errors import APIError, NoStreamResponseError

        if isinstance(exc, APIError) and exc.err_code == ERR_MAX_MSGS_PER_SUBJECT:
            schedule_id = await self._held_id(subject)
            self._suppressed(headers, key, schedule_id)
            return schedule_id
        if isinstance(exc, NoStreamResponseError):  # from the lookup's own request, say
            raise await self._no_responders(subject)
        if isinstance(exc, TimeoutError) and subject in self._denied:
            raise PermanentWakeError(f"NATS permissions violation for publish to {subject}")
        raise classify(exc, self._describe(exc))

    async def _held_id(self, subject: str) -> str:
        """``<stream>:<seq>`` of the message a per-key stream already holds on ``subject``."""
        try:
            async with asyncio.timeout(self._timeout_s):
                jsm = await self._jsm()
                stream = self._cfg.stream or await jsm.find_stream_name_by_subject(subject)
                direct = self.facts is not None and self.facts.allow_direct
                msg = await jsm.get_last_msg(stream, subject, direct=direct)
        except Exception as exc:
            raise TransientWakeError(
                f"held by the stream, but reading its sequence failed: {self._describe(exc)}"
            ) from None
        return f"{stream}:{msg.seq}"

    async def _no_responders(self, subject: str) -> WakeError:
        """No stream captures the subject (permanent), or a server is restarting (transient)."""
        from nats.js.errors import NotFoundError

        try:
            async with asyncio.timeout(self._timeout_s):
                await (await self._jsm()).find_stream_name_by_subject(subject)
        except NotFoundError:
            return PermanentWakeError(f"no JetStream stream captures the subject {subject}")
        except Exception as exc:
            return TransientWakeError(f"NATS no responders; stream lookup: {self._describe(exc)}")
        return TransientWakeError(f"NATS no responders for {subject} (the stream exists)")

    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self._auth is not None:
            text = self._auth.scrub(text)
        return text.replace(self._key.value, "[REDACTED]")[:_ERROR_QUOTE_CHARS]

    # -- the connection ---------------------------------------------------------

    async def _jsm(self) -> JetStreamManager:
        await self._connected()
        assert self._nc is not None
        return self._nc.jsm(timeout=self._timeout_s)

    async def _connected(self) -> JetStreamContext:
        if self._js is not None and self._nc is not None and not self._nc.is_closed:
            return self._js
        async with self._connecting:
            if self._nc is not None and self._nc.is_closed:
                self._nc = self._js = None
            if self._js is None:
                await self._open()
        assert self._js is not None
        return self._js

    async def _open(self) -> None:
        if time.monotonic() < self._not_before and self._connect_error is not None:
            # Inside the pause after a failed connect: that failure again, typed as it was.
            raise type(self._connect_error)(f"{self._connect_error} (connect paused)")
        try:
            nc = await self._connect()
        except Exception as exc:
            self._pause_s = min(MAX_CONNECT_PAUSE_S, max(FIRST_CONNECT_PAUSE_S, self._pause_s * 2))
            self._not_before = time.monotonic() + self._pause_s
            self._connect_error = classify(exc, self._describe(exc))
            raise
        self._pause_s = 0.0
        self._nc, self._js = nc, nc.jetstream(timeout=self._timeout_s)
        self._log.info("nats_connected", server=_server_url(nc))
        if self.facts is None and (self._check is None or self._check.done()):
            self._check = asyncio.create_task(self._check_stream(), name="nats-stream-check")

    async def _connect(self) -> Client:
        """Connect, trying each seed once; a refusal of the credentials ends it at once."""
        from nats.aio.client import Client

        nc = Client()
        failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        seen: list[BaseException] = []

        async def on_error(exc: Exception) -> None:
            if failed.done() or nc.is_connected:
                self._on_error(exc)
                return
            seen.append(exc)
            if refused(exc) or len(seen) >= len(self._cfg.servers):
                failed.set_result(exc)

        connecting: asyncio.Future[None] = asyncio.ensure_future(
            nc.connect(**self._connect_options(on_error))
        )
        waits: set[asyncio.Future[Any]] = {connecting, failed}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(BaseException):
                    await connecting
                with contextlib.suppress(BaseException):
                    await nc.close()
        if not connecting.cancelled() and connecting.exception() is None:
            return nc
        if failed.done():
            raise failed.result()
        raise connecting.exception() or TransientWakeError("NATS connect cancelled")

    def _connect_options(self, on_error: Any) -> dict[str, Any]:
        return {
            "servers": list(self._cfg.servers),
            "name": f"anu-watchd {self._cfg.host_id}",
            "error_cb": on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": RECONNECT_WAIT_S,
            "reconnect_to_server_handler": reconnect_choice,
            "connect_timeout": max(1, int(self._timeout_s)),
            "tls": self._tls,
            **(self._auth.connect_options() if self._auth is not None else {}),
        }

    def _on_error(self, exc: Exception) -> None:
        text = self._describe(exc)
        if "permissions violation" in text.lower():
            # The server answers a denied publish with -ERR only; the request then times out.
            subject = text.rsplit(" to ", 1)[-1].strip("\"' ")
            self._denied.add(subject)
        # One warning per outage: the client retries every RECONNECT_WAIT_S while a server is down.
        self._log.log(
            logging.DEBUG if self._errors_logged else logging.WARNING,
            "nats_connection_error",
            error=text,
        )
        self._errors_logged += 1

    async def _on_disconnected(self) -> None:
        self._log.warning("nats_disconnected")

    async def _on_reconnected(self) -> None:
        self._log.info(
            "nats_reconnected", server=_server_url(self._nc), errors_meanwhile=self._errors_logged
        )
        self._errors_logged = 0

    # -- the stream check -------------------------------------------------------

    async def _check_stream(self) -> None:
        """Log ``nats_stream_checked`` with the stream's dedupe facts; a warning when at risk."""
        try:
            async with asyncio.timeout(self._timeout_s):
                facts = await check_stream(
                    await self._jsm(),
                    stream=self._cfg.stream,
                    subject_template=self._cfg.subject,
                    host=self._cfg.host_id,
                )
        except Exception as exc:
            self._log.warning(
                "nats_stream_check_failed",
                error=self._describe(exc),
                note="checked again on the next connect",
            )
            return
        self.facts = facts
        if dedupe_at_risk(facts, self._cfg.min_dedupe_s):
            self._log.warning(
                "nats_stream_checked",
                **facts.log_fields(),
                min_dedupe_s=self._cfg.min_dedupe_s,
                risk="a re-fire after a crash later than the duplicate window is a second "
                "message; use a per-key subject or a longer duplicate window",
            )
        else:
            self._log.info("nats_stream_checked", **facts.log_fields())


def reconnect_choice(servers: list[Server], _info: dict[str, Any]) -> tuple[Server, float]:
    """After a disconnect: the server tried least, after a pause that doubles with its failures.

    The pause is ``RECONNECT_WAIT_S * 2**failures`` capped at ``MAX_RECONNECT_WAIT_S``,
    jittered down to half so that a fleet reconnecting to a restarted node spreads out.
    A healthy seed (no failures) is tried after at most ``RECONNECT_WAIT_S``.
    """
    server = min(servers, key=lambda s: s.reconnects)
    pause = min(MAX_RECONNECT_WAIT_S, RECONNECT_WAIT_S * 2 ** min(server.reconnects, 8))
    return server, pause * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)


def _server_url(nc: Client | None) -> str | None:
    server = nc.connected_url if nc is not None else None
    return server.geturl() if server is not None else None


def _tls_context(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)
