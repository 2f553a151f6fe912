"""Wake sinks: interchangeable ways to register the collector's wake."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anu_watchd.errors import ConfigError, SecretError
from anu_watchd.sinks.base import (
    RedactedSink,
    RetryPolicy,
    Sink,
    WakeFailed,
    innermost,
    register_with_retries,
)
from anu_watchd.sinks.log import LogSink

if TYPE_CHECKING:
    from anu_watchd.config import Config
    from anu_watchd.secret import SealedKey

__all__ = [
    "RetryPolicy",
    "Sink",
    "WakeFailed",
    "build_sink",
    "rebuild_sink",
    "register_with_retries",
]


def build_sink(config: Config, key: SealedKey | None) -> Sink:
    """The sink the config names; with a key, every answer passes its redaction."""
    sink = _build(config, key)
    return sink if key is None else RedactedSink(sink, key)


def _build(config: Config, key: SealedKey | None) -> Sink:
    wake = config.wake
    if wake.sink == "exec" and wake.exec.process:
        return _coprocess_sink(config, key)
    if wake.sink == "exec":
        from anu_watchd.sinks.exec import ExecSink

        return ExecSink(
            wake.exec.argv,
            wake.exec.update_argv,
            key_file=key.path if key else None,
            timeout_s=wake.timeout_s,
            key=key,
        )
    if wake.sink == "http":
        # Imported only when used: aiohttp costs start-up time and idle memory.
        from anu_watchd.sinks.http import HttpSink

        if key is None:
            raise SecretError("key.file", 'required when wake.sink = "http"')
        return HttpSink(wake.http.url, key=key, timeout_s=wake.timeout_s)
    if wake.sink == "nats":
        return _nats_sink(config, key)
    return LogSink()


def _nats_sink(config: Config, key: SealedKey | None) -> Sink:
    """The nats sink with its credentials read now (start, reload); nats-py loaded only here."""
    from anu_watchd.sinks.nats import NatsSink
    from anu_watchd.sinks.natsauth import load_auth

    if key is None:
        raise SecretError("key.file", 'required when wake.sink = "nats"')
    nats = config.wake.nats
    auth = load_auth(nats.creds_file)
    try:
        return NatsSink(nats, key=key, auth=auth, timeout_s=config.wake.timeout_s)
    except (OSError, ValueError) as exc:  # the CA file: unreadable or not PEM
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError("wake.nats.tls_ca_file", f"cannot load: {reason}") from None
def rebuild_sink(sink: Sink, old: Config, new: Config, key: SealedKey | None) -> Sink:
    """The sink for a reloaded config: ``sink`` itself when it still fits, else a new one.

    Co-process handlers outlive a reload that changes nothing they run with:
    a new ``wake.concurrency`` resizes their pool in place.
    """
    if new.wake == old.wake:
        return sink
    from anu_watchd.sinks.coprocess import CoprocessSink

    inner = innermost(sink)
    if isinstance(inner, CoprocessSink) and _same_handlers(old, new):
        inner.resize(new.wake.concurrency)
        inner.restarts_policy(new.wake.backoff_initial_s, new.wake.backoff_max_s)
        return sink
    return build_sink(new, key)


def _same_handlers(old: Config, new: Config) -> bool:
    a, b = old.wake, new.wake
    return (a.sink, a.exec, a.timeout_s) == (b.sink, b.exec, b.timeout_s)


def _coprocess_sink(config: Config, key: SealedKey | None) -> Sink:
    from anu_watchd.sinks.coprocess import CoprocessSink
    from anu_watchd.sinks.coproto import Restarts

    wake = config.wake
    return CoprocessSink(
        wake.exec.argv,
        key_file=key.path if key else None,
        timeout_s=wake.timeout_s,
        concurrency=wake.concurrency,
        restarts=Restarts(initial_s=wake.backoff_initial_s, max_s=wake.backoff_max_s),
        key=key,
    )
