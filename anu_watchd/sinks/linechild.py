"""A long-running child spoken to in lines: the process behind the co-process sink.

    child = LineChild.start(argv, env)            # OSError: cannot run
    answer = await child.ask(b'{"op": ...}\\n')   # its next stdout line, without the newline
                                                  # ChildGone: it ended, or broke the framing
    await child.close(grace_s=2.0)                # EOF on stdin; SIGKILL its group after grace
    await child.kill()                            # SIGKILL its group now; returns once reaped

It starts as a per-wake command does (``spawn.py``): ``subprocess.Popen`` with
close_fds, the default SIGPIPE, argv[0] looked up on the child's PATH, and its
own session, so killing its process group reaches whatever it started. Our
pipe ends are read and written by ``loop.add_reader``/``add_writer`` callbacks,
never blocking the loop; stdout is kept until a line is asked for (at most
``line_limit`` bytes without a newline), stderr only as its last
``STDERR_TAIL`` bytes, for error messages.

Its exit is watched for its whole life on a pidfd (a thread in
``waitid(WNOWAIT)`` where there is none). On exit the callback SIGKILLs the
group (anything the handler left behind), then reaps it: the pid, which is
the group's id, is never signalled after it was reaped. The callback, not an
awaiting task, reaps, so a cancelled ``kill`` still leaves no zombie.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from typing import IO

from anu_watchd.sinks import spawn

_READ_SIZE = 64 * 1024
STDERR_TAIL = 8 * 1024


class ChildGone(Exception):
    """The child can answer no more: it ended, closed a pipe, or broke the line framing."""


class LineChild:
    """One handler process: a line in, a line out, at most one question at a time."""

    def __init__(self, proc: subprocess.Popen[bytes], *, line_limit: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._proc = proc
        self._limit = line_limit
        assert proc.stdin and proc.stdout and proc.stderr
        self._stdin: IO[bytes] | None = proc.stdin
        self._files: dict[int, IO[bytes]] = {f.fileno(): f for f in (proc.stdout, proc.stderr)}
        self._stdout_fd = proc.stdout.fileno()
        self._out = bytearray()
        self._err = bytearray()
        self._eof = False
        self._pending = memoryview(b"")
        self._waiter: asyncio.Future[None] | None = None
        self._reaped: asyncio.Future[int] = self._loop.create_future()
        self._pidfd: int | None = None
        for fd in (*self._files, self._stdin.fileno()):
            os.set_blocking(fd, False)
        for fd in self._files:
            self._loop.add_reader(fd, self._on_readable, fd)
        self._watch_exit()

    @classmethod
    def start(
        cls, argv: Sequence[str], env: dict[str, str], *, line_limit: int = 64 * 1024
    ) -> LineChild:
        """Start ``argv``; raises OSError when it cannot be run (ENOENT, EACCES, ENOEXEC...)."""
        asyncio.get_running_loop()  # before the spawn: never a child nobody watches
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            env=env,
            close_fds=True,
            start_new_session=True,  # a group leader: killpg(pid) reaches what it starts
        )
        spawn.started(proc.pid)
        return cls(proc, line_limit=line_limit)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status once reaped (negative: killed by that signal), else None."""
        return self._reaped.result() if self._reaped.done() else None

    @property
    def alive(self) -> bool:
        """Not known to have ended: not reaped, stdout open, nothing unasked on it."""
        return not (self._reaped.done() or self._eof or self._out)

    def stderr_tail(self) -> bytes:
        """The last bytes it wrote to stderr (at most ``STDERR_TAIL``)."""
        return bytes(self._err)

    async def ask(self, line: bytes) -> bytes:
        """Send ``line`` (newline-terminated) and return the next stdout line, newline stripped."""
        if self._out:
            raise ChildGone("it wrote a line nobody asked for")
        self._send(line)
        while True:
            end = self._out.find(b"\n")
            if end >= 0:
                answer = bytes(self._out[:end])
                del self._out[: end + 1]
                return answer
            if len(self._out) > self._limit:
                raise ChildGone(f"it wrote a line over {self._limit} bytes")
            if self._eof:
                raise ChildGone("it closed its stdout" + (" mid-line" if self._out else ""))
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def close(self, *, grace_s: float) -> int:
        """Close its stdin (its signal to exit), wait ``grace_s`` for its exit, then kill."""
        self._close_stdin()
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.shield(self._reaped)
        except TimeoutError:
            pass
        finally:
            if not self._reaped.done():
                self._kill_group()  # also when cancelled (a loop shutting down): never left running
        return await self.kill()

    async def kill(self) -> int:
        """SIGKILL its process group unless reaped already; return the exit status once reaped."""
        if not self._reaped.done():
            self._kill_group()
        self._close_io()
        return await asyncio.shield(self._reaped)  # a cancelled wait: the callback still reaps

    # -- callbacks ------------------------------------------------------------------

    def _send(self, line: bytes) -> None:
        if self._stdin is None or self._pending:
            raise ChildGone("its stdin is closed" if self._stdin is None else "a write is pending")
        self._pending = memoryview(line)
        self._on_writable()
        if self._pending and self._stdin is not None:
            self._loop.add_writer(self._stdin.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        stdin = self._stdin
        if stdin is None:
            return
        try:
            self._pending = self._pending[os.write(stdin.fileno(), self._pending) :]
        except BlockingIOError:
            return
        except OSError:  # EPIPE: it stopped reading; its stdout says what happened next
            self._pending = memoryview(b"")
            self._close_stdin()
            return
        if not self._pending:
            self._loop.remove_writer(stdin.fileno())

    def _on_readable(self, fd: int) -> None:
        # Only when epoll says so and we are the only reader: this read cannot block.
        try:
            chunk = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""  # treat a broken pipe like its end
        if fd != self._stdout_fd:
            self._keep_stderr(chunk, fd)
            return
        if chunk:
            self._out += chunk
            if len(self._out) > self._limit:
                self._loop.remove_reader(fd)  # no answer is this long: stop reading, ask() says so
        else:
            self._eof = True
            self._close_reader(fd)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _keep_stderr(self, chunk: bytes, fd: int) -> None:
        if not chunk:
            self._close_reader(fd)
            return
        self._err += chunk
        if len(self._err) > STDERR_TAIL:
            # Cut at a line start: a key cut in two at the edge would escape redaction.
            del self._err[:-STDERR_TAIL]
            del self._err[: self._err.find(b"\n") + 1 or len(self._err)]

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self._proc.pid)
            self._loop.add_reader(self._pidfd, self._on_exit)
        except OSError:  # ENOSYS before Linux 5.3: a thread per child, as asyncio's default
            self._wait_in_thread()

    def _wait_in_thread(self) -> None:
        loop, pid, on_exit = self._loop, self._proc.pid, self._on_exit

        def wait() -> None:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
                loop.call_soon_threadsafe(on_exit)

        threading.Thread(target=wait, daemon=True).start()

    def _on_exit(self) -> None:
        """It has exited (unreaped): kill what it left in its group, then reap it."""
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._reaped.done():
            return
        self._kill_group()
        returncode = self._proc.poll()
        if returncode is None:
            # Kernels before 6.9 could flag a pidfd when the leader thread exited while
            # other threads ran on; waitid waits for the whole process without blocking us.
            self._wait_in_thread()
            return
        spawn.reaped(self._proc.pid)
        self._reaped.set_result(returncode)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _kill_group(self) -> None:
        # Safe while unreaped: its pid still names its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            stdin, self._stdin = self._stdin, None
            self._loop.remove_writer(stdin.fileno())
            stdin.close()

    def _drain_stderr(self) -> None:
        """Keep what is already in the stderr pipe: the last words of a handler that died."""
        for fd in [fd for fd in self._files if fd != self._stdout_fd]:
            for _ in range(STDERR_TAIL // _READ_SIZE + 2):  # bounded: its group may still write
                try:
                    chunk = os.read(fd, _READ_SIZE)
                except OSError:  # BlockingIOError: nothing more for now
                    break
                self._keep_stderr(chunk, fd)
                if not chunk:
                    break

    def _close_reader(self, fd: int) -> None:
        f = self._files.pop(fd, None)
        if f is not None:
            self._loop.remove_reader(fd)
            f.close()

    def _close_io(self) -> None:
        self._close_stdin()
        self._drain_stderr()
        for fd in list(self._files):
            self._close_reader(fd)
        self._eof = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
