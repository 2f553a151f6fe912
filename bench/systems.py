"""The systems under test, each a real process (or process group) started on a fresh spool.

    AnuDaemon("log")   python -m anu_watchd run, log sink, activated, fully durable
    AnuDaemon("exec")  the same with the exec sink running the handler per wake
    AnuDaemon("nats")  the same with the nats sink, publishing to a local nats-server
                       (bench/natsbroker.py); its wake time is the stored message's
    AnuDaemon("exec", process=True)
                       the same with co-process handlers (bench/handler_coproc.c)
    AnuDaemon("exec", nice=-5, cpu_weight=400)
                       under ``nice -n -5`` and in a cpu cgroup of its own with that
                       weight: what ``Nice=`` and ``CPUWeight=`` in its unit do
    Script(...)        a baseline from bench/baselines/, running the handler per file

The handler is bench/handler.c, compiled on first use (bench/handler.sh, the
same contract in bash, where there is no C compiler).

Every system reports the same thing: one ``(task_id, start_ns)`` per handler
start (a wake), its peak RSS (VmHWM, summed over the watcher's own processes;
the short-lived handler processes are not the watcher's memory), and a cheap
``progress()`` count the runner polls to know when the system has drained,
and ``cpu_ticks()``: the CPU its process tree used so far, handlers included.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


def _handler() -> Path:
    """bench/handler.c compiled into bench/out/ when a C compiler is here, else handler.sh.

    bash alone takes ~1.8 ms to start on this machine: measured through it, every
    system's "rename -> handler start" would be mostly the shell's start-up.
    """
    cc = shutil.which("cc")
    if cc is None:
        return BENCH / "handler.sh"
    src, built = BENCH / "handler.c", BENCH / "out" / "handler"
    if not built.exists() or built.stat().st_mtime < src.stat().st_mtime:
        built.parent.mkdir(exist_ok=True)
        subprocess.run([cc, "-O2", "-o", str(built), str(src)], check=True)
    return built


def _coprocess_handler() -> Path | None:
    """bench/handler_coproc.c compiled into bench/out/; None without a C compiler."""
    cc = shutil.which("cc")
    if cc is None:
        return None
    src, built = BENCH / "handler_coproc.c", BENCH / "out" / "handler_coproc"
    if not built.exists() or built.stat().st_mtime < src.stat().st_mtime:
        built.parent.mkdir(exist_ok=True)
        subprocess.run([cc, "-O2", "-o", str(built), str(src)], check=True)
    return built


HANDLER = _handler()
HANDLER_COMM = HANDLER.name[:15]  # /proc/PID/comm of the handler (a script: its own name)
HANDLER_COPROC = _coprocess_handler()
READY_TIMEOUT_S = 60.0


@attrs.frozen
class Stopped:
    """What a system left behind once stopped."""

    wakes: list[tuple[str, int]]  # (task_id, handler start in ns since the epoch), in order
    peak_rss_kib: int


class LineCounter:
    """Counts complete lines (containing ``needle``) of a file that only grows; incremental."""

    def __init__(self, path: Path, needle: bytes | None = None) -> None:
        self.path = path
        self.needle = needle
        self._offset = 0
        self._tail = b""
        self.count = 0

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return self.count
        self._offset += len(data)
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        whole, self._tail = data[:cut], data[cut:]
        if self.needle is None:
            self.count += whole.count(b"\n")
        else:
            self.count += whole.count(self.needle)
        return self.count


# -- /proc helpers ------------------------------------------------------------------


def proc_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM); 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _cpu_fields(pid: int) -> tuple[int, int, int, int]:
    """utime, stime, cutime, cstime of a process in clock ticks; zeros once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0, 0, 0  # a handler may exit between the listing and the read
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return utime, stime, cutime, cstime


def ticks_ms(ticks: int) -> float:
    """Clock ticks (``/proc/PID/stat``'s unit) in milliseconds."""
    return ticks * 1000.0 / os.sysconf("SC_CLK_TCK")


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    utime, stime, _, _ = _cpu_fields(pid)
    return utime + stime


def reaped_cpu_ticks(pid: int) -> int:
    """cutime + cstime: the CPU of the children a process has reaped, in clock ticks."""
    _, _, cutime, cstime = _cpu_fields(pid)
    return cutime + cstime


