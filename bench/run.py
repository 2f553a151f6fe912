"""anu-watchd against its peers, in one run: ``python bench/run.py [--quick]`` (``make bench``).

    1. disk floor             durable markers, sequential and group commit
    2. idle                   the daemon's RSS and CPU on an empty spool
    3. workloads, interleaved paced 200 files/s, then bursts of 2,000 / 20,000 /
                              100,000; every system runs every workload on a fresh
                              spool, the order rotating so that disk and CPU drift
                              fall on all of them alike; each case's CPU per file
                              is its process tree's, handlers included, from the
                              first file published to the drain
    4. event loop             bench/cpuprof.py --no-profile: the log sink's
                              event-loop CPU per file, 3 rounds of 3,000 files
    5. busy host              bench/busy.py: paced 200 files/s for 10 s with a busy
                              loop per core; the exec sink, its co-process mode, the
                              exec sink under Nice=-5 and under CPUWeight=400, and
                              the inotifywait and poll-loop peers
    6. ledger scale           Ledger.open of 100k- and 1M-line ledgers
    7. disk floor again       the disk drifts; the ratio uses the mean of both
    8. bench/RESULTS.md, bench/results.json, bench/latency_cdf.png

``--quick`` is the smoke run: the same steps on small sizes (about 3 minutes).

Nothing is deleted until the end. ext4 will not reuse an inode freed in the
last few minutes, so right after a mass deletion every file creation near it
scans past the freed inodes: 0.5-1 ms of kernel CPU per create instead of
20 us, measured here (perf: ``recently_deleted`` in ext4's inode allocator).
Deleting a 300,000-file spool between runs would slow the next system's
every marker write, so the spools stay until the run is over. The same
effect from other work on the machine shows in ``create_probe_us``.
Needs inotify-tools (installed here with apt-get if missing) and the
``bench`` extra (watchdog, matplotlib).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attrs

from bench import floor, ledgerscale, machine, produce, render, report
from bench.systems import (
    BENCH,
    REPO,
    AnuDaemon,
    Script,
    all_systems,
    proc_cpu_ticks,
    proc_kib,
    ticks_ms,
)

System = AnuDaemon | Script
# How long a system may go without a new handler start before what is missing counts as
# lost. The daemon gets longer: after a kernel queue overflow its rescan re-checks settled
# files (a marker read each, no evidence line) before it reaches the ones still to do.
QUIET_S = {"anu": 30.0, "baseline": 6.0}
# The busy-host step's unit settings: Nice=-5, and CPUWeight=400, four times a hog's weight.
BUSY_NICE, BUSY_CPU_WEIGHT = -5, 400


@attrs.frozen
class Workload:
    key: str
    title: str
    files: int
    deadline_s: float  # from the first rename; what is not handled by then is "unfinished"
    rate: float | None = None  # files/s; None = a burst
    # Systems given until ``drain_deadline_s`` instead, to be seen handling every file.
    drain: tuple[str, ...] = ()
    drain_deadline_s: float = 0.0

    def deadline_for(self, system_key: str) -> float:
        return self.drain_deadline_s if system_key in self.drain else self.deadline_s


def workloads(quick: bool) -> list[Workload]:
    # The deadlines keep the whole run under 20 minutes: a system slower than
    # files/deadline leaves files unfinished (reported as such, not as lost).
    if quick:
        return [
            Workload("paced", "paced 200 files/s for 3 s", 600, 15.0, 200.0),
            Workload("b200", "burst of 200", 200, 20.0),
            Workload("b2000", "burst of 2,000", 2000, 30.0),
        ]
    return [
        Workload("paced", "paced 200 files/s for 30 s", 6000, 50.0, 200.0),
        Workload("b2000", "burst of 2,000", 2000, 60.0),
        Workload("b20000", "burst of 20,000", 20000, 90.0),
        # anu-watchd's log sink and exec co-process run this burst to its end (~4 minutes
        # each here), so that 0 lost and 0 duplicated are shown for all 100,000 files, not
        # only those handled in 90 s; the per-wake exec sink would need ~6 minutes more.
        Workload(
            "b100000", "burst of 100,000", 100000, 90.0, None, ("anu-log", "anu-coproc"), 360.0
        ),
    ]


# -- setup ------------------------------------------------------------------------------


def ensure_inotify_tools() -> None:
    """inotifywait is a Debian package; install it once, idempotently."""
    if shutil.which("inotifywait"):
        return
    if os.geteuid() != 0:
        sys.exit("bench: inotifywait is missing; run: sudo apt-get install -y inotify-tools")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "inotify-tools"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(install, env=env, check=True)


def remove_tree(path: Path) -> None:
    """Only at the very end: see the note on deletions in the module docstring."""
    # rm is several times faster than shutil.rmtree on 300,000-file directories.
    subprocess.run(["rm", "-rf", "--", str(path)], check=True)


# -- one system on one workload ---------------------------------------------------------


def wait_drained(system: System, wl: Workload, deadline: float) -> str:
    """Until every file was handled, the system went quiet, or the deadline passed."""
    quiet = QUIET_S["anu" if isinstance(system, AnuDaemon) else "baseline"]
    last, changed = system.progress(), time.monotonic()
    while True:
        time.sleep(0.1)
        now = time.monotonic()
        count = system.progress()
        if count != last:
            last, changed = count, now
        if count >= wl.files and now - changed >= 1.0:
            return "drained"
        if now - changed >= quiet:
            return "went quiet"
        if now > deadline:
            return "deadline"


def run_case(
    system: System, wl: Workload, root: Path, staging: Path
) -> tuple[dict[str, Any], list[float]]:
    system.start(root)
    ids = produce.task_ids(wl.key, wl.files)
    pressure = machine.pressure()
    ticks0 = system.cpu_ticks()  # after the start-up: the idle daemon's is not the files'
    t0 = time.monotonic()
    try:
        if wl.rate is None:
            renames = produce.burst(staging, system.events_dir, ids)
        else:
            renames = produce.paced(system.events_dir, ids, wl.rate)
        produce_s = time.monotonic() - t0
        status = wait_drained(system, wl, t0 + wl.deadline_for(system.key))
        cpu_ms = ticks_ms(system.cpu_ticks() - ticks0)
    except BaseException:
        system.stop()  # never leave a watcher running behind a failed run
        raise
    stopped = system.stop()
    metrics, lat = report.case_metrics(ids, renames, stopped.wakes)
    if status == "deadline":
        metrics["unfinished"], metrics["lost"] = metrics["lost"], 0
    metrics["cpu_ms_per_file"] = cpu_ms / metrics["handled"] if metrics["handled"] else math.nan
    if wl.rate is None:
        produce.unstage(system.events_dir, staging, ids)
    case = {
        "system": system.name,
        "system_key": system.key,
        "workload": wl.key,
        "status": status,
        "produce_s": produce_s,
        "peak_rss_kib": stopped.peak_rss_kib,
        "cpu_ms": cpu_ms,
        "pressure_before": pressure,
        "pressure_during": machine.pressure_since(pressure),
        "metrics": metrics,
    }
    return case, lat


def run_workloads(workdir: Path, quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    systems = all_systems()
    cases: list[dict[str, Any]] = []
    latencies: dict[str, dict[str, list[float]]] = {}
    n = 0
    for i, wl in enumerate(workloads(quick)):
        staging = workdir / f"staging-{wl.key}"
        if wl.rate is None:
            produce.stage(staging, produce.task_ids(wl.key, wl.files))
        order = systems[i % len(systems) :] + systems[: i % len(systems)]
        for system in order:
            n += 1
            print(f"bench: [{wl.title}] {system.name} ...", flush=True)
            root = workdir / f"{n:02d}-{system.key}-{wl.key}"
            case, lat = run_case(system, wl, root, staging)
            m = case["metrics"]
            print(
                f"bench:   {case['status']} after {m['span_s']:.1f} s: handled "
                f"{m['handled']}/{m['files']} dup {m['duplicated']} p50 {m['p50_ms']:.1f} ms "
                f"p99 {m['p99_ms']:.1f} ms drain {m['drain_per_s']:.0f}/s "
                f"rss {case['peak_rss_kib'] / 1024:.1f} MiB",
                flush=True,
            )
            cases.append(case)
            latencies.setdefault(wl.key, {})[system.name] = lat
    return cases, latencies


# -- the other measurements -------------------------------------------------------------


def measure_idle(workdir: Path, seconds: float) -> dict[str, Any]:
    """RSS once started on an empty spool, and CPU used while nothing happens."""
    daemon = AnuDaemon("log")
    daemon.start(workdir / "idle")
    time.sleep(1.0)
    ticks0, t0 = proc_cpu_ticks(daemon.proc.pid), time.monotonic()
    time.sleep(seconds)
    ticks = proc_cpu_ticks(daemon.proc.pid) - ticks0
    elapsed = time.monotonic() - t0
    rss = proc_kib(daemon.proc.pid, "VmRSS")
    daemon.stop()
    return {"rss_kib": rss, "cpu_ms": ticks_ms(ticks), "seconds": elapsed}


def measure_ledgers(workdir: Path, sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Cold loads (a full parse, as after a crash), then loads from a clean close's checkpoint."""
    out = []
    for lines in sizes:
        entry = ledgerscale.measure(workdir / f"ledger-{lines}.jsonl", lines, repeats)
        ckpt = entry["checkpoint"]["load_s"]
        print(f"bench: ledger {lines:,} lines: {entry['load_s']:.2f} s, {ckpt:.2f} s", flush=True)
        out.append(entry)
    return out


