"""Text bound for a terminal: names from outside never reach it raw.

File names, task ids and error text come from workers and other writers of
the spool; an escape sequence in one could retitle, clear or rewrite the
operator's terminal, and a newline could forge a line. Everything printed
for a person (``status``, ``quarantine list`` and ``release``, the console
log format, command messages) goes through ``shown``: control and other
unprintable characters become their Python escapes, and a backslash is
doubled so two different names never show alike (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any


def shown(text: str) -> str:
    """``text`` for one line of a terminal: control characters and ``\\`` escaped."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode() for c in text
    )


def shown_lines(text: str) -> str:
    """``shown`` line by line, keeping the newlines (a traceback)."""
    return "\n".join(shown(line) for line in text.split("\n"))


def console_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor for the console renderer: every string value ``shown``."""
    for k, v in event_dict.items():
        if isinstance(v, str):
            event_dict[k] = shown_lines(v) if k == "exception" else shown(v)
    return event_dict
