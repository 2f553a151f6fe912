"""Every quarantine reason, produced by a real file of that kind, through the real CLI."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from tests.spool import Spool, json_lines, valid_doc


def test_every_reason_with_a_real_file_of_its_kind(tmp_path: Path) -> None:
    """Symlink, FIFO, directory, socket, hard link, 8 MiB, bad UTF-8, bad JSON, bad schema,
    mismatched id, foreign and self collectors and the key literal are each quarantined
    with their reason, and none of them is woken."""
    spool = Spool(tmp_path)
    ev = spool.events
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(valid_doc("task-link")))
    (ev / "task-link.result.json").symlink_to(target)
    os.mkfifo(ev / "task-fifo.result.json")
    (ev / "task-dir.result.json").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(ev / "task-sock.result.json"))
    spool.drop("task-hard")
    os.link(ev / "task-hard.result.json", tmp_path / "second-link")
    spool.drop("task-big", raw=b" " * (8 * 1024 * 1024))
    spool.drop("task-utf", raw=b'{"summary": "\xff\xfe"}')
    spool.drop("task-dup", raw=b'{"a": 1, "a": 2}')
    spool.drop("task-nan", raw=b'{"a": NaN}')
    spool.drop("task-deep", raw=b"[" * 40 + b"]" * 40)
    spool.drop("task-empty", raw=b"")
    spool.drop("task-list", raw=b"[1, 2]")
    spool.drop("task-schema", valid_doc("task-schema", status="MAYBE"))
    spool.drop("task-mismatch", valid_doc("task-other"))
    spool.drop("task-foreign", valid_doc("task-foreign", collector="zeus"))
    spool.drop("task-self", valid_doc("task-self", executor="anu"))
    spool.drop("task-key", raw=json.dumps(valid_doc("task-key", note=f"x{spool.key}x")).encode())
    spool.drop("x", raw=b"{}", name="task-\nbad.result.json")
    try:
        res = spool.cli("scan", "--once", "--json")
    finally:
        sock.close()
    assert res.returncode == 0, res.stderr
    got = {
        line["task_id"] or Path(line["path"]).name: line["reason"]
        for line in json_lines(res.stdout)
    }
    assert got == {
        "task-link": "NOT_REGULAR_FILE",
        "task-fifo": "NOT_REGULAR_FILE",
        "task-dir": "NOT_REGULAR_FILE",
        "task-sock": "NOT_REGULAR_FILE",
        "task-hard": "NOT_REGULAR_FILE",
        "task-big": "OVERSIZE",
        "task-utf": "ENCODING",
        "task-dup": "INVALID_JSON",
        "task-nan": "INVALID_JSON",
        "task-deep": "INVALID_JSON",
        "task-empty": "INVALID_JSON",
        "task-list": "SCHEMA",
        "task-schema": "SCHEMA",
        "task-mismatch": "TASK_ID_MISMATCH",
        "task-foreign": "FOREIGN_COLLECTOR",
        "task-self": "SELF_COLLECTOR",
        "task-key": "KEY_LITERAL",
        "task-\nbad.result.json": "SCHEMA",
    }
    assert spool.ledger_lines() == []
    assert not list(ev.glob("*.result.json"))
    assert target.read_text().startswith("{")  # the link's target was never moved or touched
    sidecars = spool.quarantined()
    assert len(sidecars) == len(got)
    everything = res.stdout + res.stderr + "".join(json.dumps(s) for s in sidecars)
    assert spool.key not in everything
    assert spool.key not in (spool.events / "p0b_driver_runs.jsonl").read_text()
