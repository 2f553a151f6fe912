"""Build the pipeline's stages from a config: the wiring shared by the daemon and one-shot commands.

Opening a runtime loads the sealed key, recovers the ledger and opens the
evidence log; closing it flushes and closes both. The caller must already
hold the instance lock: the ledger has a single writer.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anu_watchd.appendlog import AppendLog
from anu_watchd.config import Config
from anu_watchd.errors import DurabilityError
from anu_watchd.ledger import Ledger
from anu_watchd.metrics import Metrics
from anu_watchd.pipeline import Pipeline, Stages
from anu_watchd.projections import ProjectionWriter
from anu_watchd.secret import SealedKey
from anu_watchd.sinks import build_sink
from anu_watchd.validate import Rules


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
    # writer thread, stops the others before their next one (SPEC section 7).
    fail_stop = threading.Event()
    ledger = Ledger.open(config.spool.ledger, fail_stop=fail_stop)
    evidence = AppendLog.open(config.spool.evidence_log, fail_stop=fail_stop)
    metrics = metrics or Metrics()
    sink = metrics.metered(build_sink(config, key), config.wake.sink)
    projections = ProjectionWriter(fail_stop)
    try:
        yield Pipeline(
            Stages(
                config=config,
                ledger=ledger,
                evidence=evidence,
                sink=sink,
                rules=rules_for(config, key),
                projections=projections,
                metrics=metrics,
            )
        )
    except DurabilityError as exc:
        # Fail-stop (SPEC section 7): lines other runs queued are dropped, not flushed.
        ledger.halt(exc)
        evidence.halt(exc)
        projections.halt(exc)
        raise
    finally:
        await sink.aclose()
        await projections.aclose()
        await evidence.aclose()
        await ledger.aclose()
    if fail_stop.is_set() and not projections.halted:
        # A write failed in its thread after the run waiting for it was cancelled (a drain
        # that timed out): nobody raised, nobody halted, but it is no less fatal (exit 70).
        # (Every fatal error that was seen went through halt(): it is already handled.)
        raise DurabilityError("a state write failed after its run was cancelled (logged above)")
