"""How to make a batch of projection files durable: the options of docs/durability.md.

    .venv/bin/python -m bench.projsync --batches 100 --batch 32 --rounds 3

Each batch is what the projection writer gets under a burst: ``--batch`` wakes,
each a done marker (~400 bytes) and an envelope file (~1.5 KiB), written
tmp -> write -> rename in one thread, while a second thread appends and
fsyncs a ledger-like log in the same directory (the ledger's group commit
shares the journal). The options, interleaved round by round:

    fsync-each   fsync every file before its rename, one directory fsync (the old tree)
    syncfs       rename without fsync, then one syncfs(2) of the filesystem a batch
    fdatasync    rename without fsync, then one fdatasync pass over the batch's files
                 (still open) and one directory fsync, all in one thread
    none         rename only: durability left to start-up repair (and writeback)

It prints files/s and CPU (user + system, this process) per file, with the
load average beside every figure: the bench host is shared. Spools go under
``--workdir`` and are left in place (a mass deletion slows creation nearby).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

_LIBC = ctypes.CDLL(None, use_errno=True)
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
MARKER = b'{"task_id":"x","verdict":"WAKE_BUILT"}' + b" " * 360 + b"\n"
ENVELOPE = b"{" + b'"k":"v",' * 190 + b'"end":1}\n'


def syncfs(fd: int) -> None:
    if _LIBC.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _write(d: Path, name: str, data: bytes, *, sync: bool, keep: list[int] | None) -> None:
    tmp = d / f".tmp-{name}.{secrets.token_hex(6)}"
    fd = os.open(tmp, _FLAGS, 0o644)
    os.write(fd, data)
    if sync:
        os.fsync(fd)
    os.rename(tmp, d / name)
    if keep is not None:
        keep.append(fd)
    else:
        os.close(fd)


def _dir_fsync(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def batch_fsync_each(d: Path, names: list[str]) -> None:
    for n in names:
        _write(d, n, MARKER if n.endswith(".done") else ENVELOPE, sync=True, keep=None)
    _dir_fsync(d)


def batch_syncfs(d: Path, names: list[str]) -> None:
    for n in names:
        _write(d, n, MARKER if n.endswith(".done") else ENVELOPE, sync=False, keep=None)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def batch_fdatasync(d: Path, names: list[str]) -> None:
    fds: list[int] = []
    for n in names:
        _write(d, n, MARKER if n.endswith(".done") else ENVELOPE, sync=False, keep=fds)
    for fd in fds:
        os.fdatasync(fd)
        os.close(fd)
    _dir_fsync(d)


def batch_none(d: Path, names: list[str]) -> None:
    for n in names:
        _write(d, n, MARKER if n.endswith(".done") else ENVELOPE, sync=False, keep=None)


OPTIONS: dict[str, Callable[[Path, list[str]], None]] = {
    "fsync-each": batch_fsync_each,
    "syncfs": batch_syncfs,
    "fdatasync": batch_fdatasync,
    "none": batch_none,
}


def _ledger_load(d: Path, stop: threading.Event) -> None:
    """A ledger-like group commit beside the batches: a ~300-byte line, fsynced, in a loop."""
    fd = os.open(d / "ledger.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while not stop.is_set():
            os.write(fd, b"x" * 299 + b"\n")
            os.fsync(fd)
    finally:
        os.close(fd)


def one(root: Path, option: str, batches: int, size: int) -> tuple[float, float]:
    d = root / option
    d.mkdir(parents=True)
    stop = threading.Event()
    ledger = threading.Thread(target=_ledger_load, args=(d, stop), daemon=True)
    ledger.start()
    fn = OPTIONS[option]
    cpu0, t0 = time.process_time(), time.monotonic()
    for b in range(batches):
        names = [f"task-{b}-{i}{s}" for i in range(size) for s in (".done", ".env")]
        fn(d, names)
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    stop.set()
    ledger.join()
    files = batches * size * 2
    return files / wall, cpu / files * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--batch", type=int, default=32, help="wakes a batch (two files each)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/work/bench-spool"))
    p.add_argument("--options", default=",".join(OPTIONS))
    a = p.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="projsync-", dir=a.workdir))
    print(f"# {a.batches} batches of {a.batch} wakes (2 files each), spool {root}")
    for r in range(a.rounds):
        for option in a.options.split(","):
            rate, us = one(root / str(r), option, a.batches, a.batch)
            load = os.getloadavg()[0]
            print(
                f"round {r} {option:<11} {rate:>8.0f} files/s  {us:>6.1f} us CPU/file  "
                f"load {load:.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
