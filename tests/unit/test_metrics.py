"""The metrics module: recording, the metered sink, scrape-time gauges and the textfile."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from anu_watchd.config import MetricsConfig
from anu_watchd.errors import PermanentWakeError, TransientWakeError
from anu_watchd.metrics import Exporter, Metrics, SpoolView, count_spool
from anu_watchd.model import Outcome, Verdict


def _value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def _outcome(verdict: Verdict, reason: str | None = None) -> Outcome:
    return Outcome(run_id="r", path="p", task_id="task-1", verdict=verdict, ts="t", reason=reason)


def test_two_daemons_do_not_share_counters() -> None:
    """Each Metrics has its own registry: one daemon's counts never show in another's."""
    a, b = Metrics(), Metrics()
    a.finished(_outcome(Verdict.WAKE_BUILT))
    assert _value(a, "anu_watchd_results_total", verdict="WAKE_BUILT") == 1
    assert _value(b, "anu_watchd_results_total", verdict="WAKE_BUILT") == 0


def test_a_quarantine_counts_its_verdict_and_its_reason() -> None:
    """A QUARANTINE outcome adds one to its verdict and one to its reason; others stay 0."""
    m = Metrics()
    m.finished(_outcome(Verdict.QUARANTINE, "INVALID_JSON"))
    assert _value(m, "anu_watchd_quarantines_total", reason="INVALID_JSON") == 1
    assert _value(m, "anu_watchd_quarantines_total", reason="SCHEMA") == 0


def test_wake_latency_is_observed_only_for_a_wake_with_a_rename_time() -> None:
    """The latency histogram counts WAKE_BUILT runs whose result was read, nothing else."""
    m = Metrics()
    m.finished(_outcome(Verdict.WAKE_BUILT), renamed_ns=1)
    m.finished(_outcome(Verdict.WAKE_BUILT))
    m.finished(_outcome(Verdict.FIRE_FAILED), renamed_ns=1)
    assert _value(m, "anu_watchd_wake_latency_seconds_count") == 1


class _Sink:
    delivery_method = "log"
    supports_update = False

    def __init__(self, answers: list[str | Exception]) -> None:
        self.answers = answers

    async def register(self, envelope: bytes, *, idempotency_key: str) -> str:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def update(self, envelope: bytes, *, idempotency_key: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_the_metered_sink_counts_each_outcome_and_times_each_call() -> None:
    """Registered, transient and permanent calls are counted apart; every call is timed."""
    m = Metrics()
    sink = m.metered(_Sink(["s1", TransientWakeError("t"), PermanentWakeError("p")]), "log")
    assert await sink.register(b"{}", idempotency_key="k") == "s1"
    for exc in (TransientWakeError, PermanentWakeError):
        with pytest.raises(exc):
            await sink.register(b"{}", idempotency_key="k")
    for outcome in ("registered", "transient", "permanent"):
        assert _value(m, "anu_watchd_wake_attempts_total", sink="log", outcome=outcome) == 1
    assert _value(m, "anu_watchd_sink_call_seconds_count", sink="log") == 3


def test_a_metered_sink_starts_its_series_at_zero() -> None:
    """Wrapping a sink creates its series at 0, so a rate or an alert has a start."""
    m = Metrics()
    m.metered(_Sink([]), "exec")
    assert _value(m, "anu_watchd_wake_attempts_total", sink="exec", outcome="permanent") == 0


@pytest.mark.parametrize(
    ("names", "pending", "failed", "unacked"),
    [
        ([], 0, 0, 0),
        (["task-1.result.json"], 1, 0, 0),
        (["task-1.result.json", "task-1.pickup.done"], 0, 0, 1),
        (["task-1.result.json", "task-1.pickup.done", "task-1.pickup.acked"], 0, 0, 0),
        (["task-1.result.json", "task-1.pickup.failed"], 0, 1, 0),
        (["task-2.pickup.done", "task-2.callback-envelope.json", "x.tmp"], 0, 0, 1),
    ],
)
def test_spool_counts_from_names(names: list[str], pending: int, failed: int, unacked: int) -> None:
    """Pending, failed and unacked come from the names alone, as `status` counts them."""
    c = count_spool(names)
    assert (c.pending, c.failed, c.unacked) == (pending, failed, unacked)


class _Ledger:
    lines = 7

    def counts(self) -> dict[str, int]:
        return {"CLAIMED": 1, "DONE": 2, "FAILED": 0, "RETRY": 0}


def test_spool_gauges_are_computed_at_scrape_time(tmp_path: Path) -> None:
    """The spool and ledger gauges follow the directory and the index, scrape by scrape."""
    m = Metrics()
    m.watch_spool(lambda: SpoolView(tmp_path, _Ledger()))
    assert _value(m, "anu_watchd_pending_results") == 0
    (tmp_path / "task-1.result.json").write_text("{}")
    # A listing is reused for 20 times what it took (here well under a millisecond).
    deadline = time.monotonic() + 5
    while _value(m, "anu_watchd_pending_results") != 1:
        assert time.monotonic() < deadline, "the new result was never counted"
    assert _value(m, "anu_watchd_ledger_entries") == 7
    assert _value(m, "anu_watchd_ledger_keys", state="DONE") == 2


def test_the_textfile_is_never_torn(tmp_path: Path) -> None:
    """A reader that reads the textfile while it is rewritten always sees a whole exposition."""
    m = Metrics()
    for i in range(300):  # a file of ~40 KiB: a torn write would show
        m.wake_attempt(f"sink{i}", "registered", 0.001)
    whole = generate_latest(m.registry).decode()  # nothing changes: every read must equal it
    ex = Exporter(m.registry, every_s=0.0005)
    path = tmp_path / "anu.prom"
    ex.apply(MetricsConfig(textfile=path))
    reads, stop = [0], threading.Event()

    def read() -> None:
        while not stop.is_set() or reads[0] < 200:
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            assert text == whole
            reads[0] += 1

    try:
        reader = threading.Thread(target=read)
        reader.start()
        stop.set()
        reader.join(60)
    finally:
        ex.close()
    assert reads[0] >= 200
    assert len(list(text_string_to_metric_families(whole))) > 10
    assert not [p for p in tmp_path.iterdir() if p != path]  # no temp file left behind


def test_changing_the_textfile_path_moves_the_writer(tmp_path: Path) -> None:
    """apply() with a new textfile writes the new path and stops writing the old one."""
    m = Metrics()
    ex = Exporter(m.registry, every_s=60)
    ex.apply(MetricsConfig(textfile=tmp_path / "a.prom"))
    assert (tmp_path / "a.prom").exists()
    ex.apply(MetricsConfig(textfile=tmp_path / "b.prom"))
    (tmp_path / "a.prom").unlink()
    m.overflowed()
    ex.close()
    assert not (tmp_path / "a.prom").exists()
    assert "anu_watchd_inotify_overflows_total 1.0" in (tmp_path / "b.prom").read_text()


def test_a_slow_listing_is_reused_for_twenty_times_its_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However often scraped, a listing that took 50 ms is not repeated within a second."""
    calls = []

    def slow_listdir(path: Path) -> list[str]:
        calls.append(path)
        time.sleep(0.05)  # a big spool on a slow disk (the fault this seam injects)
        return ["task-1.result.json"]

    monkeypatch.setattr("anu_watchd.metrics.os.listdir", slow_listdir)
    m = Metrics()
    m.watch_spool(lambda: SpoolView(tmp_path, _Ledger()))
    t0 = time.monotonic()
    for _ in range(5):
        assert _value(m, "anu_watchd_pending_results") == 1
    if time.monotonic() - t0 < 1.0:  # all five inside the reuse window
        assert len(calls) == 1
