"""The daemon: start-up, serve, reload and shutdown; the one place that wires it all.

Start-up follows SPEC section 8 in order: config, key, lock, ledger
recovery, watches, READY=1, then the reconcile scan (the watch is armed
first, so nothing written during the scan is missed; dedupe absorbs the
overlap). Every pipeline run goes through one bounded queue and a fixed
pool of ``RUNS_IN_FLIGHT`` workers (their sink calls bounded by
``wake.concurrency``): when they fall behind, intake stops
reading, the kernel queue overflows, and the overflow becomes a rescan —
backpressure with bounded memory instead of an unbounded queue.

Signals are only recorded by their handlers; ``handle_hup`` and
``handle_term`` act on them in one task. A DurabilityError anywhere ends the
process with exit 70 before anything more is written.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Coroutine, MutableMapping
from pathlib import Path
from typing import Any

import attrs
import structlog

from anu_watchd import logs, scan
from anu_watchd.config import Config, load_config
from anu_watchd.errors import ConfigError, DurabilityError, LockHeldError
from anu_watchd.intake import Intake, IntakeEvent, Kind, filesystem_type, is_network_fs
from anu_watchd.locks import InstanceLock
from anu_watchd.markers import encode_json
from anu_watchd.metrics import Exporter, Metrics, SpoolView
from anu_watchd.notify import Notifier, watchdog_loop
from anu_watchd.pipeline import RUNS_IN_FLIGHT, Pipeline, is_enabled, iso, utc_now
from anu_watchd.receipts import ReceiptWatch, mark_received
from anu_watchd.reload import reload_status_path
from anu_watchd.retry import consume_retry
from anu_watchd.runtime import ensure_dirs, open_pipeline, rules_for
from anu_watchd.secret import load_key
from anu_watchd.sinks import build_sink

_log = structlog.get_logger("anu_watchd.daemon")

EX_OK, EX_SOFTWARE, EX_TEMPFAIL, EX_CONFIG = 0, 70, 75, 78
QUEUE_BOUND = 1024
STATUS_EVERY_S = 2.0


class Fatal(Exception):
    """Stop the daemon with exit 70."""


class Daemon:
    """One daemon process; ``serve()`` returns the exit code."""

    def __init__(
        self, config_path: Path, *, environ: MutableMapping[str, str] | None = None
    ) -> None:
        self.config_path = config_path
        self.environ: MutableMapping[str, str] = environ if environ is not None else os.environ
        self.counts: Counter[str] = Counter()
        # unset: children (sinks, escalations) must never inherit NOTIFY_SOCKET or WATCHDOG_*.
        self.notifier = Notifier.from_env(self.environ, unset=True)
        self._signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
        self._queue: asyncio.Queue[Path | None] = asyncio.Queue(QUEUE_BOUND)
        self._queued: set[str] = set()
        self._rescan_wanted = asyncio.Event()
        self._rescan_reasons: set[str] = set()
        self._stop = asyncio.Event()
        self._fatal: BaseException | None = None
        self._term_count = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._workers: list[asyncio.Task[None]] = []
        self.receipts = ReceiptWatch()
        self.metrics = Metrics()  # lives as long as the daemon: counters survive a reload
        self.exporter = Exporter(self.metrics.registry)

    # -- lifecycle ------------------------------------------------------------

    async def serve(self) -> int:
        try:
            self.config = load_config(self.config_path)
            self.key = load_key(self.config.key.file, environ=self.environ, root=self.config.root)
        except ConfigError as exc:
            print(f"anu-watchd: configuration error: {exc}", file=sys.stderr, flush=True)
            return EX_CONFIG
        logs.configure(level=self.config.log.level, fmt=self.config.log.format, key=self.key)
        ensure_dirs(self.config)
        lock = InstanceLock(self.config.spool.lock_file, role="run")
        try:
            lock.acquire()
        except LockHeldError as exc:
            _log.error("lock_held", error=str(exc))
            return EX_TEMPFAIL
        try:
            async with open_pipeline(self.config, self.key, self.metrics) as pipeline:
                self.pipeline = pipeline
                return await self._serve_with(pipeline)
        except DurabilityError as exc:
            _log.critical("durability_failure", error=str(exc))
            return EX_SOFTWARE
        finally:
            await asyncio.to_thread(self.exporter.close)  # a server stop waits up to 0.5 s
            lock.release()

    async def _serve_with(self, pipeline: Pipeline) -> int:
        self.intake = self._arm(self.config)
        self._install_signals()
        self._export_metrics(pipeline)
        await scan.recover_markers(pipeline)
        self.notifier.ready(status=self._status_text())
        _log.info(
            "daemon_ready",
            events_dir=str(self.config.spool.events_dir),
            activated=self.config.wake.activated,
            sink=self.config.wake.sink,
            enabled=is_enabled(self.config.spool.enable_flag),
        )
        self._start_tasks()
        await self._unfinished_first(pipeline)
        self.request_rescan("startup")
        code = await self._wait_for_stop()
        await self._drain()
        return code

    def _arm(self, config: Config) -> Intake:
        intake = Intake(config.spool.events_dir, config.spool.enable_flag, config.spool.result_glob)
        intake.arm()
        fstype = filesystem_type(config.spool.events_dir)
        if is_network_fs(fstype):
            _log.warning(
                "spool_on_network_filesystem",
                fstype=fstype,
                hint="inotify misses remote writes; use scan --once on a timer",
            )
        return intake

    def _export_metrics(self, pipeline: Pipeline) -> None:
        self.metrics.watch_queue(self._queue.qsize)
        ledger = pipeline.stages.ledger
        self.metrics.watch_spool(lambda: SpoolView(self.config.spool.events_dir, ledger))
        self.exporter.apply(self.config.metrics)

    def _start_tasks(self) -> None:
        # Spawned like every other task: a worker's DurabilityError must stop the daemon.
        # Sink calls are bounded by wake.concurrency inside the pipeline, not here.
        self._workers = [self._spawn(self._worker(), f"worker-{i}") for i in range(RUNS_IN_FLIGHT)]
        self._tasks = [
            self._spawn(self._intake_reader(), "intake"),
            self._spawn(self._rescanner(), "rescanner"),
            self._spawn(self._signal_handler(), "signals"),
            self._spawn(self._status_ticker(), "status"),
            self._spawn(self._receipt_sweeper(), "receipts"),
        ]
        interval = self.notifier.watchdog_s
        if interval is not None:
            self._tasks.append(
                self._spawn(watchdog_loop(self.notifier, interval, self.healthy), "watchdog")
            )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._fatal is None:
            self._fatal = exc
            _log.critical("daemon_fatal", error=str(exc), error_type=type(exc).__name__)
            self._halt(exc)
            self._stop.set()

    def _halt(self, exc: BaseException) -> None:
        """Fail-stop, synchronously, before any other task runs again: no run, no line after it.

        Only work already inside a thread finishes; cancelled runs stop at their next await
        (a sink command is killed) and their queued ledger and evidence lines are dropped.
        """
        stages = self.pipeline.stages
        stages.ledger.halt(exc)
        stages.evidence.halt(exc)
        stages.projections.halt(exc)
        for task in (*self._workers, *self._tasks):
            task.cancel()

    async def _wait_for_stop(self) -> int:
        await self._stop.wait()
        return EX_OK if self._fatal is None else EX_SOFTWARE

    async def _drain(self) -> None:
        """Shutdown is start-up in reverse: intake off, in-flight runs finish, flush."""
        self.intake.close()
        for task in self._tasks:
            task.cancel()
        if self._fatal is not None:
            for w in self._workers:
                w.cancel()
            return
        self._drop_queued()
        for _ in self._workers:
            self._queue.put_nowait(None)
        _, pending = await asyncio.wait(self._workers, timeout=self.config.drain_timeout_s)
        for w in pending:
            w.cancel()
        if pending:
            _log.warning(
                "drain_timed_out",
                cancelled_runs=len(pending),
                drain_timeout_s=self.config.drain_timeout_s,
            )
        await asyncio.gather(*self._tasks, *pending, return_exceptions=True)
        _log.info("daemon_stopped", **self.counts)

    def _drop_queued(self) -> None:
        # Queued but not started: still on disk, the next start-up scan picks them up.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queued.clear()

    # -- the work -------------------------------------------------------------

    async def _worker(self) -> None:
        while (path := await self._queue.get()) is not None:
            self._queued.discard(path.name)
            with self.metrics.in_flight():
                out = await self.pipeline.pickup(path, scan=True)
            if out is not None:
                self.counts[str(out.verdict)] += 1
        return None

    async def enqueue(self, path: Path) -> None:
        if path.name in self._queued or self._stop.is_set():
            return
        self._queued.add(path.name)
        await self._queue.put(path)

    async def _unfinished_first(self, pipeline: Pipeline) -> None:
        unfinished = pipeline.stages.ledger.unfinished()
        if unfinished:
            _log.warning("refiring_in_flight", count=len(unfinished))
        events_dir = self.config.spool.events_dir
        for entry in unfinished:
            await self.enqueue(events_dir / f"{entry.task_id}.result.json")

    async def _intake_reader(self) -> None:
        async for ev in self.intake.events():
            await self._on_event(ev)
        raise Fatal(f"lost the watched directory {self.intake.events_dir}")

    async def _on_event(self, ev: IntakeEvent) -> None:
        if ev.kind is Kind.RESULT and ev.path is not None:
            await self.enqueue(ev.path)
        elif ev.kind is Kind.OVERFLOW:
            _log.warning("inotify_overflow", overflows=self.intake.overflows)
            self.metrics.overflowed()
            self.request_rescan("overflow")
        elif ev.kind is Kind.FLAG:
            self._on_flag()
        elif ev.kind is Kind.ACKED and ev.task_id is not None:
            async with self.pipeline.task_lock(ev.task_id):
                await mark_received(self.config.spool.events_dir, ev.task_id)
        elif ev.kind is Kind.RETRY and ev.task_id is not None:
            await self._on_retry(ev.task_id)
        elif ev.kind is Kind.LOST:
            _log.critical("watched_directory_lost", path=str(ev.path), mask=ev.detail)
            raise Fatal(f"lost the watched directory {ev.path} ({ev.detail})")

    async def _on_retry(self, task_id: str) -> None:
        if not is_enabled(self.config.spool.enable_flag):
            return  # left in place; consumed by the scan that enabling triggers
        if await consume_retry(self.pipeline.stages, task_id):
            await self.enqueue(self.config.spool.events_dir / f"{task_id}.result.json")

    def _on_flag(self) -> None:
        if is_enabled(self.config.spool.enable_flag):
            _log.info("driver_enabled")
            self.request_rescan("enabled")
        else:
            _log.info("driver_disabled")

    def request_rescan(self, reason: str) -> None:
        self._rescan_reasons.add(reason)
        self._rescan_wanted.set()

    async def _rescanner(self) -> None:
        while True:
            try:
                # Not wait_for: on 3.11 it can swallow a cancel racing the event (gh-86296).
                async with asyncio.timeout(self.config.rescan_interval_s):
                    await self._rescan_wanted.wait()
            except TimeoutError:
                self._rescan_reasons.add("backstop")
            self._rescan_wanted.clear()
            reasons, self._rescan_reasons = sorted(self._rescan_reasons), set()
            await self._rescan(reasons)

    async def _rescan(self, reasons: list[str]) -> None:
        spool = self.config.spool
        if not is_enabled(spool.enable_flag):
            _log.debug("rescan_skipped_disabled", reasons=reasons)
            return
        for task_id in await asyncio.to_thread(scan.list_retry_requests, spool.events_dir):
            await self._on_retry(task_id)
        names = await asyncio.to_thread(scan.list_results, spool.events_dir, spool.result_glob)
        _log.info("rescan_started", reasons=reasons, listed=len(names))
        self.metrics.rescanned(reasons)
        for name in names:  # a Path only once its turn comes (the queue is bounded)
            await self.enqueue(spool.events_dir / name)

    async def _receipt_sweeper(self) -> None:
        while True:
            period = min(self.config.wake.receipt_ttl_s / 4, 60.0, self.config.rescan_interval_s)
            await asyncio.sleep(max(period, 0.05))
            await self.receipts.sweep(self.pipeline)

    # -- signals, reload, stop ------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)

    async def _signal_handler(self) -> None:
        while True:
            sig = await self._signals.get()
            if sig is signal.SIGHUP:
                await self.handle_hup()
            else:
                self.handle_term(sig)

    def request_stop(self) -> None:
        self.handle_term(signal.SIGTERM)

    def handle_term(self, sig: signal.Signals) -> None:
        self._term_count += 1
        if self._term_count > 1:
            # The ledger is consistent at every instant; in-flight work re-fires at start.
            _log.warning("second_signal_exit_now", signal=sig.name)
            sys.stdout.flush()
            os._exit(EX_TEMPFAIL)
        _log.info("stopping", signal=sig.name, in_queue=self._queue.qsize())
        self.notifier.stopping()
        self._stop.set()

    async def handle_hup(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
            self._check_reloadable(new)
        except ConfigError as exc:
            _log.error("config_reload_refused", error=str(exc))
            await self._record_reload("refused", str(exc))
            self.notifier.ready(status=self._status_text())
            return
        self._note_key_change()
        await self._apply(new)
        await self._record_reload("applied", None)
        self.notifier.ready(status=self._status_text())

    def _check_reloadable(self, new: Config) -> None:
        old = self.config.spool
        for name in ("ledger", "lock_file"):
            if getattr(new.spool, name) != getattr(old, name):
                raise ConfigError(f"spool.{name}", "cannot change on reload; restart instead")
        if new.key != self.config.key:
            raise ConfigError("key.file", "the key is read at start only; restart instead")

    def _note_key_change(self) -> None:
        try:
            fresh = load_key(self.config.key.file, environ=self.environ, root=self.config.root)
        except ConfigError:
            _log.warning("key_file_changed", note="unreadable now; the running key is kept")
            return
        if fresh.value != self.key.value:
            _log.warning(
                "key_file_changed", note="the key is read at start only; restart to use it"
            )

    async def _apply(self, new: Config) -> None:
        old = self.config
        stages = self.pipeline.stages
        sink = stages.sink
        if new.wake != old.wake:
            sink = self.metrics.metered(build_sink(new, self.key), new.wake.sink)
        self.pipeline.stages = attrs.evolve(
            stages, config=new, sink=sink, rules=rules_for(new, self.key)
        )
        if sink is not stages.sink:
            await stages.sink.aclose()
        self.config = new
        logs.reconfigure_level(new.log.level)
        await asyncio.to_thread(self.exporter.apply, new.metrics)
        rearm = (new.spool.events_dir, new.spool.enable_flag, new.spool.result_glob) != (
            old.spool.events_dir,
            old.spool.enable_flag,
            old.spool.result_glob,
        )
        if rearm:
            self._rearm(new)
        _log.info(
            "config_reloaded",
            rearmed=rearm,
            sink_rebuilt=sink is not stages.sink,
            activated=new.wake.activated,
        )
        self.request_rescan("reload")

    def _rearm(self, new: Config) -> None:
        ensure_dirs(new)
        old_task = self._tasks[0]
        old_task.remove_done_callback(self._task_done)
        old_task.cancel()
        self.intake.close()
        self.intake = self._arm(new)
        self._tasks[0] = self._spawn(self._intake_reader(), "intake")

    async def _record_reload(self, result: str, reason: str | None) -> None:
        from anu_watchd import fsio

        doc = {
            "pid": os.getpid(),
            "seq": time.monotonic_ns(),
            "result": result,
            "reason": reason,
            "ts": iso(utc_now()),
        }
        path = reload_status_path(self.config)
        try:
            await asyncio.to_thread(fsio.atomic_write, path, encode_json(doc))
        except OSError as exc:
            _log.warning("reload_status_unwritten", error=str(exc))

    # -- health ---------------------------------------------------------------

    def healthy(self) -> bool:
        st = self.pipeline.stages
        intake_alive = bool(self._tasks) and not self._tasks[0].done()
        return self._fatal is None and intake_alive and st.ledger.healthy and st.evidence.healthy

    def _status_text(self) -> str:
        c = self.counts
        return (
            f"{self.metrics.state_text(self.config, self.pipeline.stages.ledger)} "
            f"woken={c['WAKE_BUILT']} skipped={c['PICKUP_SKIP']} "
            f"quarantined={c['QUARANTINE']} failed={c['FIRE_FAILED']} "
            f"not_activated={c['FIRE_NOT_ACTIVATED']} "
            f"overflows={self.intake.overflows if hasattr(self, 'intake') else 0} "
            f"queued={self._queue.qsize()}"
        )

    async def _status_ticker(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            text = self._status_text()
            if text != last:
                self.notifier.status(text)
                last = text


def run_daemon(config_path: Path) -> int:
    """Process entry for ``anu-watchd run``; a fatal exit skips interpreter teardown."""
    code = asyncio.run(Daemon(config_path).serve())
    if code == EX_SOFTWARE:
        sys.stdout.flush()
        os._exit(code)  # never let a thread finish one more write after a durability failure
    return code
