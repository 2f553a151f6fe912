"""Tests for the co-process sink, against real handler processes (tests/coprochelpers.py)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from anu_watchd.config import Config, parse_config
from anu_watchd.errors import PermanentWakeError, TransientWakeError
from anu_watchd.secret import SealedKey
from anu_watchd.sinks import build_sink, rebuild_sink
from anu_watchd.sinks.base import RetryPolicy, WakeFailed, innermost, register_with_retries
from anu_watchd.sinks.coprocess import CoprocessSink
from anu_watchd.sinks.coproto import Restarts
from anu_watchd.sinks.exec import CHILD_PATH
from tests.coprochelpers import (
    pid_alive,
    read_requests,
    read_starts,
    set_handler_behaviour,
    write_coprocess_handler,
)

ENVELOPE = json.dumps({"task_id": "task-7", "status": "ok"}).encode()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def key(tmp_path: Path) -> SealedKey:
    path = tmp_path / "anu-key"
    value = secrets.token_hex(16)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return SealedKey(path=path, value=value)


@pytest.fixture
def hdir(tmp_path: Path) -> Path:
    return tmp_path / "handler"


@pytest.fixture
async def make(hdir: Path, key: SealedKey) -> AsyncIterator[Callable[..., CoprocessSink]]:
    """Build sinks over the test handler; every one is closed at the end."""
    made: list[CoprocessSink] = []

    def build(
        behaviour: str = "ok",
        *,
        concurrency: int = 2,
        timeout_s: float = 10.0,
        argv: list[str] | None = None,
    ) -> CoprocessSink:
        sink = CoprocessSink(
            argv or write_coprocess_handler(hdir, behaviour=behaviour),
            key_file=key.path,
            timeout_s=timeout_s,
            concurrency=concurrency,
            restarts=Restarts(initial_s=0.05, max_s=0.2),
            key=key,
        )
        made.append(sink)
        return sink

    yield build
    for sink in made:
        await sink.aclose()


async def until(cond: Callable[[], bool], what: str, deadline_s: float = 10.0) -> None:
    """Wait on the loop until ``cond()`` holds, failing after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def pids(hdir: Path) -> list[int]:
    return [s["pid"] for s in read_starts(hdir)]


async def test_one_handler_answers_many_requests_in_a_clean_environment(
    make: Callable[..., CoprocessSink], hdir: Path, key: SealedKey
) -> None:
    """Requests in a row go to one process, which sees only PATH, LANG and the key file's path."""
    sink = make()
    ids = [await sink.register(ENVELOPE, idempotency_key=f"ik1-{i}") for i in range(3)]
    assert ids == ["S-1", "S-2", "S-3"]
    reqs = read_requests(hdir)
    assert len({r["pid"] for r in reqs}) == 1 and len(read_starts(hdir)) == 1
    assert [r["key"] for r in reqs] == ["ik1-0", "ik1-1", "ik1-2"]
    assert reqs[0]["envelope"] == json.loads(ENVELOPE) and reqs[0]["op"] == "register"
    env = read_starts(hdir)[0]["env"]
    env.pop("PWD", None)  # a shell-less Python sets nothing; tolerate a platform adding it
    assert env == {"PATH": CHILD_PATH, "LANG": "C.UTF-8", "ANU_WATCHD_KEY_FILE": str(key.path)}
    assert key.value not in json.dumps(read_starts(hdir))


async def test_updates_go_to_the_handler_as_update_requests(
    make: Callable[..., CoprocessSink], hdir: Path
) -> None:
    """``update`` sends op "update" to the same handler and needs no schedule id back."""
    sink = make("no-id")
    assert sink.supports_update
    await sink.update(ENVELOPE, idempotency_key="ik1-u")
    assert [(r["op"], r["key"]) for r in read_requests(hdir)] == [("update", "ik1-u")]


