"""Shared tools of the reliability campaign (issue 6): produce, wake, fail, inspect.

- ``write_lean_sink`` / ``sink_keys``: a recording exec sink in POSIX sh. The Python
  recorder of tests/sinkhelpers.py costs ~47 ms of interpreter start-up per wake on these
  machines and re-reads its whole record on every call, so 2,000 wakes would take minutes;
  this one records the same fact (the idempotency key of every wake) in ~1 ms.
- ``produce``: results written the way a worker writes them, with ``write_result`` (the
  helper behind ``anu-watchd emit``), remembered with their sha256 and idempotency key.
- ``LedgerView``: the ledger parsed strictly, line by line, with its latest states.
- ``RecordingSink`` and ``life``: the pipeline in process, as a one-shot opens it, with
  an in-memory sink that remembers every key.
- ``FsyncFault``: the fault, injected at the one fsync seam (``anu_watchd.fsio.fsync``);
  it can also model what a crash after the failure keeps (``crash``).
- ``tree``: a snapshot of a directory tree, to prove that nothing more was written.
- ``exec_spool``, ``start``, ``kill9``, ``finish``: the real daemon, restarted many times.
- ``tmpfs``: a real small filesystem, skipped only where the kernel refuses the mount.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shlex
import signal
import stat
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from anu_watchd import fsio, reconcile
from anu_watchd.config import load_config
from anu_watchd.model import FourTuple, LedgerEntry, LedgerState
from anu_watchd.producer import encode_result, write_result
from anu_watchd.runtime import open_pipeline
from anu_watchd.secret import load_key
from anu_watchd.spool import TaskFiles, list_results
from tests.daemonproc import DaemonProc, wait_for
from tests.spool import Spool, valid_doc

LEDGER = "callback_4tuple_index.jsonl"
EVIDENCE = "p0b_driver_runs.jsonl"
SINK_RECORD = "wakes.log"

# One wake = one line, "<idempotency key> <pid>", appended with one write(2) to an
# O_APPEND file (shorter than PIPE_BUF), so concurrent wakes never interleave.
_REAL_SYNCFS = fsio.syncfs  # before any test patches the seam
_LEAN_SINK = """#!/bin/sh
read -r envelope || true
printf '%s %s\\n' "$ANU_WATCHD_IDEMPOTENCY_KEY" "$$" >> {record}
printf '{{"schedule_id":"S-%s"}}\\n' "$$"
"""


# -- the sink ---------------------------------------------------------------------


def write_lean_sink(directory: Path) -> list[str]:
    """Write the recording sh sink into ``directory``; return its argv."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "lean_sink.sh"
    script.write_text(_LEAN_SINK.format(record=shlex.quote(str(directory / SINK_RECORD))))
    script.chmod(0o755)
    return ["/bin/sh", str(script)]


def sink_keys(directory: Path) -> list[str]:
    """The idempotency key of every wake the sink in ``directory`` saw, oldest first."""
    path = directory / SINK_RECORD
    if not path.exists():
        return []
    return [line.split(" ", 1)[0] for line in path.read_text().splitlines() if line]


def exec_spool(root: Path, sink_dir: Path, *, concurrency: int = 4, extra: str = "") -> Spool:
    """A spool whose wake is the lean recording sink, activated and enabled."""
    spool = Spool(root, sink="exec")
    argv = json.dumps(write_lean_sink(sink_dir))
    spool.write_config(
        sink="exec",
        extra=extra,
        wake_extra=f"concurrency = {concurrency}\ntimeout_s = 20.0\n[wake.exec]\nargv = {argv}\n",
    )
    return spool


# -- results --------------------------------------------------------------------------


@attrs.frozen
class Produced:
    """A result as its worker wrote it: what the daemon must wake, once, unaltered."""

    task_id: str
    sha256: str

    @property
    def key(self) -> str:
        return FourTuple(self.task_id, self.sha256, "anu").idempotency_key


