"""Prometheus metrics: what the daemon records, and where it is exported (docs/operations.md).

:class:`Metrics` is the recording side: one ``CollectorRegistry`` a daemon
(never the process-wide default, so tests and reloads start clean) and a
few methods the places that decide a fact call in one line —
``finished(outcome)`` where the evidence line is written, the metered sink
around every sink call, ``overflowed()`` and ``rescanned()`` in intake's
handlers, ``runs_started(n)`` and ``runs_ended(n)`` around runs. Labels are
closed vocabularies (verdict, reason, sink, outcome, rescan reason), never a
task id.
Gauges of the spool (pending, failed, unacked) and of the ledger are
computed when scraped, by :class:`_SpoolCollector`, from a directory
listing and the ledger's in-memory index.

:class:`Exporter` is the export side: the HTTP endpoint on
``metrics.listen`` and/or the textfile for node_exporter's textfile
collector at ``metrics.textfile``, rewritten every few seconds by a
thread, atomically (tmp + rename: a reader never sees a torn file).
``apply(config)`` rebinds both on a reload; the registry and its counters
live as long as the daemon.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server, write_to_textfile
from prometheus_client.registry import Collector

from anu_watchd import __version__
from anu_watchd.config import parse_listen
from anu_watchd.errors import PermanentWakeError, TransientWakeError
from anu_watchd.model import Outcome, QuarantineReason, Verdict
from anu_watchd.spool import ACKED_SUFFIX, DONE_SUFFIX, FAILED_SUFFIX, RESULT_SUFFIX

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from anu_watchd.config import MetricsConfig
    from anu_watchd.sinks.base import Sink

_log = structlog.get_logger("anu_watchd.metrics")

PREFIX = "anu_watchd_"
# From bench/RESULTS.md: rename -> wake is ~1.7 ms at p50 and 4.3 ms at p99 on a quiet host,
# up to 50 ms on a busy one; retries back off 0.5-8 s and a sink call may take wake.timeout_s.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
SINK_OUTCOMES = ("registered", "transient", "permanent")
RESCAN_REASONS = ("startup", "overflow", "backstop", "enabled", "reload")
TEXTFILE_EVERY_S = 5.0
LISTING_BUDGET = 20  # a spool listing is reused for 20 times what it took: <= 5% of a core


class Metrics:
    """Every metric of one daemon, in its own registry; counters live as long as this object."""

    def __init__(self) -> None:
        # No ``_created`` series: they double the exposition and no rule here reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._results = Counter(
            PREFIX + "results", "Pipeline runs by verdict (one evidence line each).",
            ["verdict"], registry=r,
        )  # fmt: skip
        self._quarantines = Counter(
            PREFIX + "quarantines", "Inputs quarantined, by reason.", ["reason"], registry=r
        )
        self._attempts = Counter(
            PREFIX + "wake_attempts", "Sink register calls by sink and outcome.",
            ["sink", "outcome"], registry=r,
        )  # fmt: skip
        self._latency = Histogram(
            PREFIX + "wake_latency_seconds",
            "Seconds from a result's rename (its ctime) to its wake being recorded.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._sink_time = Histogram(
            PREFIX + "sink_call_seconds", "Seconds one sink register call took, by sink.",
            ["sink"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._overflows = Counter(
            PREFIX + "inotify_overflows", "Kernel inotify queue overflows (IN_Q_OVERFLOW).",
            registry=r,
        )  # fmt: skip
        self._rescans = Counter(
            PREFIX + "rescans", "Directory rescans by reason.", ["reason"], registry=r
        )
        self._last_scan = Gauge(
            PREFIX + "last_successful_scan_timestamp_seconds",
            "Unix time the last directory rescan listed the events directory.", registry=r,
        )  # fmt: skip
        self.runs_in_flight = 0
        runs = Gauge(PREFIX + "runs_in_flight", "Pipeline runs in progress.", registry=r)
        runs.set_function(lambda: float(self.runs_in_flight))
        self._queue = Gauge(PREFIX + "queue_depth", "Results queued for a run.", registry=r)
        info = Gauge(
            PREFIX + "build_info", "Always 1; the labels say which build runs.",
            ["version", "python"], registry=r,
        )  # fmt: skip
        info.labels(__version__, platform.python_version()).set(1)
        self._by_verdict = {v: self._results.labels(str(v)) for v in Verdict}
        self._by_reason = {str(q): self._quarantines.labels(str(q)) for q in QuarantineReason}
        for reason in RESCAN_REASONS:
            self._rescans.labels(reason)
        self._sink_children: dict[str, dict[str, Any]] = {}

    # -- recording: one call from each place that decides the fact ----------------------

    def finished(self, out: Outcome, renamed_ns: int | None = None) -> None:
        """One pipeline run ended with ``out``; ``renamed_ns``: the result's ctime, if read."""
        self._by_verdict[out.verdict].inc()
        if out.verdict is Verdict.QUARANTINE:
            child = self._by_reason.get(out.reason or "")
            if child is not None:
                child.inc()
        elif out.verdict is Verdict.WAKE_BUILT and renamed_ns is not None:
            self._latency.observe(max(0.0, (time.time_ns() - renamed_ns) / 1e9))

    def wake_attempt(self, sink: str, outcome: str, seconds: float) -> None:
        """One sink register call: its outcome (``SINK_OUTCOMES``) and how long it took."""
        children = self._sink_children.get(sink)
        if children is None:
            children = self._sink_children[sink] = self._children_for(sink)
        children[outcome].inc()
        children[""].observe(seconds)

    def _children_for(self, sink: str) -> dict[str, Any]:
        """The sink's series, created at 0 so a rate or an alert has a start."""
        found: dict[str, Any] = {o: self._attempts.labels(sink, o) for o in SINK_OUTCOMES}
        found[""] = self._sink_time.labels(sink)
        return found

    def overflowed(self) -> None:
        self._overflows.inc()

    def rescanned(self, reasons: list[str]) -> None:
        """A rescan listed the events directory (the backstop alert's heartbeat)."""
        for reason in reasons:
            if reason in RESCAN_REASONS:
                self._rescans.labels(reason).inc()
        self._last_scan.set(time.time())

    def runs_started(self, n: int) -> None:
        self.runs_in_flight += n  # on the event loop only: no lock needed

    def runs_ended(self, n: int) -> None:
        self.runs_in_flight -= n

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self._queue.set_function(lambda: float(depth()))

    def watch_spool(self, source: Callable[[], SpoolView | None]) -> None:
        """Compute the spool and ledger gauges from ``source()`` at every scrape."""
        self.registry.register(_SpoolCollector(source))

    def metered(self, sink: Sink, name: str) -> Sink:
        """``sink`` with every register call counted and timed."""
        self._sink_children.setdefault(name, self._children_for(name))
        return MeteredSink(sink, name, self)


