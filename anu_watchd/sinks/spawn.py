"""Run one short command on the event loop cheaply: plain pipes and a pidfd.

The exec sink starts a process per wake on the event loop's thread, so every
step of this path is paid once per file. ``asyncio.create_subprocess_exec``
(three pipe transports and protocols, a stream reader and writer, and on 3.11
a thread per child blocked in ``waitpid``) cost ~1.5 ms of that thread's CPU a
spawn on an idle loop here; this path ~0.9 ms, most of it ``fork_exec`` and
waking up for the child's output and exit (``bench/spawn.py``). It keeps only
what the job needs::

    child = Child.start(argv, env, stdin, limit=64 * 1024)   # OSError: cannot run
    try:
        done = await child.finished()      # Finished(returncode, stdout, stderr)
    finally:
        await child.kill()                 # no-op once finished; else kill the group, reap

- The child is made by ``subprocess.Popen`` exactly as asyncio made it (close_fds,
  default SIGPIPE, its own session, argv[0] looked up on the child's PATH).
  ``os.posix_spawn`` measured ~90 us less a spawn, but it cannot close the
  descriptors a daemon inherited without close-on-exec: the command would get them.
- stdin is written *before* the child starts: an envelope fits the pipe's
  buffer (4 KiB even on a pipe-starved system), so the write completes at
  once and the pipe is closed; a larger input is finished by a writer callback.
- stdout and stderr are read by ``loop.add_reader`` callbacks into buffers that
  keep the first ``limit`` bytes and drain the rest, so a chatty command
  never blocks on a full pipe.
- Completion is the command's exit, not the end of its outputs: the exit is
  watched from the start on a pidfd (Linux >= 5.3) registered with
  ``loop.add_reader``, or where there is none by a thread in ``waitid(WNOWAIT)``.
  Once both outputs have ended and it has exited, it is reaped. If it exits
  while something it started still holds an output open (a background child),
  what is written is read for ``EXIT_GRACE_S`` more, then the rest of its
  process group is killed and it is reaped: a handler that exits 0 is done,
  never "timed out" and retried (docs/operations.md). No child watcher is
  involved, and nothing else may reap our children.

The child is reaped only after its process group was sent SIGKILL (or by
``kill``). Until then its pid, which is also its process group id, cannot be
reused, so the group can always be signalled safely: a timeout, a
cancellation or a completed exit also kills what the command left behind in
its group.
The callbacks, not the awaiting task, do the reaping and close the fds, so a
second cancellation during ``kill`` still leaves no zombie and no open fd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence

import attrs

_READ_SIZE = 64 * 1024
EXIT_GRACE_S = 0.25  # reading on after the exit, for output a leftover still holds open
_GRACE_READS = 16  # reads per output at the end of the grace: a flood cannot keep us there
# The whole environment of every command the daemon runs (sinks, escalations): nothing is
# inherited; callers add their own variables to a copy.
CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"


# The children started and not yet reaped, by pid, which is also their process group's id
# (and cannot be reused before the reaping): a second stop signal kills every group
# before the process leaves at once (``kill_every_group``), so a hung handler does not
# outlive the daemon that started it.
_UNREAPED: set[int] = set()


def kill_every_group() -> None:
    """SIGKILL the process group of every child not yet reaped (the daemon is leaving now)."""
    for pgid in list(_UNREAPED):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def started(pid: int) -> None:
    _UNREAPED.add(pid)


def reaped(pid: int) -> None:
    _UNREAPED.discard(pid)


def clean_env() -> dict[str, str]:
    """A fresh copy of the clean environment a child starts from."""
    return {"PATH": CHILD_PATH, "LANG": "C.UTF-8"}


@attrs.frozen
class Finished:
    returncode: int  # negative: killed by that signal
    stdout: bytes
    stderr: bytes


class Child:
    """One running command: its input, its two outputs, then its exit status."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        proc: subprocess.Popen[bytes],
        stdin: _PendingInput | None,
        outputs: tuple[int, ...],
        *,
        limit: int,
    ) -> None:
        self._loop = loop
        self._proc = proc
        self._stdin = stdin
        self._limit = limit
        self._out: dict[int, bytearray] = {fd: bytearray() for fd in outputs}
        self._order = outputs
        self._open = set(outputs)
        # A command whose output we keep is done at its exit: what its group left running
        # is killed. One whose output goes to /dev/null (an escalation) keeps its children.
        self._kill_group_at_exit = bool(outputs)
        self._returncode: int | None = None
        self._watching = False
        self._pidfd: int | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._grace: asyncio.TimerHandle | None = None
        for fd in self._order:
            self._loop.add_reader(fd, self._on_readable, fd)
        if stdin is not None:
            self._loop.add_writer(stdin.fd, self._on_writable)
        self._watching = True
        self._pidfd = _watch_exit(loop, proc.pid, self._on_exit)

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        env: dict[str, str],
        stdin: bytes,
        *,
        limit: int,
        keep_output: bool = True,
    ) -> Child:
        """Start ``argv``; raises OSError when it cannot be run (ENOENT, EACCES, ENOEXEC...).

        ``keep_output=False`` sends stdout and stderr to /dev/null: ``finished`` then
        waits for the exit alone, and what the command left running in the background
        is left alone.
        """
        loop = asyncio.get_running_loop()  # before the spawn: never a child nobody watches
        opened: list[int] = []
        try:
            in_r, in_w = _pipe(opened)
            out_r, out_w = _pipe(opened) if keep_output else (None, subprocess.DEVNULL)
            err_r, err_w = _pipe(opened) if keep_output else (None, subprocess.DEVNULL)
            written = _write_now(in_w, stdin)
            if written == len(stdin):
                _close(opened, in_w)  # the whole input is in the pipe: EOF follows it
            proc = subprocess.Popen(
                argv,
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                env=env,
                close_fds=True,
                start_new_session=True,  # a group leader: killpg(pid) reaches what it starts
            )
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        started(proc.pid)
        for fd in (in_r, out_w, err_w):
            if fd in opened:
                _close(opened, fd)
        rest = memoryview(stdin)[written:]
        pending = _PendingInput(in_w, rest) if rest else None
        outputs = tuple(fd for fd in (out_r, err_r) if fd is not None)
        return cls(loop, proc, pending, outputs, limit=limit)

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def finished(self) -> Finished:
        """Wait for the end of both outputs and for the exit; the child is reaped."""
        while self._returncode is None:
            await self._wait()
        stdout, stderr = (bytes(self._out[fd]) for fd in self._order) if self._order else (b"", b"")
        return Finished(self._returncode, stdout, stderr)

    async def kill(self, *, group: bool = True) -> None:
        """Unless reaped already: SIGKILL the child's process group, then wait for its reaping.

        ``group=False`` kills the child alone and leaves what it started running.
        """
        if self._returncode is not None:
            return
        # Safe even after the child exited: unreaped, its pid still names its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self._proc.pid, signal.SIGKILL)
            else:
                os.kill(self._proc.pid, signal.SIGKILL)
        self._close_io()  # what it wrote no longer matters
        self._reap_or_watch()
        # If this wait is cancelled too, the exit watch still reaps and closes every fd.
        while self._returncode is None:
            await self._wait()

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        await self._waiter

    def _on_readable(self, fd: int) -> None:
        # Called only when epoll says so and we are the only reader: this read cannot block.
        try:
            chunk = os.read(fd, _READ_SIZE)
        except OSError:
            chunk = b""  # treat a broken pipe like its end
        if chunk:
            self._keep(fd, chunk)
            return
        self._loop.remove_reader(fd)
        os.close(fd)
        self._open.discard(fd)
        if not self._open:
            self._reap_or_watch()

    def _keep(self, fd: int, chunk: bytes) -> None:
        kept = self._out[fd]
        room = self._limit - len(kept)
        if room > 0:
            kept += chunk[:room]

    def _on_writable(self) -> None:
        stdin = self._stdin
        assert stdin is not None
        try:
            stdin.data = stdin.data[os.write(stdin.fd, stdin.data) :]
        except BlockingIOError:
            return
        except OSError:
            stdin.data = stdin.data[:0]  # EPIPE: a command may exit without reading stdin
        if not stdin.data:
            self._close_stdin()

    def _reap_or_watch(self) -> None:
        """Reap the child if it has exited (its group killed first); else call back once it has."""
        if self._exited():
            self._reap()
        elif not self._watching:
            self._watching = True
            self._pidfd = _watch_exit(self._loop, self._proc.pid, self._on_exit)

    def _on_exit(self) -> None:
        self._close_pidfd()
        self._watching = False
        if self._returncode is not None:
            return
        if not self._exited():
            # Kernels before 6.9 could flag a pidfd when the leader thread exited while
            # other threads ran on; waitid waits for the whole process without blocking us.
            self._watching = True
            _watch_exit(self._loop, self._proc.pid, self._on_exit, use_pidfd=False)
        elif not self._open:
            self._reap()
        elif self._grace is None:
            # Exited, but something it started holds an output: read on briefly, then end it.
            self._grace = self._loop.call_later(EXIT_GRACE_S, self._end_grace)

    def _end_grace(self) -> None:
        self._grace = None
        if self._returncode is None:
            self._drain_ready()
            self._reap()

    def _drain_ready(self) -> None:
        """Keep what the outputs hold right now, without blocking (a bounded number of reads)."""
        for fd in list(self._open):
            for _ in range(_GRACE_READS):
                if not select.select([fd], [], [], 0)[0]:
                    break
                try:
                    chunk = os.read(fd, _READ_SIZE)
                except OSError:
                    break
                if not chunk:
                    break
                self._keep(fd, chunk)

    def _exited(self) -> bool:
        """True once the child has exited, leaving it unreaped (its pid still names its group)."""
        try:
            found = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # reaped already: poll() below reports it
        return found is not None

    def _reap(self) -> None:
        """Kill what is left of its process group (unless told not to), then reap the child."""
        if self._kill_group_at_exit:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._close_io()
        returncode = self._proc.poll()
        self._reaped(returncode if returncode is not None else self._proc.wait())

    def _reaped(self, returncode: int) -> None:
        reaped(self._proc.pid)
        self._returncode = returncode
        self._close_io()
        self._close_pidfd()
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _close_io(self) -> None:
        self._close_stdin()
        for fd in self._open:
            self._loop.remove_reader(fd)
            os.close(fd)
        self._open.clear()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            self._loop.remove_writer(self._stdin.fd)
            os.close(self._stdin.fd)
            self._stdin = None


