"""Tests for the exec sink, against a real recording command in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from pathlib import Path

import pytest

from anu_watchd.errors import PermanentWakeError, TransientWakeError
from anu_watchd.secret import SealedKey
from anu_watchd.sinks.base import RetryPolicy, register_with_retries
from anu_watchd.sinks.exec import CHILD_PATH, ExecSink, schedule_id_from_stdout
from tests.deadline import settles
from tests.sinkhelpers import (
    child_is_gone,
    read_sink_calls,
    set_sink_behaviour,
    write_recording_sink,
)

ENVELOPE = json.dumps({"task_id": "task-7", "status": "ok"}).encode()
IK = "ik1-0123456789abcdef"


@pytest.fixture
def key(tmp_path: Path) -> SealedKey:
    path = tmp_path / "anu-key"
    value = secrets.token_hex(16)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return SealedKey(path=path, value=value)


@pytest.fixture
def sink_dir(tmp_path: Path) -> Path:
    return tmp_path / "sink"


def make_sink(
    sink_dir: Path, key: SealedKey, behaviour: str, *, timeout_s: float = 10.0
) -> ExecSink:
    argv = write_recording_sink(sink_dir, behaviour=behaviour)
    return ExecSink(argv, [], key_file=key.path, timeout_s=timeout_s, key=key)


async def no_sleep(_seconds: float) -> None:
    return None


def reaped(pid: int) -> bool:
    """True when ``pid`` is no longer a child of ours: not running and not a zombie."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # leaves a zombie as is
    except ChildProcessError:
        return True
    return False


def wait_until_gone(pid: int, deadline_s: float = 5.0) -> bool:
    return settles(lambda: child_is_gone(pid), deadline_s)


async def test_json_schedule_id_is_returned_and_envelope_is_on_stdin(
    sink_dir: Path, key: SealedKey
) -> None:
    """Exit 0 with a JSON object answers its schedule_id; the command read the envelope."""
    sink = make_sink(sink_dir, key, "ok")
    assert await sink.register(ENVELOPE, idempotency_key=IK) == "S-1"
    [call] = read_sink_calls(sink_dir)
    assert call["stdin"] == ENVELOPE.decode()


@pytest.mark.parametrize("size", [3900, 200_000])
async def test_a_full_size_or_oversized_envelope_arrives_intact(
    sink_dir: Path, key: SealedKey, size: int
) -> None:
    """The largest envelope (3900 bytes) and one beyond any pipe buffer reach stdin whole."""
    envelope = b'{"task_id": "task-7", "pad": "' + b"x" * (size - 32) + b'"}'
    sink = make_sink(sink_dir, key, "ok")
    assert await sink.register(envelope, idempotency_key=IK) == "S-1"
    [call] = read_sink_calls(sink_dir)
    assert call["stdin"] == envelope.decode()


async def test_first_non_empty_line_is_the_id(sink_dir: Path, key: SealedKey) -> None:
    """Exit 0 with plain text answers its first non-empty line, stripped."""
    sink = make_sink(sink_dir, key, "ok-line")
    assert await sink.register(ENVELOPE, idempotency_key=IK) == "S-1"


async def test_exit_zero_without_an_id_is_permanent(sink_dir: Path, key: SealedKey) -> None:
    """Exit 0 with empty stdout is a PermanentWakeError, not a registration."""
    sink = make_sink(sink_dir, key, "no-id")
    with pytest.raises(PermanentWakeError, match="no schedule id"):
        await sink.register(ENVELOPE, idempotency_key=IK)


async def test_ex_tempfail_is_transient_and_quotes_stderr(sink_dir: Path, key: SealedKey) -> None:
    """Exit 75 is a TransientWakeError whose message carries the exit code and stderr."""
    sink = make_sink(sink_dir, key, "tempfail")
    with pytest.raises(TransientWakeError, match=r"exited 75: collector busy"):
        await sink.register(ENVELOPE, idempotency_key=IK)


async def test_other_non_zero_exit_is_permanent(sink_dir: Path, key: SealedKey) -> None:
    """Any other non-zero exit is a PermanentWakeError quoting stderr."""
    sink = make_sink(sink_dir, key, "fail")
    with pytest.raises(PermanentWakeError, match=r"exited 3: envelope refused"):
        await sink.register(ENVELOPE, idempotency_key=IK)


async def test_timeout_is_transient_and_kills_the_whole_group(
    sink_dir: Path, key: SealedKey
) -> None:
    """A command past timeout_s is a TransientWakeError; it and its grandchild are gone."""
    sink = make_sink(sink_dir, key, "hang", timeout_s=1.0)
    with pytest.raises(TransientWakeError, match="timed out"):
        await sink.register(ENVELOPE, idempotency_key=IK)
    [call] = read_sink_calls(sink_dir)
    assert reaped(call["pid"])  # by the sink, before it raised
    assert wait_until_gone(call["grandchild_pid"])


