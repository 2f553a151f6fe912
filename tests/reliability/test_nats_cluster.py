"""A fleet on a real 3-node JetStream cluster, a broker node killed mid-burst (issue 15).

Three ``nats-server`` processes routed on loopback hold an R3 stream. Three
daemons, each with its own spool and ``host_id``, wake PER_HOST results
each while the node leading the stream is SIGKILLed and restarted in the
middle of the burst. Every result must end WAKE_BUILT with exactly one
message in the stream (no loss, no duplicate), and a durable pull consumer,
the collector's side (examples/nats_consumer.py), must read them all.

Knob: ANU_NATS_CLUSTER_RESULTS (results per host, default 5000).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from examples.nats_consumer import consume
from tests.daemonproc import DaemonProc, wait_for
from tests.natsserver import NatsCluster, NatsServer, add_stream, nats_wake, read_stream
from tests.reliability.harness import Produced, done_markers, finish, produce, start, wait_done
from tests.spool import Spool

PER_HOST = int(os.environ.get("ANU_NATS_CLUSTER_RESULTS", "5000"))
HOSTS = ("h1", "h2", "h3")


class Host:
    """One fleet host: a spool, a daemon, and the results its worker wrote."""

    def __init__(self, root: Path, host_id: str, urls: list[str]) -> None:
        self.host_id = host_id
        self.spool = Spool(root / host_id)
        nats_wake(
            self.spool, urls, host_id=host_id, attempts=20, timeout_s=2.0, escalate=False
        )
        self.produced: dict[str, Produced] = {}
        self.daemon: DaemonProc | None = None

    def produce_all(self) -> None:
        for i in range(PER_HOST):
            task_id = f"task-{self.host_id}-{i:05d}"
            self.produced[task_id] = produce(self.spool.events, task_id)

    @property
    def done(self) -> int:
        return done_markers(self.spool.events)


async def stream_leader(urls: list[str]) -> str:
    import nats

    nc = await nats.connect(urls)
    try:
        info = await nc.jsm().stream_info("ANU_WAKES")
        assert info.cluster is not None and info.cluster.leader
        return str(info.cluster.leader)
    finally:
        await nc.close()


def kill_and_restart_mid_burst(hosts: list[Host], node: NatsServer, total: int) -> dict[str, Any]:
    """SIGKILL ``node`` once a third of the wakes are done; restart it at two thirds."""
    wait_for(lambda: sum(h.done for h in hosts) >= total // 3, 300, "a third of the wakes")
    node.kill()
    killed_at = sum(h.done for h in hosts)
    t0 = time.monotonic()
    wait_for(lambda: sum(h.done for h in hosts) >= 2 * total // 3, 300, "two thirds")
    node.start()
    return {"killed_at": killed_at, "down_s": round(time.monotonic() - t0, 2)}


async def read_all_with_a_durable_consumer(urls: list[str], key: dict[str, bytes]) -> Counter[str]:
    """The collector: every initial wake, verified by its host's key, acked."""
    import nats

    got: Counter[str] = Counter()

    def handle(line: dict[str, Any]) -> None:
        assert "error" not in line, line
        if line["envelope"] == "initial":
            got[str(line["idempotency_key"])] += 1

    nc = await nats.connect(urls)
    try:
        for host_id, secret in key.items():
            await consume(
                nc,
                key=secret,
                stream="ANU_WAKES",
                durable=f"collector-{host_id}",
                filter_subject=f"anu.wake.{host_id}",
                handle=handle,
                batch=1000,
                idle_s=5.0,
                once=True,
            )
    finally:
        await nc.close()
    return got


@pytest.mark.slow
async def test_three_daemons_and_a_node_killed_mid_burst_give_one_message_per_result(
    tmp_path: Path,
) -> None:
    """3 x PER_HOST results over an R3 stream while its leader node is killed and restarted:
    every result WAKE_BUILT, one message each in the stream, none lost, none duplicated, and a
    durable consumer reads them all."""
    with NatsCluster(tmp_path / "cluster") as cluster:
        await add_stream(cluster.urls, per_key=False, replicas=3)
        leader = await stream_leader(cluster.urls)
        node = next(n for n in cluster.nodes if n.name == leader)
        hosts = [Host(tmp_path / "hosts", h, cluster.urls) for h in HOSTS]
        for h in hosts:
            h.daemon = start(h.spool)
        for h in hosts:
            assert h.daemon is not None
            h.daemon.wait_notify("READY=1")
        t0 = time.monotonic()
        producers = [threading.Thread(target=h.produce_all) for h in hosts]
        for t in producers:
            t.start()
        fault = kill_and_restart_mid_burst(hosts, node, len(hosts) * PER_HOST)
        for t in producers:
            t.join(300)
        for h in hosts:
            wait_done(h.spool.events, PER_HOST, 600, h.daemon)
        elapsed = time.monotonic() - t0
        for h in hosts:
            assert h.daemon is not None and finish(h.daemon) == 0
        msgs = await read_stream(cluster.urls)
        keys = {h.host_id: h.spool.key.encode() for h in hosts}
        consumed = await read_all_with_a_durable_consumer(cluster.urls, keys)
    produced = {p.key: h.host_id for h in hosts for p in h.produced.values()}
    initial = Counter(h["Nats-Msg-Id"] for _s, h, _b in msgs if h["Anu-Envelope"] == "initial")
    assert len(produced) == len(hosts) * PER_HOST
    assert set(initial) == set(produced), f"lost {len(set(produced) - set(initial))}"
    assert max(initial.values()) == 1, "a result has two messages in the stream"
    assert set(consumed) == set(produced) and max(consumed.values()) == 1
    for h in hosts:
        verdicts = Counter(e["verdict"] for e in h.spool.evidence())
        assert verdicts["WAKE_BUILT"] == PER_HOST and not verdicts["FIRE_FAILED"], verdicts
        assert {e["host_id"] for e in h.spool.evidence()} == {h.host_id}
    print(
        f"nats cluster: {len(produced)} results in {elapsed:.1f}s "
        f"({len(produced) / elapsed:.0f}/s over 3 hosts); leader {leader} killed {fault}"
    )