def produce(events_dir: Path, task_id: str) -> Produced:
    """Write one valid result with the producer helper (``emit``'s code path)."""
    doc = valid_doc(task_id, summary=f"result of {task_id} " + "x" * 200)
    write_result(events_dir, doc)
    return Produced(task_id, hashlib.sha256(encode_result(doc)).hexdigest())


def file_sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


# -- the ledger -----------------------------------------------------------------------


@attrs.frozen
class LedgerView:
    """Every ledger line, parsed strictly: a torn or corrupt line fails the test."""

    entries: list[LedgerEntry]

    @classmethod
    def read(cls, events_dir: Path, *, torn_ok: bool = False) -> LedgerView:
        """``torn_ok``: ignore bytes after the last newline (a short write before a stop;
        recovery truncates them at the next start), else they fail the test."""
        path = events_dir / LEDGER
        data = path.read_bytes() if path.exists() else b""
        if torn_ok:
            data = data[: data.rfind(b"\n") + 1]
        assert not data or data.endswith(b"\n"), f"torn ledger tail: {data[-80:]!r}"
        return cls([_entry(line) for line in data.decode("utf-8").splitlines()])

    @staticmethod
    def torn(events_dir: Path) -> bool:
        path = events_dir / LEDGER
        return path.exists() and not path.read_bytes().endswith(b"\n")

    def latest(self) -> dict[str, LedgerEntry]:
        out: dict[str, LedgerEntry] = {}
        for e in self.entries:
            out[e.key] = e
        return out

    def in_flight(self) -> set[str]:
        """Keys whose latest line is CLAIMED (or RETRY): a wake may have started, no answer."""
        return {k for k, e in self.latest().items() if not e.state.terminal}

    def done_count(self) -> Counter[str]:
        """DONE lines per task id."""
        return Counter(e.task_id for e in self.entries if e.state is LedgerState.DONE)


def _entry(line: str) -> LedgerEntry:
    doc = json.loads(line)
    assert set(doc) == {
        "v",
        "key",
        "task_id",
        "sha256",
        "collector",
        "kind",
        "state",
        "attempt",
        "schedule_id",
        "ts",
    }, line
    assert doc["v"] == 1, line
    return LedgerEntry(
        key=doc["key"],
        task_id=doc["task_id"],
        sha256=doc["sha256"],
        collector=doc["collector"],
        kind=doc["kind"],
        state=LedgerState(doc["state"]),
        attempt=doc["attempt"],
        schedule_id=doc["schedule_id"],
        ts=doc["ts"],
    )


def assert_woken_exactly_once(
    events_dir: Path, produced: dict[str, Produced], woken: list[str]
) -> LedgerView:
    """Every result: one DONE with its key, a matching done marker, its bytes unaltered,
    and a wake the sink saw; no DONE for anything else."""
    view = LedgerView.read(events_dir)
    done = view.done_count()
    assert set(done) <= set(produced), f"DONE for unknown tasks: {set(done) - set(produced)}"
    seen = set(woken)
    problems = []
    for p in produced.values():
        files = TaskFiles(events_dir, p.task_id)
        marker = json.loads(files.done.read_text()) if files.done.exists() else None
        if done[p.task_id] != 1:
            problems.append(f"{p.task_id}: {done[p.task_id]} DONE lines")
        if marker is None or (marker["idempotency_key"], marker["sha256"]) != (p.key, p.sha256):
            problems.append(f"{p.task_id}: done marker {marker}")
        if file_sha(files.result) != p.sha256:
            problems.append(f"{p.task_id}: result lost or altered")
        if p.key not in seen:
            problems.append(f"{p.task_id}: the sink never saw {p.key}")
    assert not problems, f"{len(problems)} problems, first: {problems[:5]}"
    for e in view.entries:
        if e.state is LedgerState.DONE:
            assert e.key == produced[e.task_id].key, f"DONE with a foreign key: {e}"
    return view


