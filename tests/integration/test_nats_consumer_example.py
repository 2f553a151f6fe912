"""examples/nats_consumer.py stays runnable: a real daemon's wakes, consumed and acked.

The example runs as a subprocess, the way a collector would run it, against a
real nats-server that the daemon (``scan --once``) published to.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

from tests.integration.test_wake import verdicts
from tests.natsserver import NatsServer, add_stream, nats_wake
from tests.spool import REPO, Spool, json_lines

EXAMPLE = REPO / "examples" / "nats_consumer.py"


def run_example(server: NatsServer, key_file: Path) -> list[dict[str, object]]:
    argv = [sys.executable, str(EXAMPLE), "--server", server.url, "--key-file", str(key_file)]
    res = subprocess.run(
        [*argv, "--once", "--idle-s", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return json_lines(res.stdout)


async def test_the_example_consumer_verifies_prints_and_acks_every_wake(tmp_path: Path) -> None:
    """Three wakes and their finals are printed once each; a forged message is refused; a
    second run of the same durable consumer finds nothing left (everything was acked)."""
    import nats

    with NatsServer(tmp_path / "nats") as server:
        await add_stream([server.url], per_key=False)
        spool = Spool(tmp_path / "spool")
        nats_wake(spool, [server.url], escalate=False)
        for i in range(3):
            spool.drop(f"task-{i}")
        res = spool.cli("scan", "--once", "--json")
        assert set(verdicts(res.stdout).values()) == {"WAKE_BUILT"}, res.stderr
        nc = await nats.connect(server.url)
        forged = b'{"task_id": "task-x"}'
        await nc.jetstream().publish(
            "anu.wake.h1", forged, headers={"Anu-Signature": "sha256=" + secrets.token_hex(32)}
        )
        await nc.close()
        lines = run_example(server, spool.key_file)
        again = run_example(server, spool.key_file)
    good = [ln for ln in lines if "error" not in ln]
    assert sorted((ln["task_id"], ln["envelope"]) for ln in good) == sorted(
        (f"task-{i}", kind) for i in range(3) for kind in ("initial", "final")
    )
    assert [ln for ln in lines if "error" in ln] == [
        {"subject": "anu.wake.h1", "error": "bad signature"}
    ]
    assert again == []
    assert spool.key not in json.dumps(lines)
