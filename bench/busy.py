"""Busy-host latency: paced files with a CPU hog on every core, anu-watchd beside its peers.

    .venv/bin/python -m bench.busy [--rate 200] [--seconds 30] [--nice -5] [--quick]

Each system (the daemon's exec sink, its co-process mode, the baselines of
``bench/run.py``; with ``--nice N`` the daemon's exec sink again under
``nice -n N``, what ``Nice=`` in its unit would do) runs on a fresh spool:
once it is ready, one busy loop per core starts at normal priority, files are
published at ``--rate`` for ``--seconds``, and the hog stops once the system
has drained. Reported per system: rename -> handler start p50 / p90 / p99,
lost, duplicated, and the load average before the case (the hog adds one per
core; anything above that is other work on the machine, and the figures are
only as good as the host was quiet). ``systemd``'s ``CPUWeight=`` needs a
cgroup and is not measured here; ``Nice=`` is the same lever for one process.
Not part of ``make bench``; prints a markdown table, and the JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import run
from bench.report import ms
from bench.systems import HANDLER_COPROC, AnuDaemon, Script, baselines


class Hog:
    """One busy loop per core at normal priority, as a host's own work would be."""

    def __init__(self, cores: int) -> None:
        loop = "while True:\n    pass\n"
        self.procs = [
            subprocess.Popen([sys.executable, "-c", loop], start_new_session=True)
            for _ in range(cores)
        ]

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


class HoggedSystem:
    """A system whose case runs with the hog on: started once the system is ready."""

    def __init__(self, inner: AnuDaemon | Script, cores: int) -> None:
        self.inner = inner
        self.cores = cores
        self.name, self.key = inner.name, inner.key
        self.hog: Hog | None = None

    def start(self, root: Path) -> None:
        self.inner.start(root)
        self.events_dir = self.inner.events_dir
        self.hog = Hog(self.cores)

    def progress(self) -> int:
        return self.inner.progress()

    def stop(self) -> Any:
        if self.hog is not None:
            self.hog.stop()
            self.hog = None
        return self.inner.stop()


def systems(nice: int | None) -> list[AnuDaemon | Script]:
    out: list[AnuDaemon | Script] = [AnuDaemon("exec")]
    if HANDLER_COPROC is not None:
        out.append(AnuDaemon("exec", process=True))
    if nice is not None:
        out.append(AnuDaemon("exec", nice=nice))
    return [*out, *baselines()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--nice", type=int, help="also run the exec sink under nice -n N")
    ap.add_argument("--quick", action="store_true", help="3 s instead of --seconds")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--out", type=Path, help="write the cases as JSON here")
    args = ap.parse_args(argv)
    run.ensure_inotify_tools()
    seconds = 3.0 if args.quick else args.seconds
    files = int(args.rate * seconds)
    wl = run.Workload(
        "busy", f"paced {args.rate:g} files/s, hog on", files, seconds + 60, args.rate
    )
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="anu-busy-", dir=args.workdir))
    cases = []
    try:
        for n, inner in enumerate(systems(args.nice)):
            load = os.getloadavg()
            print(f"busy: {inner.name} (load {load[0]:.2f}) ...", flush=True)
            system = HoggedSystem(inner, cores)
            case, _lat = run.run_case(system, wl, work / f"{n:02d}-{inner.key}", work)  # type: ignore[arg-type]
            case["loadavg_before"] = load
            cases.append(case)
    finally:
        run.remove_tree(work)
    print(
        f"\n| system ({files} files at {args.rate:g}/s, {cores} busy loops) "
        "| lost | dup | p50 | p90 | p99 ms | load before |"
    )
    print("|---|---|---|---|---|---|---|")
    for c in cases:
        m = c["metrics"]
        print(
            f"| {c['system']} | {m['lost'] + m['unfinished']} | {m['duplicated']} "
            f"| {ms(m['p50_ms'])} | {ms(m['p90_ms'])} | {ms(m['p99_ms'])} "
            f"| {c['loadavg_before'][0]:.2f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(cases, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
