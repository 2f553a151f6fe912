"""Tests for LineChild, the long-running child the co-process sink speaks to in lines."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from anu_watchd.sinks import spawn
from anu_watchd.sinks.linechild import STDERR_TAIL, ChildGone, LineChild
from tests.coprochelpers import pid_alive, wait_gone

ENV = {"PATH": "/usr/bin:/bin"}


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def with_a_child(tmp_path: Path, then: str = "") -> str:
    """A child that starts a grandchild (its pid in ``tmp_path/kid``), says ready on the first
    line, runs ``then`` and sleeps."""
    return (
        "import subprocess, sys, time\n"
        "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(tmp_path / 'kid')!r}, 'w').write(str(kid.pid))\n"
        "print('ready', flush=True)\n" + then + "time.sleep(600)\n"
    )


ECHO = "import sys\nfor line in sys.stdin:\n    print('got ' + line.strip(), flush=True)\n"


async def test_each_question_gets_the_next_line_and_eof_ends_the_child() -> None:
    """Lines go in one at a time and come back in order; closing stdin lets it exit 0."""
    child = LineChild.start(python(ECHO), ENV)
    assert await child.ask(b"a\n") == b"got a"
    assert await child.ask(b"b" * 10_000 + b"\n") == b"got " + b"b" * 10_000
    assert await child.close(grace_s=5.0) == 0
    assert not pid_alive(child.pid)


async def test_a_child_that_ignores_eof_is_killed_with_its_group_after_the_grace(
    tmp_path: Path,
) -> None:
    """A child that stays after EOF, and a grandchild it started, are both SIGKILLed."""
    child = LineChild.start(python(with_a_child(tmp_path, then="sys.stdin.read()\n")), ENV)
    assert await child.ask(b"go\n") == b"ready"
    assert await child.close(grace_s=0.2) == -9
    wait_gone([int((tmp_path / "kid").read_text())], "the grandchild", timeout=5.0)


async def test_a_line_longer_than_the_limit_breaks_the_framing() -> None:
    """An answer over ``line_limit`` without a newline is refused, not buffered without end."""
    code = "import sys\nsys.stdout.write('x' * 100000)\nsys.stdout.flush()\ninput()"
    child = LineChild.start(python(code), ENV, line_limit=1000)
    with pytest.raises(ChildGone, match="over 1000 bytes"):
        await child.ask(b"q\n")
    await child.kill()


async def test_stderr_keeps_only_a_tail_that_starts_at_a_line() -> None:
    """Only the last STDERR_TAIL bytes of stderr are kept, cut at a line start, none torn."""
    code = (
        "import sys\n"
        "for i in range(5000):\n"
        "    sys.stderr.write(f'line {i:05d} ' + 'x' * 20 + '\\n')\n"
        "sys.stderr.flush()\n"
    )
    child = LineChild.start(python(code), ENV)
    with pytest.raises(ChildGone):
        await child.ask(b"q\n")
    await child.kill()
    tail = child.stderr_tail()
    assert 0 < len(tail) <= STDERR_TAIL
    assert tail.startswith(b"line ") and tail.endswith(b"line 04999 " + b"x" * 20 + b"\n")


async def test_a_missing_program_raises_oserror() -> None:
    """A program that cannot be run is an OSError at start, with no child left."""
    with pytest.raises(OSError):
        LineChild.start(["/nonexistent/handler"], ENV)


async def test_kill_every_group_ends_a_running_child_and_forgets_it_once_reaped(
    tmp_path: Path,
) -> None:
    """A second stop signal's last act: every co-process and what it started, SIGKILLed."""
    child = LineChild.start(python(with_a_child(tmp_path)), ENV)
    assert await child.ask(b"go\n") == b"ready"
    assert child.pid in spawn._UNREAPED
    spawn.kill_every_group()
    assert await child.close(grace_s=5.0) == -9
    wait_gone([int((tmp_path / "kid").read_text())], "the grandchild", timeout=5.0)
    assert child.pid not in spawn._UNREAPED
