"""A quick A/B of the daemon alone: one burst, drain rate and CPU per file.

    .venv/bin/python -m bench.ab --sink log --files 2000 --rounds 3 [--concurrency N]
    .venv/bin/python -m bench.ab --sink exec --paced 200 --rounds 3
    .venv/bin/python -m bench.ab --sink nats --files 20000 --rounds 3   # a local nats-server
    .venv/bin/python -m bench.ab --sink exec --process --files 20000   # co-process handlers
    .venv/bin/python -m bench.ab --sink log --files 5000 --rounds 6 --metrics-ab

Not part of ``make bench``: it is the loop used while changing the daemon,
so that a before and an after can be interleaved on the same disk and CPU
noise. Each round is a fresh spool under ``--workdir`` (left in place: a
mass deletion slows file creation nearby, see ``bench/run.py``). It reports, per round, files/s
from the first rename to the last wake, the daemon's CPU (user +
system, all threads, from /proc) per file, and the handlers' CPU per file
(the exec sink's: reaped per-wake commands, or the co-processes), with the
load average next to it: the machine may be shared. ``--paced`` reports the
latency percentiles and the same two CPU figures, over the paced 10 s.

``--metrics-ab`` alternates rounds with metrics off and on (``[metrics]`` with
both ``listen`` on 127.0.0.1 and a ``textfile``, and a scraper fetching
``/metrics`` every ``--scrape-every`` seconds, 1 by default: 15 times more often
than a common Prometheus interval, so the figure is an upper bound), and
prints each round's host load average beside it: the host may be shared.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attrs

from bench import floor, produce, systems

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def one_round(
    root: Path,
    sink: str,
    n: int,
    concurrency: int | None,
    process: bool = False,
    extra: str = "",
) -> tuple[float, float, float]:
    daemon = systems.AnuDaemon(sink, concurrency=concurrency, process=process, extra=extra)
    daemon.start(root)
    staging = root / "staging"
    ids = produce.task_ids("ab", n)
    produce.stage(staging, ids)
    cpu0 = systems.proc_cpu_ticks(daemon.proc.pid)
    handler0 = daemon.handler_cpu_ticks()
    t0 = time.monotonic()
    produce.burst(staging, daemon.events_dir, ids)
    deadline = t0 + 600
    while daemon.progress() < n:
        if time.monotonic() > deadline or daemon.proc.poll() is not None:
            daemon.stop()
            raise SystemExit(f"ab: {daemon.progress()} of {n} handled by the deadline")
        time.sleep(0.02)
    wall = time.monotonic() - t0
    cpu = (systems.proc_cpu_ticks(daemon.proc.pid) - cpu0) * TICK_S
    handler = (daemon.handler_cpu_ticks() - handler0) * TICK_S
    stopped = daemon.stop()
    if len(stopped.wakes) != n or len({t for t, _ in stopped.wakes}) != n:
        raise SystemExit(f"ab: {len(stopped.wakes)} wakes for {n} files")
    # The nats sink's wakes are the stream's messages: exactly n, one per key, or the row fails.
    return n / wall, cpu / n * 1000.0, handler / n * 1000.0


@attrs.frozen
class Paced:
    p50: float
    p90: float
    p99: float
    cpu_ms: float  # the daemon's CPU a file, its own threads and the kernel's work for them
    handler_ms: float  # the handlers' CPU a file (exec sink; co-processes included)


def paced_round(
    root: Path, sink: str, rate: float, seconds: float, concurrency: int | None, process: bool
) -> Paced:
    """Publish at ``rate`` files/s: rename -> wake-start latency percentiles, CPU a file."""
    daemon = systems.AnuDaemon(sink, concurrency=concurrency, process=process)
    daemon.start(root)
    ids = produce.task_ids("pc", int(rate * seconds))
    cpu0, handler0 = systems.proc_cpu_ticks(daemon.proc.pid), daemon.handler_cpu_ticks()
    renamed = dict(zip(ids, produce.paced(daemon.events_dir, ids, rate), strict=True))
    deadline = time.monotonic() + 120
    while daemon.progress() < len(ids) and time.monotonic() < deadline:
        time.sleep(0.02)
    cpu = (systems.proc_cpu_ticks(daemon.proc.pid) - cpu0) * TICK_S
    handler = (daemon.handler_cpu_ticks() - handler0) * TICK_S
    lat = sorted((ns - renamed[t]) / 1e6 for t, ns in daemon.stop().wakes if t in renamed)
    if len(lat) != len(ids):
        raise SystemExit(f"ab: {len(lat)} wakes for {len(ids)} files")
    p50, p90, p99 = (lat[min(len(lat) - 1, int(q * len(lat)))] for q in (0.5, 0.9, 0.99))
    n = len(ids)
    return Paced(p50, p90, p99, cpu / n * 1000.0, handler / n * 1000.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def metrics_round(
    root: Path, sink: str, n: int, concurrency: int | None, every_s: float = 1.0
) -> tuple[float, float, float]:
    """One burst with both exports on and a scraper every ``every_s`` seconds."""
    port = _free_port()
    extra = f'[metrics]\nlisten = "127.0.0.1:{port}"\ntextfile = "{root / "anu.prom"}"\n'
    stop, scrapes = threading.Event(), [0]

    def scrape() -> None:
        while not stop.wait(every_s):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    r.read()
                scrapes[0] += 1
            except OSError:
                pass

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        return one_round(root, sink, n, concurrency, extra=extra)
    finally:
        stop.set()
        scraper.join()


def metrics_ab(work: Path, args: argparse.Namespace) -> None:
    """Interleaved rounds, off then on; the medians and the load beside every figure."""
    arms: dict[str, list[float]] = {"off": [], "on": []}
    cpus: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(args.rounds):
        for arm in ("off", "on"):
            load0 = os.getloadavg()[0]
            root, n, c = work / f"r{i}-{arm}", args.files, args.concurrency
            if arm == "on":
                rate, cpu_ms, _ = metrics_round(root, args.sink, n, c, args.scrape_every)
            else:
                rate, cpu_ms, _ = one_round(root, args.sink, n, c)
            arms[arm].append(rate)
            cpus[arm].append(cpu_ms)
            print(
                f"round {i} metrics {arm:>3}: {rate:,.0f} files/s, {cpu_ms:.3f} ms CPU/file, "
                f"load {load0:.2f} -> {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    off, on = statistics.median(arms["off"]), statistics.median(arms["on"])
    print(f"median off {off:,.0f} files/s, on {on:,.0f} files/s: cost {(1 - on / off) * 100:+.1f}%")
    # On a shared host the wall clock is mostly the neighbours; CPU per file is the daemon's own.
    c_off, c_on = statistics.median(cpus["off"]), statistics.median(cpus["on"])
    cost = (c_on / c_off - 1) * 100
    print(f"median CPU/file off {c_off:.3f} ms, on {c_on:.3f} ms: cost {cost:+.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sink", default="log", choices=["log", "exec", "nats"])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int)
    ap.add_argument("--process", action="store_true", help="exec sink: co-process handlers")
    ap.add_argument("--paced", type=float, help="files/s for 10 s instead of a burst")
    ap.add_argument("--metrics-ab", action="store_true", help="rounds with metrics off vs on")
    ap.add_argument("--scrape-every", type=float, default=1.0, help="--metrics-ab: seconds")
    ap.add_argument(
        "--workdir", default="/var/tmp", help="a part of the disk with no recent mass deletion"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="anu-ab-", dir=args.workdir))
    # ~20 us on a quiet ext4; far more right after a mass deletion nearby (bench/run.py).
    print(f"empty-file create: {floor.create_probe(work / 'probe'):.0f} us")
    if args.metrics_ab:
        metrics_ab(work, args)
        print(f"spools left in {work}; remove them when done comparing")
        return
    name = f"{args.sink}{' co-process' if args.process else ''}"
    for i in range(args.rounds):
        load = "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
        if args.paced:
            r = paced_round(
                work / f"r{i}", args.sink, args.paced, 10.0, args.concurrency, args.process
            )
            print(
                f"{name} {args.paced:.0f}/s: p50 {r.p50:.1f} p90 {r.p90:.1f} p99 {r.p99:.1f} ms, "
                f"{r.cpu_ms:.2f} ms daemon CPU/file, {r.handler_ms:.2f} ms handler CPU/file",
                load,
            )
            continue
        rate, cpu_ms, handler_ms = one_round(
            work / f"r{i}", args.sink, args.files, args.concurrency, args.process
        )
        print(
            f"{name} {args.files}: {rate:,.0f} files/s, {cpu_ms:.2f} ms daemon CPU/file, "
            f"{handler_ms:.2f} ms handler CPU/file ({load} before the round)"
        )
    # Not deleted here: a mass deletion slows the next run's file creations nearby.
    print(f"spools left in {work}; remove them when done comparing")


if __name__ == "__main__":
    main()