async def test_cancelled_register_kills_the_command(sink_dir: Path, key: SealedKey) -> None:
    """Cancelling register (as a shutdown would) kills and reaps the running command."""
    sink = make_sink(sink_dir, key, "hang", timeout_s=60.0)
    task = asyncio.create_task(sink.register(ENVELOPE, idempotency_key=IK))
    deadline = time.monotonic() + 10.0
    while not read_sink_calls(sink_dir) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    [call] = read_sink_calls(sink_dir)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reaped(call["pid"])
    assert wait_until_gone(call["grandchild_pid"])


async def test_death_by_signal_is_transient(sink_dir: Path, key: SealedKey) -> None:
    """A command killed by a signal is a TransientWakeError naming the signal."""
    sink = make_sink(sink_dir, key, "signal")
    with pytest.raises(TransientWakeError, match="SIGKILL"):
        await sink.register(ENVELOPE, idempotency_key=IK)


async def test_missing_executable_is_permanent(tmp_path: Path, key: SealedKey) -> None:
    """An argv[0] that does not exist is a PermanentWakeError."""
    sink = ExecSink([str(tmp_path / "no-such-cmd")], [], key_file=key.path, timeout_s=5)
    with pytest.raises(PermanentWakeError, match="cannot run"):
        await sink.register(ENVELOPE, idempotency_key=IK)


async def test_non_executable_file_is_permanent(tmp_path: Path, key: SealedKey) -> None:
    """An argv[0] without the execute bit (EACCES) is a PermanentWakeError."""
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho S-1\n")
    script.chmod(0o644)
    sink = ExecSink([str(script)], [], key_file=key.path, timeout_s=5)
    with pytest.raises(PermanentWakeError, match="cannot run"):
        await sink.register(ENVELOPE, idempotency_key=IK)


