"""Plain ``pytest``: the main process starts rank processes and keeps them between tests.

One :class:`RankPool` per (world size, device type, backend), started the first
time a test needs it and kept while its tests follow one another, so no test
pays for spawning; only one pool lives at a time (the plugin closes a pool
before another pool's test). Each rank is ``python -m pytest`` with the
session's own arguments in rank mode (see :mod:`._rank`), under a supervisor
process of its own (:mod:`._supervise`), in the supervisor's session and
process group (so a terminal's Ctrl-C reaches only the main process, which then
ends every rank). The supervisor ends everything the rank started when the rank
ends, however it ends; what the main process sees as a rank's process (its pid,
exit status, SIGUSR1 for a stack dump) is its supervisor's.

Nothing is left behind, however the main process ends:

* every supervisor ends its rank when its parent dies (``PR_SET_PDEATHSIG``,
  Linux), and a small *reaper* process per pool waits on a pipe from the main
  process; when that pipe closes because the main process died (SIGKILL
  included), the reaper asks every supervisor to end its rank, kills the
  process group of any that does not, and removes the pool's directory;
* each pool directory holds a lock for as long as its session lives; a later
  session removes only directories whose lock is free, so a live session
  (even in another PID namespace sharing ``TMPDIR``) is never swept.

With warm start (the default, :mod:`._warm`) a rank's supervisor is forked from
the session's template process, and the rank from the supervisor, instead of
spawned; it is the same rank session, with the same arguments, environment and
files, and the template reports its exit status (:class:`~._warm.WarmRank`), so
everything below holds for both.

The ranks are started with :class:`subprocess.Popen` rather than torch's
elastic agent: the agent restarts the whole group whenever one worker fails,
which must not happen between tests, and it owns the workers' stdio; here the
main process talks to each rank over its own socket pair (no path, so any
``TMPDIR`` length works, and no port, so concurrent sessions and xdist
workers cannot collide), signals single ranks for stack dumps and decides
itself when to restart. Rendezvous uses a ``FileStore`` in the pool directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import pytest

from . import _supervise
from ._constants import (
    MIN_START_TIMEOUT,
    MIN_WARM_START_TIMEOUT,
    NOTES_OUTPUT,
    RANK_ENV,
    THREADS_ENV,
)
from ._fork_safety import unsafe_reason
from ._hygiene import grown, machine_ranks, rank_threads, threads_note
from ._lockstep import Lockstep, describe_exit, receive, stack_dumps, unclean
from ._lockstep import tail as _tail
from ._options import settings_of
from ._outcome import RankResult, compose
from ._policy import PoolKey
from ._protocol import (
    Channel,
    Check,
    Checked,
    Crash,
    Joining,
    Memory,
    RankSpec,
    Ready,
    Stop,
)
from ._rank_args import RankOptions, rank_arguments, rank_environment
from ._reports import failure, passed
from ._warm import Template, TemplateError

__all__ = ["Launcher", "PoolError", "RankPool", "sweep_stale"]

_PREFIX = "composable-ranks-"
_LOCK = "lock"
_STALE_AFTER = 60.0  # a directory younger than this may still be taking its lock
_STOP_WAIT = 10.0
_JOIN_GRACE = 5.0
_MIB = 2**20

# The reaper: reads its stdin until the main process's end of the pipe closes, then
# asks each rank's supervisor to end its rank and all the rank started (SIGTERM, as
# they also get from their parent's death), SIGKILLs the process group of any still
# there after a while, and removes the pool directory. The main process SIGKILLs it
# first when it closes a pool itself.
_REAPER = """\
import os, shutil, signal, sys, time
sys.stdin.buffer.read()
pids = [int(pid) for pid in sys.argv[2:]]
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False
for pid in pids:
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass
deadline = time.monotonic() + 10
while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
    time.sleep(0.05)
for pid in pids:
    if alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