def group_pids(pgid: int, *, handlers: bool = False) -> list[int]:
    """The live processes of a process group, handler processes excluded unless ``handlers``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                comm, rest = fh.read().split(" (", 1)[1].rsplit(")", 1)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(rest.split()[2]) == pgid and (handlers or comm != HANDLER_COMM):
            pids.append(int(entry))
    return pids


def child_pids(ppid: int) -> list[int]:
    """The live children of ``ppid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                rest = fh.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(rest[1]) == ppid:
            pids.append(int(entry))
    return pids


def wait_for_text(path: Path, text: bytes, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if text in path.read_bytes():
                return
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode} before it was ready: {tail(path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {READY_TIMEOUT_S:g}s: {tail(path)}")
        time.sleep(0.05)


def tail(path: Path, n: int = 800) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except FileNotFoundError:
        return "(no output)"


def epoch_ns(text: str) -> int:
    """Nanoseconds from ``$EPOCHREALTIME`` (``1795322470.021698``), without float rounding."""
    sec, _, frac = text.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def iso_ns(text: str) -> int:
    """Nanoseconds from a ``…T…Z`` timestamp with microseconds."""
    dt = datetime.fromisoformat(text)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def read_handler_log(path: Path) -> list[tuple[str, int]]:
    out = []
    for line in path.read_text().splitlines():
        name, _, stamp = line.rpartition(" ")
        if name:
            out.append((name, epoch_ns(stamp)))
    return out


def stop_process(proc: subprocess.Popen[bytes], *, group: bool, timeout: float) -> None:
    """SIGTERM (the group, for the baselines), then SIGKILL whatever is left."""
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # handlers or a pipeline stage still running


# -- a cpu cgroup ---------------------------------------------------------------------

CGROUP_V2_MOUNTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))  # hybrid, pure v2
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


