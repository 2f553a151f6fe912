"""Hostile state paths: symlinks, FIFOs and regular files where the daemon keeps its state.

Each is refused with one line naming the path (78 when the config names it,
70 when it is planted after the config was checked) and never hangs, never
writes through a link, never ends in a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.spool import REPO, Spool

TIMEOUT_S = 30.0


def set_spool_keys(spool: Spool, **keys: Path) -> None:
    """Name spool paths in the config (absolute, as an operator would)."""
    lines = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    spool.config.write_text(spool.config.read_text().replace("[spool]\n", f"[spool]\n{lines}", 1))


def assert_one_clear_line(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_quarantine_dir_on_another_filesystem_is_refused_at_check_config(
    tmp_path: Path,
) -> None:
    """A quarantine dir on another filesystem (EXDEV at every move) is a config error, 78."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the temp dir")
    spool = Spool(tmp_path)
    set_spool_keys(spool, quarantine_dir=shm / f"anu-q-{os.getpid()}-{tmp_path.name}")
    for args in (["check-config"], ["scan", "--once"], ["run"]):
        res = spool.cli(*args, timeout=TIMEOUT_S)
        assert_one_clear_line(res, 78, "spool.quarantine_dir", "another filesystem")


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """A lock file planted as a symlink is refused (78); the link's target keeps its bytes."""
    spool = Spool(tmp_path)
    target = tmp_path / "precious"
    target.write_text("precious\n")
    (spool.flag.parent / "anu-watchd.lock").symlink_to(target)
    for args in (["scan", "--once"], ["run"], ["status"]):
        res = spool.cli(*args, timeout=TIMEOUT_S)
        assert_one_clear_line(res, 78, "spool.lock_file", "symlink")
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("which", ["ledger", "evidence_log"])
def test_a_fifo_ledger_or_evidence_log_never_hangs_a_command(tmp_path: Path, which: str) -> None:
    """A FIFO at the ledger or evidence log makes run, scan and status refuse (78), not hang."""
    spool = Spool(tmp_path)
    name = {"ledger": "callback_4tuple_index.jsonl", "evidence_log": "p0b_driver_runs.jsonl"}
    os.mkfifo(spool.events / name[which])
    for args in (["run"], ["scan", "--once"], ["status"], ["status", "--json"]):
        res = spool.cli(*args, timeout=TIMEOUT_S)
        assert_one_clear_line(res, 78, f"spool.{which}", "FIFO")


@pytest.mark.parametrize("where", ["events", "state"])
def test_a_regular_file_where_a_state_directory_goes_is_one_line_not_a_traceback(
    tmp_path: Path, where: str
) -> None:
    """A regular file at the events or state directory is one clear line and 78 for every
    command that touches it, not a FileExistsError traceback."""
    spool = Spool(tmp_path, enabled=False)
    directory = spool.events if where == "events" else spool.flag.parent
    if directory.exists():
        directory.rmdir()
    directory.write_text("not a directory\n")
    commands = (["run"], ["scan", "--once"], ["enable"], ["status"], ["quarantine", "list"])
    for args in commands:
        res = spool.cli(*args, timeout=TIMEOUT_S)
        assert_one_clear_line(res, 78, str(directory), "not a directory")


def test_a_symlinked_events_dir_is_refused_unless_the_config_names_the_resolved_path(
    tmp_path: Path,
) -> None:
    """An events dir reached through a symlink is refused (78) until the config names the
    directory it resolves to."""
    spool = Spool(tmp_path)
    real = tmp_path / "real-events"
    spool.events.rename(real)
    spool.events.symlink_to(real)
    res = spool.cli("scan", "--once", timeout=TIMEOUT_S)
    assert_one_clear_line(res, 78, "spool.events_dir", "symlink", str(real))
    set_spool_keys(spool, events_dir=real, quarantine_dir=real / "quarantine")
    set_spool_keys(spool, ledger=real / "l.jsonl", evidence_log=real / "e.jsonl")
    assert spool.cli("check-config").returncode == 0


def test_status_into_a_closed_pipe_exits_0_quietly(tmp_path: Path) -> None:
    """``status | true`` (stdout's reader gone) exits 0 and prints no BrokenPipeError."""
    spool = Spool(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        res = subprocess.run(
            [sys.executable, "-m", "anu_watchd", "--config", str(spool.config), "status"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=TIMEOUT_S,
        )
    finally:
        os.close(write_end)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""



async def test_a_ledger_the_service_user_may_not_open_stops_run_with_77_not_70(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state file the daemon's user may not open (EACCES, injected at fsio.open_state: the
    tests run as root) ends `run` with exit 77, which systemd does not restart, not 70."""
    import errno

    from anu_watchd import fsio
    from anu_watchd.daemon import Daemon
    from anu_watchd.errors import StatePathError

    real = fsio.open_state
    ledger = spool.events / "callback_4tuple_index.jsonl"

    def denied(path: Path, flags: int, mode: int = 0o644, *, op: str = "open") -> int:
        if Path(path) == ledger:
            cause = PermissionError(errno.EACCES, "Permission denied", str(path))
            raise StatePathError(path, op, "Permission denied") from cause
        return real(path, flags, mode, op=op)

    monkeypatch.setattr(fsio, "open_state", denied)
    assert await Daemon(spool.config, environ={}).serve() == 77