def duplicates(woken: list[str]) -> dict[str, int]:
    """Keys the sink saw more than once, with their count."""
    return {k: n for k, n in Counter(woken).items() if n > 1}


# -- the pipeline in process ------------------------------------------------------------


class RecordingSink:
    """Our Sink protocol, in memory: remembers the key of every wake it is asked for."""

    delivery_method = "exec"
    supports_update = False

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        self.keys.append(idempotency_key)
        return f"R-{len(self.keys)}"

    async def update(self, envelope: bytes, *, idempotency_key: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def life(spool: Spool, sink: RecordingSink, *, recover: bool) -> None:
    """One life of the pipeline, as a one-shot command opens it (under no lock: tests only).

    ``recover``: start-up recovery (markers, re-fire CLAIMED) then a scan; otherwise
    every result is picked up in name order, one at a time.
    """
    config = load_config(spool.config)
    key = load_key(config.key.file, root=config.root)
    async with open_pipeline(config, key) as pipeline:
        pipeline.stages = attrs.evolve(pipeline.stages, sink=sink)
        if recover:
            await reconcile.recover(pipeline)
            await reconcile.reconcile(pipeline)
            return
        for name in list_results(spool.events, "task-*.result.json"):
            await pipeline.pickup(spool.events / name)


# -- the fsync fault ------------------------------------------------------------------


class FsyncFault:
    """Replaces ``anu_watchd.fsio.fsync``: the ``at``-th call fails with EIO.

    ``sticky`` keeps failing every later call too (a dead device); otherwise only
    that one fails and the disk looks healthy again (the harder case: the daemon must
    stop by itself). ``on_fail`` runs in the failing thread just before the EIO, so
    a test can snapshot the state at that instant. Every call after the failure is
    recorded in ``after``: an fsync retried or a write attempted after the failure.

    For ``crash()``, it tracks what was durable: an append-only file's size at its
    last successful fsync, and a directory's names at its last successful fsync.
    """

    def __init__(
        self,
        at: int | None,
        *,
        sticky: bool = False,
        on_fail: Callable[[], None] | None = None,
    ) -> None:
        self.at = at
        self.sticky = sticky
        self.on_fail = on_fail
        self.count = 0
        self.bulk = 0  # successful bulk syncs (syncfs)
        self.failed: str | None = None  # what the failing fsync was syncing
        self.after: list[str] = []
        self.durable_size: dict[str, int] = {}
        self.durable_names: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """At both seams: ``fsio.fsync`` and the projections' bulk ``fsio.syncfs``."""
        monkeypatch.setattr(fsio, "fsync", self)
        monkeypatch.setattr(fsio, "syncfs", self.syncfs)

    def syncfs(self, fd: int) -> None:
        """A bulk sync counts as one position; when it succeeds, all on its filesystem is
        durable (modelled for its directory: every name, and every file's size)."""
        self._fail_or_count(os.readlink(f"/proc/self/fd/{fd}"))
        self.bulk += 1
        _REAL_SYNCFS(fd)
        target = os.readlink(f"/proc/self/fd/{fd}")
        with self._lock:
            self.durable_names[target] = set(os.listdir(target))
            for name in self.durable_names[target]:
                path = os.path.join(target, name)
                if os.path.isfile(path):
                    self.durable_size[path] = os.path.getsize(path)

    def _fail_or_count(self, target: str) -> None:
        with self._lock:
            self.count += 1
            if self.failed is not None:
                self.after.append(target)
            fail = self.count == self.at or (self.sticky and self.failed is not None)
            if fail and self.failed is None:
                self.failed = target
                if self.on_fail is not None:
                    self.on_fail()
        if fail:
            raise OSError(errno.EIO, "injected EIO at the fsync seam")

    def __call__(self, fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        self._fail_or_count(target)
        st = os.fstat(fd)
        os.fsync(fd)
        with self._lock:
            if stat.S_ISDIR(st.st_mode):
                self.durable_names[target] = set(os.listdir(target))
            else:
                self.durable_size[target] = st.st_size

    def crash(self, directory: Path, *, logs: tuple[str, ...], before: set[str]) -> list[str]:
        """Drop what was never durable in ``directory``, as a power cut after the failure.

        Names created since ``before`` (the listing at the start of this life) that no
        successful fsync of the directory recorded are removed; each append-only file in
        ``logs`` is cut back to its size at its last successful fsync. Returns what changed.
        """
        changed = []
        durable = self.durable_names.get(str(directory), before) | before
        for name in sorted(set(os.listdir(directory)) - durable):
            path = directory / name
            if path.is_file():
                path.unlink()
                changed.append(f"lost {name}")
        for name in logs:
            path = directory / name
            size = self.durable_size.get(str(path))
            if path.exists() and size is not None and path.stat().st_size > size:
                os.truncate(path, size)
                changed.append(f"cut {name} to {size}")
        return changed


# -- snapshots -----------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under ``root``: kind, size and (for regular files) sha256 of the bytes."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            try:  # another thread's temp file may go while we look
                st = path.lstat()
                data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            except FileNotFoundError:
                continue
            digest = hashlib.sha256(data).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            out[str(path.relative_to(root))] = (stat.filemode(st.st_mode)[0], st.st_size, digest)
    return out


# -- the real daemon, restarted ---------------------------------------------------------


def start(spool: Spool) -> DaemonProc:
    """Start the real daemon (a fresh notify socket each time)."""
    (spool.root / "notify.sock").unlink(missing_ok=True)
    return DaemonProc(spool)


def kill9(d: DaemonProc) -> None:
    """SIGKILL: no handler, no flush, no clean-up, at whatever instant this is."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(30)
    _release(d)


def finish(d: DaemonProc, timeout: float = 30) -> int:
    """SIGTERM if still running; the exit code."""
    if d.proc.poll() is None:
        d.proc.send_signal(signal.SIGTERM)
    code = d.proc.wait(timeout)
    _release(d)
    return code


def _release(d: DaemonProc) -> None:
    d.sock.close()
    with contextlib.suppress(OSError):
        d.sock_path.unlink(missing_ok=True)


def done_markers(events_dir: Path) -> int:
    return sum(1 for n in os.listdir(events_dir) if n.endswith(".pickup.done"))


def wait_done(events_dir: Path, n: int, timeout: float, d: DaemonProc | None = None) -> None:
    """Wait until ``n`` done markers exist (failing early if the daemon died)."""

    def ready() -> bool:
        if d is not None and d.proc.poll() is not None:
            raise AssertionError(f"the daemon exited {d.proc.returncode}:\n{d.log_text()[-3000:]}")
        return done_markers(events_dir) >= n

    wait_for(ready, timeout, f"{n} done markers", poll=0.05)


def sink_processes_gone(script_dir: Path) -> bool:
    """No sink command (an orphan of a killed daemon, say) is still running."""
    needle = str(script_dir).encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and b"lean_sink.sh" in cmdline:
            return False
    return True


# -- filesystems ------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` at ``path``; skips (saying why) only if the kernel refuses."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        reason = f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})"
        print(reason)
        pytest.skip(reason)
    try:
        yield path
    finally:
        umount(path)


def umount(path: Path) -> None:
    """Unmount, lazily if something still holds it (a test must never leave a mount behind)."""
    r = subprocess.run(["umount", str(path)], capture_output=True, check=False)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path, name: str = "filler") -> int:
    """Write zeros into ``directory/name`` until the filesystem is full; bytes written."""
    written = 0
    chunk = b"\0" * (1 << 16)
    fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 4096, 1):  # then the last scraps, down to the byte
            chunk = b"\0" * size
            while True:
                try:
                    written += os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written