class LedgerView(Protocol):
    """What the scrape-time gauges read of the ledger: its in-memory index, no I/O."""

    @property
    def lines(self) -> int: ...

    def counts(self) -> dict[str, int]: ...


@attrs.frozen
class SpoolView:
    """Where the scrape-time gauges come from: the events directory and the ledger."""

    events_dir: Path
    ledger: LedgerView


@attrs.frozen
class SpoolCounts:
    """Tasks by what their files say: the numbers ``status`` prints."""

    pending: int
    failed: int
    unacked: int


def count_spool(names: list[str]) -> SpoolCounts:
    """Pending (a result and no done/failed marker), failed, unacked, from file names (pure)."""

    def ids(suffix: str) -> set[str]:
        return {n[: -len(suffix)] for n in names if n.endswith(suffix)}

    done, failed = ids(DONE_SUFFIX), ids(FAILED_SUFFIX)
    results = ids(RESULT_SUFFIX)
    return SpoolCounts(len(results - done - failed), len(failed), len(done - ids(ACKED_SUFFIX)))


class _SpoolCollector(Collector):
    """The spool and ledger gauges. The listing is reused while younger than
    ``LISTING_BUDGET`` times what it took, so however often a scraper (or the textfile
    writer) asks, listing costs at most 1/LISTING_BUDGET of a core: nothing for a small
    spool, ~20 s of staleness for one of 100,000 tasks (bench/PROFILE.md, section 7)."""

    def __init__(self, source: Callable[[], SpoolView | None]) -> None:
        self._source = source
        self._lock = threading.Lock()  # the HTTP server and the textfile writer may both ask
        self._counts = SpoolCounts(0, 0, 0)
        self._fresh_until = 0.0

    def describe(self) -> list[Any]:
        return []  # computed at collect time only; nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        view = self._source()
        if view is None:
            return
        c = self._spool_counts(view.events_dir)
        yield _gauge("pending_results", "Results with no done or failed marker.", c.pending)
        yield _gauge("failed_tasks", "Tasks with a failed marker (FIRE_FAILED).", c.failed)
        yield _gauge("unacked_tasks", "Woken tasks the collector has not acked.", c.unacked)
        yield _gauge("ledger_entries", "Lines in the ledger.", view.ledger.lines)
        keys = GaugeMetricFamily(
            PREFIX + "ledger_keys", "Idempotency keys by their latest state.", labels=["state"]
        )
        for state, n in view.ledger.counts().items():
            keys.add_metric([state], n)
        yield keys

    def _spool_counts(self, events_dir: Path) -> SpoolCounts:
        with self._lock:
            t0 = time.monotonic()
            if t0 >= self._fresh_until:
                try:
                    names = os.listdir(events_dir)
                except OSError:
                    names = []
                self._counts = count_spool(names)
                self._fresh_until = t0 + (time.monotonic() - t0) * LISTING_BUDGET
            return self._counts


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help_, value=value)


