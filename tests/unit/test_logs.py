"""Tests for anu_watchd.logs: JSON lines, level filtering, key redaction, journald priorities."""

from __future__ import annotations

import io
import json
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from anu_watchd import logs
from anu_watchd.errors import ConfigError
from anu_watchd.secret import SealedKey


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


@pytest.fixture
def key(tmp_path: Path) -> SealedKey:
    return SealedKey(path=tmp_path / "anu-key", value=secrets.token_urlsafe(32))


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def setup(key: SealedKey | None = None, *, level: str = "debug", fmt: str = "json") -> io.StringIO:
    out = io.StringIO()
    logs.configure(level=level, fmt=fmt, key=key, stream=out, environ={})
    return out


def raise_with_key_in_a_local(key: SealedKey) -> None:
    sealed_local = key.value  # a local the traceback must not show
    raise RuntimeError(f"cannot use {sealed_local}")


def test_one_json_object_per_line_with_timestamp_level_event() -> None:
    """Each event is one JSON line with a UTC ISO timestamp, the level, the event and context."""
    out = setup()
    structlog.contextvars.bind_contextvars(run_id="r1")
    log = logs.get_logger().bind(task_id="task-7")
    log.info("result_quarantined", verdict="QUARANTINE")
    log.warning("wake_retried", attempt=2)
    first, second = json_lines(out.getvalue())
    assert first["event"] == "result_quarantined"
    assert first["level"] == "info"
    assert (first["task_id"], first["run_id"], first["verdict"]) == ("task-7", "r1", "QUARANTINE")
    assert first["timestamp"].endswith("Z")
    stamp = datetime.fromisoformat(first["timestamp"])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    assert (second["level"], second["attempt"]) == ("warning", 2)


def test_level_filters_lower_events() -> None:
    """Events below the configured level are dropped."""
    out = setup(level="warning")
    log = logs.get_logger()
    log.debug("a")
    log.info("b")
    log.warning("c")
    log.error("d")
    assert [e["event"] for e in json_lines(out.getvalue())] == ["c", "d"]


def test_reconfigure_level_reaches_existing_loggers() -> None:
    """reconfigure_level changes filtering for a logger created before it was called."""
    out = setup(level="info")
    log = structlog.get_logger("module.level")
    log.debug("hidden")
    logs.reconfigure_level("debug")
    log.debug("shown")
    assert [e["event"] for e in json_lines(out.getvalue())] == ["shown"]


