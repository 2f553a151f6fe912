"""Busy-host latency: paced files with a CPU hog on every core, anu-watchd beside its peers.

    .venv/bin/python -m bench.busy [--rate 200] [--seconds 30] [--nice -5] [--cpu-weight 400]
                                   [--quick] [--out FILE] [--keep]

Each system (the daemon's exec sink, its co-process mode, the inotifywait and
poll-loop peers of ``bench/run.py``; with ``--nice N`` the exec sink again
under ``nice -n N``, what ``Nice=`` in its unit does; with ``--cpu-weight W``
the exec sink again in a cpu cgroup of its own with weight W, what
``CPUWeight=W`` does, the hogs staying at the default 100) runs on a fresh
spool: once it is ready, one busy loop per core starts at normal priority,
files are published at ``--rate`` for ``--seconds``, and the hog stops once
the system has drained. Reported per system: rename -> handler start p50 /
p90 / p99, lost, duplicated, the CPU per file of the system's process tree
(handlers included), and the load average before the case (the hog adds one
per core; anything above that is other work on the machine, and the figures
are only as good as the host was quiet). A variant this host cannot run (the
cgroup or a negative nice need root) is skipped with the reason printed.
``bench/run.py`` runs it as one of its steps (10 s, ``--nice -5 --cpu-weight
400``); it prints a markdown table, and the JSON with ``--out``.
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

from bench import render, run
from bench.systems import HANDLER_COPROC, AnuDaemon, Script, Stopped, baselines

PEERS = ("inotifywait", "poll")  # the fastest to react and the one that loses nothing


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

    def cpu_ticks(self) -> int:
        return self.inner.cpu_ticks()  # the system's tree only: the hog is not in it

    def stop(self) -> Stopped:
        if self.hog is not None:
            self.hog.stop()
            self.hog = None
        return self.inner.stop()


def _why_not(daemon: AnuDaemon) -> str | None:
    """Why this host cannot run the daemon so tuned (both take root), or None."""
    if daemon.nice is not None and daemon.nice < 0 and os.geteuid() != 0:
        return "a negative nice needs root"
    return None if daemon.cgroup is None else daemon.cgroup.probe()


def tuned_daemons(
    nice: int | None, cpu_weight: int | None
) -> tuple[list[AnuDaemon], list[dict[str, str]]]:
    """The exec sink under ``Nice=`` and ``CPUWeight=``, where this host allows; and why not."""
    tuned = [] if nice is None else [AnuDaemon("exec", nice=nice)]
    tuned += [] if cpu_weight is None else [AnuDaemon("exec", cpu_weight=cpu_weight)]
    out, skipped = [], []
    for daemon in tuned:
        why = _why_not(daemon)
        if why is None:
            out.append(daemon)
        else:
            skipped.append({"system": daemon.name, "why": why})
    return out, skipped


def systems(
    nice: int | None, cpu_weight: int | None
) -> tuple[list[AnuDaemon | Script], list[dict[str, str]]]:
    out: list[AnuDaemon | Script] = [AnuDaemon("exec")]
    if HANDLER_COPROC is not None:
        out.append(AnuDaemon("exec", process=True))
    tuned, skipped = tuned_daemons(nice, cpu_weight)
    peers = [s for s in baselines() if s.key in PEERS]
    return [*out, *tuned, *peers], skipped


def run_all(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """Every system's case in turn; the document ``--out`` writes and RESULTS.md shows."""
    cores = os.cpu_count() or 1
    files = int(args.rate * seconds)
    wl = run.Workload(
        "busy", f"paced {args.rate:g} files/s, hog on", files, seconds + 60, args.rate
    )
    chosen, skipped = systems(args.nice, args.cpu_weight)
    for skip in skipped:
        print(f"busy: skipped {skip['system']}: {skip['why']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="anu-busy-", dir=args.workdir))
    cases = []
    try:
        for n, inner in enumerate(chosen):
            load = os.getloadavg()
            print(f"busy: {inner.name} (load {load[0]:.2f}) ...", flush=True)
            system = HoggedSystem(inner, cores)
            case, _lat = run.run_case(system, wl, work / f"{n:02d}-{inner.key}", work)  # type: ignore[arg-type]
            case["loadavg_before"] = load
            cases.append(case)
    finally:
        if not args.keep:
            run.remove_tree(work)
    return {
        "rate": args.rate,
        "seconds": seconds,
        "cores": cores,
        "nice": args.nice,
        "cpu_weight": args.cpu_weight,
        "cases": cases,
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--nice", type=int, help="also run the exec sink under nice -n N")
    ap.add_argument(
        "--cpu-weight", type=int, help="also run the exec sink in a cpu cgroup of weight W"
    )
    ap.add_argument("--quick", action="store_true", help="3 s instead of --seconds")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--out", type=Path, help="write the cases as JSON here")
    # bench/run.py deletes its whole workdir at the end (see its note on deletions).
    ap.add_argument("--keep", action="store_true", help="leave the spools in --workdir")
    args = ap.parse_args(argv)
    run.ensure_inotify_tools()
    doc = run_all(args, 3.0 if args.quick else args.seconds)
    print("\n" + "\n".join(render.busy_table(doc)))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
