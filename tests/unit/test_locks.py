"""Tests for the single-instance lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anu_watchd.errors import LockHeldError
from anu_watchd.locks import InstanceLock, is_held, read_holder

HOLD = """
import sys, time
from pathlib import Path
from anu_watchd.locks import InstanceLock
with InstanceLock(Path(sys.argv[1]), role="run"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    """While another process holds the lock, acquiring raises LockHeldError naming its pid."""
    lock = tmp_path / "state" / "x.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        assert is_held(lock)
        with pytest.raises(LockHeldError, match=f"pid {proc.pid} \\(run\\)"):
            InstanceLock(lock, role="scan").acquire()
    finally:
        proc.communicate("")
    assert not is_held(lock)
    with InstanceLock(lock, role="scan"):
        holder = read_holder(lock)
        assert holder is not None and holder.pid == os.getpid() and holder.role == "scan"


def test_lock_is_released_when_the_holder_dies(tmp_path: Path) -> None:
    """A killed holder leaves no stale lock: the kernel drops the flock."""
    lock = tmp_path / "x.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    proc.kill()
    proc.wait()
    with InstanceLock(lock, role="run"):
        assert is_held(lock)


def test_is_held_is_false_without_a_lock_file(tmp_path: Path) -> None:
    """No lock file means nobody holds it."""
    assert not is_held(tmp_path / "none.lock")


def test_a_lock_file_planted_as_a_symlink_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    """Taking the lock through a symlink fails with the path named; the target keeps its bytes."""
    from anu_watchd.errors import StatePathError

    target = tmp_path / "precious"
    target.write_text("precious\n")
    (tmp_path / "lock").symlink_to(target)
    with pytest.raises(StatePathError, match=r"lock: cannot take the instance lock: .*symlink"):
        InstanceLock(tmp_path / "lock", role="run").acquire()
    assert target.read_text() == "precious\n"
    assert read_holder(tmp_path / "lock") is None


def test_flock_holders_reads_the_kernel_lock_table_not_the_file(tmp_path: Path) -> None:
    """The holder is whoever /proc/locks says holds the flock on this inode; others are not."""
    from anu_watchd.locks import flock_holders

    lock = tmp_path / "x.lock"
    assert flock_holders(lock) is None  # no such file
    with InstanceLock(lock, role="run"):
        assert flock_holders(lock) == {os.getpid()}
        st = os.stat(lock)
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
        table = tmp_path / "locks"
        table.write_text(
            f"1: FLOCK  ADVISORY  WRITE 4242 {dev}:{st.st_ino} 0 EOF\n"
            f"1: -> FLOCK  ADVISORY  WRITE 77 {dev}:{st.st_ino} 0 EOF\n"
            f"2: POSIX  ADVISORY  WRITE 99 {dev}:{st.st_ino} 0 EOF\n"
            f"3: FLOCK  ADVISORY  WRITE 55 {dev}:{st.st_ino + 1} 0 EOF\n"
        )
        assert flock_holders(lock, table=table) == {4242}
    assert flock_holders(lock) == set()
