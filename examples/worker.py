#!/usr/bin/env python3
"""A worker finishing a task in Python: one durable result file through write_result.

``write_result`` (``anu_watchd.producer``; not yet re-exported by
``anu_watchd/__init__.py``) checks the document against the same rules as the
daemon, then writes ``task-<id>.result.json`` the way the daemon expects it:
tmp in the same directory, fsync, rename, fsync the directory. Its failures:

* ``UsageError``: the daemon would quarantine this document; nothing written.
* ``NotWrittenError``: nothing was left behind; fix the cause and try again.
* ``OutcomeUnknownError``: the file is in place, but only the directory fsync
  failed, so a crash could still undo it. Write the *same* document again:
  the same bytes are the same wake, never a second one.

    python3 examples/worker.py --events-dir /srv/anu/memory/events \\
        --task-id task-7 --status DONE --executor dev1 --summary "built and tested"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anu_watchd.errors import NotWrittenError, OutcomeUnknownError, UsageError
from anu_watchd.producer import result_document, write_result

ATTEMPTS = 3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events-dir", type=Path, required=True)
    p.add_argument("--task-id", required=True)
    p.add_argument("--status", required=True, choices=("DONE", "FAILED", "BLOCKED", "PARTIAL"))
    p.add_argument("--executor", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--collector", default="anu")
    p.add_argument("--report-path")
    p.add_argument("--commit")
    args = p.parse_args()
    # Built once, finished_at included: every retry below writes the same bytes.
    doc = result_document(
        task_id=args.task_id,
        status=args.status,
        executor=args.executor,
        summary=args.summary,
        collector=args.collector,
        report_path=args.report_path,
        commit=args.commit,
    )
    for _ in range(ATTEMPTS):
        try:
            print(write_result(args.events_dir, doc))
            return 0
        except UsageError as exc:
            print(f"worker: not written: {exc}", file=sys.stderr)
            return 64
        except NotWrittenError as exc:
            print(f"worker: not written: {exc}", file=sys.stderr)
            return 70
        except OutcomeUnknownError as exc:
            print(f"worker: outcome unknown, writing the same bytes again: {exc}", file=sys.stderr)
    return 75


if __name__ == "__main__":
    raise SystemExit(main())
