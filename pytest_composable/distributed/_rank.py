"""The rank side: a pytest session per rank that runs distributed items in lockstep.

The main process (:mod:`._pool`) starts each rank as ``python -m pytest <the
session's own arguments>`` with :data:`~._constants.RANK_ENV` holding its
:class:`~._protocol.RankSpec`. The rank collects the same tests, joins the
process group once (a ``FileStore`` in the pool's private directory: no port
is ever chosen), then runs the items the main process names, one at a time,
with pytest's own ``runtestprotocol``, and sends the reports back. After each
test it reports its memory, from which the main process decides whether the
pool must start again, and once the reports are sent it undoes what the test
changed in the process (:mod:`._hygiene`).
"""

from __future__ import annotations

import ctypes
import datetime
import faulthandler
import inspect
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Generator
from types import TracebackType
from typing import IO, Any, NoReturn

import pytest

from ..state import state_of
from ._constants import WORLD_FIXTURE
from ._hygiene import Hygiene, measure
from ._protocol import (
    Channel,
    Check,
    Checked,
    Crash,
    Done,
    Failing,
    Joining,
    Missing,
    RankSpec,
    Ready,
    Run,
    Stop,
)
from ._reports import serialize
from ._seed import seed_everything
from ._stacks import is_consequence, is_library
from .world import RankContext

__all__ = [
    "FailureNotice",
    "InterruptFails",
    "RankDevices",
    "RankInterrupt",
    "context",
    "install_stack_dump",
    "serve",
    "set_pg_timeout",
    "watch_parent",
]

_PR_SET_PDEATHSIG = 1

_context: RankContext | None = None
_stack_file: IO[str] | None = None
_channel: Channel | None = None  # to the main process, while serve() runs
_hygiene: Hygiene | None = None  # this rank's state between tests, while serve() runs


class RankInterrupt(Exception):
    """A ``KeyboardInterrupt`` raised inside a test on a rank, turned into that test's failure
    (on a rank, nobody pressed Ctrl-C: the rank runs in its own session)."""


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
    timeout = spec.join_timeout
    if spec.pg_timeout is not None:
        # The group keeps the timeout it is made with: the ranks first meet in the store
        # (a late rank is still named by the main process), then make it with the test's.
        store.set_timeout(datetime.timedelta(seconds=spec.join_timeout))
        store.set(f"composable-arrived-{spec.rank}", "1")
        store.wait([f"composable-arrived-{r}" for r in range(spec.world_size)])
        timeout = spec.pg_timeout
    dist.init_process_group(
        spec.backend,
        store=store,
        rank=spec.rank,
        world_size=spec.world_size,
        timeout=datetime.timedelta(seconds=timeout),
    )
    return RankContext(
        spec.rank,
        spec.world_size,
        spec.rank,
        {spec.device_type: spec.backend},
        group=dist.group.WORLD,
    )


def _intact(context: RankContext) -> bool:
    """Whether the default process group is still the one this rank joined (a test may
    have destroyed it, or replaced it with its own)."""
    import torch.distributed as dist

    return dist.is_initialized() and dist.group.WORLD is context.group


_current_pg_timeout: float | None = None


def set_pg_timeout(seconds: float) -> None:
    """Give the process group the timeout of the test about to run."""
    global _current_pg_timeout
    if seconds == _current_pg_timeout:
        return
    import torch.distributed as dist
    from torch.distributed import distributed_c10d

    delta = datetime.timedelta(seconds=seconds)
    group = dist.group.WORLD
    if group is not None and hasattr(group, "set_timeout"):
        group.set_timeout(delta)
    else:
        # Without set_timeout (torch 2.6) gloo keeps its timeout whatever this does:
        # the main process starts new ranks for a test that needs another
        # (:func:`._pool.retimes_in_place`).
        distributed_c10d._set_pg_timeout(delta)
    _current_pg_timeout = seconds


def _run(
    session: pytest.Session, items: dict[str, pytest.Item], run: Run, spec: RankSpec
) -> Done | Missing:
    from _pytest.runner import runtestprotocol

    item = items.get(run.nodeid)
    if item is None:
        return Missing(run.nodeid)
    set_pg_timeout(run.pg_timeout)
    # The main process names the next test of the session, as pytest's own loop
    # would, so fixtures the next test does not share end with this one.
    nextitem = items.get(run.next_id) if run.next_id is not None else None
    seed_everything(state_of(session.config).seed)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    assert _context is not None
    assert _hygiene is not None
    return Done(
        [serialize(session.config, r) for r in reports],
        intact=_intact(_context),
        memory=_hygiene.memory(spec.memory_limit),
    )


def _healthy(timeout: float) -> bool:
    """Whether every rank meets at a barrier within ``timeout`` seconds.

    ``dist.barrier(timeout=...)`` is recent; on an older torch an ``all_reduce``
    whose work is waited on with a timeout does the same.
    """
    import torch
    import torch.distributed as dist

    delta = datetime.timedelta(seconds=timeout)
    try:
        if "timeout" in inspect.signature(dist.barrier).parameters:
            dist.barrier(timeout=delta)
        else:  # pragma: no cover - torch < 2.7
            device = "cuda" if _context is not None and "cuda" in _context.backends else "cpu"
            work = dist.all_reduce(torch.zeros(1, device=device), async_op=True)
            assert work is not None
            work.wait(timeout=delta)
    except Exception:
        return False
    return True


