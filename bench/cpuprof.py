"""Where the event loop's CPU goes per file: the pipeline in process, under cProfile.

    .venv/bin/python -m bench.cpuprof --files 2000 [--top 30] [--no-profile] [--json]

A fresh spool under ``--workdir`` with ``--files`` results already in place,
the log sink, the JSON log to a file (as to journald), and every result run
through the real pipeline 32 at a time (``reconcile.run_all``, what a rescan
does) on one event loop. It prints the process CPU (user + system, every
thread) and the event-loop thread's own CPU per file, with the load average,
then the functions with the most own time (``--no-profile`` for the figures
without cProfile's overhead; ``--json``: those figures as one JSON object,
as ``bench/run.py`` reads them). Intake (inotify) is not in it: ``bench.ab``
measures the whole daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anu_watchd import logs, reconcile
from anu_watchd.config import load_config
from anu_watchd.runtime import open_pipeline
from anu_watchd.secret import load_key
from bench import produce, systems


def _spool(root: Path, n: int) -> tuple[Path, list[Path]]:
    daemon = systems.AnuDaemon("log")
    events = root / "memory" / "events"
    events.mkdir(parents=True)
    (root / "memory" / "state").mkdir()
    (root / "memory" / "state" / "p0b_driver_enabled").write_text("true\n")
    daemon.handler_log = root / "handler.log"
    config = daemon._write_config(root)
    paths = []
    for task_id in produce.task_ids("cpu", n):
        path = events / f"{task_id}.result.json"
        path.write_bytes(produce.result_bytes(task_id))
        paths.append(path)
    return config, paths


async def _run(config_path: Path, paths: list[Path]) -> float:
    config = load_config(config_path)
    key = load_key(config.key.file, root=config.root)
    async with open_pipeline(config, key) as pipeline:
        t0 = time.thread_time()
        await reconcile.run_all(pipeline, paths, concurrency=32, scan=False)
        return time.thread_time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--level", default="info", help="log level (warning: no per-file lines)")
    ap.add_argument("--workdir", type=Path, default=Path("/work/bench-spool"))
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="cpuprof-", dir=a.workdir))
    config, paths = _spool(root, a.files)
    log = open(root / "daemon.log", "w")  # noqa: SIM115 - open for the whole run
    cfg = load_config(config)
    logs.configure(level=a.level, fmt="json", key=load_key(cfg.key.file, root=cfg.root), stream=log)
    prof = None if a.no_profile else cProfile.Profile()
    cpu0, t0 = os.times(), time.monotonic()
    if prof is not None:
        prof.enable()
    loop_cpu = asyncio.run(_run(config, paths))
    if prof is not None:
        prof.disable()
    cpu1, wall = os.times(), time.monotonic() - t0
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    n = a.files
    figures = {
        "files": n,
        "files_per_s": n / wall,
        "process_ms_per_file": cpu / n * 1000,
        "loop_ms_per_file": loop_cpu / n * 1000,
        "loadavg": os.getloadavg(),
    }
    if a.json:
        print(json.dumps(figures))
    else:
        print(
            f"{n} files: {figures['files_per_s']:.0f} files/s, process CPU "
            f"{figures['process_ms_per_file']:.3f} ms/file, event-loop thread "
            f"{figures['loop_ms_per_file']:.3f} ms/file, load {figures['loadavg'][0]:.2f}"
            + ("" if prof is None else " (under cProfile)")
        )
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(a.top)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
