"""The one wiring place: build the stages for a config, rebuild them for a reload, halt them.

``open_pipeline`` recovers the ledger, opens the evidence log and the sink
and yields a ready ``Pipeline``; closing it flushes and closes them all.
``rebuilt`` is a reload: the same durable writers, a new config, sink and
rules. ``Stages.halt`` is the fail-stop. The caller must already hold the
instance lock: the ledger has a single writer. Both the daemon and the
one-shot commands wire through here.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs

from anu_watchd.appendlog import AppendLog
from anu_watchd.config import Config
from anu_watchd.errors import DurabilityError
from anu_watchd.ledger import Ledger
from anu_watchd.metrics import Metrics
from anu_watchd.pipeline import Pipeline
from anu_watchd.projections import ProjectionWriter
from anu_watchd.secret import SealedKey
from anu_watchd.sinks import Sink, build_sink
from anu_watchd.stages import Stages, Users
from anu_watchd.validate import Rules

# Pipeline runs in flight at once (the daemon's batches, a scan's fan-out). Sink calls are bounded
# separately by wake.concurrency; more runs than sink slots lets the durable writes of many
# runs share group commits (docs/design.md, "Runs and wake slots").
RUNS_IN_FLIGHT = 32


def rules_for(config: Config, key: SealedKey | None) -> Rules:
    spool = config.spool
    return Rules(
        collector=spool.collector,
        executors=spool.executors,
        max_bytes=spool.max_result_bytes,
        key=key.bytes if key is not None else None,
    )


def ensure_dirs(config: Config) -> None:
    """Create the spool's directories; the daemon owns them."""
    spool = config.spool
    for d in (
        spool.events_dir,
        spool.quarantine_dir,
        spool.ledger.parent,
        spool.evidence_log.parent,
        spool.lock_file.parent,
        spool.enable_flag.parent,
    ):
        d.mkdir(parents=True, exist_ok=True)


@asynccontextmanager
async def open_pipeline(
    config: Config, key: SealedKey | None, metrics: Metrics | None = None
) -> AsyncIterator[Pipeline]:
    """Recover the ledger and yield a ready Pipeline; flush and close on exit."""
    ensure_dirs(config)
    # One fail-stop flag for every durable writer: the first failed write or fsync, in any
    # writer thread, stops the others before their next one (docs/durability.md).
    fail_stop = threading.Event()
    ledger = Ledger.open(config.spool.ledger, fail_stop=fail_stop)
    # Not fsynced a line: made durable by the projection batches' syncfs (docs/durability.md).
    evidence = AppendLog.open(
        config.spool.evidence_log, fail_stop=fail_stop, synced=False, thread_name="anu-evidence"
    )
    metrics = metrics or Metrics()
    sink = metrics.metered(build_sink(config, key), config.wake.sink)
    projections = ProjectionWriter(
        fail_stop, ledger=config.spool.ledger, ledger_end=lambda: ledger.durable_end
    )
    stages = Stages(
        config=config,
        ledger=ledger,
        evidence=evidence,
        sink=sink,
        rules=rules_for(config, key),
        projections=projections,
        metrics=metrics,
    )
    try:
        yield Pipeline(stages)
    except DurabilityError as exc:
        # Fail-stop (docs/durability.md): lines other runs queued are dropped, not flushed.
        stages.halt(exc)
        raise
    finally:
        await sink.aclose()
        await projections.aclose()
        # The ledger first: a failed fsync at the evidence log's close (it has no other)
        # sets the fail-stop flag, which would drop the ledger's last queued lines.
        await ledger.aclose()
        await evidence.aclose()
    if fail_stop.is_set() and not projections.halted:
        # A write failed in its thread after the run waiting for it was cancelled (a drain
        # that timed out): nobody raised, nobody halted, but it is no less fatal (exit 70).
        # (Every fatal error that was seen went through halt(): it is already handled.)
        raise DurabilityError("a state write failed after its run was cancelled (logged above)")


def rebuilt(stages: Stages, new: Config, key: SealedKey | None, sink: Sink) -> Stages:
    """The stages for a reloaded config: the same durable writers and task locks.

    ``sink`` comes from ``sinks.rebuild_sink`` (the running one when it still fits),
    built by the caller before the swap so that a sink that cannot be built refuses
    the reload. The caller retires the old sink once the new stages are in place.
    """
    return attrs.evolve(stages, config=new, sink=sink, rules=rules_for(new, key), users=Users())