def sweep_stale(root: Path | None = None) -> list[Path]:
    """Remove the pool directories of sessions that died without cleaning up; the removed.

    A directory is stale only when nobody holds its lock (and it is old enough to
    have taken one): the session that made it has ended, whatever its PID namespace.
    """
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        try:
            if time.time() - path.stat().st_mtime < _STALE_AFTER:
                continue
            fd = os.open(path / _LOCK, os.O_RDWR)
        except FileNotFoundError:
            fd = -1  # never locked, and old: its session died while making it
        except OSError:
            continue
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # locked: a live session
        finally:
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


class PoolError(Exception):
    """The ranks could not be started."""


class RankProcess(Protocol):
    """A rank process: a :class:`subprocess.Popen` (cold) or a :class:`~._warm.WarmRank`."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class RankPool:
    """``world_size`` rank processes on ``device_type``, kept between tests.

    The constructor spawns them (forks them from ``template``, if given); :meth:`start`
    waits until they joined. On any error or interruption while doing either,
    everything is killed and removed.

    Each rank gets ``max(1, usable cores // ranks on the machine)`` intra-op threads
    (:func:`~._hygiene.rank_threads`; the ranks of every pytest-xdist worker count)
    unless the user set ``OMP_NUM_THREADS``: in its environment, which a cold rank's
    torch reads at import, and in its spec, which a warm rank applies. After each test
    the ranks report their memory; past the session's rank memory limit,
    :attr:`recycle` says why the pool must start again.
    """

    def __init__(
        self,
        config: pytest.Config,
        world_size: int,
        device_type: str,
        backend: str,
        join_timeout: float,
        pg_timeout: float | None = None,
        template: Template | None = None,
    ) -> None:
        self.config = config
        self.world_size = world_size
        self.device_type = device_type
        # The timeout the ranks' group is made with, where it cannot be changed later.
        self.pg_timeout = pg_timeout
        self.template = template
        # Every rank of the pool runs on this machine, beside other workers' pools.
        self.threads = rank_threads(os.environ, machine_ranks(os.environ, world_size))
        limit = settings_of(config).memory_limit
        self.memory_limit = None if limit is None else limit * _MIB  # bytes of growth
        self.joined: dict[int, Memory] = {}  # each rank's memory as it joined (Ready)
        self.rank_threads: dict[int, int] = {}  # each rank's intra-op threads then (Ready)
        self.recycle: str | None = None  # why the pool must start again before its next test
        self.procs: list[RankProcess] = []
        self.channels: dict[int, Channel] = {}
        self.reaper: subprocess.Popen[bytes] | None = None
        self.last: str | None = None  # the last test the pool ran
        self.directory = Path(tempfile.mkdtemp(prefix=_PREFIX))
        self._lock = os.open(self.directory / _LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            for rank in range(world_size):
                self.procs.append(self._spawn(rank, backend, join_timeout, pg_timeout))
            self.reaper = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    _REAPER,
                    str(self.directory),
                    *(str(p.pid) for p in self.procs),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            self.kill()
            raise

    def log(self, rank: int) -> Path:
        return self.directory / f"rank{rank}.log"

    def stacks(self, rank: int) -> Path:
        return self.directory / f"stacks-rank{rank}.txt"

    def _spawn(
        self, rank: int, backend: str, join_timeout: float, pg_timeout: float | None
    ) -> RankProcess:
        ours, theirs = socket.socketpair()
        proc: RankProcess
        try:
            spec = RankSpec(
                control_fd=theirs.fileno(),
                store=str(self.directory / "store"),
                rank=rank,
                world_size=self.world_size,
                device_type=self.device_type,
                backend=backend,
                join_timeout=join_timeout,
                pg_timeout=pg_timeout,
                parent_pid=os.getpid() if self.template is None else self.template.pid,
                stack_file=str(self.stacks(rank)),
                threads=self.threads,
                memory_limit=self.memory_limit,
            )
            extra = {
                RANK_ENV: spec.to_env(),
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(self.world_size),
                "LOCAL_WORLD_SIZE": str(self.world_size),
                "PYTHONUNBUFFERED": "1",
            }
            if self.threads is not None:
                # Read by a cold rank's torch as it is imported, and by what a rank starts.
                extra[THREADS_ENV] = str(self.threads)
            env = rank_environment(os.environ, extra, self.directory, rank)
            (self.directory / f"rank{rank}").mkdir()
            args = rank_arguments(_rank_options(self.config), self.directory, rank)
            with open(self.log(rank), "wb") as log:
                if self.template is not None:
                    proc = self.template.fork(
                        spec,
                        {k: v for k, v in env.items() if k != RANK_ENV},
                        args,
                        str(self.config.invocation_params.dir),
                        [theirs.fileno(), log.fileno()],
                    )
                else:
                    # Under its supervisor (see ._supervise), which executes the rank.
                    proc = subprocess.Popen(
                        [
                            sys.executable,
                            "-I",
                            "-S",
                            _supervise.__file__,
                            str(os.getpid()),
                            RANK_ENV,
                            str(theirs.fileno()),
                            sys.executable,
                            "-m",
                            "pytest",
                            *args,
                        ],
                        cwd=self.config.invocation_params.dir,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        pass_fds=[theirs.fileno()],
                    )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.channels[rank] = Channel(ours)
        return proc

    def start(self, timeout: float) -> None:
        """Wait until every rank joined the world and said it is ready."""
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = {channel: rank for rank, channel in self.channels.items()}
        joining: set[int] = set()
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                late = sorted(set(waiting.values()) - joining)
                met = sorted(set(waiting.values()) & joining)
                what = f"rank(s) {_ranks(late)} not ready after {timeout:g} s: still starting "
                what += "(importing, collecting)" if late else "joining the process group"
                if late and met:
                    what += f"; rank(s) {_ranks(met)} waiting for them in the rendezvous"
                raise PoolError(self._startup_problem(what, late or met))
            for channel in select.select(list(waiting), [], [], min(left, 0.5))[0]:
                rank = waiting[channel]
                message = receive(channel)
                if isinstance(message, Joining):
                    joining.add(rank)
                    continue
                del waiting[channel]
                if isinstance(message, Ready):
                    self.joined[rank] = message.memory
                    self.rank_threads[rank] = message.threads
                    continue
                detail = f":\n{message.traceback}" if isinstance(message, Crash) else ""
                exit_text = describe_exit(self.wait_exit(rank))
                late = sorted(waiting.values())
                also = f"; rank(s) {_ranks(late)} had not joined yet" if late else ""
                raise PoolError(
                    self._startup_problem(
                        f"rank {rank} failed to join the world ({exit_text}){also}{detail}",
                        [rank, *late],
                    )
                )

    def wait_exit(self, rank: int, seconds: float = 5.0) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.procs[rank].wait(timeout=seconds)
        return self.procs[rank].poll()

    def _startup_problem(self, what: str, ranks: Iterable[int]) -> str:
        logs = "\n".join(
            f"{'_' * 20} rank {r} output {'_' * 20}\n{_tail(self.log(r))}" for r in ranks
        )
        return (
            f"composable: could not start {self.world_size} ranks on {self.device_type}: "
            f"{what}\n{logs}"
        )

    def idle_problem(self) -> str | None:
        """Why the pool cannot run another test: ranks that died since the last one."""
        dead = [rank for rank, proc in enumerate(self.procs) if proc.poll() is not None]
        if not dead:
            return None
        parts = [
            f"composable: rank {rank} {describe_exit(self.procs[rank].returncode)} while its "
            f"pool was idle (after {self.last}); its ranks are restarted for the next test\n"
            f"{'_' * 20} rank {rank} output (tail) {'_' * 20}\n{_tail(self.log(rank))}"
            for rank in dead
        ]
        return "\n".join(parts)

    def run(
        self, nodeid: str, next_id: str | None, timeout: float, pg_timeout: float
    ) -> tuple[dict[int, RankResult], bool]:
        """Run ``nodeid`` on every rank (:class:`~._lockstep.Lockstep`); the results, and
        whether the pool is still usable."""
        self.last = nodeid
        return Lockstep(self, nodeid, next_id, timeout, pg_timeout).run()

    def over_limit(self, results: dict[int, RankResult]) -> str | None:
        """Why the pool must start again before its next test: the rank whose memory grew
        the most since it joined, if that is past the limit; ``None`` otherwise."""
        if self.memory_limit is None:
            return None
        growth = {
            rank: grown(result.memory, self.joined[rank])
            for rank, result in results.items()
            if result.memory is not None and rank in self.joined
        }
        rank = max(growth, key=lambda r: growth[r], default=None)
        if rank is None or growth[rank] <= self.memory_limit:
            return None
        memory, joined = results[rank].memory, self.joined[rank]
        assert memory is not None
        kind = "resident set" if memory.rss - joined.rss >= growth[rank] else "accelerator memory"
        return (
            f"rank {rank}'s {kind} grew by {growth[rank] / _MIB:.0f} MiB since the pool "
            f"started, past the rank memory limit of {self.memory_limit // _MIB} MiB "
            "(--composable-rank-memory-limit)"
        )

    def healthy(self, timeout: float) -> tuple[bool, list[str]]:
        """Whether every rank still passes a barrier within ``timeout`` seconds; and why
        ranks that failed to put their state back after the test just run ended."""
        if not all(channel.send(Check(timeout)) for channel in self.channels.values()):
            return False, []
        waiting = {channel: rank for rank, channel in self.channels.items()}
        deadline = time.monotonic() + timeout + 2
        healthy, problems = True, list[str]()
        while waiting:
            # Once one rank failed the check, only what the others have already said.
            left = max(deadline - time.monotonic(), 0) if healthy else 0
            readable = select.select(list(waiting), [], [], left)[0]
            if not readable:
                return False, problems
            for channel in readable:
                rank = waiting.pop(channel)
                message = receive(channel)
                if isinstance(message, Crash) and message.phase == "clean":
                    how = unclean(self.wait_exit(rank, 1.0), message.traceback, "this test")
                    problems.append(f"composable: rank {rank} {how}")
                healthy = healthy and message == Checked(True)
        return healthy, problems

    def stop(self) -> str | None:
        """Ask every rank to end its session fixtures and exit, then make sure none is left.

        Returns what went wrong on the ranks while ending the fixtures, if anything.
        """
        problems = []
        for channel in self.channels.values():
            channel.send(Stop())
        deadline = time.monotonic() + _STOP_WAIT
        for rank, channel in self.channels.items():
            left = max(deadline - time.monotonic(), 0)
            if not select.select([channel], [], [], left)[0]:
                problems.append(f"composable: rank {rank} did not end its session in time")
                continue
            message = receive(channel)
            if isinstance(message, Crash) and message.phase == "clean":
                how = unclean(self.wait_exit(rank, 1.0), message.traceback, "its last test")
                problems.append(f"composable: rank {rank} {how}")
            elif isinstance(message, Crash):
                problems.append(
                    f"composable: rank {rank}: tearing down fixtures failed:\n{message.traceback}"
                )
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        self.kill()
        return "\n".join(problems) or None

    def kill(self) -> None:
        """End every rank and all it started (see :mod:`._supervise`), close channels,
        remove the directory."""
        if self.reaper is not None:
            # First, so it never signals a process group whose id was reused.
            self.reaper.kill()
            self.reaper.wait()
            if self.reaper.stdin is not None:
                self.reaper.stdin.close()
            self.reaper = None
        # Each rank's supervisor (its process, as the main process sees it) kills the
        # rank and everything the rank started, reaps them and exits.
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_WAIT
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for proc in self.procs:
            if proc.poll() is None:  # a supervisor stuck: its process group at least
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()
        if self._lock >= 0:
            shutil.rmtree(self.directory, ignore_errors=True)
            os.close(self._lock)
            self._lock = -1


def _ranks(ranks: Iterable[int]) -> str:
    return ", ".join(str(r) for r in ranks)


def _rank_options(config: pytest.Config) -> RankOptions:
    plugins = frozenset(
        name for name, plugin in config.pluginmanager.list_name_plugin() if plugin is not None
    )
    return RankOptions(
        config.invocation_params.args, plugins, config.option, str(config.getini("log_file"))
    )


def retimes_in_place() -> bool:
    """Whether ranks can give the group they joined another timeout between tests.

    The ranks retime it with ``ProcessGroup.set_timeout``. Without that method (torch
    2.6) only ``_set_pg_timeout`` is left, which leaves a gloo group with the timeout
    it was created with.
    """
    import torch.distributed as dist

    return hasattr(dist.ProcessGroup, "set_timeout")


class Launcher:
    """The session's rank pools, and running one test on them."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.pools: dict[PoolKey, RankPool] = {}  # one at a time (see run_item)
        # What the terminal summary says of the ranks: their pools restarted for memory
        # (one line each), and their intra-op threads by world size.
        self.recycled: list[str] = []
        self.threads: dict[int, set[int]] = {}
        config.pluginmanager.register(_Notes(self), f"composable.rank_notes.{id(self)}")
        self.swept = False
        # Teardown errors of pools closed before the plugin planned to (to change the
        # timeout, or for another pool under pytest-xdist), for the session's end.
        self.problems: list[str] = []
        self.template: Template | None = None
        self.cold_reason: str | None = None  # why warm start was asked for but not used

    def warm_up(self) -> None:
        """Fork the template for warm rank start, unless that is unsafe here (then the ranks
        start cold, and :attr:`cold_reason` says why). Called once the session has collected
        and before it runs any test, so the template holds no test's state."""
        if self.template is not None or self.cold_reason is not None:
            return
        reason = unsafe_reason()
        if reason is None:
            # Python's advice for a process that forks without exec: freeze the heap right
            # before the fork. The collector of neither process then writes to the pages
            # of what was imported (torch, the test modules), which stay shared between
            # this process, the template and the ranks, and no later collection here walks
            # those objects: pytest's final collection and the interpreter's teardown of
            # torch cost some tenths of a second less. (Garbage left from collection is
            # kept until exit.)
            gc.freeze()
            try:
                self.template = Template.start()
            except OSError as error:
                reason = f"could not fork the template process: {error}"
        self.cold_reason = reason

    def retire_template(self) -> None:
        """No test needs ranks any more: end the template."""
        template, self.template = self.template, None
        if template is not None:
            template.close()

    def _new_pool(self, key: PoolKey, join_timeout: float, pg_timeout: float | None) -> RankPool:
        from .world import WorldError, backend_for

        world_size, device_type, backend = key
        try:
            backend = backend or backend_for(device_type)
        except WorldError as error:
            raise PoolError(str(error)) from None
        arguments = (
            self.config,
            world_size,
            device_type,
            backend,
            join_timeout,
            pg_timeout,
        )
        if self.template is not None:
            try:
                return RankPool(*arguments, self.template)
            except TemplateError as error:
                self.cold_reason = f"the template process failed ({error})"
                self.retire_template()
        return RankPool(*arguments)

    def _pool(self, key: PoolKey, timeout: float, pg_timeout: float) -> RankPool:
        pool = self.pools.get(key)
        if pool is None:
            # A start that failed fails its own test only: the next test tries again.
            if not self.swept:
                self.swept = True
                sweep_stale()
            least = MIN_START_TIMEOUT if self.template is None else MIN_WARM_START_TIMEOUT
            start_timeout = max(timeout, least)
            # The ranks wait for each other a little longer than this process waits for
            # them, so that a rank that never arrives is named here, not a rendezvous
            # timeout on the ranks that did.
            pool = self._new_pool(
                key, start_timeout + _JOIN_GRACE, None if retimes_in_place() else pg_timeout
            )
            pool.start(start_timeout)
            self.pools[key] = pool
            self.threads.setdefault(pool.world_size, set()).update(pool.rank_threads.values())
        return pool

    def run_item(
        self,
        item: pytest.Item,
        key: PoolKey,
        next_id: str | None,
        timeout: float,
        pg_timeout: float,
    ) -> list[pytest.TestReport]:
        """The merged reports (setup, call, teardown) of ``item`` run on every rank.

        Only one pool lives at a time: another key's pool, still open, closes first (the
        plugin closes each pool after its last test before another pool's; this is for
        when that could not be known, under pytest-xdist).
        """
        for other in [k for k in self.pools if k != key]:
            problem = self.finish(other)
            if problem is not None:
                self.problems.append(problem)
        pool = self.pools.get(key)
        problem = pool.idle_problem() if pool is not None else None
        if pool is not None and problem is not None:
            self.discard(key)
            return [failure(item, "setup", problem), passed(item, "teardown")]
        if pool is not None and pool.recycle is not None:
            # A rank kept memory past the limit: new ranks serve this test.
            self.recycled.append(
                f"composable: restarted the {key[0]} ranks on {key[1]} before "
                f"{item.nodeid}: {pool.recycle}"
            )
            problem = self.finish(key)
            if problem is not None:
                self.problems.append(problem)
        elif pool is not None and pool.pg_timeout not in (None, pg_timeout):
            # Ranks whose group keeps another test's timeout would cut a longer test's
            # slow collective short, or leave a shorter test's lost one to the deadline:
            # they end their fixtures and new ones join with this test's timeout.
            problem = self.finish(key)
            if problem is not None:
                self.problems.append(problem)
        start = time.time()
        try:
            pool = self._pool(key, timeout, pg_timeout)
        except PoolError as error:
            return [failure(item, "setup", str(error)), passed(item, "teardown")]
        try:
            results, usable = pool.run(item.nodeid, next_id, timeout, pg_timeout)
        except Exception as error:
            # Something in this process interrupted the run (a plugin's timer, say): the
            # ranks are in an unknown state, so they go, after showing where they were.
            text = (
                f"composable: interrupted in the main process: {error!r}; the ranks are "
                "restarted for the next test. Python stacks of every rank:\n"
                + stack_dumps(pool, range(key[0]))
            )
            self.discard(key)
            return [passed(item, "setup"), failure(item, "call", text), passed(item, "teardown")]
        except BaseException:  # Ctrl-C or an aborted session: leave no rank behind
            self.kill()
            raise
        reports = self._merge(item, results, key[0], time.time() - start)
        if usable and any(r.failed for r in reports):
            # A failed test may have left a collective behind or a timed-out
            # connection: keep the ranks only if they still meet at a barrier.
            usable, problems = pool.healthy(min(pg_timeout, 5.0))
            reports += [failure(item, "teardown", problem) for problem in problems]
        if not usable:
            self.discard(key)
        else:
            pool.recycle = pool.over_limit(results)
        return reports

    def _merge(
        self, item: pytest.Item, results: dict[int, RankResult], world_size: int, took: float
    ) -> list[pytest.TestReport]:
        return compose(item, results, world_size, took)

    def discard(self, key: PoolKey) -> None:
        pool = self.pools.pop(key, None)
        if pool is not None:
            pool.kill()

    def finish(self, key: PoolKey) -> str | None:
        """Close the pool of ``key`` (no test needs it any more); teardown errors, if any."""
        pool = self.pools.pop(key, None)
        return None if pool is None else pool.stop()

    def kill(self) -> None:
        pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            pool.kill()
        template, self.template = self.template, None
        if template is not None:
            template.kill()

    def close(self) -> list[str]:
        """Close every pool, then the template; what went wrong ending the ranks' fixtures."""
        problems, self.problems = self.problems, []
        for key in list(self.pools):
            problem = self.finish(key)
            if problem is not None:
                problems.append(problem)
        self.retire_template()
        return problems


class _Notes:
    """The terminal summary's lines about the ranks (registered by :class:`Launcher`): each
    pool restarted because a rank's memory grew past the limit, always, and the ranks'
    intra-op thread counts, unless ``-q``. A pytest-xdist worker hands them to its
    controller instead (in its ``workeroutput``)."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher

    def threads_line(self) -> str | None:
        if not self.launcher.threads:
            return None
        return threads_note(self.launcher.threads, os.environ.get(THREADS_ENV))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        workeroutput = getattr(session.config, "workeroutput", None)
        if isinstance(workeroutput, dict):
            workeroutput[NOTES_OUTPUT] = {
                "recycled": list(self.launcher.recycled),
                "threads": self.threads_line(),
            }

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for line in self.launcher.recycled:
            terminalreporter.write_line(line)
        threads = self.threads_line()
        if threads is not None and terminalreporter.config.get_verbosity() >= 0:
            terminalreporter.write_line(threads)