async def test_child_environment_is_clean_and_holds_only_the_key_path(
    sink_dir: Path, key: SealedKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command sees exactly PATH, LANG, the key file path and the idempotency key."""
    monkeypatch.setenv("ANU_TEST_CANARY", "leaked")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    sink = make_sink(sink_dir, key, "ok")
    await sink.register(ENVELOPE, idempotency_key=IK)
    [call] = read_sink_calls(sink_dir)
    assert call["env"] == {
        "PATH": CHILD_PATH,
        "LANG": "C.UTF-8",
        "ANU_WATCHD_KEY_FILE": str(key.path),
        "ANU_WATCHD_IDEMPOTENCY_KEY": IK,
    }


async def test_key_value_never_reaches_argv_env_or_stdin(sink_dir: Path, key: SealedKey) -> None:
    """The key itself appears nowhere the command is handed: argv, environment, stdin."""
    sink = make_sink(sink_dir, key, "ok")
    await sink.register(ENVELOPE, idempotency_key=IK)
    [call] = read_sink_calls(sink_dir)
    handed = json.dumps([call["argv"], call["env"], call["stdin"]])
    assert key.value not in handed
    assert call["argv"] == [str(sink_dir / "recording_sink.py")]  # the child sys.argv


async def test_key_echoed_on_stderr_is_scrubbed_from_the_error(
    sink_dir: Path, key: SealedKey
) -> None:
    """A command that prints the key to stderr does not get it into the error message."""
    sink = make_sink(sink_dir, key, "leak-key")
    with pytest.raises(PermanentWakeError) as info:
        await sink.register(ENVELOPE, idempotency_key=IK)
    assert key.value not in str(info.value)
    assert "[REDACTED]" in str(info.value)


async def test_long_stderr_is_truncated_in_the_error(tmp_path: Path, key: SealedKey) -> None:
    """Only the last ~500 characters of a long stderr reach the error message."""
    code = "import sys; sys.stderr.write('e' * 100_000); sys.exit(3)"
    sink = ExecSink([sys.executable, "-c", code], [], key_file=key.path, timeout_s=10)
    with pytest.raises(PermanentWakeError) as info:
        await sink.register(ENVELOPE, idempotency_key=IK)
    assert len(str(info.value)) < 600


async def test_huge_stdout_neither_blocks_nor_hides_the_id(tmp_path: Path, key: SealedKey) -> None:
    """A command writing a megabyte after its id line still finishes and answers the id."""
    code = "import sys; sys.stdout.write('S-9\\n' + 'x' * 1_000_000)"
    sink = ExecSink([sys.executable, "-c", code], [], key_file=key.path, timeout_s=10)
    assert await sink.register(ENVELOPE, idempotency_key=IK) == "S-9"


async def test_tempfail_then_ok_is_retried_to_a_registration(
    sink_dir: Path, key: SealedKey
) -> None:
    """Two EX_TEMPFAIL exits then success register on the third attempt."""
    sink = make_sink(sink_dir, key, "tempfail-then-ok:2")
    policy = RetryPolicy(attempts=3, initial_s=1.0, max_s=2.0)
    result = await register_with_retries(
        sink, ENVELOPE, idempotency_key=IK, policy=policy, sleep=no_sleep
    )
    assert result == ("S-3", 3)
    assert {c["env"]["ANU_WATCHD_IDEMPOTENCY_KEY"] for c in read_sink_calls(sink_dir)} == {IK}


async def test_update_runs_update_argv_with_the_final_envelope(
    tmp_path: Path, key: SealedKey
) -> None:
    """update() runs update_argv with the final envelope on stdin; register argv is untouched."""
    register_argv = write_recording_sink(tmp_path / "reg", behaviour="ok")
    update_argv = write_recording_sink(tmp_path / "upd", behaviour="ok")
    sink = ExecSink(register_argv, update_argv, key_file=key.path, timeout_s=10)
    final = json.dumps({"task_id": "task-7", "registration_result_status": "REGISTERED"})
    assert sink.supports_update
    await sink.update(final.encode(), idempotency_key=IK)
    assert [c["stdin"] for c in read_sink_calls(tmp_path / "upd")] == [final]
    assert read_sink_calls(tmp_path / "reg") == []


async def test_update_failure_raises_like_register(tmp_path: Path, key: SealedKey) -> None:
    """A failing update command raises the same typed errors as register."""
    update_argv = write_recording_sink(tmp_path / "upd", behaviour="tempfail")
    sink = ExecSink(["/bin/true"], update_argv, key_file=key.path, timeout_s=10)
    with pytest.raises(TransientWakeError):
        await sink.update(ENVELOPE, idempotency_key=IK)
    set_sink_behaviour(tmp_path / "upd", "fail")
    with pytest.raises(PermanentWakeError):
        await sink.update(ENVELOPE, idempotency_key=IK)


def test_without_update_argv_update_is_unsupported(key: SealedKey) -> None:
    """supports_update is false when update_argv is empty."""
    sink = ExecSink(["/bin/true"], [], key_file=key.path, timeout_s=1)
    assert not sink.supports_update
    assert sink.delivery_method == "exec"


def test_environment_without_a_key_file_omits_the_variable() -> None:
    """With no key file the command gets no ANU_WATCHD_KEY_FILE at all."""
    sink = ExecSink(["/bin/true"], [], key_file=None, timeout_s=1)
    assert set(sink.child_env(IK)) == {"PATH", "LANG", "ANU_WATCHD_IDEMPOTENCY_KEY"}


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        (b'{"schedule_id": "abc"}\n', "abc"),
        (b'{"schedule_id": 42}', "42"),
        (b"\n\n  sched-1  \nnoise\n", "sched-1"),
        (b'["not", "an", "object"]', '["not", "an", "object"]'),
    ],
)
def test_schedule_id_parsing(stdout: bytes, expected: str) -> None:
    """The id is the JSON object's schedule_id, else the first non-empty line."""
    assert schedule_id_from_stdout(stdout, program="cmd") == expected


@pytest.mark.parametrize(
    "stdout",
    [b"", b"\n  \n", b'{"id": "x"}', b'{"schedule_id": ""}', b'{"schedule_id": true}', b"x" * 201],
)
def test_unusable_stdout_is_permanent(stdout: bytes) -> None:
    """No id, a JSON object without a usable schedule_id, or an over-long id is permanent."""
    with pytest.raises(PermanentWakeError):
        schedule_id_from_stdout(stdout, program="cmd")


# A command that prints stderr so the sealed key straddles the 64 KiB cut of its output.
_STRADDLE = (
    "import os, sys\n"
    "key = open(os.environ['ANU_WATCHD_KEY_FILE']).read().strip()\n"
    "sys.stderr.write('e' * (64 * 1024 - len(key) // 2) + key + 'tail')\n"
    "sys.exit(3)\n"
)


async def test_key_straddling_the_stderr_cut_leaves_no_prefix(key: SealedKey) -> None:
    """A key cut in half by the stderr limit leaves no part of itself in the error."""
    sink = ExecSink([sys.executable, "-c", _STRADDLE], [], key_file=key.path, timeout_s=10, key=key)
    with pytest.raises(PermanentWakeError) as info:
        await sink.register(ENVELOPE, idempotency_key=IK)
    message = str(info.value)
    assert key.value[: len(key.value) // 2] not in message
    assert key.value[:4] not in message.rsplit("e", 1)[-1]


# Exits 0 with an id but leaves a background child holding stdout (and stderr) open.
_BACKGROUND = (
    "import subprocess, sys\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print('{\"schedule_id\": \"S-bg\"}', flush=True)\n"
)


async def test_a_handler_exiting_0_with_a_child_on_stdout_registers_once(key: SealedKey) -> None:
    """A handler that exits 0 but leaves a child holding stdout is registered at its exit,
    not timed out (which retried it into three real registrations)."""
    sink = ExecSink(
        [sys.executable, "-c", _BACKGROUND], [], key_file=key.path, timeout_s=5, key=key
    )
    started = time.monotonic()
    assert await sink.register(ENVELOPE, idempotency_key=IK) == "S-bg"
    assert time.monotonic() - started < 4
