"""Warm rank start: ranks forked from a template process instead of fresh interpreters.

A cold rank is ``python -m pytest``: it imports torch and the test modules and
collects again (about 1.5 s of CPU per rank, again at every pool restart). A
warm rank skips the imports:

* when the main session is about to run its tests and some will need ranks,
  the main process forks a *template* (:meth:`Template.start`). At that point
  the main process has collected (torch and the test modules are imported) and
  has run no test, so the template holds exactly what a cold rank would have
  imported, and no test state. The template cuts itself loose (own session,
  ``PR_SET_PDEATHSIG``, every inherited descriptor replaced by ``/dev/null``,
  pytest's hooks into logging, tracing and imports undone) and then only waits
  for :class:`~._protocol.Fork` requests; it never runs a test and never
  touches an accelerator.
* for each rank the main process sends a :class:`~._protocol.Fork` with the
  rank's control socket and log file (``SCM_RIGHTS``), the arguments and the
  environment a cold rank would get. The template forks the rank's supervisor
  (:mod:`._supervise`: its own session and process group, a child subreaper
  that ends whatever the rank started), which forks the rank; the rank dies
  with its supervisor, points its stdio at the log,
  takes that environment, re-seeds its random generators, sets its intra-op
  thread count (torch read ``OMP_NUM_THREADS`` in the main process) and runs
  ``pytest.main(args)``: a whole rank session, configured exactly as a cold
  one (per-rank ``--basetemp``, cache, log files...), whose conftests and test
  modules are already imported. From there it is an ordinary rank
  (:func:`~._rank.serve`).
* the supervisors are the template's children, not the main process's: the
  template reaps them (a pidfd each) and reports every exit status (a
  supervisor exits as its rank did, see :class:`~._protocol.Exited`), so
  :class:`WarmRank` answers ``poll``/``wait`` like :class:`subprocess.Popen`
  and every fault message stays the same.

Forking is unsafe when the main process runs other threads (Python threads,
or native ones started after torch was imported, such as an OpenMP pool:
a forked child's OpenMP hangs) or has initialised an accelerator; then
:func:`~._fork_safety.unsafe_reason` says why and the ranks start cold.

What differs from a cold start: module-level code of conftests and test
modules runs once, in the main process, before any rank exists (a module that
reads ``RANK`` at import sees none); everything from ``pytest_configure`` on
runs on each rank as in a cold start.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import io
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import replace

from . import _supervise
from ._constants import RANK_ENV
from ._hygiene import apply_threads
from ._protocol import Channel, Exited, Fork, Forked, Message, ProtocolError, RankSpec
from ._rank import watch_parent

__all__ = ["Template", "TemplateError", "WarmRank"]

_REPLY_WAIT = 10.0  # a fork takes milliseconds; this is only so nothing waits forever
_CLOSE_WAIT = 5.0
_IDLE_CHECK = 5.0  # how often an idle template checks that the main process is alive
_SUPERVISOR_WAIT = 3.0  # for the ranks' supervisors to end them as the template ends


class TemplateError(Exception):
    """The template process did not answer as it should (it died, or said fork failed)."""


class Template:
    """The main process's handle on its template process (see the module docstring)."""

    def __init__(self, pid: int, channel: Channel) -> None:
        self.pid = pid
        self.channel: Channel | None = channel
        self.codes: dict[int, int] = {}  # exit codes the template reported, by pid
        self.forked: dict[int, int] = {}  # rank -> pid, answers not yet taken
        self.live: set[int] = set()  # pids forked and not reported ended

    @classmethod
    def start(cls) -> Template:
        """Fork the template from this process (see :func:`~._fork_safety.unsafe_reason` first)."""
        ours, theirs = socket.socketpair()
        main = os.getpid()
        try:
            pid = os.fork()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        if pid == 0:  # pragma: no cover - the template process; it reports by its children
            code = 70
            try:
                ours.close()
                code = _template(theirs, main)
            finally:
                os._exit(code)
        theirs.close()
        return cls(pid, Channel(ours))

    def fork(
        self, spec: RankSpec, env: dict[str, str], args: list[str], cwd: str, fds: list[int]
    ) -> WarmRank:
        """Start rank ``spec.rank`` (``fds``: its control socket end, its log file)."""
        if self.channel is None or not self.channel.send(Fork(spec, env, args, cwd), fds):
            raise TemplateError("the template process has gone")
        deadline = time.monotonic() + _REPLY_WAIT
        while spec.rank not in self.forked:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TemplateError(f"no answer from the template in {_REPLY_WAIT:g} s")
            if not self._read(left):
                raise TemplateError("the template process has gone")
        pid = self.forked.pop(spec.rank)
        if pid < 0:
            raise TemplateError("the template could not fork")
        self.live.add(pid)
        return WarmRank(self, pid)

    def _read(self, timeout: float) -> bool:
        """Take the template's messages for up to ``timeout`` seconds (none waiting: return at
        the first); ``False`` once the template has gone."""
        if self.channel is None:
            return False
        deadline = time.monotonic() + timeout
        while True:
            left = max(deadline - time.monotonic(), 0)
            if not select.select([self.channel], [], [], left)[0]:
                return True
            try:
                message: Message | None = self.channel.recv()
            except ProtocolError:
                message = None
            if isinstance(message, Forked):
                self.forked[message.rank] = message.pid
            elif isinstance(message, Exited):
                self.codes[message.pid] = message.code
                self.live.discard(message.pid)
            else:
                self._gone()
                return False
            timeout = 0  # take what else is waiting, without waiting for more
            deadline = time.monotonic()

    def _gone(self) -> None:
        """The template died: its ranks died with it (``PR_SET_PDEATHSIG``: SIGKILL)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        for pid in self.live:
            self.codes.setdefault(pid, -signal.SIGKILL)
        self.live.clear()

    def poll(self, pid: int) -> int | None:
        if pid not in self.codes:
            self._read(0)
        return self.codes.get(pid)

    def wait(self, pid: int, timeout: float | None) -> int | None:
        deadline = time.monotonic() + (_REPLY_WAIT if timeout is None else timeout)
        while pid not in self.codes:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                break
        return self.codes.get(pid)

    def close(self) -> None:
        """End the template: it kills what it still has forked, then exits."""
        if self.channel is not None:
            self.channel.close()  # EOF: the template's cue to end
            self.channel = None
        deadline = time.monotonic() + _CLOSE_WAIT
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(self.pid, os.WNOHANG)[0] == 0:
                    time.sleep(0.01)
                    continue
            return
        self.kill()

    def kill(self) -> None:
        """SIGKILL the template now (its ranks follow it, ``PR_SET_PDEATHSIG``)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)  # bounded: SIGKILL cannot be ignored