@attrs.define
class _PendingInput:
    fd: int
    data: memoryview


def _pipe(opened: list[int]) -> tuple[int, int]:
    """A close-on-exec pipe, both ends blocking.

    The child's end as a program expects its stdio. Ours need no O_NONBLOCK
    (two fcntl calls each, per spawn): a read end is read only once epoll
    says so, and the stdin end is written by ``_write_now``.
    """
    ends = os.pipe2(os.O_CLOEXEC)
    opened.extend(ends)
    return ends


def _write_now(fd: int, data: bytes) -> int:
    """Write what the empty pipe takes at once; its read end is still ours, so no EPIPE.

    Up to PIPE_BUF bytes a blocking write fits any new pipe (at least one
    page, even for a user over the pipe-buffer soft limit), so an envelope
    (<= 3900 bytes) costs one write; only a larger input needs O_NONBLOCK.
    """
    if len(data) > select.PIPE_BUF:
        os.set_blocking(fd, False)
    try:
        return os.write(fd, data) if data else 0
    except BlockingIOError:
        return 0


def _close(opened: list[int], fd: int) -> None:
    opened.remove(fd)
    os.close(fd)


def _watch_exit(
    loop: asyncio.AbstractEventLoop,
    pid: int,
    on_exit: Callable[[], None],
    *,
    use_pidfd: bool = True,
) -> int | None:
    """Call ``on_exit`` on the loop once ``pid`` has exited, leaving it unreaped; the pidfd."""
    try:
        if use_pidfd:
            pidfd = os.pidfd_open(pid)
            loop.add_reader(pidfd, on_exit)
            return pidfd
    except OSError:
        pass  # ENOSYS before Linux 5.3, or EMFILE: a thread per child, as asyncio's default
    threading.Thread(target=_wait_in_thread, args=(loop, pid, on_exit), daemon=True).start()
    return None


def _wait_in_thread(loop: asyncio.AbstractEventLoop, pid: int, on_exit: Callable[[], None]) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
        loop.call_soon_threadsafe(on_exit)
