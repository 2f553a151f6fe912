"""One result through validate -> quarantine -> dedupe -> wake.

``Pipeline.pickup`` runs a single file and returns its ``Outcome`` (or None
when there was nothing to do: not an input, vanished, already settled in a
scan, driver disabled). ``Pipeline.start_many`` starts every file a daemon's
queue holds at once: the front half of each run (read, hash, validate,
decide, envelope) in one pass on the loop, every wake's CLAIMED line in one
ledger append, then one ``Begun`` a run to finish by itself. Both paths share
one judgement (``_judge``). Every run that decides something writes exactly
one evidence line and one canonical log line.

Order of effects for a wake, so that a crash anywhere is recoverable from
the ledger alone: ledger CLAIMED (durable) -> sink -> ledger DONE/FAILED
(durable) -> marker -> envelope file. Markers and envelopes are projections,
made durable in bulk by the projection writer; recovery rebuilds them. A
failure to write any of them is a DurabilityError and stops the daemon
(docs/durability.md).
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import attrs
import structlog

from anu_watchd import decide, envelope, fsio, markers, quarantine
from anu_watchd.decide import NotActivated, RunFacts, Skip
from anu_watchd.errors import (
    EnvelopeError,
    InputReplacedError,
    InputVanishedError,
    UnsafeInputError,
)
from anu_watchd.escalate import escalate
from anu_watchd.fsio import durable
from anu_watchd.model import (
    TASK_ID_RE,
    FourTuple,
    LedgerEntry,
    LedgerState,
    Outcome,
    QuarantineReason,
    Rejected,
    Result,
    Verdict,
    iso,
)
from anu_watchd.sinks.base import RetryPolicy, WakeFailed, register_with_retries
from anu_watchd.slots import Slots
from anu_watchd.spool import (
    FileStamp,
    TaskFiles,
    is_enabled,
    is_result_name,
    settling_for,
    task_id_from_name,
)
from anu_watchd.stages import Stages
from anu_watchd.validate import validate

_log = structlog.get_logger("anu_watchd.pipeline")
# A rescan's hook for a result that may still be being written: (path, seconds to wait).
Settle = Callable[[Path, float], None]
# What a file whose name holds the sealed key is called everywhere after it is seen.
KEY_IN_NAME = "key-literal-in-name"
# Judgements of one path replaced before its quarantine, before it counts as vanished.
_JUDGE_TRIES = 4


class _Run:
    """One run: the stages it started with (a reload never changes them mid-run), id, clock.

    What the run learns (the hash, the key) is bound to its log as it goes; the one
    shared ending, ``Pipeline._finish``, turns its ``facts`` into the run's ``Outcome``.
    """

    def __init__(self, st: Stages, path: Path, task_id: str | None) -> None:
        self.st = st
        # 64 random bits, as uuid4().hex[:16] gave, without its getrandom() call a run: a
        # run id only tells runs apart in the logs, it guards nothing.
        self.run_id = f"{random.getrandbits(64):016x}"
        self.t0 = time.perf_counter()
        self.path = str(path)
        self.task_id = task_id
        self.sha256: str | None = None
        self.key: str | None = None
        self.renamed_ns: int | None = None  # the result's ctime: its rename, for the latency
        self.debt: int | None = None  # a projection owed for its terminal ledger line
        self.log = _log.bind(run_id=self.run_id, path=self.path, task_id=task_id)
        # A fleet host names itself in its logs and evidence (docs/operations.md, "Fleet").
        self.host_id = st.config.wake.nats.host_id if st.sink.delivery_method == "nats" else None
        if self.host_id is not None:
            self.log = self.log.bind(host_id=self.host_id)

    def hashed(self, sha256: str) -> None:
        self.sha256 = sha256
        self.log = self.log.bind(sha256=sha256)

    def keyed(self, key: str) -> None:
        self.key = key
        self.log = self.log.bind(idempotency_key=key)

    @property
    def facts(self) -> RunFacts:
        return RunFacts(self.run_id, self.path, self.task_id, self.sha256, self.key, self.host_id)

    def now(self) -> str:
        return iso(self.st.clock())

    @property
    def duration_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0


@attrs.frozen
class _Claim:
    """A wake judged and ready: its CLAIMED line to record, then the sink to call."""

    run: _Run
    files: TaskFiles
    env: dict[str, Any]
    stamp: FileStamp
    claimed: LedgerEntry


# What a run's judgement leaves to do: nothing, a wake to claim, or the rest of the run
# (a quarantine, a skip's repair, ...) as the coroutine that does it.
Step = _Claim | Coroutine[Any, Any, Outcome | None] | None


class _Held:
    """One task's lock and one count of the stages' users, taken by a batch, given back once."""

    __slots__ = ("_st", "task_id")

    def __init__(self, st: Stages, task_id: str) -> None:
        st.users.enter()
        self._st: Stages | None = st
        self.task_id = task_id

    def release(self) -> None:
        if self._st is not None:
            self._st.task_locks.release(self.task_id)
            self._st.users.leave()
            self._st = None


class Begun:
    """One run ``start_many`` started: ``finish()`` runs the rest of it.

    ``abandon()`` lets go of what the run holds (its task's lock) when ``finish()``
    never ran, as when its task was cancelled before its first step; after
    ``finish()`` it does nothing.
    """

    __slots__ = ("_held", "_rest", "_step")

    def __init__(
        self, rest: Coroutine[Any, Any, Outcome | None], step: Step, held: _Held | None
    ) -> None:
        self._rest = rest
        self._step = step  # what ``rest`` awaits: closed with it if it never ran
        self._held = held

    async def finish(self) -> Outcome | None:
        try:
            return await self._rest
        finally:
            self.abandon()

    def abandon(self) -> None:
        # No-ops once they ran; unstarted ones are closed, not left "never awaited".
        self._rest.close()
        if isinstance(self._step, Coroutine):
            self._step.close()
        if self._held is not None:
            self._held.release()
            self._held = None


class Pipeline:
    """Runs results through the stages; at most one run per task id at a time."""

    def __init__(self, stages: Stages) -> None:
        self._stages = stages
        self._slots = Slots(stages.config.wake.concurrency)

    @property
    def stages(self) -> Stages:
        return self._stages

    @stages.setter
    def stages(self, new: Stages) -> None:
        """Swap the stages (a reload); a new ``wake.concurrency`` binds every waiting call."""
        self._slots.resize(new.config.wake.concurrency)
        self._stages = new

    # -- the entry point ----------------------------------------------------------

    async def pickup(
        self, path: Path, *, scan: bool = False, settle: Settle | None = None
    ) -> Outcome | None:
        """Run one file; ``scan=True`` skips, silently and unhashed, a file already settled.

        ``settle`` (a rescan's run) is handed an invalid result changed within
        ``spool.settle_s`` instead of quarantining it, with the seconds left to wait.
        """
        st = self.stages
        if not is_enabled(st.config.spool.enable_flag):
            _log.debug("pickup_disabled", path=str(path))
            return None
        if not is_result_name(path.name, st.config.spool.result_glob):
            return None
        if _name_holds_key(path.name, st.rules.key):
            return await self._reject_key_in_name(path)
        task_id = task_id_from_name(path.name)
        with st.users.hold():  # a reload retires this stages' sink only after its runs
            async with st.task_locks.hold(task_id or path.name):
                if task_id is None:
                    return await self._reject_name(path)
                return await self._run(path, task_id, scan=scan, settle=settle)

    async def start_many(self, items: Sequence[tuple[Path, Settle | None]]) -> list[Begun]:
        """Start a daemon queue's files as one batch (each a ``scan=True`` run): a ``Begun`` each.

        The front half of every run in one pass on the loop, without an await, then the
        CLAIMED lines of all its wakes in one ledger append (durable when this returns),
        so that a file costs neither a task of its own until its sink call nor a ledger
        waiter. A file whose task lock is taken (its ack, or an earlier run still at its
        sink), or whose name is not a plain result's, gets a plain ``pickup`` instead.
        Each ``Begun`` holds its task's lock until it is finished (or abandoned).
        """
        st = self.stages
        if not is_enabled(st.config.spool.enable_flag):
            for path, _ in items:
                _log.debug("pickup_disabled", path=str(path))
            return []
        begun: list[tuple[Step, Path, _Held | None, Settle | None]] = []
        try:
            for path, settle in items:
                task_id = self._plain_task_id(st, path)
                if task_id is None or not st.task_locks.try_take(task_id):
                    begun.append((self.pickup(path, scan=True, settle=settle), path, None, settle))
                    continue
                held = _Held(st, task_id)
                begun.append((None, path, held, settle))  # before _judge: a raise gives it back
                step = self._judge(_Run(st, path, task_id), path, task_id, scan=True, settle=settle)
                begun[-1] = (step, path, held, settle)
            claims = [step.claimed for step, *_ in begun if isinstance(step, _Claim)]
            if claims:
                await st.ledger.record_many(claims)
        except BaseException:
            for started, _, taken, _ in begun:
                if isinstance(started, Coroutine):
                    started.close()
                if taken is not None:
                    taken.release()
            raise
        return [
            Begun(self._rest(step, path, held, settle), step, held)
            for step, path, held, settle in begun
        ]

    async def _rest(
        self, step: Step, path: Path, held: _Held | None, settle: Settle | None
    ) -> Outcome | None:
        """The rest of a run ``start_many`` judged (a claim's line is already recorded)."""
        if held is None:  # a plain pickup, whole
            return await self._go(step)
        try:
            if isinstance(step, _Claim):
                return await self._claimed(step)
            return await self._go(step)
        except InputReplacedError as exc:
            _log.info("result_replaced_before_quarantine", path=str(path), error=str(exc))
            tries = _JUDGE_TRIES - 1
            return await self._run(path, held.task_id, scan=True, settle=settle, tries=tries)

    def _plain_task_id(self, st: Stages, path: Path) -> str | None:
        """The task id of a result name with nothing unusual about it, else None."""
        name = path.name
        if not is_result_name(name, st.config.spool.result_glob) or _name_holds_key(
            name, st.rules.key
        ):
            return None
        return task_id_from_name(name)

    # -- read -> validate -> decide -> act ----------------------------------------

    async def _run(
        self,
        path: Path,
        task_id: str,
        *,
        scan: bool,
        settle: Settle | None,
        tries: int = _JUDGE_TRIES,
    ) -> Outcome | None:
        """Judge the file at ``path``; again if it was replaced before its quarantine moved it."""
        for _ in range(tries):
            try:
                return await self._run_once(path, task_id, scan=scan, settle=settle)
            except InputReplacedError as exc:
                _log.info("result_replaced_before_quarantine", path=str(path), error=str(exc))
        # Replaced at every try: the last replace brings its own event.
        return None

    async def _run_once(
        self, path: Path, task_id: str, *, scan: bool, settle: Settle | None
    ) -> Outcome | None:
        run = _Run(self.stages, path, task_id)
        return await self._go(self._judge(run, path, task_id, scan=scan, settle=settle))

    async def _go(self, step: Step) -> Outcome | None:
        """Carry a judged run to its end: claim its wake, or await what is left of it."""
        if isinstance(step, _Claim):
            return await self._claim(step)
        return await step if step is not None else None

    def _judge(
        self, run: _Run, path: Path, task_id: str, *, scan: bool, settle: Settle | None
    ) -> Step:
        """Read, hash, validate and decide, without an await: the front half of a run.

        A plain wake comes back as the ``_Claim`` to record; whatever needs an await
        first (a quarantine, a skip's repairs, a planted directory, a stale ack) as the
        coroutine that finishes the run.
        """
        st = run.st
        files = TaskFiles(path.parent, task_id)
        try:
            # On the loop, not in a thread: a just-written result of a few KiB is in the page
            # cache, opened O_NONBLOCK, and a thread hop costs more than the read (~0.14 ms).
            inp = _read_unless_settled(path, files, st, scan)
        except InputVanishedError:
            run.log.info("result_vanished")
            return None
        except UnsafeInputError as exc:
            rej = Rejected(exc.reason, exc.detail)
            return self._quarantine(run, path, rej, judged=exc.judged)
        except OSError as exc:
            rej = Rejected(QuarantineReason.UNREADABLE, f"cannot read: {exc.strerror or exc}")
            return self._quarantine(run, path, rej)
        if inp is None:
            return None
        run.renamed_ns = inp.st.st_ctime_ns
        run.hashed(hashlib.sha256(inp.data).hexdigest())
        checked = validate(inp.data, task_id=task_id, rules=st.rules)
        if isinstance(checked, Rejected):
            wait_s = _settling(inp, st, settle)
            if settle is not None and wait_s > 0:
                run.log.info("result_unsettled", reason=str(checked.reason), recheck_in_s=wait_s)
                settle(path, wait_s)
                return None
            return self._quarantine(run, path, checked, judged=fsio.identity(inp.st))
        four = FourTuple(checked.task_id, run.sha256 or "", st.config.spool.collector)
        run.keyed(four.idempotency_key)
        acked, planted = _state_paths(files)
        stamp = FileStamp.of(inp.st)
        if planted:
            return self._clear_way(run, files, checked, four, stamp, planted, acked)
        return self._decide(run, files, checked, four, stamp, acked)

    def _decide(
        self,
        run: _Run,
        files: TaskFiles,
        result: Result,
        four: FourTuple,
        stamp: FileStamp,
        acked: bool,
    ) -> Step:
        prior = run.st.ledger.get(four.idempotency_key)
        decision = decide.decide(prior, activated=run.st.config.wake.activated)
        if isinstance(decision, Skip):
            return self._skip(run, files, result, stamp, decision)
        env = self._envelope(run, files, result)
        if isinstance(decision, NotActivated):
            return self._not_activated(run, env, decision)
        claimed = _entry(four, LedgerState.CLAIMED, decision.attempt, run.now())
        claim = _Claim(run, files, env, stamp, claimed)
        if decision.new_wake and acked:
            return self._unack(claim)
        return claim

    async def _reject_name(self, path: Path) -> Outcome | None:
        run = _Run(self.stages, path, None)
        detail = f"file name's task id does not match {TASK_ID_RE.pattern}"
        return await self._quarantine(run, path, Rejected(QuarantineReason.SCHEMA, detail))

    async def _reject_key_in_name(self, path: Path) -> Outcome | None:
        """The name itself holds the key: quarantine under a neutral name, log no name."""
        run = _Run(self.stages, path.parent / KEY_IN_NAME, None)
        rej = Rejected(QuarantineReason.KEY_LITERAL, "the sealed key appears in the file name")
        return await self._quarantine(run, path, rej, as_name=KEY_IN_NAME)

    async def _quarantine(
        self,
        run: _Run,
        path: Path,
        rej: Rejected,
        as_name: str | None = None,
        judged: tuple[int, int] | None = None,
    ) -> Outcome | None:
        """Move the judged file aside (InputReplacedError if the path holds another now)."""
        qdir = run.st.config.spool.quarantine_dir
        now = run.st.clock()
        try:
            dest = await durable(
                quarantine.quarantine,
                path,
                qdir,
                rej.reason,
                rej.detail,
                now=now,
                as_name=as_name,
                judged=judged,
            )
        except InputVanishedError:
            run.log.info("result_vanished")
            return None
        run.log.warning(
            "result_quarantined",
            reason=str(rej.reason),
            detail=rej.detail,
            quarantined_as=dest.name,
        )
        return await self._finish(run, Verdict.QUARANTINE, reason=str(rej.reason), error=rej.detail)

    async def _skip(
        self, run: _Run, files: TaskFiles, result: Result, stamp: FileStamp, decision: Skip
    ) -> Outcome:
        error = await markers.repair_marker(files, decision.prior, stamp)
        make_env = functools.partial(self._envelope, run, files, result)
        await markers.repair_envelope(files, decision.prior, make_env, error, run.log)
        schedule_id = decision.prior.schedule_id
        return await self._finish(
            run, Verdict.PICKUP_SKIP, reason=decision.reason, schedule_id=schedule_id
        )

    async def _clear_way(
        self,
        run: _Run,
        files: TaskFiles,
        result: Result,
        four: FourTuple,
        stamp: FileStamp,
        planted: list[Path],
        acked: bool,
    ) -> Outcome | None:
        """Quarantine the directories planted where this task's markers or envelope go.

        We never make one there, and a rename or unlink onto a directory fails (EISDIR):
        left in place it would stop the daemon at every start. Other kinds of file are
        simply replaced by the rename.
        """
        for path in planted:
            dest = await durable(
                quarantine.quarantine,
                path,
                run.st.config.spool.quarantine_dir,
                QuarantineReason.NOT_REGULAR_FILE,
                "a directory where the daemon writes this task's state",
                now=run.st.clock(),
            )
            run.log.warning(
                "state_path_quarantined", state_path=path.name, quarantined_as=dest.name
            )
        return await self._go(self._decide(run, files, result, four, stamp, acked))

    async def _unack(self, claim: _Claim) -> Outcome:
        # A new wake of this task (new bytes): an ack already here answered an earlier one.
        # Known from _state_paths' lstat: a thread hop on every wake's latency path costs more.
        await durable(fsio.remove_durably, claim.files.acked)
        return await self._claim(claim)

    async def _claim(self, claim: _Claim) -> Outcome:
        await claim.run.st.ledger.record(claim.claimed)
        return await self._claimed(claim)

    async def _claimed(self, claim: _Claim) -> Outcome:
        """A wake whose CLAIMED line is durable: the sink, then its terminal line."""
        run, files, env, stamp = claim.run, claim.files, claim.env, claim.stamp
        claimed = claim.claimed
        try:
            body = envelope.encode(env)
        except EnvelopeError as exc:
            failed = await self._settle(run, claimed, LedgerState.FAILED)
            return await self._fire_failed(run, files, failed, env, stamp, str(exc), 0)
        terminal, attempts, error = await self._wake(run, claimed, body)
        if error is not None:
            return await self._fire_failed(run, files, terminal, env, stamp, error, attempts)
        return await self._wake_built(run, files, terminal, env, stamp, attempts)

    async def _wake(
        self, run: _Run, claimed: LedgerEntry, body: bytes
    ) -> tuple[LedgerEntry, int, str | None]:
        """Register with retries and record the outcome: (DONE or FAILED entry, attempts, error).

        The wake slot is held until the outcome is durable, so a crash repeats at most
        ``wake.concurrency`` sink calls however many runs are in flight (docs/durability.md).
        """
        wake = run.st.config.wake
        policy = RetryPolicy(wake.attempts, wake.backoff_initial_s, wake.backoff_max_s)
        async with self._slots:
            try:
                schedule_id, attempts = await register_with_retries(
                    run.st.sink,
                    body,
                    idempotency_key=claimed.key,
                    policy=policy,
                    sleep=run.st.sleep,
                    on_retry=lambda n, e: run.log.warning("wake_retrying", attempt=n, error=str(e)),
                )
            except WakeFailed as failed:
                entry = await self._settle(run, claimed, LedgerState.FAILED)
                return entry, failed.attempts, str(failed.error)
            return await self._settle(run, claimed, LedgerState.DONE, schedule_id), attempts, None

    async def _settle(
        self, run: _Run, claimed: LedgerEntry, state: LedgerState, schedule_id: str | None = None
    ) -> LedgerEntry:
        """Record the terminal ledger line of a claimed wake (durable when this returns)."""
        entry = attrs.evolve(claimed, state=state, schedule_id=schedule_id, ts=run.now())
        run.debt = run.st.projections.owe()  # before the line: the watermark stays behind it
        await run.st.ledger.record(entry)
        return entry

    # -- the endings ----------------------------------------------------------------

    async def _not_activated(
        self, run: _Run, env: dict[str, Any], decision: NotActivated
    ) -> Outcome:
        final = envelope.not_activated(env)
        try:
            envelope.encode(final)
        except EnvelopeError as exc:
            run.log.error("envelope_invalid", error=str(exc))
        run.log.info("wake_not_activated", envelope=final)
        return await self._finish(run, Verdict.FIRE_NOT_ACTIVATED, reason=decision.reason)

    async def _wake_built(
        self,
        run: _Run,
        files: TaskFiles,
        done: LedgerEntry,
        env: dict[str, Any],
        stamp: FileStamp,
        attempts: int,
    ) -> Outcome:
        now, schedule_id = done.ts, done.schedule_id or ""
        doc = markers.marker_doc(done, attempts=attempts, ts=now, stamp=stamp)
        final = envelope.registered(env, schedule_id=schedule_id, registered_at=now)
        body = markers.encoded(run.log, final)
        writes = [(files.done, markers.encode_json(doc))]
        if body is not None:
            writes.append((files.envelope, body))
        # Marker, then envelope, then the stale failed marker, group-committed with other runs.
        await run.st.projections.write(writes, remove=[files.failed], debt=run.debt)
        if body is not None:
            await self._push_update(run, final, body)
        return await self._finish(
            run, Verdict.WAKE_BUILT, schedule_id=schedule_id, attempts=attempts
        )

    async def _fire_failed(
        self,
        run: _Run,
        files: TaskFiles,
        failed: LedgerEntry,
        env: dict[str, Any],
        stamp: FileStamp,
        error: str,
        attempts: int,
    ) -> Outcome:
        doc = markers.marker_doc(failed, attempts=attempts, ts=failed.ts, error=error, stamp=stamp)
        writes = [(files.failed, markers.encode_json(doc))]
        body = markers.encoded(run.log, envelope.register_failed(env, error=error))
        if body is not None:
            writes.append((files.envelope, body))
        await run.st.projections.write(writes, debt=run.debt)
        run.log.critical("wake_failed", error=error, attempt=attempts)
        wake = run.st.config.wake
        report = decide.escalation(
            files.task_id,
            str(Verdict.FIRE_FAILED),
            reason="wake failed",
            error=error,
            attempts=attempts,
            idempotency_key=failed.key,
            ts=failed.ts,
        )
        async with self._slots:  # wake.concurrency bounds every call out, escalations too
            await escalate(wake.escalate_argv, report, timeout_s=wake.timeout_s)
        return await self._finish(
            run, Verdict.FIRE_FAILED, reason="wake failed", attempts=attempts, error=error
        )

    async def _finish(
        self,
        run: _Run,
        verdict: Verdict,
        *,
        reason: str | None = None,
        schedule_id: str | None = None,
        attempts: int = 0,
        error: str | None = None,
    ) -> Outcome:
        """The one ending of every run that decided something: one evidence line, one log line."""
        out = decide.outcome(
            run.facts,
            verdict,
            ts=run.now(),
            duration_ms=run.duration_ms,
            reason=reason,
            schedule_id=schedule_id,
            attempts=attempts,
            error=error,
        )
        await run.st.evidence.append(out.evidence())
        run.st.metrics.finished(out, run.renamed_ns)
        # One line a run, also for a wake (its schedule id is here): each line costs ~0.1 ms.
        run.log.info(
            "pickup_finished",
            verdict=str(out.verdict),
            reason=out.reason,
            schedule_id=out.schedule_id,
            duration_ms=round(out.duration_ms, 3),
            attempts=out.attempts,
        )
        return out

    # -- projections --------------------------------------------------------------

    def _envelope(self, run: _Run, files: TaskFiles, result: Result) -> dict[str, Any]:
        return envelope.build(
            result,
            result_path=str(files.result),
            sha256=run.sha256 or "",
            idempotency_key=run.key or "",
            delivery_method=run.st.sink.delivery_method,
        )

    async def _push_update(self, run: _Run, env: dict[str, Any], body: bytes) -> None:
        sink = run.st.sink
        if not sink.supports_update:
            return
        async with self._slots:  # an update is a call out too: wake.concurrency bounds it
            try:
                await sink.update(body, idempotency_key=str(env.get("idempotency_key")))
            except Exception as exc:  # an update is best effort; the wake is registered
                run.log.warning("envelope_update_failed", error=str(exc))


def _entry(four: FourTuple, state: LedgerState, attempt: int, ts: str) -> LedgerEntry:
    return LedgerEntry(
        key=four.idempotency_key,
        task_id=four.task_id,
        sha256=four.sha256,
        collector=four.collector,
        kind=four.kind,
        state=state,
        attempt=attempt,
        ts=ts,
    )


def _state_paths(files: TaskFiles) -> tuple[bool, list[Path]]:
    """(is an ack at ``files.acked``, the directories planted where this task's state goes).

    Four lstats a wake, on the loop: ~2 us each. The ack is what ``Path.exists`` says
    (a symlink counts only if its target is there), so a new wake needs no fifth call.
    """
    acked = False
    planted = []
    for path in (files.done, files.failed, files.envelope, files.acked):
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode):
            planted.append(path)
        elif path is files.acked:
            acked = not stat.S_ISLNK(mode) or path.exists()
    return acked, planted


def _read_unless_settled(
    path: Path, files: TaskFiles, st: Stages, scan: bool
) -> fsio.InputFile | None:
    """A scan's settled check (an lstat, up to two small marker reads, one ledger line), then
    the read."""
    if scan and markers.settled(files, st.ledger.get):
        return None
    return fsio.read_input(path, st.config.spool.max_result_bytes)


def _settling(inp: fsio.InputFile, st: Stages, settle: Settle | None) -> float:
    """Seconds the rescan's run waits before judging this file (0: judge it now)."""
    if settle is None or st.config.spool.settle_s <= 0:
        return 0.0
    # The kernel's clock, as the file's times are: not the stages' clock (tests pin that).
    return round(max(0.0, settling_for(inp.st, time.time_ns(), st.config.spool.settle_s)), 3)


def _name_holds_key(name: str, key: bytes | None) -> bool:
    return bool(key) and key is not None and key in os.fsencode(name)
