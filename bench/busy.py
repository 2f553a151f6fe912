"""Paced 200 files/s on a busy host: a CPU hog on every core, the daemon beside the peers.

    .venv/bin/python -m bench.busy [--seconds 10] [--hogs 2] [--systems anu-exec,inotifywait,...]

For each system in turn (interleaved order per round), ``--hogs`` plain busy
loops at normal priority (``python -c 'while True: pass'``, one per core by
default) run for the whole case, and ``--seconds`` x 200 results are published
at 200 files/s; each system runs the same compiled handler per file
(``bench/handler.c``). It prints rename -> handler start p50 / p90 / p99,
handled / lost / duplicated, and the load average before each case. Not part
of ``make bench``: a busy host is the point, so its figures vary by design.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import Workload, run_case
from bench.systems import AnuDaemon, Script, baselines

HOG = "while True: pass"


def systems(keys: list[str]) -> list[AnuDaemon | Script]:
    every: list[AnuDaemon | Script] = [AnuDaemon("exec"), AnuDaemon("log"), *baselines()]
    chosen = [s for s in every if s.key in keys]
    missing = set(keys) - {s.key for s in chosen}
    if missing:
        raise SystemExit(
            f"busy: unknown systems {sorted(missing)}; known: {[s.key for s in every]}"
        )
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--systems", default="anu-exec,inotifywait,poll")
    ap.add_argument("--workdir", type=Path, default=Path("/work/bench-spool"))
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="busy-", dir=a.workdir))
    files = int(a.seconds * 200)
    wl = Workload(
        "busy",
        f"paced 200 files/s for {a.seconds:g} s, {a.hogs} hogs",
        files,
        a.seconds + 30,
        200.0,
    )
    chosen = systems(a.systems.split(","))
    for r in range(a.rounds):
        order = chosen[r % len(chosen) :] + chosen[: r % len(chosen)]
        for system in order:
            load = os.getloadavg()[0]
            hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(a.hogs)]
            try:
                case, _ = run_case(system, wl, work / f"{r}-{system.key}", work / "staging")
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
            m = case["metrics"]
            print(
                f"round {r} {system.name:<36} p50 {m['p50_ms']:7.1f}  p90 {m['p90_ms']:7.1f}  "
                f"p99 {m['p99_ms']:7.1f} ms  handled {m['handled']}/{m['files']} lost {m['lost']} "
                f"dup {m['duplicated']}  load before {load:.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
