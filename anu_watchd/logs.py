"""structlog configuration: once, from the command line, before anything logs.

One compact JSON object per line on stdout (journald captures it), ASCII
(anything else escaped ``\\uXXXX``), or human output for a terminal with
``format = "console"``. The processor chain, in order::

    merge_contextvars -> add_log_level -> TimeStamper(iso, UTC, "timestamp")
    -> StackInfoRenderer -> exceptions rendered (no local variables)
    -> JSONRenderer searched for the sealed key (secret.redacting_renderer)
       | redaction of the sealed key -> ConsoleRenderer

Redaction comes after the traceback has become data, so a key inside an
exception message is caught too. For JSON the line is rendered first and
searched for the key, and walked and rendered again only when it holds it
(``secret.redacting_renderer``: a key no escaper changes, as generated ones
are, cannot hide from that search). Tracebacks never carry
local variables: structlog's dict tracebacks show them by default, and a
local holding the key would leak it.

When stdout is the journal (``$JOURNAL_STREAM`` names the device and inode
of our output stream), each line is prefixed with its sd-daemon priority
``<N>``: journald strips it into ``PRIORITY`` so ``journalctl -p err`` works
and ``MESSAGE`` stays pure JSON.

One-shot commands (the reload helper, ``scan --once`` under the path unit)
talk to their user with ``announce``: the human text on a terminal, one JSON
object on the journal, so everything a unit writes there parses. ``crashed``
is the last word of an unexpected exception: one ``critical`` line with the
type and message (never the traceback's locals), for the exit 70 that
follows.

Loggers are not cached on first use, so ``reconfigure_level`` (SIGHUP) takes
effect for module-level loggers too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import Processor

from anu_watchd import compactjson
from anu_watchd.errors import ConfigError
from anu_watchd.secret import SealedKey, redact_processor, redacting_renderer
from anu_watchd.terminal import console_processor

JOURNAL_ENV = "JOURNAL_STREAM"

# sd-daemon(3) priorities, by the structlog method name that reaches the logger.
PRIORITIES = {
    "debug": 7,
    "info": 6,
    "msg": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def configure(
    *,
    level: str,
    fmt: str,
    key: SealedKey | None,
    stream: TextIO | None = None,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Configure structlog for the process; ``stream`` defaults to the current stdout."""
    out = sys.stdout if stream is None else stream
    journal = is_journal_stream(out, environ)
    writer = LineWriter(out, journal=journal)
    structlog.configure(
        processors=[*_prelude(), *_render(fmt, key, colors=_colors(out, journal))],
        wrapper_class=_bound_logger(level),
        context_class=dict,
        logger_factory=lambda *_args: writer,
        cache_logger_on_first_use=False,
    )