class MeteredSink:
    """A sink whose register calls are counted by outcome and timed; otherwise the same."""

    def __init__(self, inner: Sink, name: str, metrics: Metrics) -> None:
        self.inner = inner
        self._name = name
        self._metrics = metrics

    @property
    def delivery_method(self) -> str:
        return self.inner.delivery_method

    @property
    def supports_update(self) -> bool:
        return self.inner.supports_update

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        t0 = time.perf_counter()
        outcome = "permanent"
        try:
            schedule_id = await self.inner.register(envelope, idempotency_key=idempotency_key)
            outcome = "registered" if schedule_id else "permanent"
            return schedule_id
        except TransientWakeError:
            outcome = "transient"
            raise
        except PermanentWakeError:
            raise
        finally:
            self._metrics.wake_attempt(self._name, outcome, time.perf_counter() - t0)

    async def update(self, envelope: bytes, *, idempotency_key: str) -> None:
        await self.inner.update(envelope, idempotency_key=idempotency_key)

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- export ---------------------------------------------------------------------------


class Exporter:
    """Serves and/or writes one registry as ``[metrics]`` says; ``apply`` rebinds on reload."""

    def __init__(self, registry: CollectorRegistry, *, every_s: float = TEXTFILE_EVERY_S) -> None:
        self.registry = registry
        self.every_s = every_s
        self.listen = ""
        self.textfile: Path | None = None
        self._server: WSGIServer | None = None
        self._writer: threading.Thread | None = None
        self._stop_writer = threading.Event()

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the endpoint listens (the real port when ``listen`` asked for port 0)."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def apply(self, cfg: MetricsConfig) -> None:
        """Bind what ``cfg`` asks for; keep what did not change. Never raises: logs instead."""
        if cfg.listen != self.listen:
            self._close_server()
            self._open_server(cfg.listen)
        textfile = cfg.textfile if cfg.textfile != Path() else None
        if textfile != self.textfile:
            self._stop_textfile()
            self.textfile = textfile
            if textfile is not None:
                self._start_textfile()

    def close(self) -> None:
        """Stop serving; write the textfile one last time (the final counts)."""
        self._close_server()
        self._stop_textfile()

    def _open_server(self, listen: str) -> None:
        self.listen = listen
        if not listen:
            return
        try:
            host, port = parse_listen(listen)
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except (OSError, ValueError) as exc:
            # Metrics are not worth stopping wakes for; Prometheus' `up` shows the gap.
            _log.error("metrics_listen_failed", listen=listen, error=str(exc))
            return
        _log.info("metrics_listening", listen=listen, address=list(self.address or ()))

    def _close_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.listen = ""

    def _start_textfile(self) -> None:
        self.write_textfile()  # there once apply() returns
        self._stop_writer = threading.Event()
        self._writer = threading.Thread(
            target=self._write_loop, args=(self._stop_writer,), name="metrics-textfile", daemon=True
        )
        self._writer.start()

    def _stop_textfile(self) -> None:
        if self._writer is None:
            return
        self._stop_writer.set()
        self._writer.join()
        self._writer = None
        self.write_textfile()

    def _write_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.every_s):
            self.write_textfile()

    def write_textfile(self) -> None:
        """Write the textfile now: tmp in the same directory, then rename over the old one."""
        if self.textfile is None:
            return
        try:
            write_to_textfile(str(self.textfile), self.registry)
        except OSError as exc:
            _log.warning("metrics_textfile_unwritten", path=str(self.textfile), error=str(exc))
