"""A rank's supervisor: the process between a rank and whoever started it (stdlib only).

Nothing a rank starts may outlive it: not a ``sleep`` its test started, not a
forked copy of the rank, not a daemon that called ``setsid`` and whose parent
exited, and not what any of them started, even when the rank itself dies in
the middle of a test. A process group does not hold them (``setsid`` leaves
it), and an orphan's new parent is the nearest *child subreaper* above it
(``PR_SET_CHILD_SUBREAPER``), else ``init``. So every rank runs under a
supervisor of its own, which:

* starts its own session and process group (the rank stays in it, so the main
  process's ``killpg`` of the supervisor's pid reaches both, as before) and is
  a child subreaper: whatever the rank's descendants orphan stays below it;
* forks the rank (warm start: the rank continues in the forked child, see
  :mod:`._warm`; cold start: the child executes ``python -m pytest ...``, see
  :func:`main`) and then only waits, reaping every orphan handed to it;
* when the rank has ended, however it ended, SIGKILLs every process still
  below it (walking ``/proc/*/stat`` parent links: nothing else tracks a
  process that called ``setsid``), reaps them all, and exits with the rank's
  own status (a signal that killed the rank kills the supervisor too), so the
  main process reads the rank's exit status from the supervisor's;
* on SIGTERM (the main process closing the pool, or its own parent gone,
  ``PR_SET_PDEATHSIG``) kills the rank, which leads to the same end;
* passes SIGUSR1 (a stack dump at a test's deadline) on to the rank.

So when the main process has seen a rank's exit status, nothing the rank
started is left, and none of it was reparented to the main process or to
``init``. This module runs as a script too (cold start: ``python -I -S
_supervise.py``), so it imports only the standard library.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
import time
from typing import NoReturn

__all__ = ["descendants", "end_descendants", "fork", "main", "prepare", "supervise"]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_END_WAIT = 10.0  # SIGKILL cannot be ignored: only a process stuck in the kernel takes long
_child = 0  # the rank, once forked


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no prctl: nothing to set
            ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _on_term(signum: int, frame: object) -> None:
    if _child:
        with contextlib.suppress(OSError):
            os.kill(_child, signal.SIGKILL)
    else:  # nothing started yet: nothing to end
        os._exit(128 + signum)


def _on_usr1(signum: int, frame: object) -> None:
    if _child:
        with contextlib.suppress(OSError):
            os.kill(_child, signal.SIGUSR1)


def prepare(parent: int) -> None:
    """Become a supervisor: own session, child subreaper, ends with ``parent`` (SIGTERM,
    then the same as a closed pool). Call in the new process before forking the rank."""
    signal.signal(signal.SIGTERM, _on_term)
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, _on_usr1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the main process's
    if os.getsid(0) != os.getpid():  # a cold one was started in a session of its own
        os.setsid()
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def fork() -> int:
    """Fork the rank: ``0`` in the rank (its signal handlers the default ones again), the
    rank's pid here (SIGTERM from now on kills it)."""
    global _child
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        pid = os.fork()
        if pid == 0:
            for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
        else:
            _child = pid
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    return pid


def supervise(child: int) -> NoReturn:
    """Wait for the rank ``child`` (reaping orphans meanwhile), then end everything below
    this process and exit as the rank did."""
    status = None
    while status is None:
        try:
            pid, code = os.waitpid(-1, 0)
        except ChildProcessError:  # pragma: no cover - the rank is a child until reaped
            break
        if pid == child:
            status = code
    end_descendants(_END_WAIT)
    _exit_as(status)


def descendants(root: int) -> list[int]:
    """The live processes below ``root`` (parent links from ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    live = set()
    try:
        names = os.listdir("/proc")
    except OSError:  # no procfs (not Linux): no subreaper either, nothing was adopted
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue
        pid = int(name)
        children.setdefault(int(fields[1]), []).append(pid)
        if fields[0] not in (b"Z", b"X"):
            live.add(pid)
    found = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return [pid for pid in found if pid in live]


def end_descendants(within: float) -> bool:
    """SIGKILL every process below this one and reap them (they all become this child
    subreaper's children as their parents die); whether none is left."""
    deadline = time.monotonic() + within
    while True:
        for pid in descendants(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return True  # no child left, so nothing below: any would hang from a child
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def _exit_as(status: int | None) -> NoReturn:
    """Exit with the rank's status ``status`` (a ``waitpid`` status)."""
    code = 1 if status is None else os.waitstatus_to_exitcode(status)
    if code < 0:
        # Die of the same signal, without a core file of this process.
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's cannot be set
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code  # if that signal does not end a process
    os._exit(code)


def main(argv: list[str]) -> NoReturn:
    """Cold start: ``_supervise.py <parent pid> <spec variable> <control fd> <command...>``.

    Starts ``command`` (the rank, ``python -m pytest ...``) with this process's
    environment, in which the rank's spec (JSON in ``<spec variable>``) now names this
    process as the rank's parent, and supervises it.
    """
    import json

    parent, variable, control, *command = argv
    prepare(int(parent))
    spec = json.loads(os.environ[variable])
    spec["parent_pid"] = os.getpid()
    os.environ[variable] = json.dumps(spec)
    try:
        pid = fork()
    except OSError:
        os._exit(1)
    if pid == 0:
        try:
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as subprocess gives its children
            os.execv(command[0], command)
        finally:
            os._exit(127)
    os.close(int(control))
    supervise(pid)


if __name__ == "__main__":  # pragma: no cover - the cold supervisor process
    main(sys.argv[1:])
