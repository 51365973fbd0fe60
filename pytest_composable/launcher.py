"""Plain ``pytest``: the main process starts rank processes and keeps them for the session.

One :class:`RankPool` per (world size, device type), started the first time a
test needs it and kept until the session ends, so no test pays for spawning.
Each rank is ``python -m pytest`` with the session's own arguments in rank
mode (see :mod:`.ranks`), in its own process group so a terminal's Ctrl-C
reaches only the main process, which then ends every rank. The ranks also die
with the main process (``PR_SET_PDEATHSIG``), so a SIGKILL leaves nothing
behind.

The ranks are started with :class:`subprocess.Popen` rather than torch's
elastic agent: the agent restarts (tears down) the whole group whenever one
worker fails, which is exactly what must not happen between tests, and it
owns the workers' stdio; here the main process must talk to each rank over
its own channel, signal single ranks for stack dumps and decide itself when
to restart. Rendezvous uses a ``FileStore`` and the control channel an
``AF_UNIX`` socket, both in a private temporary directory: no TCP port is
ever chosen, so concurrent sessions and pytest-xdist workers cannot collide.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import _wire
from .ranks import ENV, RankSpec
from .reports import PHASES, failure, merge_phase, passed, unserialize

__all__ = ["Launcher", "RankPool"]

STARTUP_TIMEOUT = 120.0
_STACK_WAIT = 1.0
_LOG_TAIL = 3000


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-_LOG_TAIL:]


_PREFIX = "composable-ranks-"


def sweep_orphans() -> None:
    """Remove the rank directories of sessions that were killed (SIGKILL) and so could not."""
    for path in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        owner = path.name[len(_PREFIX) :].split("-", 1)[0]
        if not owner.isdigit() or int(owner) == os.getpid():
            continue
        try:
            os.kill(int(owner), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def rank_arguments(config: pytest.Config, directory: Path, rank: int) -> list[str]:
    """The session's own arguments, plus what keeps a rank off the main process's files."""
    args = [str(a) for a in config.invocation_params.args]
    args += ["-q"]
    if config.pluginmanager.hasplugin("cacheprovider"):
        args += ["-o", f"cache_dir={directory / 'cache'}"]
    args += [f"--basetemp={directory / f'tmp-rank{rank}'}"]
    if config.pluginmanager.hasplugin("xdist"):
        args += ["-n", "0"]
    if getattr(config.option, "xmlpath", None):
        args += [f"--junitxml={directory / f'junit-rank{rank}.xml'}"]
    return args


@dataclass
class RankResult:
    """What one rank said about one test: its reports, or how it failed to give them."""

    reports: list[pytest.TestReport] = field(default_factory=list)
    problem: str | None = None  # set when the rank crashed, died or did not finish


class PoolError(Exception):
    """The ranks could not be started."""


class RankPool:
    """``world_size`` rank processes on ``device_type``, kept between tests."""

    def __init__(
        self,
        config: pytest.Config,
        world_size: int,
        device_type: str,
        backend: str,
        pg_timeout: float,
    ) -> None:
        self.config = config
        self.world_size = world_size
        self.device_type = device_type
        self.directory = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.conns: dict[int, socket.socket] = {}
        self.pids: dict[int, int] = {}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.directory / "control"))
        self.listener.listen(world_size)
        for rank in range(world_size):
            self.procs.append(self._spawn(rank, backend, pg_timeout))

    def log(self, rank: int) -> Path:
        return self.directory / f"rank{rank}.log"

    def stacks(self, rank: int) -> Path:
        return self.directory / f"stacks-rank{rank}.txt"

    def _spawn(self, rank: int, backend: str, pg_timeout: float) -> subprocess.Popen[bytes]:
        spec = RankSpec(
            control=str(self.directory / "control"),
            store=str(self.directory / "store"),
            rank=rank,
            world_size=self.world_size,
            device_type=self.device_type,
            backend=backend,
            pg_timeout=pg_timeout,
            parent_pid=os.getpid(),
            stack_file=str(self.stacks(rank)),
        )
        env = dict(os.environ)
        env.pop("TORCHELASTIC_RUN_ID", None)
        env.update(
            {
                ENV: spec.to_env(),
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(self.world_size),
                "LOCAL_WORLD_SIZE": str(self.world_size),
                "PYTHONUNBUFFERED": "1",
            }
        )
        args = rank_arguments(self.config, self.directory, rank)
        with open(self.log(rank), "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "pytest", *args],
                cwd=self.config.invocation_params.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until every rank joined the world and said it is ready."""
        deadline = time.monotonic() + timeout
        pending: list[socket.socket] = []
        self.listener.settimeout(0.2)
        while len(self.conns) < self.world_size:
            if time.monotonic() > deadline:
                raise PoolError(self._startup_problem(f"not ready after {timeout:.0f} s"))
            try:
                conn, _ = self.listener.accept()
                conn.settimeout(None)
                pending.append(conn)
            except TimeoutError:
                pass
            readable = select.select(pending, [], [], 0)[0] if pending else []
            for conn in readable:
                message = _wire.recv(conn)
                pending.remove(conn)
                if message is None or message[0] != "ready":
                    detail = message[1] if message and message[0] == "crash" else ""
                    raise PoolError(self._startup_problem(f"failed to join the world\n{detail}"))
                self.conns[message[1]] = conn
                self.pids[message[1]] = message[2]
            for rank, proc in enumerate(self.procs):
                if proc.poll() is not None and rank not in self.conns:
                    raise PoolError(
                        self._startup_problem(f"rank {rank} {_describe_exit(proc.returncode)}")
                    )

    def _startup_problem(self, what: str) -> str:
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        logs = "\n".join(
            f"{'_' * 20} rank {r} output {'_' * 20}\n{_tail(self.log(r))}"
            for r in range(self.world_size)
        )
        self.kill()
        return (
            f"composable: could not start {self.world_size} ranks on {self.device_type}: "
            f"{what}\n{logs}"
        )

    def run(
        self, nodeid: str, next_id: str | None, timeout: float
    ) -> tuple[dict[int, RankResult], bool]:
        """Run ``nodeid`` on every rank; the results, and whether the pool is still usable."""
        for conn in self.conns.values():
            _wire.send(conn, ("run", nodeid, next_id))
        results = {rank: RankResult() for rank in range(self.world_size)}
        waiting = {conn: rank for rank, conn in self.conns.items()}
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            readable = select.select(list(waiting), [], [], max(left, 0))[0]
            if not readable:
                self._deadline(results, waiting.values(), timeout)
                return results, False
            for conn in readable:
                rank = waiting.pop(conn)
                message = _wire.recv(conn)
                if message is not None and message[0] == "done":
                    results[rank].reports = [unserialize(self.config, d) for d in message[1]]
                elif message is not None and message[0] == "missing":
                    results[rank].problem = (
                        f"rank {rank} did not collect {message[1]} (does collection depend on "
                        "the process?)"
                    )
                else:
                    self._died(results, rank, message)
                    return results, False
        return results, True

    def healthy(self, timeout: float) -> bool:
        """Whether every rank still passes a barrier within ``timeout`` seconds."""
        for conn in self.conns.values():
            _wire.send(conn, ("check", timeout))
        waiting = set(self.conns.values())
        deadline = time.monotonic() + timeout + 2
        while waiting:
            readable = select.select(list(waiting), [], [], max(deadline - time.monotonic(), 0))[0]
            if not readable:
                return False
            for conn in readable:
                waiting.discard(conn)
                message = _wire.recv(conn)
                if message is None or message != ("checked", True):
                    return False
        return True

    def _died(self, results: dict[int, RankResult], rank: int, message: Any) -> None:
        proc = self.procs[rank]
        crash = message[1] if message is not None and message[0] == "crash" else None
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if crash is not None:
            how = f"crashed outside the test ({_describe_exit(proc.poll())}):\n{crash}"
        else:
            how = _describe_exit(proc.poll())
        output = _tail(self.log(rank))
        results[rank].problem = (
            f"composable: rank {rank} {how}\n"
            f"{'_' * 20} rank {rank} output (tail) {'_' * 20}\n{output}"
        )
        self.kill()

    def _deadline(
        self, results: dict[int, RankResult], late: Sequence[int] | Any, timeout: float
    ) -> None:
        late = sorted(late)
        offsets = {}
        for rank, proc in enumerate(self.procs):
            path = self.stacks(rank)
            offsets[rank] = path.stat().st_size if path.exists() else 0
            if proc.poll() is None and hasattr(signal, "SIGUSR1"):
                os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(_STACK_WAIT)
        stacks = []
        for rank in range(self.world_size):
            try:
                with open(self.stacks(rank), errors="replace") as f:
                    f.seek(offsets[rank])
                    dump = f.read()
            except OSError:
                dump = ""
            state = "still running" if rank in late else "finished"
            stacks.append(f"{'_' * 20} rank {rank} ({state}) {'_' * 20}\n{dump or '(no stack)'}")
        text = (
            f"composable: timed out after {timeout:g} s; rank(s) "
            f"{', '.join(map(str, late))} did not finish. The ranks are restarted for the next "
            "test. Python stacks of every rank:\n" + "\n".join(stacks)
        )
        for rank in late:
            results[rank].problem = text
        self.kill()

    def stop(self) -> None:
        """Ask every rank to finish its session, then make sure none is left."""
        for conn in self.conns.values():
            with contextlib.suppress(OSError):
                _wire.send(conn, ("stop",))
        deadline = time.monotonic() + 10
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        self.kill()

    def kill(self) -> None:
        """SIGKILL every rank's process group, close channels, remove the directory."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()
        self.listener.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class Launcher:
    """The session's rank pools, and running one test on them."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.pools: dict[tuple[int, str], RankPool] = {}
        self.broken: dict[tuple[int, str], str] = {}
        atexit.register(self.close)

    def _pool(self, key: tuple[int, str], pg_timeout: float) -> RankPool:
        from .world import backend_for

        pool = self.pools.get(key)
        if pool is None:
            if key in self.broken:
                raise PoolError(self.broken[key])
            world_size, device_type = key
            if not self.pools:
                sweep_orphans()
            pool = RankPool(
                self.config, world_size, device_type, backend_for(device_type), pg_timeout
            )
            try:
                pool.start()
            except PoolError as error:
                self.broken[key] = str(error)
                raise
            self.pools[key] = pool
        return pool

    def run_item(
        self,
        item: pytest.Item,
        key: tuple[int, str],
        next_id: str | None,
        timeout: float,
        pg_timeout: float,
    ) -> list[pytest.TestReport]:
        """The merged reports (setup, call, teardown) of ``item`` run on every rank."""
        world_size = key[0]
        start = time.time()
        try:
            pool = self._pool(key, pg_timeout)
        except PoolError as error:
            return [failure(item, "setup", str(error)), passed(item, "teardown")]
        try:
            results, usable = pool.run(item.nodeid, next_id, timeout)
        except BaseException:  # Ctrl-C or an aborted session: leave no rank behind
            self.kill()
            raise
        reports = self._merge(item, results, world_size, time.time() - start)
        if usable and any(r.failed for r in reports):
            # A failed test may have left a collective behind or a timed-out
            # connection: keep the ranks only if they still meet at a barrier.
            usable = pool.healthy(min(pg_timeout, 5.0))
        if not usable:
            del self.pools[key]
            pool.kill()
        return reports

    def _merge(
        self, item: pytest.Item, results: dict[int, RankResult], world_size: int, took: float
    ) -> list[pytest.TestReport]:
        merged = []
        for when in PHASES:
            per_rank = {
                rank: report
                for rank, result in results.items()
                for report in result.reports
                if report.when == when
            }
            if per_rank:
                merged.append(merge_phase(item, when, per_rank, world_size))
        problems = sorted({r.problem for r in results.values() if r.problem})
        if not problems:
            return merged
        texts = list(problems)
        for rank, result in sorted(results.items()):
            for report in result.reports:
                if report.failed:
                    texts.append(f"{'_' * 30} rank {rank} ({report.when}) {'_' * 30}")
                    texts.append(report.longreprtext)
        return [
            passed(item, "setup"),
            failure(item, "call", "\n".join(texts), took),
            passed(item, "teardown"),
        ]

    def kill(self) -> None:
        pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            pool.kill()

    def close(self) -> None:
        pools, self.pools = list(self.pools.values()), {}
        for pool in pools:
            pool.stop()