def measure_event_loop(workdir: Path, files: int, rounds: int) -> dict[str, Any]:
    """The log sink's event-loop CPU per file (bench/cpuprof.py), each round a fresh interpreter."""
    argv = [sys.executable, "-m", "bench.cpuprof", "--no-profile", "--json"]
    argv += ["--files", str(files), "--workdir", str(workdir / "cpuprof")]
    runs = []
    for i in range(rounds):
        done = subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True)
        got = json.loads(done.stdout.splitlines()[-1])
        print(
            f"bench: event loop round {i + 1}: {got['loop_ms_per_file']:.3f} ms/file "
            f"(process {got['process_ms_per_file']:.3f}), load {got['loadavg'][0]:.2f}",
            flush=True,
        )
        runs.append(got)
    loop = [r["loop_ms_per_file"] for r in runs]
    return {"files": files, "rounds": runs, "loop_median_ms": statistics.median(loop)}


def measure_busy(workdir: Path, seconds: float) -> dict[str, Any]:
    """bench/busy.py: paced 200/s with a hog per core; the exec sink as is, niced, weighted."""
    out = workdir / "busy.json"
    argv = [sys.executable, "-m", "bench.busy", "--seconds", f"{seconds:g}", "--keep"]
    argv += ["--nice", str(BUSY_NICE), "--cpu-weight", str(BUSY_CPU_WEIGHT)]
    subprocess.run([*argv, "--workdir", str(workdir), "--out", str(out)], cwd=REPO, check=True)
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def measure_floor(where: Path, n: int) -> dict[str, float]:
    got = floor.measure(where, n)
    print(
        f"bench: disk floor {got.sequential_per_s:.0f}/s sequential, "
        f"{got.group_per_s:.0f}/s group commit",
        flush=True,
    )
    return attrs.asdict(got)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the smoke run: small sizes")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/var/tmp"),
        help="where spools are made (a disk, not tmpfs; default /var/tmp)",
    )
    p.add_argument("--out", type=Path, default=BENCH, help="where RESULTS.md etc. go")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_inotify_tools()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="anu-bench-", dir=args.workdir))
    doc: dict[str, Any] = {"quick": args.quick, "machine": machine.details(workdir)}
    doc["command"] = " ".join(["bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        floor_n = 200 if args.quick else 1000
        doc["machine"]["create_probe_us"] = floor.create_probe(workdir / "probe")
        doc["floor_before"] = measure_floor(workdir / "floor-before", floor_n)
        doc["idle"] = measure_idle(workdir, 3.0 if args.quick else 10.0)
        doc["cases"], latencies = run_workloads(workdir, args.quick)
        doc["event_loop"] = measure_event_loop(workdir, *((500, 1) if args.quick else (3000, 3)))
        doc["busy"] = measure_busy(workdir, 2.0 if args.quick else 10.0)
        # 20,000 lines (6 MB) is about the least a close writes a checkpoint for (4 MiB).
        sizes = [20_000, 100_000] if args.quick else [100_000, 1_000_000]
        doc["ledgers"] = measure_ledgers(workdir, sizes, repeats=3)
        doc["floor_after"] = measure_floor(workdir / "floor-after", floor_n)
    finally:
        remove_tree(workdir)
    doc["machine"]["loadavg_end"] = list(os.getloadavg())
    doc["elapsed_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    panels = render.cdf_panels(doc, latencies, workloads(args.quick))
    report.plot_cdf(panels, args.out / "latency_cdf.png")
    (args.out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "RESULTS.md").write_text(render.markdown(doc, workloads(args.quick)))
    print(f"bench: done in {doc['elapsed_s'] / 60:.1f} min; wrote {args.out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
