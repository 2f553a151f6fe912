"""Tests for the exec sink's spawn path, with real subprocesses, pipes and signals."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from anu_watchd.sinks import spawn
from anu_watchd.sinks.exec import CHILD_PATH
from anu_watchd.sinks.spawn import Child, Finished
from tests.deadline import eventually

ENV = {"PATH": CHILD_PATH, "LANG": "C.UTF-8"}
LIMIT = 64 * 1024
PY = sys.executable


# Starts a sleeping grandchild that inherits stdout, and records its pid in argv[1].
SPAWN_SLEEPER = (
    "import pathlib, subprocess, sys, time\n"
    "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "pathlib.Path(sys.argv[1], 'kid.pid').write_text(str(kid.pid))\n"
)


def py(code: str, *args: str) -> list[str]:
    return [PY, "-c", code, *args]


async def run(argv: list[str], stdin: bytes = b"", *, timeout_s: float = 10.0) -> Finished:
    """What ExecSink._run does, minus the exit-code mapping."""
    child = Child.start(argv, ENV, stdin, limit=LIMIT)
    try:
        async with asyncio.timeout(timeout_s):
            return await child.finished()
    finally:
        await kill(child)


async def kill(child: Child) -> None:
    """child.kill(), with a deadline: a kill that never returns fails the test, not the suite."""
    async with asyncio.timeout(5):
        await child.kill()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def reaped(pid: int) -> bool:
    """True once ``pid`` is no child of ours any more; WNOWAIT, so a zombie is left as found."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


async def sleeper_pid(dir: Path) -> int:
    path = dir / "kid.pid"
    assert await eventually(lambda: path.exists() and path.read_text() != "")
    return int(path.read_text())


def pid_runs(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_stdin_is_delivered_intact_small_and_large() -> None:
    """The command reads exactly the bytes given, both an envelope and 1 MiB past the pipe size."""
    digest = (
        "import hashlib, sys\n"
        "d = sys.stdin.buffer.read()\n"
        "print(len(d), hashlib.sha256(d).hexdigest())\n"
    )
    for data in (b'{"task_id": "t-1"}', os.urandom(1024 * 1024)):
        done = await run(py(digest), data)
        assert done.stdout.decode().split() == [str(len(data)), hashlib.sha256(data).hexdigest()]


async def test_a_command_that_never_reads_a_large_stdin_is_judged_by_its_exit() -> None:
    """Input the command does not read neither blocks nor fails the run (EPIPE is ignored)."""
    done = await run(py("import sys; print('S-1'); sys.exit(0)"), b"x" * (4 * 1024 * 1024))
    assert (done.returncode, done.stdout) == (0, b"S-1\n")


async def test_each_output_keeps_its_first_64_kib_and_the_rest_is_drained() -> None:
    """A megabyte on stdout and on stderr: each capture is exactly its first 64 KiB."""
    code = (
        "import sys\n"
        "sys.stdout.write('o' * 1_000_000); sys.stdout.flush()\n"
        "sys.stderr.write('e' * 1_000_000)\n"
    )
    done = await run(py(code))
    assert (done.returncode, done.stdout, done.stderr) == (0, b"o" * LIMIT, b"e" * LIMIT)


async def test_exit_status_and_death_by_signal_are_reported() -> None:
    """The return code is the exit status, or minus the signal that killed the command."""
    assert (await run(py("import sys; sys.exit(3)"))).returncode == 3
    assert (await run(py("import sys; sys.exit(75)"))).returncode == 75
    kill_self = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    assert (await run(py(kill_self))).returncode == -signal.SIGKILL


async def test_a_bare_name_is_looked_up_on_the_child_path_with_default_signals() -> None:
    """argv[0] without a slash is found on the child's PATH; SIGPIPE is not left ignored."""
    done = await run(["grep", "^SigIgn", "/proc/self/status"])
    ignored = int(done.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))


async def test_no_descriptor_of_ours_is_inherited() -> None:
    """Even an inheritable descriptor of the daemon stays closed in the command."""
    fd = os.open(os.devnull, os.O_RDONLY)
    high = os.dup2(fd, 200, inheritable=True)
    try:
        done = await run(py("import os; print(sorted(os.listdir('/proc/self/fd')))"))
    finally:
        os.close(fd)
        os.close(high)
    assert "200" not in done.stdout.decode()
    assert re.fullmatch(r"\['0', '1', '2'(, '\d+')?\]\n", done.stdout.decode())


async def test_cannot_run_raises_oserror_and_leaves_no_descriptor(tmp_path: Path) -> None:
    """A missing or non-executable argv[0] raises OSError at start, with every pipe closed."""
    not_executable = tmp_path / "plain.txt"
    not_executable.write_text("echo S-1\n")
    not_executable.chmod(0o644)
    before = open_fds()
    with pytest.raises(FileNotFoundError):
        Child.start(["/nonexistent/cmd"], ENV, b"{}", limit=LIMIT)
    with pytest.raises(OSError):
        Child.start([str(not_executable)], ENV, b"x" * 100_000, limit=LIMIT)
    assert open_fds() == before


