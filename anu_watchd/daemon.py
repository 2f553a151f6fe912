"""The daemon: start-up, main loop, reload and shutdown over the stages ``runtime`` wires.

Start-up follows docs/operations.md in order: config, key, the drop to the
spool's owner (ownership.py), lock, ledger recovery, watches, projection
repair, READY=1, then the reconcile scan (the watch is armed
first, so nothing written during the scan is missed; dedupe absorbs the
overlap). Every pipeline run goes through one bounded queue, whose names a
dispatch starts as batches, at most ``RUNS_IN_FLIGHT`` runs at a time
(their sink calls bounded by ``wake.concurrency``): when they fall behind,
intake stops reading, the kernel queue overflows, and the overflow becomes a
rescan — backpressure with bounded memory instead of an unbounded queue.

Signals are only recorded by their handlers; ``handle_hup`` and
``handle_term`` act on them in one task. A DurabilityError anywhere ends the
process with exit 70 before anything more is written.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from anu_watchd import fsio, logs, ownership, reconcile
from anu_watchd.config import Config, load_config
from anu_watchd.errors import (
    ConfigError,
    DurabilityError,
    ExitCode,
    LockHeldError,
    WatchLostError,
)
from anu_watchd.intake import Intake, IntakeEvent, Kind, filesystem_type, is_network_fs
from anu_watchd.locks import InstanceLock
from anu_watchd.markers import encode_json
from anu_watchd.metrics import Exporter, Metrics, SpoolView
from anu_watchd.model import iso, utc_now
from anu_watchd.notify import Notifier, watchdog_loop
from anu_watchd.pipeline import Begun, Pipeline, Settle
from anu_watchd.receipts import ReceiptWatch, mark_received
from anu_watchd.reload import reload_status_path
from anu_watchd.runtime import RUNS_IN_FLIGHT, ensure_dirs, open_pipeline, rebuilt
from anu_watchd.secret import SealedKey, load_key
from anu_watchd.settling import Settling
from anu_watchd.sinks import Sink, rebuild_sink, spawn
from anu_watchd.spool import is_enabled
from anu_watchd.stages import Stages, close_when_idle
from anu_watchd.status import failed_now

_log = structlog.get_logger("anu_watchd.daemon")

QUEUE_BOUND = 1024
STATUS_EVERY_S = 2.0


class Daemon:
    """One daemon process; ``serve()`` runs its phases and returns the exit code.

    The phases, in the manner of uvicorn's ``Server``: ``startup`` (config, key,
    lock, ledger recovery, watches, READY=1), ``main_loop`` (every task in one
    ``asyncio.TaskGroup`` until a stop is requested or a task fails), ``reload``
    (``handle_hup``) and ``shutdown`` (start-up in reverse, bounded). Once the
    pipeline is open the config is read only through its current stages.
    ``exit_now`` is how a second stop signal leaves at once; the entry point
    (``run_daemon``) passes ``os._exit``, an in-process caller may pass its own.
    """

    def __init__(
        self,
        config_path: Path,
        *,
        environ: MutableMapping[str, str] | None = None,
        exit_now: Callable[[int], None] | None = None,
    ) -> None:
        self.config_path = config_path
        self.environ: MutableMapping[str, str] = environ if environ is not None else os.environ
        self.counts: Counter[str] = Counter()
        # unset: children (sinks, escalations) must never inherit NOTIFY_SOCKET or WATCHDOG_*.
        self.notifier = Notifier.from_env(self.environ, unset=True)
        self.receipts = ReceiptWatch()
        self._exit_now = exit_now
        self._signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
        self._queue: asyncio.Queue[Path] = asyncio.Queue(QUEUE_BOUND)
        # Queued names -> "a rescan's run" (may leave a young invalid file to settle).
        self._queued: dict[str, bool] = {}
        self.settling = Settling()
        self.failed_now = 0  # FIRE_FAILED tasks not yet retried, counted by the status ticker
        self._rescan_wanted = asyncio.Event()
        self._rescan_reasons: set[str] = set()
        self._stop = asyncio.Event()
        self._fatal: BaseException | None = None
        self._term_count = 0
        self._abandoned = False
        self._boot_config: Config | None = None
        self._key: SealedKey | None = None
        self._pipeline: Pipeline | None = None
        self._intake: Intake | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._intake_task: asyncio.Task[None] | None = None
        self._service: list[asyncio.Task[None]] = []
        self._runs: set[asyncio.Task[None]] = set()  # batches starting, and runs finishing
        self._room = RUNS_IN_FLIGHT  # runs that may still start
        self._dispatch_due = False  # a _dispatch is scheduled on the loop
        self.metrics = Metrics()  # lives as long as the daemon: counters survive a reload
        self.exporter = Exporter(self.metrics.registry)
        self._acks: dict[str, asyncio.Task[None]] = {}  # acks waiting for their task's lock
        self._signal_task: asyncio.Task[None] | None = None

    # -- what the phases share ------------------------------------------------------

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            raise RuntimeError("the daemon has not started")
        return self._pipeline

    @property
    def config(self) -> Config:
        """The current config: the pipeline's, once it is open (a reload swaps it there)."""
        if self._pipeline is not None:
            return self._pipeline.stages.config
        if self._boot_config is None:
            raise RuntimeError("the daemon has not loaded its config")
        return self._boot_config

    @property
    def key(self) -> SealedKey:
        if self._key is None:
            raise RuntimeError("the daemon has not loaded its key")
        return self._key

    # -- the phases -----------------------------------------------------------------

    async def serve(self) -> int:
        """Start up, serve until stopped, shut down; the process exit code."""
        try:
            self._boot_config = load_config(self.config_path)
            self._key = load_key(self.config.key.file, environ=self.environ, root=self.config.root)
        except ConfigError as exc:
            message = f"anu-watchd: configuration error: {exc}"
            logs.announce("config_invalid", message, level="error")
            return ExitCode.CONFIG
        ownership.assume_owner(self.config.root)  # root drops to the spool's owner, or exit 77
        logs.configure(level=self.config.log.level, fmt=self.config.log.format, key=self.key)
        ensure_dirs(self.config)
        lock = InstanceLock(self.config.spool.lock_file, role="run")
        try:
            lock.acquire()
        except LockHeldError as exc:
            _log.error("lock_held", error=str(exc))
            return ExitCode.TEMPFAIL
        try:
            async with open_pipeline(self.config, self.key, self.metrics) as pipeline:
                self._pipeline = pipeline
                await self.startup()
                return await self.main_loop()
        except DurabilityError as exc:
            denied = ownership.permission_error(exc)
            if denied is not None:  # a state file this user may not open: 77, as for commands
                _log.critical("permission_denied", error=ownership.denied(denied))
                return ExitCode.NOPERM
            _log.critical("durability_failure", error=str(exc))
            return ExitCode.SOFTWARE
        finally:
            await asyncio.to_thread(self.exporter.close)  # a server stop waits up to 0.5 s
            lock.release()

    async def startup(self) -> None:
        """Watches armed, signals installed, markers recovered, then READY=1."""
        config = self.config
        self._intake = self._arm(config)
        self._install_signals()
        self._export_metrics(self.pipeline)
        await reconcile.recover_markers(self.pipeline.stages)
        self.notifier.ready(status=self._status_text())
        _log.info(
            "daemon_ready",
            events_dir=str(config.spool.events_dir),
            activated=config.wake.activated,
            sink=config.wake.sink,
            enabled=is_enabled(config.spool.enable_flag),
        )

    async def main_loop(self) -> int:
        """Every task in one TaskGroup; in-flight work first, then a full rescan, until stop."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._start_tasks(tg)
                await self._unfinished_first()
                self.request_rescan("startup")
                await self._stop.wait()
                await self.shutdown()
        except BaseExceptionGroup:
            pass  # the first failure was logged and handled (_fail) when it was raised
        finally:
            self._require_intake().close()
        if self._fatal is not None:
            return ExitCode.SOFTWARE
        if self._abandoned:
            return ExitCode.TEMPFAIL
        _log.info("daemon_stopped", **self.counts)
        return ExitCode.OK

    async def shutdown(self) -> None:
        """Start-up in reverse: intake off, in-flight runs finish (bounded); flushed on close."""
        self._require_intake().close()
        # Acks still waiting are on disk: the next receipt sweep takes them (receipts.py).
        # The signal task stays until the drain is over: a second stop signal must be
        # heard during it (docs/operations.md, "Reload, restart, rotate the key").
        for task in (*self._service, self._intake_task, *self._acks.values()):
            if task is not None and task is not self._signal_task:
                task.cancel()
        self._drop_queued()
        timeout = self.config.drain_timeout_s
        pending = await _drained(self._run_tasks, timeout)
        for w in pending:
            w.cancel()
        if pending:
            _log.warning("drain_timed_out", cancelled_runs=len(pending), drain_timeout_s=timeout)
        if self._signal_task is not None:
            self._signal_task.cancel()

    # -- tasks ------------------------------------------------------------------------

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

    def _start_tasks(self, tg: asyncio.TaskGroup) -> None:
        self._intake_task = self._spawn(self._intake_reader(self._require_intake()), "intake")
        self._signal_task = self._spawn(self._signal_handler(), "signals")
        self._service = [
            self._signal_task,
            self._spawn(self._rescanner(), "rescanner"),
            self._spawn(self._settler(), "settler"),
            self._spawn(self._status_ticker(), "status"),
            self._spawn(self._receipt_sweeper(), "receipts"),
        ]
        interval = self.notifier.watchdog_s
        if interval is not None:
            watchdog = watchdog_loop(self.notifier, interval, self.healthy)
            self._service.append(self._spawn(watchdog, "watchdog"))

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        if self._tg is None:
            raise RuntimeError("no task group: the daemon is not serving")
        return self._tg.create_task(self._guarded(coro), name=name)

    async def _guarded(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run one task; its failure stops everything at the point it is raised."""
        try:
            await coro
        except Exception as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: BaseException) -> None:
        """Fail-stop, synchronously, before any other task runs again: no run, no line after it.

        Only work already inside a thread finishes; cancelled runs stop at their next await
        (a sink command is killed) and their queued ledger and evidence lines are dropped.
        The TaskGroup then cancels every other task.
        """
        if self._fatal is not None:
            return
        self._fatal = exc
        _log.critical("daemon_fatal", error=str(exc), error_type=type(exc).__name__)
        self.pipeline.stages.halt(exc)
        failing = asyncio.current_task()
        for task in (*self._run_tasks(), *self._service, self._intake_task):
            if task is not None and task is not failing:
                task.cancel()
        self._stop.set()

    def _drop_queued(self) -> None:
        # Queued but not started: still on disk, the next start-up scan picks them up.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queued.clear()

    # -- the work -------------------------------------------------------------

    def _want_dispatch(self) -> None:
        if not self._dispatch_due:
            self._dispatch_due = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Take every queued name at once, up to the free run slots, and start them as a batch.

        A loop callback, scheduled once a loop iteration by a name queued or a run ended:
        a task waiting on the queue would cost a steady rate's file a task switch more. At
        most ``RUNS_IN_FLIGHT`` runs at a time: a slot is taken here and given back when
        its run ends. Sink calls are bounded inside the pipeline.
        """
        self._dispatch_due = False
        if self._stop.is_set():
            return  # shutdown drops what is queued: still on disk, the next start's scan
        batch = []
        while self._room and not self._queue.empty():
            batch.append(self._queue.get_nowait())
            self._room -= 1
        if not batch:
            return
        try:
            self._start_batch(batch)
        except Exception as exc:  # as a task's failure would: nothing may stall unseen
            self._fail(exc)

    def _start_batch(self, batch: list[Path]) -> None:
        items: list[tuple[Path, Settle | None]] = []
        for path in batch:
            rescan = self._queued.pop(path.name, False)
            items.append((path, self.settling.defer if rescan else None))
        self.metrics.runs_started(len(items))
        owed = _Owed(len(items))
        task = self._track(self._spawn(self._begin(items, owed), "batch"))
        # In a done-callback, not a finally: a task cancelled before its first step runs
        # no code, and its slots must come back all the same.
        task.add_done_callback(lambda _task: self._runs_over(owed.settle()))

    async def _begin(self, items: list[tuple[Path, Settle | None]], owed: _Owed) -> None:
        """Start the batch; the last run goes on in this task, every other in its own.

        The batch owes a slot for each of its items until a run task takes one over; it
        gives back what it still owes when it ends (``_start_batch``), the last run's too.
        """
        begun = await self.pipeline.start_many(items)
        if not begun:  # the driver is disabled
            return
        *others, last = begun
        for run in others:
            owed.hand_over()
            task = self._track(self._spawn(self._finish(run), "run"))
            task.add_done_callback(functools.partial(self._run_task_done, run))
        # At a steady rate a batch is one file: a task of its own would cost it one more
        # task switch.
        await self._finish(last)

    async def _finish(self, run: Begun) -> None:
        out = await run.finish()
        if out is not None:
            self.counts[str(out.verdict)] += 1

    def _run_task_done(self, run: Begun, _task: asyncio.Task[None]) -> None:
        run.abandon()  # a run cancelled before its first step still lets go of its task
        self._runs_over(1)

    def _runs_over(self, n: int) -> None:
        self.metrics.runs_ended(n)
        self._room += n
        if n and not self._queue.empty():
            self._want_dispatch()

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        return task

    def _run_tasks(self) -> list[asyncio.Task[None]]:
        """Every batch and run task: what a fail-stop cancels and a stop drains."""
        return list(self._runs)

    async def enqueue(self, path: Path, *, rescan: bool = False) -> None:
        """Queue a run of ``path`` once; an event's run (``rescan=False``) judges a young file."""
        if self._stop.is_set():
            return
        if path.name in self._queued:
            self._queued[path.name] = self._queued[path.name] and rescan
            return
        self._queued[path.name] = rescan
        await self._queue.put(path)
        self._want_dispatch()

    async def _unfinished_first(self) -> None:
        for path in reconcile.refire_paths(self.pipeline.stages):
            await self.enqueue(path, rescan=True)

    async def _settler(self) -> None:
        """Re-check, as a rescan would, the files a rescan left to settle (settling.py)."""
        while True:
            for path in await self.settling.due():
                await self.enqueue(path, rescan=True)

    async def _intake_reader(self, intake: Intake) -> None:
        async for ev in intake.events():
            await self._on_event(ev, intake)
        raise WatchLostError(f"lost the watched directory {intake.events_dir}")

    async def _on_event(self, ev: IntakeEvent, intake: Intake) -> None:
        if ev.kind is Kind.RESULT and ev.path is not None:
            await self.enqueue(ev.path)
        elif ev.kind is Kind.OVERFLOW:
            _log.warning("inotify_overflow", overflows=intake.overflows)
            self.metrics.overflowed()
            self.request_rescan("overflow")
        elif ev.kind is Kind.FLAG:
            self._on_flag()
        elif ev.kind is Kind.ACKED and ev.task_id is not None:
            self._queue_ack(ev.task_id)
        elif ev.kind is Kind.RETRY and ev.task_id is not None:
            await self._on_retry(ev.task_id)
        elif ev.kind is Kind.LOST:
            _log.critical("watched_directory_lost", path=str(ev.path), mask=ev.detail)
            raise WatchLostError(f"lost the watched directory {ev.path} ({ev.detail})")

    def _queue_ack(self, task_id: str) -> None:
        """An ack waits for its task's lock in a task of its own, one per task: intake never
        does (a wake hung in the sink would stall every event behind it)."""
        if task_id not in self._acks:
            self._acks[task_id] = self._spawn(self._ack(task_id), "ack")

    async def _ack(self, task_id: str) -> None:
        async with self.pipeline.stages.task_locks.hold(task_id):
            # From here an ack event starts another run: this one may have read too early.
            del self._acks[task_id]
            await mark_received(self.config.spool.events_dir, task_id)

    async def _on_retry(self, task_id: str) -> None:
        for path in await reconcile.retry_paths(self.pipeline.stages, [task_id]):
            await self.enqueue(path)

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
        stages = self.pipeline.stages
        for path in await reconcile.pending_retry_paths(stages):
            await self.enqueue(path)
        events_dir = stages.config.spool.events_dir
        names = await reconcile.rescan_names(stages, reasons)
        if is_enabled(stages.config.spool.enable_flag):
            self.metrics.rescanned(reasons)
        for name in names:
            await self.enqueue(events_dir / name, rescan=True)  # a Path only once its turn comes

    async def _receipt_sweeper(self) -> None:
        while True:
            period = min(self.config.wake.receipt_ttl_s / 4, 60.0, self.config.rescan_interval_s)
            await asyncio.sleep(max(period, 0.05))
            await self.receipts.sweep(self.pipeline.stages)

    # -- signals, reload, stop ------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)

    async def _signal_handler(self) -> None:
        while True:
            sig = await self._signals.get()
            if sig is signal.SIGHUP and self._stop.is_set():
                _log.info("reload_ignored", reason="stopping")
            elif sig is signal.SIGHUP:
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
            self._leave_now()
            return
        _log.info("stopping", signal=sig.name, in_queue=self._queue.qsize())
        self.notifier.stopping()
        self._stop.set()

    def _leave_now(self) -> None:
        """A second stop signal: the entry point exits at once (75); in process, skip the drain."""
        if self._exit_now is not None:
            self._exit_now(ExitCode.TEMPFAIL)
            return
        self._abandoned = True
        for w in self._run_tasks():
            w.cancel()
        self._stop.set()

    async def handle_hup(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
            self._check_reloadable(new)
            # Built here, so that a sink that cannot be built (unreadable NATS credentials)
            # refuses the reload and keeps the running one; co-process handlers that still
            # fit are kept (the same sink comes back).
            current = self.pipeline.stages.sink
            fresh = rebuild_sink(current, self.config, new, self.key)
            if fresh is not current:
                fresh = self.metrics.metered(fresh, new.wake.sink)
        except ConfigError as exc:
            _log.error("config_reload_refused", error=str(exc))
            await self._record_reload("refused", str(exc))
            self.notifier.ready(status=self._status_text())
            return
        self._note_key_change()
        await self._apply(new, fresh)
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

    async def _apply(self, new: Config, fresh: Sink) -> None:
        stages = self.pipeline.stages
        old = stages.config
        # One swap: from here on every reader of the config (self.config too) sees ``new``.
        self.pipeline.stages = rebuilt(stages, new, self.key, fresh)
        sink = self.pipeline.stages.sink
        if sink is not stages.sink:
            self._spawn(self._retire(stages), "retire-sink")
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

    async def _retire(self, old: Stages) -> None:
        """Close a replaced sink once every run that started under it has ended."""
        try:
            await close_when_idle(old.users, old.sink)
        except Exception as exc:  # a sink that fails to close must not stop the daemon
            _log.warning("sink_close_failed", error=str(exc))

    def _rearm(self, new: Config) -> None:
        ensure_dirs(new)
        if self._intake_task is not None:
            self._intake_task.cancel()  # a cancelled task is no failure: the group carries on
        self._require_intake().close()
        self._intake = self._arm(new)
        self._intake_task = self._spawn(self._intake_reader(self._intake), "intake")

    def _require_intake(self) -> Intake:
        if self._intake is None:
            raise RuntimeError("the watches are not armed")
        return self._intake

    async def _record_reload(self, result: str, reason: str | None) -> None:
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
        intake_alive = self._intake_task is not None and not self._intake_task.done()
        return self._fatal is None and intake_alive and st.ledger.healthy and st.evidence.healthy

    def _status_text(self) -> str:
        """STATUS=: the state now (driver, activation, pending, failed, in flight), then totals."""
        c, config = self.counts, self.config
        enabled = "enabled" if is_enabled(config.spool.enable_flag) else "DISABLED"
        activated = "activated" if config.wake.activated else "not activated"
        waiting = self._queue.qsize()
        return (
            f"{enabled}, {activated}; pending={waiting} in_flight={self.metrics.runs_in_flight} "
            f"failed={self.failed_now}; since start: "
            f"woken={c['WAKE_BUILT']} quarantined={c['QUARANTINE']} "
            f"failed={c['FIRE_FAILED']} not_activated={c['FIRE_NOT_ACTIVATED']} "
            f"overflows={self._intake.overflows if self._intake is not None else 0}"
        )

    async def _status_ticker(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            self.failed_now = await asyncio.to_thread(failed_now, self.config.spool.events_dir)
            text = self._status_text()
            if text != last:
                self.notifier.status(text)
                last = text


class _Owed:
    """The run slots a batch still owes: one an item, until a run task takes it over."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def hand_over(self) -> None:
        self.count -= 1

    def settle(self) -> int:
        """What is still owed, once: the batch gives it back as it ends."""
        count, self.count = self.count, 0
        return count


async def _drained(
    tasks: Callable[[], list[asyncio.Task[None]]], timeout: float
) -> list[asyncio.Task[None]]:
    """Wait up to ``timeout`` for ``tasks()`` to end, runs a batch starts included; the rest."""
    deadline = asyncio.get_running_loop().time() + timeout
    while left := [t for t in tasks() if not t.done()]:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return left
        await asyncio.wait(left, timeout=remaining)
    return []


def run_daemon(config_path: Path) -> int:
    """Process entry for ``anu-watchd run``; a fatal exit skips interpreter teardown."""
    code = asyncio.run(Daemon(config_path, exit_now=_exit_now).serve())
    if code == ExitCode.SOFTWARE:
        _exit_now(code)  # never let a thread finish one more write after a durability failure
    return code


def _exit_now(code: int) -> None:
    """Leave the process at once: no drain, no flush but stdout's, no interpreter teardown.

    What it started goes with it: a hung handler left running could still wake the
    collector after a restart has fired the same wake again.
    """
    spawn.kill_every_group()
    sys.stdout.flush()
    os._exit(code)