def _finish(session: pytest.Session) -> str | None:
    """End what is still set up (session fixtures); the error text if that failed."""
    try:
        session._setupstate.teardown_exact(None)
    except Exception:
        return traceback.format_exc()
    return None


def serve(session: pytest.Session, spec: RankSpec, control_fd: int) -> None:
    """Join the world, then run what the main process asks for until it says stop."""
    global _context, _channel, _hygiene
    channel = _channel = Channel(socket.socket(fileno=control_fd))
    channel.send(Joining(spec.rank))
    try:
        _context = _join(spec)
    except Exception:
        channel.send(Crash(traceback.format_exc(), "join"))
        _exit(1)
    import torch

    hygiene = _hygiene = Hygiene(spec.device_type)
    session.config.pluginmanager.register(hygiene, "composable.rank_hygiene")
    # What every test starts from: the session has configured and collected (a conftest's
    # own settings are in it) and the rank has joined.
    hygiene.start()
    hygiene.joined = measure(spec.device_type)
    channel.send(Ready(spec.rank, os.getpid(), hygiene.joined, torch.get_num_threads()))
    items = {item.nodeid: item for item in session.items}
    unclean: str | None = None  # why putting the state back after the last test failed
    while True:
        message = channel.recv()
        if message is None:
            break
        if unclean is not None:
            # Told only now, once the message is read: a rank that exits leaving a
            # message unread resets the connection before the main process reads why.
            channel.send(Crash(unclean, "clean"))
            _exit(3)
        if isinstance(message, Stop):
            error = _finish(session)
            channel.send(Crash(error, "teardown") if error else Done([], intact=True))
            break
        if isinstance(message, Check):
            channel.send(Checked(_healthy(message.timeout)))
            continue
        if not isinstance(message, Run):
            channel.send(Crash(f"unexpected message {message!r}", "serve"))
            _exit(3)
        try:
            reply = _run(session, items, message, spec)
        except BaseException:
            channel.send(Crash(traceback.format_exc(), "test"))
            _exit(3)
        channel.send(reply)
        # After the reply, so that the main process reports the test while the rank
        # cleans (a tenth of a millisecond or more of every test on a busy machine). A
        # failure here is the answer to the main process's next message.
        try:
            hygiene.clean()
        except BaseException:
            unclean = traceback.format_exc()
    _channel = None
    _context = None
    # Exit at once, without pytest's session finish (nothing of a rank's session is
    # reported) or interpreter teardown: the main process waits for this exit. The
    # process group is not destroyed first: every rank is done with it (a Stop comes
    # after the last test and session fixture), the exit releases it, and destroying
    # gloo's groups one by one took 30 to 50 ms of the pool's last test (more with a
    # mesh's sub-groups).
    _exit(0)


def _exit(code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class RankDevices:
    """On a rank (plugin-launched or torchrun-launched), the test's accelerator is the
    rank's own: ``cuda:<local rank>``. Registered only there, so no other session pays
    for a wrapper around every fixture setup."""

    def __init__(self, world_context: Callable[[pytest.Config], RankContext | None]) -> None:
        self._world_context = world_context

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Any:
        result = yield
        context = self._world_context(request.config)
        if (
            context is not None
            and fixturedef.argname == "composable_device"
            and WORLD_FIXTURE in request.fixturenames
            and getattr(result, "type", "cpu") not in ("cpu", "meta")
        ):
            import torch

            result = torch.device(result.type, context.local_rank)
            if fixturedef.cached_result is not None:
                fixturedef.cached_result = (result, fixturedef.cached_result[1], None)
        return result


class InterruptFails:
    """On a plugin-launched rank, a ``KeyboardInterrupt`` raised by a test fails that test
    (:class:`RankInterrupt`): nobody can press Ctrl-C there (the rank has its own session),
    and letting it through would end the rank outside any test's report."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        return (yield from _interrupt_fails())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        return (yield from _interrupt_fails())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        return (yield from _interrupt_fails())


def _interrupt_fails() -> Generator[None, None, None]:
    __tracebackhide__ = True
    try:
        return (yield)
    except KeyboardInterrupt as error:
        raise RankInterrupt("KeyboardInterrupt raised inside the test on this rank") from error


def _drop_library_frames(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Cut the error's traceback after the user's innermost frame: what another rank's
    failure caused is shown with the user's frames only (the collective's source and
    docstring say nothing of it). The raw traceback is cut, not pytest's view of it,
    which pytest rebuilds from the raw one."""
    last = None
    tb: TracebackType | None = excinfo.tb
    while tb is not None:
        if not is_library(tb.tb_frame.f_code.co_filename):
            last = tb
        tb = tb.tb_next
    if last is not None and last.tb_next is not None:
        last.tb_next = None
        excinfo.traceback = type(excinfo.traceback)(excinfo.tb)


class FailureNotice:
    """On a plugin-launched rank, a phase that fails is announced to the main process at
    once (:class:`~._protocol.Failing`), while the test's protocol goes on: the main
    process then ends the ranks that the failure left waiting, instead of waiting for
    the test's deadline."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        excinfo = call.excinfo
        consequence = excinfo is not None and is_consequence(excinfo.value, excinfo.tb)
        if excinfo is not None and consequence:
            _drop_library_frames(excinfo)
        report = yield
        channel = _channel
        if report.failed and channel is not None and _context is not None:
            channel.send(Failing(_context.rank, serialize(item.config, report), consequence))
        return report