async def test_a_command_that_closes_its_outputs_is_awaited_until_it_exits() -> None:
    """Output ends before the exit: the status still comes from the exit, seen on a pidfd."""
    started = time.monotonic()
    done = await run(["/bin/sh", "-c", "exec >&- 2>&-; sleep 0.3; exit 4"])
    assert done.returncode == 4
    assert time.monotonic() - started >= 0.3


async def test_without_pidfd_a_thread_waits_for_the_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where pidfd_open fails (old kernel, no fds left) the exit is still seen and reaped."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open unsupported")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    before = open_fds()
    child = Child.start(
        ["/bin/sh", "-c", "exec >&- 2>&-; sleep 0.2; exit 5"], ENV, b"", limit=LIMIT
    )
    done = await child.finished()
    assert done.returncode == 5
    assert reaped(child.pid)
    assert open_fds() == before


async def test_kill_takes_the_whole_process_group_and_reaps(tmp_path: Path) -> None:
    """kill() SIGKILLs the command and what it started, and reaps the command."""
    child = Child.start(
        py(SPAWN_SLEEPER + "time.sleep(600)\n", str(tmp_path)), ENV, b"", limit=LIMIT
    )
    grandchild = await sleeper_pid(tmp_path)
    await kill(child)
    assert reaped(child.pid)
    assert await eventually(lambda: not pid_runs(grandchild))


async def test_a_command_that_exits_leaving_a_child_on_stdout_finishes_at_its_exit(
    tmp_path: Path,
) -> None:
    """A command that prints, exits 0 and leaves a process holding stdout is finished by its
    exit plus a short grace, not by a timeout: its output is kept, the leftover is killed."""
    code = SPAWN_SLEEPER + "print('S-bg', flush=True)\n"
    child = Child.start(py(code, str(tmp_path)), ENV, b"", limit=LIMIT)
    grandchild = await sleeper_pid(tmp_path)
    try:
        async with asyncio.timeout(5):
            done = await child.finished()
    finally:
        await kill(child)
    assert done.returncode == 0
    assert done.stdout == b"S-bg\n"
    assert reaped(child.pid)
    assert await eventually(lambda: not pid_runs(grandchild))


async def test_cancelled_run_kills_and_reaps_the_command() -> None:
    """Cancelling the awaiting task (a daemon halt) kills the command and reaps it at once."""
    before = open_fds()
    pids: list[int] = []

    async def hold() -> None:
        child = Child.start(py("import time; time.sleep(600)"), ENV, b"", limit=LIMIT)
        pids.append(child.pid)
        try:
            await child.finished()
        finally:
            await kill(child)

    task = asyncio.create_task(hold())
    await asyncio.sleep(0)  # hold() started the command and now awaits it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reaped(pids[0])
    assert open_fds() == before


async def test_a_cancelled_kill_still_reaps_and_closes_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the wait inside kill() is cancelled too, the exit callback reaps and closes the fds."""
    before = open_fds()
    child = Child.start(py("import time; time.sleep(600)"), ENV, b"", limit=LIMIT)
    # Hold the signal back, so that kill() is surely still waiting when it is cancelled.
    held: list[int] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: held.append(pgid))
    killing = asyncio.create_task(child.kill())
    await asyncio.sleep(0)  # kill() "signalled" the group and now waits for the exit
    killing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await killing
    assert held == [child.pid]
    assert not reaped(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    assert await eventually(lambda: reaped(child.pid) and open_fds() == before)


async def test_many_spawns_leave_no_descriptor_and_no_zombie() -> None:
    """48 runs of every ending (ok, failure, signal, timeout, cancel) leak nothing."""
    before = open_fds()
    pids: list[int] = []
    endings = [
        (["/bin/sh", "-c", "echo S-1"], 10.0),
        (["/bin/sh", "-c", "echo refused >&2; exit 3"], 10.0),
        (["/bin/sh", "-c", "kill -9 $$"], 10.0),
        (["/bin/sh", "-c", "sleep 600"], 0.05),
    ]
    for i in range(48):
        argv, timeout_s = endings[i % len(endings)]
        child = Child.start(argv, ENV, b"{}", limit=LIMIT)
        pids.append(child.pid)
        with pytest.raises(TimeoutError) if timeout_s < 1 else contextlib.nullcontext():
            async with asyncio.timeout(timeout_s):
                await child.finished()
        await kill(child)
    assert open_fds() == before
    assert all(reaped(pid) for pid in pids)
    assert _children_of_this_process() == set()


def _children_of_this_process() -> set[int]:
    kids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        text = Path(f"/proc/self/task/{tid}/children").read_text()
        kids.update(int(p) for p in text.split())
    return kids


async def test_the_thread_watch_calls_back_and_leaves_the_child_to_reap() -> None:
    """The fallback exit watch calls back on the loop and does not reap (waitid WNOWAIT)."""
    pid = os.posix_spawn("/bin/true", ["/bin/true"], ENV)
    seen = asyncio.Event()
    assert spawn._watch_exit(asyncio.get_running_loop(), pid, seen.set, use_pidfd=False) is None
    async with asyncio.timeout(5):
        await seen.wait()
    assert os.waitpid(pid, os.WNOHANG) == (pid, 0)
