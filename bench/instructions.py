"""The event loop's instructions per file, counted by callgrind: a cut judged without noise.

    .venv/bin/python -m bench.instructions [--small 300] [--large 900] [--level info]

Timing on a shared 2-core VM swings 10% between rounds, more than most single
cuts are worth. callgrind counts the user-space instructions each thread
executes, which other tenants do not change: this runs ``bench.cpuprof``'s
pipeline (log sink, 32 runs in flight, no intake) under
``valgrind --tool=callgrind --separate-threads=yes`` twice, on ``--small``
and ``--large`` files, and prints the main thread's count per file from the
difference (start-up and imports cancel out). Repeated runs agree within
~1-2%; group-commit batch sizes depend on thread timing, which is the rest.
Kernel time (system calls) is not in it: count those with ``strace -c``.
About a minute; needs valgrind (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_TOTALS = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def main_thread_instructions(files: int, level: str, workdir: Path) -> int:
    """The main (event-loop) thread's instruction count for one cpuprof run of ``files``."""
    with tempfile.TemporaryDirectory(prefix="anu-instr-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.cpuprof",
            "--files",
            str(files),
            "--no-profile",
            "--level",
            level,
            "--workdir",
            str(workdir),
        ]
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        # callgrind writes one file per thread: <out>-01 is the first, the event loop's.
        found = _TOTALS.search((Path(tmp) / "callgrind.out-01").read_bytes())
        if found is None:
            raise SystemExit("bench.instructions: no totals in callgrind's output")
        return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=300)
    ap.add_argument("--large", type=int, default=900)
    ap.add_argument("--level", default="info", help="log level (warning: no per-file lines)")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    a = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("bench.instructions: valgrind is missing (apt-get install valgrind)")
    small = main_thread_instructions(a.small, a.level, a.workdir)
    large = main_thread_instructions(a.large, a.level, a.workdir)
    per_file = (large - small) / (a.large - a.small)
    print(f"event-loop thread: {per_file:,.0f} instructions a file ({a.small} vs {a.large} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