def test_unknown_level_or_format_is_a_config_error() -> None:
    """An unknown level or format raises ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"log\.level"):
        setup(level="loud")
    with pytest.raises(ConfigError, match=r"log\.format"):
        setup(fmt="xml")


def test_key_never_appears_in_json_output(key: SealedKey) -> None:
    """The key is redacted from messages, nested values, dict keys and the key object itself."""
    out = setup(key)
    log = logs.get_logger()
    log.info(f"event with {key.value}", detail={"list": [("x", key.value)], key.value: "k"})
    log.info("bytes_and_objects", raw=key.value.encode(), err=OSError(key.value), sealed=key)
    text = out.getvalue()
    assert key.value not in text
    assert text.count("[REDACTED]") >= 5
    assert len(json_lines(text)) == 2


# A generated key (no character any escaper changes: the rendered line is searched) and
# one that JSON, repr and ascii each escape (walked before every render).
KEY_KINDS = {
    "generated": lambda: secrets.token_urlsafe(32),
    "escaped": lambda: secrets.token_hex(8) + "\"\\'\u00e9\n" + secrets.token_hex(8),
}


@pytest.mark.parametrize("kind", sorted(KEY_KINDS))
def test_json_lines_hold_no_form_of_the_key(tmp_path: Path, kind: str) -> None:
    """Escaped once or twice (in bytes, an object's repr, nested text), no form survives."""
    value = KEY_KINDS[kind]()
    key = SealedKey(path=tmp_path / "anu-key", value=value)
    out = setup(key)
    log = logs.get_logger()
    log.info("clean", n=1, text="nothing secret")
    log.info(
        "dirty",
        raw=value.encode(),
        obj=OSError(repr(value)),
        deep={"a": [{"b": (f"x{value}y",)}]},
        quoted=json.dumps({"k": value}),
    )
    text = out.getvalue()
    forms = {value, json.dumps(value)[1:-1], repr(value)[1:-1], ascii(value)[1:-1]}
    forms |= {json.dumps(f)[1:-1] for f in list(forms)}
    assert not [f for f in forms if f in text]
    clean, dirty = json_lines(text)
    assert (clean["event"], clean["n"], clean["text"]) == ("clean", 1, "nothing secret")
    assert dirty["deep"] == {"a": [{"b": ["x[REDACTED]y"]}]}


class _ReprRaises:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class _ShowsKey:
    """An object whose repr is clean but whose ``__structlog__`` (asked first) is not."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "ShowsKey()"

    def __structlog__(self) -> Any:
        return {"inside": self.value}


@pytest.mark.parametrize("kind", sorted(KEY_KINDS))
def test_a_value_the_renderer_cannot_take_still_makes_its_line(tmp_path: Path, kind: str) -> None:
    """A repr that raises or a list holding itself is walked into something renderable:
    the line is written and the call does not raise."""
    key = SealedKey(path=tmp_path / "anu-key", value=KEY_KINDS[kind]())
    out = setup(key)
    looped: list[Any] = [1]
    looped.append(looped)
    logs.get_logger().info("odd", bad=_ReprRaises(), looped=looped)
    (line,) = json_lines(out.getvalue())
    assert line["event"] == "odd" and line["bad"] == "[UNREPRESENTABLE]"


@pytest.mark.parametrize("kind", sorted(KEY_KINDS))
def test_a_key_from_structlog_hook_is_redacted_in_the_line(tmp_path: Path, kind: str) -> None:
    """``__structlog__`` is asked by the renderer, after the walk: the line is searched too."""
    value = KEY_KINDS[kind]()
    key = SealedKey(path=tmp_path / "anu-key", value=value)
    out = setup(key)
    logs.get_logger().info("hooked", obj=_ShowsKey(value))
    text = out.getvalue()
    assert value not in text and json.dumps(value)[1:-1] not in text
    assert "[REDACTED]" in text


def test_json_traceback_is_redacted_and_has_no_locals(key: SealedKey) -> None:
    """An exception's message and traceback are redacted, and frames carry no local variables."""
    out = setup(key)
    try:
        raise_with_key_in_a_local(key)
    except RuntimeError:
        logs.get_logger().exception("wake_failed")
    text = out.getvalue()
    assert key.value not in text
    (entry,) = json_lines(text)
    (exc,) = entry["exception"]
    assert exc["exc_type"] == "RuntimeError"
    assert exc["exc_value"] == "cannot use [REDACTED]"
    assert exc["frames"], "the traceback is rendered"
    assert all("locals" not in frame for frame in exc["frames"])
    assert "sealed_local" not in text
    assert entry["level"] == "error"


def test_console_format_redacts_and_shows_plain_traceback(key: SealedKey) -> None:
    """console output is human text, redacted, with a traceback that carries no locals."""
    out = setup(key, fmt="console")
    log = logs.get_logger()
    log.info("config_reloaded", note=key.value)
    try:
        raise_with_key_in_a_local(key)
    except RuntimeError:
        log.exception("wake_failed")
    text = out.getvalue()
    assert key.value not in text
    assert "config_reloaded" in text
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: cannot use [REDACTED]" in text
    assert "sealed_local =" not in text


def journal_env(fd: int) -> dict[str, str]:
    st = os.fstat(fd)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_journal_stream_lines_get_priority_prefix() -> None:
    """When JOURNAL_STREAM names our stdout, each line starts with its sd-daemon priority."""
    rfd, wfd = os.pipe()
    with os.fdopen(wfd, "w") as stream:
        logs.configure(level="debug", fmt="json", key=None, stream=stream, environ=journal_env(wfd))
        log = logs.get_logger()
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
        log.exception("x")
    with os.fdopen(rfd) as reader:
        lines = reader.read().splitlines()
    prefixes = [line[:3] for line in lines]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<2>", "<3>"]
    assert [json.loads(line[3:])["event"] for line in lines] == ["d", "i", "w", "e", "c", "x"]


def test_journal_prefixes_every_line_of_a_console_traceback(tmp_path: Path, key: SealedKey) -> None:
    """A multi-line console record gets the priority on every line, so journald keeps it."""
    with (tmp_path / "out").open("w") as stream:
        env = journal_env(stream.fileno())
        logs.configure(level="info", fmt="console", key=key, stream=stream, environ=env)
        try:
            raise_with_key_in_a_local(key)
        except RuntimeError:
            logs.get_logger().exception("wake_failed")
    lines = (tmp_path / "out").read_text().splitlines()
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)
    assert key.value not in "\n".join(lines)


