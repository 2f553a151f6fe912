"""Baseline: a 1-second poll loop (the cron driver, tightened) running the handler per new file.

    python poll_loop.py EVENTS_DIR HANDLER LOG

Every second it lists the directory and runs the handler, one file at a
time, for each result name it has not handled before. Prints ``ready``
after its first listing.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import subprocess
import sys
import time

GLOB = "task-*.result.json"
PERIOD_S = 1.0


def main(events_dir: str, handler: str, log: str) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    seen: set[str] = set()
    ready = False
    while True:
        for name in sorted(os.listdir(events_dir)):
            if name not in seen and fnmatch.fnmatchcase(name, GLOB):
                seen.add(name)
                subprocess.run([handler, log, name], stdout=subprocess.DEVNULL, check=False)
        if not ready:
            print("ready", flush=True)
            ready = True
        time.sleep(PERIOD_S)


if __name__ == "__main__":
    main(*sys.argv[1:4])
