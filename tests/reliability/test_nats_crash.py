"""The daemon SIGKILLed again and again during a burst to JetStream (issue 15, crash).

Re-fires after a crash carry the same idempotency key, and the broker drops
them: a windowed stream by ``Nats-Msg-Id``, a per-key stream by refusing a
second message on the subject (10077). So however the kills fall, the stream
holds exactly one wake message per result, and the ledger one DONE per result
whose schedule id is that message's ``<stream>:<seq>``.

Knobs: ANU_NATS_CRASH_RESULTS (default 2000), ANU_NATS_CRASH_KILLS (8),
ANU_NATS_CRASH_SEED (random; printed so a failure can be replayed).
"""

from __future__ import annotations

import os
import random
import secrets
from collections import Counter
from pathlib import Path

import pytest

from tests.daemonproc import wait_for
from tests.natsserver import NatsServer, add_stream, nats_wake, read_stream
from tests.reliability.harness import (
    LedgerView,
    Produced,
    assert_woken_exactly_once,
    done_markers,
    finish,
    kill9,
    produce,
    start,
    wait_done,
)
from tests.spool import Spool

RESULTS = int(os.environ.get("ANU_NATS_CRASH_RESULTS", "2000"))
KILLS = int(os.environ.get("ANU_NATS_CRASH_KILLS", "8"))


def wake_messages(msgs: list[tuple[str, dict[str, str], bytes]]) -> Counter[str]:
    """How many initial wake messages the stream holds for each idempotency key."""
    return Counter(h["Nats-Msg-Id"] for _s, h, _b in msgs if h.get("Anu-Envelope") == "initial")


def run_crash_loop(spool: Spool, rng: random.Random) -> dict[str, Produced]:
    """Half of each share arrives while the daemon is down, half while it runs; then a kill."""
    produced: dict[str, Produced] = {}
    share = -(-RESULTS // KILLS)

    def more(n: int) -> None:
        for _ in range(n):
            if len(produced) < RESULTS:
                task_id = f"task-n{len(produced):05d}"
                produced[task_id] = produce(spool.events, task_id)

    for _ in range(KILLS):
        more(share // 2)
        d = start(spool)
        d.wait_notify("READY=1")
        more(share - share // 2)
        target = min(done_markers(spool.events) + rng.randint(1, share), len(produced))
        wait_done(spool.events, target, 120, d)
        kill9(d)
    more(RESULTS)
    d = start(spool)
    try:
        d.wait_notify("READY=1")
        wait_done(spool.events, len(produced), 300, d)
        wait_for(lambda: not LedgerView.read(spool.events).in_flight(), 60, "no run in flight")
    finally:
        assert finish(d) == 0
    return produced


@pytest.mark.slow
@pytest.mark.parametrize("per_key", [True, False], ids=["per-key", "windowed"])
async def test_sigkills_during_a_burst_leave_exactly_one_message_per_result(
    tmp_path: Path, per_key: bool
) -> None:
    """RESULTS results, KILLS SIGKILLs mid-burst: one wake message per result in the stream,
    none for anything else, one DONE per result whose schedule id names that message."""
    seed = int(os.environ.get("ANU_NATS_CRASH_SEED") or secrets.randbelow(2**32))
    print(f"nats crash loop: ANU_NATS_CRASH_SEED={seed} results={RESULTS} kills={KILLS}")
    subject = "anu.wake.{host}.{key}" if per_key else "anu.wake.{host}"
    with NatsServer(tmp_path / "nats") as server:
        await add_stream([server.url], per_key=per_key)
        spool = Spool(tmp_path / "spool")
        nats_wake(spool, [server.url], subject=subject, attempts=10, escalate=False)
        produced = run_crash_loop(spool, random.Random(seed))  # noqa: S311 - a replayable schedule
        msgs = await read_stream([server.url])
    counts = wake_messages(msgs)
    keys = {p.key for p in produced.values()}
    assert set(counts) == keys, f"lost {len(keys - set(counts))}, foreign {set(counts) - keys}"
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:5]
    view = assert_woken_exactly_once(spool.events, produced, list(counts))
    seq_of = {
        h["Nats-Msg-Id"]: i + 1
        for i, (_s, h, _b) in enumerate(msgs)
        if h.get("Anu-Envelope") == "initial"
    }
    for entry in view.latest().values():
        assert entry.schedule_id == f"ANU_WAKES:{seq_of[entry.key]}", entry
    claims = Counter(e.key for e in view.entries if e.state.name == "CLAIMED")
    print(f"nats crash loop: {sum(n > 1 for n in claims.values())} keys re-fired after a kill")
    finals = Counter(h["Nats-Msg-Id"] for _s, h, _b in msgs if h.get("Anu-Envelope") == "final")
    assert not finals or max(finals.values()) == 1