@pytest.mark.parametrize("journal", [None, "other-file", "garbage"])
def test_no_prefix_unless_journal_stream_matches(tmp_path: Path, journal: str | None) -> None:
    """Without a matching JOURNAL_STREAM (unset, another file, unparsable) lines are pure JSON."""
    other = tmp_path / "other"
    other.touch()
    env = {
        None: {},
        "other-file": {"JOURNAL_STREAM": f"{other.stat().st_dev}:{other.stat().st_ino}"},
        "garbage": {"JOURNAL_STREAM": "not:numbers"},
    }[journal]
    with (tmp_path / "out").open("w") as stream:
        logs.configure(level="info", fmt="json", key=None, stream=stream, environ=env)
        logs.get_logger().info("plain")
    assert json_lines((tmp_path / "out").read_text())[0]["event"] == "plain"


def test_stream_without_descriptor_is_not_the_journal(tmp_path: Path) -> None:
    """A stream with no file descriptor (StringIO) is never taken for the journal."""
    assert not logs.is_journal_stream(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_write_failure_does_not_raise() -> None:
    """A log line that cannot be written is dropped rather than crashing the caller."""
    out = setup()
    out.close()
    logs.get_logger().info("lost")


def test_announce_is_text_on_a_terminal_and_json_on_the_journal(tmp_path: Path) -> None:
    """A one-shot command's line: the text as is, or one <N>-prefixed JSON object."""
    plain = io.StringIO()
    logs.announce("lock_held", "anu-watchd: busy", level="error", stream=plain, environ={})
    assert plain.getvalue() == "anu-watchd: busy\n"
    with (tmp_path / "journal").open("w+") as stream:
        env = journal_env(stream.fileno())
        fields = {"a": 1, "path": "/spool/tâche-7"}
        logs.announce("lock_held", "busy", level="error", stream=stream, fields=fields, environ=env)
        stream.seek(0)
        line = stream.read()
    assert line.startswith("<3>") and line.endswith("\n")
    doc = json.loads(line[3:])
    assert (doc["event"], doc["level"], doc["message"]) == ("lock_held", "error", "busy")
    assert doc["a"] == 1 and doc["path"] == "/spool/tâche-7"
    # The daemon's own format: compact and ASCII, so one text filter matches both.
    assert line.isascii() and '"level":"error"' in line and ": " not in line


def test_crashed_before_configuration_is_one_critical_line(tmp_path: Path) -> None:
    """An exception before logs are configured is one critical JSON line on the journal."""
    with (tmp_path / "journal").open("w+") as stream:
        os.environ["JOURNAL_STREAM"] = journal_env(stream.fileno())["JOURNAL_STREAM"]
        try:
            logs.crashed(FileExistsError(17, "File exists", "/spool/q"), stream=stream)
        finally:
            del os.environ["JOURNAL_STREAM"]
        stream.seek(0)
        lines = stream.read().splitlines()
    [line] = lines
    doc = json.loads(line.removeprefix("<2>"))
    assert (doc["level"], doc["event"], doc["error_type"]) == (
        "critical",
        "unexpected_exception",
        "FileExistsError",
    )


def test_json_lines_are_compact_ascii_with_non_ascii_escaped() -> None:
    """Hangul, a lone surrogate from a non-UTF-8 file name and U+2028 come out as \\uXXXX."""
    out = setup()
    log = logs.get_logger()
    log.info("plain", path="/srv/events/task-1.result.json", n=3)
    log.info("hangul", summary="작업 완료\u2028", path="/srv/events/task-\udcff.result.json")
    text = out.getvalue()
    assert text.isascii()
    plain, hangul = text.splitlines()
    assert plain.startswith('{"path":"/srv/events/task-1.result.json","n":3,"event":"plain"')
    assert "\\uc791" in hangul and "\\udcff" in hangul and "\\u2028" in hangul
    assert json.loads(hangul)["summary"] == "작업 완료\u2028"


def test_json_lines_render_datetimes_and_objects_by_repr() -> None:
    """What the stdlib encoder does not know is its repr, as it always was."""
    out = setup()
    when = datetime(2026, 12, 5, tzinfo=UTC)
    logs.get_logger().info("odd_values", when=when, err=OSError(2))
    (line,) = json_lines(out.getvalue())
    assert line["when"] == repr(when) and line["err"] == repr(OSError(2))
