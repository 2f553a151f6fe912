"""Tests for anu_watchd.notify: sd_notify datagrams over a real socket, and the watchdog loop."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from anu_watchd.notify import Notifier, monotonic_usec, watchdog_interval, watchdog_loop

DEADLINE_S = 5.0


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket on the filesystem and its NOTIFY_SOCKET value."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(DEADLINE_S)
        yield sock, path


def fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def pending(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued, without waiting."""
    got = []
    while True:
        try:
            got.append(sock.recv(4096, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return got


def test_ready_reaches_a_filesystem_socket(receiver: tuple[socket.socket, str]) -> None:
    """READY=1 (with STATUS) arrives as one datagram at a path NOTIFY_SOCKET."""
    sock, path = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("watching")
    assert fields(sock) == {"READY": "1", "STATUS": "watching"}


def test_abstract_socket_address() -> None:
    """An '@name' NOTIFY_SOCKET reaches the abstract-namespace socket of that name."""
    name = f"anu-watchd-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(DEADLINE_S)
        assert Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).stopping()
        assert fields(sock) == {"STOPPING": "1"}


def test_reloading_sends_monotonic_usec_in_the_same_datagram(
    receiver: tuple[socket.socket, str],
) -> None:
    """RELOADING=1 and MONOTONIC_USEC (CLOCK_MONOTONIC, µs) travel in one datagram."""
    sock, path = receiver
    before = monotonic_usec()
    assert Notifier.from_env({"NOTIFY_SOCKET": path}).reloading()
    got = fields(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert got.keys() == {"RELOADING", "MONOTONIC_USEC"}
    assert got["RELOADING"] == "1"
    assert before <= int(got["MONOTONIC_USEC"]) <= after


def test_status_watchdog_and_raw_text(receiver: tuple[socket.socket, str]) -> None:
    """STATUS=, WATCHDOG=1 and a raw text message each arrive as sent; newlines cannot inject."""
    sock, path = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.status("3 woken\nREADY=1")
    assert fields(sock) == {"STATUS": "3 woken READY=1"}
    assert notifier.watchdog()
    assert fields(sock) == {"WATCHDOG": "1"}
    assert notifier.send("EXTEND_TIMEOUT_USEC=5000000")
    assert fields(sock) == {"EXTEND_TIMEOUT_USEC": "5000000"}


def test_without_notify_socket_everything_is_a_noop() -> None:
    """With no NOTIFY_SOCKET the notifier is disabled and every call returns False."""
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.reloading()
    assert not notifier.watchdog()


def test_unsupported_address_is_disabled() -> None:
    """A NOTIFY_SOCKET that is neither a path nor '@name' leaves the notifier disabled."""
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_send_failure_is_logged_not_raised(tmp_path: Path) -> None:
    """A socket nobody listens on makes send return False and log a warning."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "absent")})
    with structlog.testing.capture_logs() as captured:
        assert not notifier.ready()
    assert [e["event"] for e in captured] == ["notify_failed"]


def test_unset_removes_notify_variables_after_reading(tmp_path: Path) -> None:
    """from_env(unset=True) reads the settings, then removes them so children cannot inherit."""
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "n"),
        "WATCHDOG_USEC": "4000000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/usr/bin",
    }
    notifier = Notifier.from_env(env, unset=True)
    assert notifier.address == str(tmp_path / "n")
    assert notifier.watchdog_s == 2.0
    assert env == {"PATH": "/usr/bin"}


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    """The ping interval is half of WATCHDOG_USEC, in seconds, when the pid is ours or unset."""
    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}) == 1.5
    env = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 1.5


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
    ],
)
def test_watchdog_interval_none_when_not_ours_or_invalid(env: dict[str, str]) -> None:
    """No interval when unset, meant for another pid (WATCHDOG_PID mismatch), zero or invalid."""
    assert watchdog_interval(env) is None


class Health:
    """A health flag that records each check and can signal after a number of checks."""

    def __init__(self) -> None:
        self.ok = True
        self.calls = 0
        self.changed = asyncio.Event()

    def __call__(self) -> bool:
        self.calls += 1
        self.changed.set()
        return self.ok

    async def checked(self, times: int) -> None:
        target = self.calls + times
        while self.calls < target:
            self.changed.clear()
            await self.changed.wait()


async def receive(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 4096), DEADLINE_S)


async def test_watchdog_loop_pings_only_while_healthy(tmp_path: Path) -> None:
    """The loop sends WATCHDOG=1 while healthy, none while unhealthy, and resumes on recovery."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        health = Health()
        with structlog.testing.capture_logs() as captured:
            task = asyncio.create_task(watchdog_loop(Notifier(path), 0.01, health))
            try:
                assert await receive(sock) == b"WATCHDOG=1"
                assert await receive(sock) == b"WATCHDOG=1"
                health.ok = False
                await asyncio.wait_for(health.checked(1), DEADLINE_S)
                pending(sock)  # pings from checks that passed before the flip
                await asyncio.wait_for(health.checked(3), DEADLINE_S)
                assert pending(sock) == []
                health.ok = True
                assert await receive(sock) == b"WATCHDOG=1"
            finally:
                task.cancel()
        assert "watchdog_ping_skipped" in [e["event"] for e in captured]


async def test_watchdog_loop_treats_a_failing_check_as_unhealthy(tmp_path: Path) -> None:
    """A health check that raises skips the ping instead of ending the loop."""
    path = str(tmp_path / "notify")
    calls = 0
    failed = asyncio.Event()

    def broken() -> bool:
        nonlocal calls
        calls += 1
        if calls >= 3:
            failed.set()
        raise RuntimeError("ledger writer gone")

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        task = asyncio.create_task(watchdog_loop(Notifier(path), 0.01, broken))
        try:
            await asyncio.wait_for(failed.wait(), DEADLINE_S)
            assert not task.done()
            assert pending(sock) == []
        finally:
            task.cancel()
