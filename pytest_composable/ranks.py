"""The rank side: a pytest session per rank that runs distributed items in lockstep.

The main pytest process (see :mod:`.launcher`) starts each rank as
``python -m pytest <the session's own arguments>`` with the environment
variable :data:`ENV` describing the rank. The rank collects the same tests,
joins the process group once (a ``FileStore`` in a private directory: no
port is ever chosen), and then runs the items the main process names, one at
a time, with pytest's own ``runtestprotocol``, sending the reports back.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import faulthandler
import json
import os
import signal
import socket
import sys
import traceback
from dataclasses import asdict, dataclass
from typing import IO, Any

import pytest

from . import _wire
from .distributed_plugin import RANK_ENV
from .reports import serialize
from .world import RankContext, forget_meshes

__all__ = ["ENV", "RankSpec", "context", "serve", "spec_from_env"]

ENV = RANK_ENV
_PR_SET_PDEATHSIG = 1

_context: RankContext | None = None
_stack_file: IO[str] | None = None


@dataclass(frozen=True)
class RankSpec:
    """Everything a rank process needs to join its world and reach the main process."""

    control: str  # the main process's AF_UNIX socket
    store: str  # FileStore path
    rank: int
    world_size: int
    device_type: str
    backend: str
    pg_timeout: float
    parent_pid: int
    stack_file: str

    def to_env(self) -> str:
        return json.dumps(asdict(self))


def spec_from_env() -> RankSpec | None:
    """This process's :class:`RankSpec` (removed from the environment so subprocesses
    of the tests do not inherit it), or ``None`` outside a rank."""
    raw = os.environ.pop(ENV, None)
    return None if raw is None else RankSpec(**json.loads(raw))


def context() -> RankContext | None:
    """The world this rank joined, once :func:`serve` has joined it."""
    return _context


def watch_parent(parent_pid: int) -> None:
    """Die with the main process, even when it is killed with SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def install_stack_dump(path: str) -> None:
    """On SIGUSR1, write every thread's Python stack to ``path`` (used at a deadline)."""
    global _stack_file
    if hasattr(signal, "SIGUSR1"):
        _stack_file = open(path, "a")  # noqa: SIM115 - kept open for the signal handler
        faulthandler.register(signal.SIGUSR1, file=_stack_file, all_threads=True)


def _join(spec: RankSpec) -> RankContext:
    import torch
    import torch.distributed as dist
    from torch._C._distributed_c10d import FileStore

    if spec.device_type == "cuda":
        torch.cuda.set_device(spec.rank)
    store = FileStore(spec.store, spec.world_size)
    dist.init_process_group(
        spec.backend,
        store=store,
        rank=spec.rank,
        world_size=spec.world_size,
        timeout=datetime.timedelta(seconds=spec.pg_timeout),
    )
    return RankContext(spec.rank, spec.world_size, spec.rank, spec.backend)


def _leave() -> None:
    import torch.distributed as dist

    forget_meshes()
    if dist.is_initialized():
        dist.destroy_process_group()


def _run(
    session: pytest.Session, items: dict[str, pytest.Item], nodeid: str, next_id: str | None
) -> tuple[str, Any]:
    from _pytest.runner import runtestprotocol

    item = items.get(nodeid)
    if item is None:
        return ("missing", nodeid)
    # Tear down what a previous item left that this one does not share (the
    # main process's idea of the next item may have differed).
    with contextlib.suppress(Exception):
        session._setupstate.teardown_exact(item)
    reports = runtestprotocol(item, nextitem=items.get(next_id or ""), log=False)
    return ("done", [serialize(session.config, r) for r in reports])


def _healthy(timeout: float) -> bool:
    import torch.distributed as dist

    try:
        dist.barrier(timeout=datetime.timedelta(seconds=timeout))
    except Exception:
        return False
    return True


def serve(session: pytest.Session, spec: RankSpec) -> None:
    """Join the world, then run what the main process asks for until it says stop."""
    global _context
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.connect(spec.control)
    try:
        _context = _join(spec)
    except Exception:
        _wire.send(control, ("crash", traceback.format_exc()))
        raise
    _wire.send(control, ("ready", spec.rank, os.getpid()))
    items = {item.nodeid: item for item in session.items}
    while True:
        message = _wire.recv(control)
        if message is None or message[0] == "stop":
            break
        if message[0] == "check":
            _wire.send(control, ("checked", _healthy(message[1])))
            continue
        _, nodeid, next_id = message
        try:
            reply = _run(session, items, nodeid, next_id)
        except BaseException:
            _wire.send(control, ("crash", traceback.format_exc()))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(3)
        _wire.send(control, reply)
    # Session fixtures end here; then exit at once, without pytest's session finish
    # (nothing of a rank's session is reported) or interpreter teardown: the main
    # process waits for this exit at the end of its session.
    with contextlib.suppress(Exception):
        session._setupstate.teardown_exact(None)
    with contextlib.suppress(Exception):
        _leave()
    _context = None
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