class CpuCgroup:
    """A cgroup of its own with CPU weight W: what ``CPUWeight=W`` in a unit gives the daemon.

    cgroup v2's ``cpu.weight`` where a v2 mount offers the cpu controller, else
    v1's ``cpu.shares``, W * 1024 / 100 as systemd maps it (a process outside, at
    the default weight 100, counts 1024 shares). Everything else stays where it is.
    """

    def __init__(self, weight: int) -> None:
        self.weight = weight
        v2 = [m for m in CGROUP_V2_MOUNTS if "cpu" in _words(m / "cgroup.controllers")]
        self.v2_mount = v2[0] if v2 else None
        base = self.v2_mount or CGROUP_V1_CPU
        self.path = base / f"anu-bench-{os.getpid()}"

    def create(self) -> None:
        """OSError where the cgroups are not ours to change (not root, no cpu controller)."""
        if self.v2_mount is None:
            knob, value = "cpu.shares", self.weight * 1024 // 100
        else:
            knob, value = "cpu.weight", self.weight
            enabled = self.v2_mount / "cgroup.subtree_control"
            if "cpu" not in _words(enabled):
                enabled.write_text("+cpu\n")  # as systemd does once any unit sets CPUWeight=
        self.path.mkdir()
        try:
            (self.path / knob).write_text(f"{value}\n")
        except OSError:
            self.path.rmdir()
            raise

    def probe(self) -> str | None:
        """Why no such cgroup can be made here, or None."""
        try:
            self.create()
        except OSError as e:
            return f"no cpu cgroup can be made at {self.path}: {e.strerror}"
        self.remove()
        return None

    def enter_argv(self) -> list[str]:
        """A command prefix joining the cgroup before the exec, so that its children start in it."""
        procs = str(self.path / "cgroup.procs")
        return ["sh", "-c", 'echo $$ > "$1" && shift && exec "$@"', "sh", procs]

    def remove(self, timeout_s: float = 10.0) -> None:
        """rmdir once empty: a handler may outlive the daemon's exit by a moment."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.path.rmdir()
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)


# -- anu-watchd -----------------------------------------------------------------------


class AnuDaemon:
    """The real daemon as a subprocess; its JSON log (stdout) goes to a file, as to journald."""

    def __init__(
        self,
        sink: str,
        *,
        concurrency: int | None = None,
        broker: Any = None,
        host_id: str = "bench",
        process: bool = False,
        nice: int | None = None,
        cpu_weight: int | None = None,
        extra: str = "",
    ) -> None:
        self.sink = sink
        self.concurrency = concurrency
        # The nats sink's broker: its own single node unless one is shared (bench/fleet.py).
        self.broker = broker
        self._own_broker = broker is None
        self.host_id = host_id
        self.process = process
        self.nice = nice
        self.cgroup = CpuCgroup(cpu_weight) if cpu_weight is not None else None
        self.extra = extra  # more TOML, appended (bench/ab.py's [metrics] arm)
        tuned = f", concurrency {concurrency}" if concurrency else ""
        tuned += f", nice {nice}" if nice is not None else ""
        tuned += f", CPUWeight {cpu_weight}" if cpu_weight is not None else ""
        kind = "exec co-process" if process else f"{sink} sink"
        self.name = f"anu-watchd ({kind}{tuned})"
        self.key = ("anu-coproc" if process else f"anu-{sink}") + (
            f"-c{concurrency}" if concurrency else ""
        )
        self.key += f"-nice{nice}" if nice is not None else ""
        self.key += f"-cpuw{cpu_weight}" if cpu_weight is not None else ""

    def start(self, root: Path) -> None:
        self.root = root
        if self.sink == "nats" and self._own_broker:
            from bench.natsbroker import Broker

            self.broker = Broker(root / "broker")
            self.broker.start()
        self.events_dir = root / "memory" / "events"
        self.events_dir.mkdir(parents=True)
        (root / "memory" / "state").mkdir()
        (root / "memory" / "state" / "p0b_driver_enabled").write_text("true\n")
        self.handler_log = root / "handler.log"
        self.handler_log.touch()
        self.config = self._write_config(root)
        self.log_path = root / "daemon.log"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("NOTIFY_SOCKET", None)
        niced = ["nice", "-n", str(self.nice)] if self.nice is not None else []
        if self.cgroup is not None:
            self.cgroup.create()
            niced += self.cgroup.enter_argv()
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [*niced, sys.executable, "-m", "anu_watchd", "--config", str(self.config), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                start_new_session=True,
            )
        wait_for_text(self.log_path, b'"rescan_started"', self.proc, self.name)
        self.idle_rss_kib = proc_kib(self.proc.pid, "VmRSS")
        if self.sink == "exec":
            self._progress = LineCounter(self.handler_log)
        else:
            self._progress = LineCounter(self.events_dir / "p0b_driver_runs.jsonl", b'"WAKE_BUILT"')

    def _write_config(self, root: Path) -> Path:
        key_file = root / "anu-key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_hex(24).encode() + b"\n")
        os.close(fd)
        handler = HANDLER_COPROC if self.process else HANDLER
        if handler is None:
            raise RuntimeError("the co-process handler needs a C compiler (cc)")
        exec_argv = json.dumps([str(handler), str(self.handler_log)])
        config = root / "anu-watchd.toml"
        config.write_text(
            f'root = "{root}"\n'
            '[spool]\ncollector = "anu"\nexecutors = ["dev1"]\n'
            f'[wake]\nactivated = true\nsink = "{self.sink}"\n'
            + (f"concurrency = {self.concurrency}\n" if self.concurrency else "")
            + f"[wake.exec]\nargv = {exec_argv}\nprocess = {str(self.process).lower()}\n"
            + self._nats_section()
            + f'[key]\nfile = "{key_file}"\n'
            '[log]\nlevel = "info"\n' + self.extra
        )
        return config

    def _nats_section(self) -> str:
        if self.sink != "nats":
            return ""
        urls = json.dumps(self.broker.urls)
        return f'[wake.nats]\nservers = {urls}\nhost_id = "{self.host_id}"\n'

    def progress(self) -> int:
        return self._progress.poll()

    def handler_cpu_ticks(self) -> int:
        """CPU of the handler processes: the reaped ones (per wake), plus live co-processes."""
        live = sum(proc_cpu_ticks(p) for p in child_pids(self.proc.pid))
        return reaped_cpu_ticks(self.proc.pid) + live

    def cpu_ticks(self) -> int:
        """CPU of the whole tree so far: the daemon's own and its handlers'."""
        return proc_cpu_ticks(self.proc.pid) + self.handler_cpu_ticks()

    def stop(self) -> Stopped:
        peak = proc_kib(self.proc.pid, "VmHWM")
        stop_process(self.proc, group=False, timeout=60)
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.sink == "nats" and self._own_broker:
            held = self.broker.wakes()
            self.broker.stop()
            self.stream_duplicates = held.duplicates
            return Stopped(wakes=held.wakes, peak_rss_kib=peak)
        if self.sink == "nats":  # a shared broker: the fleet reads the stream once, at the end
            return Stopped(wakes=[], peak_rss_kib=peak)
        wakes = self._exec_wakes() if self.sink == "exec" else self._logged_wakes()
        return Stopped(wakes=wakes, peak_rss_kib=peak)

    def _logged_wakes(self) -> list[tuple[str, int]]:
        """The log sink's wake is its ``wake_logged`` line: its timestamp is the handler start."""
        out = []
        with open(self.log_path, "rb") as fh:
            for line in fh:
                if b'"wake_logged"' in line:
                    doc = json.loads(line)
                    out.append((doc["envelope"]["task_id"], iso_ns(doc["timestamp"])))
        return out

    def _exec_wakes(self) -> list[tuple[str, int]]:
        """The handler logged the idempotency key; the ledger maps each key to its task."""
        task_of = {}
        ledger = self.events_dir / "callback_4tuple_index.jsonl"
        if ledger.exists():
            with open(ledger, "rb") as fh:
                for line in fh:
                    doc = json.loads(line)
                    task_of[doc["key"]] = doc["task_id"]
        return [(task_of.get(k, k), ns) for k, ns in read_handler_log(self.handler_log)]