async def test_a_handler_that_declines_updates_gets_none_from_then_on(
    make: Callable[..., CoprocessSink], hdir: Path
) -> None:
    """An answer with ``"updates": false`` turns ``supports_update`` off for the whole pool."""
    sink = make("ok")
    assert await sink.register(ENVELOPE, idempotency_key="ik1-a") == "S-1"
    assert sink.supports_update
    set_handler_behaviour(hdir, "ok-no-updates")
    assert await sink.register(ENVELOPE, idempotency_key="ik1-b") == "S-2"
    assert not sink.supports_update
    set_handler_behaviour(hdir, "ok")
    await sink.register(ENVELOPE, idempotency_key="ik1-c")
    assert not sink.supports_update  # a later answer without it does not undo it


async def test_concurrency_bounds_the_handlers_started_and_the_requests_at_once(
    make: Callable[..., CoprocessSink], hdir: Path
) -> None:
    """Eight slow requests at once with concurrency 2 start two handlers, one request each."""
    sink = make("slow:150", concurrency=2)
    got = await asyncio.gather(
        *(sink.register(ENVELOPE, idempotency_key=f"ik1-{i}") for i in range(8))
    )
    assert len(set(got)) == 8
    assert len(read_starts(hdir)) == 2 and sink.handlers == 2
    per_pid: dict[int, int] = {}
    for r in read_requests(hdir):
        per_pid[r["pid"]] = per_pid.get(r["pid"], 0) + 1
    assert sorted(per_pid.values()) == [4, 4]


@pytest.mark.parametrize(
    ("mode", "kind", "quote"),
    [
        ("fail", PermanentWakeError, "envelope refused"),
        ("tempfail", TransientWakeError, "collector busy"),
        ("no-id", PermanentWakeError, "without a usable schedule_id"),
    ],
)
async def test_an_error_answer_fails_the_request_and_keeps_the_handler(
    make: Callable[..., CoprocessSink], hdir: Path, mode: str, kind: type, quote: str
) -> None:
    """An error (or id-less) answer is typed as the handler said; the same process serves on."""
    sink = make(mode)
    with pytest.raises(kind, match=quote):
        await sink.register(ENVELOPE, idempotency_key="ik1-a")
    set_handler_behaviour(hdir, "ok")
    assert await sink.register(ENVELOPE, idempotency_key="ik1-b") == "S-2"
    assert len(read_starts(hdir)) == 1


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("crash", "exited 3: handler crashed mid-request"),
        ("signal", "was killed by SIGKILL"),
        ("garbage", "not JSON"),
        ("wrong-key", "another idempotency key"),
        ("half-line", "closed its stdout mid-line"),
    ],
)
async def test_a_handler_that_dies_or_breaks_framing_fails_transient_and_is_replaced(
    make: Callable[..., CoprocessSink], hdir: Path, mode: str, why: str
) -> None:
    """Crash, signal or a malformed line: transient for that request, the process is gone and a
    new one serves the next request."""
    sink = make("ok")
    await sink.register(ENVELOPE, idempotency_key="ik1-warm")  # an answer: restarts at once
    set_handler_behaviour(hdir, mode)
    with pytest.raises(TransientWakeError, match=why):
        await sink.register(ENVELOPE, idempotency_key="ik1-a")
    first = pids(hdir)[0]
    assert not pid_alive(first)
    set_handler_behaviour(hdir, "ok")
    assert await sink.register(ENVELOPE, idempotency_key="ik1-b") == "S-3"
    assert len(pids(hdir)) == 2 and pid_alive(pids(hdir)[1])


async def test_a_handler_that_ended_while_idle_is_replaced_without_failing_a_request(
    make: Callable[..., CoprocessSink], hdir: Path
) -> None:
    """A handler that exits after answering is noticed at the next request, which a new
    process serves at once."""
    sink = make("answer-then-exit")
    assert await sink.register(ENVELOPE, idempotency_key="ik1-a") == "S-1"
    first = pids(hdir)[0]
    await until(lambda: not Path(f"/proc/{first}").exists(), "the first handler reaped")
    set_handler_behaviour(hdir, "ok")
    assert await sink.register(ENVELOPE, idempotency_key="ik1-b") == "S-2"
    assert len(pids(hdir)) == 2


