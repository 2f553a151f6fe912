"""The fleet run: three daemons, each with its own spool and host id, into one R3 stream.

    .venv/bin/python -m bench.fleet --files 5000 [--nodes 3] [--workdir /var/tmp]

A 3-node nats-server cluster on 127.0.0.1 (bench/natsbroker.py) holds an R3
stream; three ``anu-watchd run`` processes with the nats sink and host ids
h1..h3 each get a burst of ``--files`` results renamed into their events
directory at once (one thread per host). It reports each host's drain rate
(first rename to its last WAKE_BUILT), the total, and what the stream holds:
messages per key, so lost and duplicate counts. On one machine the three
daemons and three brokers share the cores: this measures the fleet's
correctness under load and the cost of R3, not a fleet's real capacity.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import produce, systems
from bench.natsbroker import Broker

HOSTS = ("h1", "h2", "h3")


def run(work: Path, files: int, nodes: int) -> None:
    broker = Broker(work / "broker", size=nodes)
    broker.start()
    daemons = {h: systems.AnuDaemon("nats", broker=broker, host_id=h) for h in HOSTS}
    ids = {h: produce.task_ids(f"fl{h}", files) for h in HOSTS}
    try:
        for h, d in daemons.items():
            d.start(work / h)
            produce.stage(work / h / "staging", ids[h])
        done: dict[str, float] = {}
        t0 = time.monotonic()
        threads = [
            threading.Thread(
                target=produce.burst, args=(work / h / "staging", d.events_dir, ids[h])
            )
            for h, d in daemons.items()
        ]
        for t in threads:
            t.start()
        deadline = t0 + 900
        while len(done) < len(HOSTS) and time.monotonic() < deadline:
            for h, d in daemons.items():
                if h not in done and d.progress() >= files:
                    done[h] = time.monotonic() - t0
            time.sleep(0.02)
        for t in threads:
            t.join()
        total_s = max(done.values()) if len(done) == len(HOSTS) else float("nan")
    finally:
        for d in daemons.values():
            d.stop()
    held = broker.wakes()
    broker.stop()
    for h in HOSTS:
        s = done.get(h)
        rate = f"{files} files in {s:.1f} s, {files / s:,.0f} files/s" if s else "unfinished"
        print(f"{h}: {rate}")
    expected = {t for h in HOSTS for t in ids[h]}
    seen = {t for t, _ in held.wakes}
    print(
        f"fleet: {len(HOSTS) * files} files in {total_s:.1f} s, "
        f"{len(HOSTS) * files / total_s:,.0f} files/s total over {nodes} broker node(s); "
        f"stream: {len(held.wakes)} wake messages, lost {len(expected - seen)}, "
        f"duplicate {held.duplicates}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=5000, help="results per host")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="anu-fleet-", dir=args.workdir))
    run(work, args.files, args.nodes)
    print(f"spools left in {work}")


if __name__ == "__main__":
    main()