class WarmRank:
    """A rank forked by the template, answering like :class:`subprocess.Popen`."""

    def __init__(self, template: Template, pid: int) -> None:
        self.template = template
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.template.poll(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.template.wait(self.pid, timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"rank process {self.pid}", timeout or _REPLY_WAIT)
        return self.returncode


# The template process. Everything below runs in forked children of the main process
# and never returns into the main process's stack: each ends with os._exit.


def _template(sock: socket.socket, main: int) -> int:
    """Cut loose from the main session, then serve :class:`Fork` requests until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the main process's
    os.setsid()
    watch_parent(main)
    _null_inherited_fds(keep={sock.fileno()})
    _fresh_stdio()
    _undo_pytest_hooks()
    # Objects inherited from the main process are never collected here or in a rank:
    # the collector leaves their pages shared (copy-on-write) and skips them.
    gc.freeze()
    channel = Channel(sock)
    children: dict[int, int] = {}  # pidfd -> pid
    while True:
        readable = select.select([sock.fileno(), *children], [], [], _IDLE_CHECK)[0]
        if not readable and os.getppid() != main:
            break
        for pidfd in readable:
            pid = children.pop(pidfd, 0)
            if pid:
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                channel.send(Exited(pid, os.waitstatus_to_exitcode(status)))
        if sock.fileno() not in readable:
            continue
        try:
            message, fds = channel.recv_with_fds(2)
        except ProtocolError:
            break
        if not isinstance(message, Fork) or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            break
        pid = _fork_rank(channel, message, fds[0], fds[1], list(children))
        for fd in fds:
            os.close(fd)
        if pid > 0:
            children[os.pidfd_open(pid)] = pid
        channel.send(Forked(message.spec.rank, pid))
    # The main process has gone or closed us: no orphans. Each supervisor ends its rank and
    # all the rank started (SIGTERM); one that does not in time loses its process group.
    for pid in children.values():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _SUPERVISOR_WAIT
    for fd, pid in children.items():
        with contextlib.suppress(OSError):
            while not os.waitpid(pid, os.WNOHANG)[0]:
                if time.monotonic() >= deadline:
                    os.killpg(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)  # bounded: SIGKILL cannot be ignored
                    break
                time.sleep(0.01)
        os.close(fd)
    return 0


def _null_inherited_fds(keep: set[int]) -> None:
    """Point every inherited descriptor but ``keep`` at ``/dev/null``.

    A cold rank inherits none (``close_fds``); here the main process's pipes (its
    stdout, which a caller may read to EOF), sockets and files must not be held
    open. They are replaced rather than closed so that the main process's objects
    still owning them (never used here) cannot close a number reused by a rank.
    """
    null = os.open(os.devnull, os.O_RDWR)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd != null and fd not in keep:
            with contextlib.suppress(OSError):
                os.dup2(null, fd, inheritable=fd <= 2)
    os.close(null)


def _fresh_stdio() -> None:
    """New ``sys.std*`` objects on descriptors 0-2, as an interpreter with
    ``PYTHONUNBUFFERED`` has (the main process's are pytest's capture objects, or
    hold its unwritten output)."""
    encoding = getattr(sys.__stdout__, "encoding", None) or "utf-8"
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding=encoding)
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding=encoding, write_through=True
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False),
        encoding=encoding,
        errors="backslashreplace",
        write_through=True,
    )
    # The originals too (pytest and faulthandler fall back to them); typeshed marks them
    # final, the interpreter does not.
    for name in ("stdin", "stdout", "stderr"):
        setattr(sys, f"__{name}__", getattr(sys, name))


def _undo_pytest_hooks() -> None:
    """Undo what the main process's pytest session hooked into the interpreter, so a rank
    session starts from what a fresh interpreter has after importing the same modules."""
    sys.settrace(None)  # coverage's tracer, a debugger
    sys.setprofile(None)
    threading.settrace(None)
    threading.setprofile(None)
    with contextlib.suppress(RuntimeError):
        faulthandler.disable()
    if hasattr(signal, "SIGUSR1"):
        faulthandler.unregister(signal.SIGUSR1)
    sys.meta_path[:] = [
        finder for finder in sys.meta_path if type(finder).__module__ != "_pytest.assertion.rewrite"
    ]
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__module__ == "_pytest.logging":
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def _fork_rank(channel: Channel, fork: Fork, control: int, log: int, inherited: list[int]) -> int:
    """Fork one rank's supervisor, which forks the rank (see :mod:`._supervise`); the
    supervisor's pid in the template (``-1`` if fork failed). ``inherited``: the template's
    descriptors neither may keep (the supervisors' pidfds)."""
    template = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        return -1
    if pid != 0:
        return pid
    code = 1  # pragma: no cover - the supervisor, then the rank process
    try:  # pragma: no cover
        for fd in inherited:
            os.close(fd)
        supervisor = os.getpid()
        _supervise.prepare(template)
        rank = _supervise.fork()
        if rank:
            channel.close()
            os.close(control)
            os.close(log)
            _supervise.supervise(rank)
        code = _become_rank(channel, fork, control, log, supervisor)
    except SystemExit as error:  # pragma: no cover
        code = error.code if isinstance(error.code, int) else 1
    except BaseException:  # pragma: no cover
        traceback.print_exc()
    finally:  # pragma: no cover
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _become_rank(
    channel: Channel, fork: Fork, control: int, log: int, supervisor: int
) -> int:  # pragma: no cover
    """In the forked child: become what ``python -m pytest *fork.args`` would be, then run
    that session (which ends in :func:`~._rank.serve`, by ``os._exit``). The rank stays in
    its supervisor's session and process group, as a cold rank does."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    watch_parent(supervisor)  # the rank dies with its supervisor
    channel.close()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(fork.cwd)
    os.environ.clear()
    os.environ.update(fork.env)
    os.environ[RANK_ENV] = replace(fork.spec, control_fd=control, parent_pid=supervisor).to_env()
    import pytest

    sys.argv = [os.path.join(os.path.dirname(pytest.__file__), "__main__.py"), *fork.args]
    _reseed()
    # torch read OMP_NUM_THREADS when the main process imported it: the rank's own count
    # is set here, before its session configures (a conftest may still choose another).
    apply_threads(fork.spec.threads)
    return int(pytest.main(fork.args))


def _reseed() -> None:  # pragma: no cover - runs in a rank
    """Fresh random states, as each cold rank has (torch and numpy seed themselves from
    the OS at import; Python's ``random`` is reseeded at fork by Python itself)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()
