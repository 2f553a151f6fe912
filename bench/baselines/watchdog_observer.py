"""Baseline: a Python watchdog observer that runs the handler once per result file.

    python watchdog_observer.py EVENTS_DIR HANDLER LOG

What a user writes from watchdog's quick-start: an inotify observer and an
event handler that runs a command for each new ``task-*.result.json``
(renamed into place: a move within the directory, or a creation when it
comes from another one).
Prints ``ready`` once the observer is watching.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import subprocess
import sys
import threading

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

GLOB = "task-*.result.json"


class RunHandler(FileSystemEventHandler):
    def __init__(self, handler: str, log: str) -> None:
        self.handler = handler
        self.log = log

    def _maybe_run(self, path: str | bytes) -> None:
        name = os.path.basename(os.fsdecode(path))
        if fnmatch.fnmatchcase(name, GLOB):
            subprocess.run([self.handler, self.log, name], stdout=subprocess.DEVNULL, check=False)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._maybe_run(event.dest_path)

    def on_created(self, event: FileSystemEvent) -> None:
        # A file renamed in from another directory arrives as a creation.
        self._maybe_run(event.src_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._maybe_run(event.src_path)


def main(events_dir: str, handler: str, log: str) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    observer = Observer()
    observer.schedule(RunHandler(handler, log), events_dir, recursive=False)
    observer.start()
    print("ready", flush=True)
    stop.wait()
    observer.stop()
    observer.join(5)


if __name__ == "__main__":
    main(*sys.argv[1:4])
