"""sd_notify(3), written out: readiness, reload, stop, status and watchdog pings.

The protocol is one datagram of ``KEY=VALUE`` lines sent over an ``AF_UNIX``
``SOCK_DGRAM`` socket to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace). Without ``$NOTIFY_SOCKET`` every call is a no-op, so the
daemon runs the same in a terminal, a test or under systemd.

A failed send is logged and reported as ``False``, never raised: the service
manager being unreachable must not stop the work. The watchdog is the
exception that proves the rule — a daemon that stops pinging is killed, which
is why ``watchdog_loop`` pings only while the daemon says it is healthy.

``Notifier.from_env(unset=True)`` removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``
and ``WATCHDOG_PID`` from the environment after reading them, so child
processes (the exec sink, escalation) can never speak for the daemon.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping

import attrs
import structlog

NOTIFY_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
# A wedged service manager must not freeze the event loop for long.
SEND_TIMEOUT_S = 1.0

_log = structlog.get_logger(__name__)


@attrs.frozen
class Notifier:
    """Sends notifications to the service manager; a no-op when ``address`` is None."""

    address: str | None = None
    # Seconds between watchdog pings (half of WATCHDOG_USEC); None when not asked for.
    watchdog_s: float | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, *, unset: bool = False) -> Notifier:
        """Read ``$NOTIFY_SOCKET`` and the watchdog settings; optionally remove them."""
        notifier = cls(_address(environ.get(NOTIFY_ENV, "")), watchdog_interval(environ))
        if unset:
            if not isinstance(environ, MutableMapping):
                raise TypeError("unset=True needs a mutable environment")
            for name in (NOTIFY_ENV, WATCHDOG_USEC_ENV, WATCHDOG_PID_ENV):
                environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, text: str | None = None, /, **fields: object) -> bool:
        """Send ``text`` and/or ``KEY=VALUE`` fields as one datagram; False if not sent."""
        if self.address is None:
            return False
        data = _encode(text, fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendto(data, self.address)
        except OSError as exc:
            _log.warning("notify_failed", socket=self._shown, error=str(exc), message=data.decode())
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (start-up finished, or a reload done), with an optional status."""
        return self.send(READY=1, **_status(status))

    def reloading(self) -> bool:
        """``RELOADING=1`` and ``MONOTONIC_USEC`` in one datagram, as Type=notify-reload wants."""
        return self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec())

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send(STOPPING=1, **_status(status))

    def status(self, text: str) -> bool:
        """``STATUS=`` — one line for ``systemctl status``."""
        return self.send(**_status(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: one keep-alive ping."""
        return self.send(WATCHDOG=1)

    @property
    def _shown(self) -> str | None:
        return None if self.address is None else self.address.replace("\0", "@", 1)


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds; None if unset, invalid or meant for another pid."""
    pid = environ.get(WATCHDOG_PID_ENV)
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(environ.get(WATCHDOG_USEC_ENV, ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares reload times on."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


async def watchdog_loop(notifier: Notifier, interval: float, healthy: Callable[[], bool]) -> None:
    """Ping every ``interval`` seconds while ``healthy()``; skip (and warn) otherwise.

    A skipped ping is deliberate: systemd then kills and restarts a daemon
    whose intake or ledger writer has died, which is the watchdog's job. A
    stalled event loop skips pings on its own. Runs until cancelled.
    """
    while True:
        if _is_healthy(healthy):
            notifier.watchdog()
        else:
            _log.warning("watchdog_ping_skipped", reason="unhealthy")
        await asyncio.sleep(interval)


def _is_healthy(healthy: Callable[[], bool]) -> bool:
    try:
        return bool(healthy())
    except Exception as exc:
        _log.warning("watchdog_health_check_failed", error=repr(exc))
        return False


def _address(raw: str) -> str | None:
    if raw.startswith("/"):
        return raw
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]
    if raw:
        # vsock: and relative paths exist in newer systemd; we do not speak them.
        _log.warning("notify_socket_unsupported", notify_socket=raw)
    return None


def _status(text: str | None) -> dict[str, str]:
    return {} if text is None else {"STATUS": text}


def _encode(text: str | None, fields: Mapping[str, object]) -> bytes:
    # A newline inside a value would start a new assignment; flatten it.
    lines = [] if text is None else [line for line in text.split("\n") if line]
    lines += [f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items()]
    return "\n".join(lines).encode("utf-8")