# -- the baselines ------------------------------------------------------------------


class Script:
    """A baseline watcher from bench/baselines/, in its own process group."""

    def __init__(self, key: str, name: str, argv: list[str], ready: bytes) -> None:
        self.key = key
        self.name = name
        self.argv = argv
        self.ready = ready
        self.idle_rss_kib = 0

    def start(self, root: Path) -> None:
        self.events_dir = root / "events"
        self.events_dir.mkdir(parents=True)
        self.handler_log = root / "handler.log"
        self.handler_log.touch()
        self.out = root / "watcher.out"
        argv = [*self.argv, str(self.events_dir), str(HANDLER), str(self.handler_log)]
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
            )
        wait_for_text(self.out, self.ready, self.proc, self.name)
        self.idle_rss_kib = sum(proc_kib(p, "VmRSS") for p in group_pids(self.proc.pid))
        self._progress = LineCounter(self.handler_log)

    def progress(self) -> int:
        return self._progress.poll()

    def cpu_ticks(self) -> int:
        """CPU of the whole group so far: the watcher, its pipeline, the handlers it reaped."""
        # Each member's own and its reaped children's: a handler counts once, live or reaped.
        return sum(sum(_cpu_fields(p)) for p in group_pids(self.proc.pid, handlers=True))

    def stop(self) -> Stopped:
        peak = sum(proc_kib(p, "VmHWM") for p in group_pids(self.proc.pid))
        stop_process(self.proc, group=True, timeout=15)
        wakes = [
            (n.removesuffix(".result.json"), ns) for n, ns in read_handler_log(self.handler_log)
        ]
        return Stopped(wakes=wakes, peak_rss_kib=peak)


def baselines() -> list[Script]:
    py = sys.executable
    return [
        Script(
            "inotifywait",
            "inotifywait -m loop",
            [str(BENCH / "baselines" / "inotifywait_loop.sh")],
            b"Watches established.",
        ),
        Script(
            "watchdog",
            "Python watchdog observer",
            [py, str(BENCH / "baselines" / "watchdog_observer.py")],
            b"ready",
        ),
        Script("poll", "1 s poll loop", [py, str(BENCH / "baselines" / "poll_loop.py")], b"ready"),
    ]


def all_systems() -> list[AnuDaemon | Script]:
    # The nats sink publishes to its own local nats-server (one node, bench/natsbroker.py).
    coproc = [AnuDaemon("exec", process=True)] if HANDLER_COPROC is not None else []
    return [AnuDaemon("log"), AnuDaemon("exec"), *coproc, AnuDaemon("nats"), *baselines()]
