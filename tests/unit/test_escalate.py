"""Tests for the escalation command, run through spawn.Child like every other child."""

from __future__ import annotations

import json
import os
from pathlib import Path

from anu_watchd.escalate import escalate
from tests.deadline import eventually


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o700)
    return path


async def test_the_document_arrives_on_stdin_in_the_clean_environment(tmp_path: Path) -> None:
    """The JSON document is the command's stdin; its environment is PATH and LANG only."""
    cmd = script(tmp_path / "esc", f"cat > {tmp_path}/stdin\nenv > {tmp_path}/env\n")
    assert await escalate([str(cmd)], {"task_id": "task-7"}, timeout_s=10)
    assert json.loads((tmp_path / "stdin").read_text()) == {"task_id": "task-7"}
    names = {line.split("=", 1)[0] for line in (tmp_path / "env").read_text().splitlines()}
    assert names - {"PWD", "SHLVL", "_"} == {"PATH", "LANG"}


async def test_what_the_script_starts_in_the_background_outlives_it(tmp_path: Path) -> None:
    """Only the script's own exit is awaited: a background child keeps running after it."""
    marker = tmp_path / "background-done"
    cmd = script(tmp_path / "esc", f"(sleep 0.3; touch {marker}) &\nexit 0\n")
    assert await escalate([str(cmd)], {}, timeout_s=10)
    assert not marker.exists()
    assert await eventually(marker.exists, deadline_s=10)


async def test_failures_are_reported_not_raised(tmp_path: Path) -> None:
    """A non-zero exit, a missing command and a timeout each return False."""
    assert not await escalate([str(script(tmp_path / "f", "exit 3\n"))], {}, timeout_s=10)
    assert not await escalate([str(tmp_path / "missing")], {}, timeout_s=10)
    assert not await escalate([str(script(tmp_path / "s", "sleep 30\n"))], {}, timeout_s=0.2)
    assert not await escalate([], {}, timeout_s=1)