def announce(
    event: str,
    text: str,
    *,
    level: str = "info",
    stream: TextIO | None = None,
    fields: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Tell a one-shot command's user one thing: ``text`` on a terminal, JSON on the journal.

    On the journal the line is ``<N>`` + ``{"timestamp", "level", "event", "message",
    **fields}``, so a unit's every line parses and ``journalctl -p`` sees its priority.
    """
    out = sys.stderr if stream is None else stream
    if is_journal_stream(out, environ):
        doc = {"timestamp": _now(), "level": level, "event": event, "message": text}
        doc.update(fields or {})
        # As the daemon's own lines (``_json_line``): one format in the journal for a filter.
        line = f"<{PRIORITIES.get(level, 5)}>{_json_line(doc, default=str)}"
    else:
        line = text
    with contextlib.suppress(OSError, ValueError):
        out.write(line + "\n")
        out.flush()


def crashed(exc: BaseException, *, stream: TextIO | None = None) -> None:
    """Log an unexpected exception as one ``critical`` line: type and message, no traceback.

    Through structlog if configured (the key is then redacted), else by ``announce``:
    a crash before the config was read has no key to leak.
    """
    fields = {"error_type": type(exc).__name__, "error": str(exc)}
    if structlog.is_configured():
        get_logger("anu_watchd").critical("unexpected_exception", **fields)
        return
    announce(
        "unexpected_exception",
        f"anu-watchd: unexpected {fields['error_type']}: {fields['error']}",
        level="critical",
        stream=stream,
        fields=fields,
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def reconfigure_level(level: str) -> None:
    """Change the minimum level in place (SIGHUP); everything else stays as configured."""
    structlog.configure(wrapper_class=_bound_logger(level))


def get_logger(*args: Any, **initial_values: Any) -> Any:
    """``structlog.get_logger``, re-exported so callers import one logging module."""
    return structlog.get_logger(*args, **initial_values)


def _bound_logger(level: str) -> type[Any]:
    try:
        return structlog.make_filtering_bound_logger(_LEVELS[level])
    except KeyError:
        raise ConfigError("log.level", f"unknown level {level!r}") from None


def _prelude() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]


def _render(fmt: str, key: SealedKey | None, *, colors: bool) -> list[Processor]:
    if fmt == "json":
        no_locals = ExceptionDictTransformer(show_locals=False)
        return [
            structlog.processors.ExceptionRenderer(no_locals),
            # A search of the rendered line costs a microsecond, a walk of every event ~0.1 ms.
            redacting_renderer(key, structlog.processors.JSONRenderer(serializer=_json_line)),
        ]
    if fmt == "console":
        # Text tracebacks from the stdlib formatter carry no locals; rendering
        # them before redaction (rather than inside ConsoleRenderer) lets the
        # redactor see them.
        return [
            structlog.processors.format_exc_info,
            redact_processor(key),
            console_processor,  # a hostile file name must not drive the terminal
            structlog.dev.ConsoleRenderer(colors=colors),
        ]
    raise ConfigError("log.format", f"unknown format {fmt!r}")


def _json_line(doc: Any, *, default: Callable[[Any], Any]) -> str:
    """One event as one compact JSON line, ASCII (structlog's ``default`` for the rest)."""
    return compactjson.dumps_ascii(doc, default=default).decode("ascii")


def _colors(stream: TextIO, journal: bool) -> bool:
    try:
        return not journal and stream.isatty()
    except (AttributeError, ValueError):
        return False


def is_journal_stream(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``$JOURNAL_STREAM`` (``<dev>:<ino>``) is the file behind ``stream``."""
    dev, sep, ino = environ.get(JOURNAL_ENV, "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (AttributeError, ValueError, OSError):
        # No descriptor (StringIO raises UnsupportedOperation, a ValueError) or a bad value.
        return False


class LineWriter:
    """The wrapped logger: writes each rendered line, ``<N>``-prefixed for journald, flushed.

    Every structlog level method lands here by name; one lock keeps lines
    from threads (``asyncio.to_thread`` work) whole.
    """

    def __init__(self, stream: TextIO, *, journal: bool) -> None:
        self.stream = stream
        self.journal = journal
        self._lock = threading.Lock()

    def write(self, method: str, message: str) -> None:
        if self.journal:
            # journald reads a priority per line; a console traceback spans several.
            prefix = f"<{PRIORITIES.get(method, 5)}>"
            message = "\n".join(prefix + line for line in message.split("\n"))
        # Like stdlib logging: losing a log line must not take the daemon down.
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.stream.write(message + "\n")
            self.stream.flush()

    def debug(self, message: str) -> None:
        self.write("debug", message)

    def info(self, message: str) -> None:
        self.write("info", message)

    def msg(self, message: str) -> None:
        self.write("msg", message)

    def warning(self, message: str) -> None:
        self.write("warning", message)

    def error(self, message: str) -> None:
        self.write("error", message)

    def critical(self, message: str) -> None:
        self.write("critical", message)

    warn = warning
    exception = error
    fatal = critical