async def test_a_slow_answer_past_the_timeout_is_transient_and_the_handler_is_killed(
    make: Callable[..., CoprocessSink], hdir: Path
) -> None:
    """No answer within timeout_s: transient, the handler killed, a late answer never reused."""
    sink = make("slow:3000", timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(TransientWakeError, match=r"no answer in 0\.5s"):
        await sink.register(ENVELOPE, idempotency_key="ik1-a")
    assert time.monotonic() - started < 2.5
    assert not pid_alive(pids(hdir)[0])
    set_handler_behaviour(hdir, "ok")
    assert await sink.register(ENVELOPE, idempotency_key="ik1-b") == "S-2"


async def test_a_handler_that_dies_at_once_every_time_is_fire_failed_not_a_restart_loop(
    make: Callable[..., CoprocessSink], hdir: Path
) -> None:
    """Every handler exits before reading: the request fails after its attempts, later ones are
    refused at once as permanent, and only a bounded number of processes were started."""
    sink = make("die-at-start", concurrency=4)
    policy = RetryPolicy(attempts=3, initial_s=0.01, max_s=0.05)
    with pytest.raises(WakeFailed) as failed:
        await register_with_retries(sink, ENVELOPE, idempotency_key="ik1-a", policy=policy)
    assert "cannot load my configuration" in str(failed.value.error)
    starts = len(read_starts(hdir))
    assert starts <= 3
    burst = await asyncio.gather(
        *(sink.register(ENVELOPE, idempotency_key=f"ik1-{i}") for i in range(50)),
        return_exceptions=True,
    )
    assert all(isinstance(e, WakeFailed | PermanentWakeError | TransientWakeError) for e in burst)
    assert sum(isinstance(e, PermanentWakeError) for e in burst) >= 45
    assert len(read_starts(hdir)) <= starts + 2  # at most a probe per wait, not one per request


async def test_a_fixed_handler_is_used_again_after_the_wait(
    make: Callable[..., CoprocessSink], hdir: Path
) -> None:
    """Once handlers were refused, a working handler starts on the first probe after the wait."""
    sink = make("die-at-start")
    for i in range(3):
        with pytest.raises(TransientWakeError):
            await sink.register(ENVELOPE, idempotency_key=f"ik1-{i}")
    set_handler_behaviour(hdir, "ok")

    async def registers() -> bool:
        try:
            return await sink.register(ENVELOPE, idempotency_key="ik1-z") == "S-1"
        except PermanentWakeError:
            return False

    deadline = time.monotonic() + 5
    while not await registers():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("mode", ["leak-key", "leak-key-crash"])
async def test_the_key_in_a_handlers_answer_or_stderr_is_redacted(
    make: Callable[..., CoprocessSink], key: SealedKey, mode: str
) -> None:
    """A handler that echoes the key in its error answer or on stderr: the error says [REDACTED]."""
    sink = make(mode)
    with pytest.raises((PermanentWakeError, TransientWakeError)) as raised:
        await sink.register(ENVELOPE, idempotency_key="ik1-a")
    assert key.value not in str(raised.value)
    assert "[REDACTED]" in str(raised.value)


@pytest.mark.parametrize("mode", ["leak-key-cut", "leak-key-cut-crash"])
async def test_a_key_split_by_the_quote_cut_leaves_no_part_of_itself(
    make: Callable[..., CoprocessSink], key: SealedKey, mode: str
) -> None:
    """An error answer or a stderr tail cut to 500 characters in the middle of the key: no
    prefix or suffix of the key (8 characters or more) survives in the error."""
    sink = make(mode)
    with pytest.raises((PermanentWakeError, TransientWakeError)) as raised:
        await sink.register(ENVELOPE, idempotency_key="ik1-a")
    text = str(raised.value)
    pieces = {key.value[i : i + 8] for i in range(len(key.value) - 7)}
    assert not [p for p in pieces if p in text], text[-80:]


async def test_a_handler_that_cannot_be_run_is_permanent(
    make: Callable[..., CoprocessSink], tmp_path: Path
) -> None:
    """A missing program is a permanent error, as for a per-wake command."""
    sink = make(argv=[str(tmp_path / "no-such-handler")])
    with pytest.raises(PermanentWakeError, match="cannot run"):
        await sink.register(ENVELOPE, idempotency_key="ik1-a")


async def test_a_cancelled_request_kills_its_handler(
    make: Callable[..., CoprocessSink], hdir: Path
) -> None:
    """A cancelled request kills its handler (its late answer must not reach the next request)."""
    sink = make("hang")
    task = asyncio.create_task(sink.register(ENVELOPE, idempotency_key="ik1-a"))
    await until(lambda: bool(read_requests(hdir)), "the request read")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not pid_alive(pids(hdir)[0])
    set_handler_behaviour(hdir, "ok")
    assert await sink.register(ENVELOPE, idempotency_key="ik1-b") == "S-2"


async def test_aclose_stops_idle_handlers_and_busy_ones_after_their_answer(
    make: Callable[..., CoprocessSink], hdir: Path
) -> None:
    """Closing stops idle handlers at once; a busy one answers first, then is stopped."""
    sink = make("ok", concurrency=2)
    await asyncio.gather(*(sink.register(ENVELOPE, idempotency_key=f"ik1-{i}") for i in range(2)))
    set_handler_behaviour(hdir, "slow:300")
    busy = asyncio.create_task(sink.register(ENVELOPE, idempotency_key="ik1-busy"))
    await until(lambda: len(read_requests(hdir)) == 3, "the slow request read")
    await sink.aclose()
    assert await busy == "S-3"
    await until(lambda: not any(pid_alive(p) for p in pids(hdir)), "every handler gone")
    assert sink.handlers == 0


async def test_a_call_after_aclose_gets_a_handler_that_is_retired_after_it(
    make: Callable[..., CoprocessSink], hdir: Path
) -> None:
    """A run from before a reload may still call the closed sink: it is answered, nothing stays."""
    sink = make("ok")
    await sink.aclose()
    assert await sink.register(ENVELOPE, idempotency_key="ik1-late") == "S-1"
    await until(lambda: not pid_alive(pids(hdir)[0]), "the late handler gone")


async def test_resize_down_retires_idle_handlers_over_the_new_size(
    make: Callable[..., CoprocessSink], hdir: Path
) -> None:
    """A smaller concurrency (a reload) stops idle handlers until at most that many are alive."""
    sink = make("slow:100", concurrency=3)
    await asyncio.gather(*(sink.register(ENVELOPE, idempotency_key=f"ik1-{i}") for i in range(3)))
    assert sink.handlers == 3
    sink.resize(1)
    assert sink.handlers == 1
    await until(lambda: sum(pid_alive(p) for p in pids(hdir)) == 1, "two handlers retired")


async def test_the_reference_handler_in_examples_answers_registers_and_updates(
    make: Callable[..., CoprocessSink], tmp_path: Path
) -> None:
    """examples/coprocess_handler.py registers idempotently and acknowledges updates."""
    record = tmp_path / "record.jsonl"
    argv = ["/usr/bin/env", "python3", str(REPO / "examples" / "coprocess_handler.py"), str(record)]
    sink = make(argv=argv)
    assert await sink.register(ENVELOPE, idempotency_key="ik1-r") == "local-ik1-r"
    await sink.update(ENVELOPE, idempotency_key="ik1-r")
    notes = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(n["op"], n["task_id"]) for n in notes] == [
        ("register", "task-7"),
        ("update", "task-7"),
    ]


async def test_a_reload_keeps_the_pool_unless_the_handler_itself_changed(
    hdir: Path, key: SealedKey
) -> None:
    """rebuild_sink resizes the same sink for a new concurrency or backoff, and builds a new
    one for a new argv or timeout."""
    argv = write_coprocess_handler(hdir)

    def config(**wake: object) -> Config:
        exec_ = {"argv": argv, "process": True}
        return parse_config({"wake": {"sink": "exec", "exec": exec_, **wake}}, base=hdir)

    old = config(concurrency=4)
    sink = build_sink(old, key)
    assert isinstance(innermost(sink), CoprocessSink)  # under the key's redaction
    try:
        same = rebuild_sink(sink, old, config(concurrency=1, backoff_max_s=2.0), key)
        assert same is sink
        other = rebuild_sink(sink, old, config(concurrency=4, timeout_s=3.0), key)
        assert other is not sink and isinstance(innermost(other), CoprocessSink)
        await other.aclose()
    finally:
        await sink.aclose()
