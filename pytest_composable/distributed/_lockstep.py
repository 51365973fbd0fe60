"""One test on a pool of ranks, from the main process: run it in lockstep, end it early.

Every rank is told to run the test (:class:`~._protocol.Run`) and answers with its
reports (:class:`~._protocol.Done`). A rank that fails a phase says so at once
(:class:`~._protocol.Failing`); the others then have :data:`FAIL_GRACE` seconds to
finish too. Ranks still running after that (waiting in a collective the failed
rank never joins, as a rule), or when a rank dies, or at the test's deadline,
have their stacks taken (SIGUSR1, faulthandler) and the pool is killed; the
caller restarts it for the next test. What each rank said, or how it ended, is
a :class:`~._outcome.RankResult`, which :mod:`._outcome` turns into reports.

With ``-s`` what the ranks print reaches the terminal as it comes (:class:`Echo`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from ._outcome import RankResult
from ._protocol import Channel, Crash, Done, Failing, Message, Missing, ProtocolError, Run
from ._reports import unserialize
from ._stacks import summarize

__all__ = [
    "FAIL_GRACE",
    "Lockstep",
    "PoolView",
    "describe_exit",
    "receive",
    "stack_dumps",
    "tail",
    "take_stacks",
]

_STACK_WAIT = 1.0
FAIL_GRACE = 1.0
"""After a rank fails, how long the others may take to finish the test on their own (a
test that fails on every rank at once, each for its own reason) before the ones still
running are ended."""
_ECHO_EVERY = 0.1  # with -s, how often the ranks' new output is written to the terminal
_LOG_TAIL = 3000


class _Process(Protocol):
    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...


class PoolView(Protocol):
    """What a test's run needs of its pool (:class:`~._pool.RankPool`)."""

    config: pytest.Config
    world_size: int
    channels: dict[int, Channel]

    @property
    def procs(self) -> Sequence[_Process]: ...

    def log(self, rank: int) -> Path: ...

    def stacks(self, rank: int) -> Path: ...

    def wait_exit(self, rank: int, seconds: float = 5.0) -> int | None: ...

    def kill(self) -> None: ...


def describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def unclean(code: int | None, traceback: str, after: str) -> str:
    """How a rank ended whose putting back of the process state after ``after`` failed
    (:class:`~._protocol.Crash` ``"clean"``), following ``composable: rank N``."""
    return (
        f"crashed putting back the process state after {after} ({describe_exit(code)}):"
        f"\n{traceback}"
    )


def tail(path: Path, start: int = 0) -> str:
    """The last :data:`_LOG_TAIL` characters of ``path`` from byte ``start`` on."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return text[-_LOG_TAIL:]


def receive(channel: Channel) -> Message | None:
    """The next message; a value outside the protocol counts as the rank gone."""
    try:
        return channel.recv()
    except ProtocolError:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class Lockstep:
    """One run of ``nodeid`` on every rank of ``pool``."""

    def __init__(
        self, pool: PoolView, nodeid: str, next_id: str | None, timeout: float, pg_timeout: float
    ) -> None:
        self.pool = pool
        self.run_message = Run(nodeid, next_id, pg_timeout)
        self.timeout = timeout
        self.results = {rank: RankResult() for rank in range(pool.world_size)}
        # Each rank's log size as the test begins: what an ended rank printed during it.
        self.logged = {rank: _size(pool.log(rank)) for rank in range(pool.world_size)}
        self.waiting: dict[Channel, int] = {}
        self.cut_at: float | None = None  # when ranks still running are ended: a rank failed
        self.usable = True
        self.died: list[int] = []
        self.seen = 0  # failures seen so far, for their order

    def run(self) -> tuple[dict[int, RankResult], bool]:
        """The results, and whether the pool is still usable."""
        pool = self.pool
        for rank, channel in pool.channels.items():
            if not channel.send(self.run_message):
                self._failed(rank)
                self._died(rank, None)
                self._end([r for r in range(pool.world_size) if r != rank])
                return self.results, False
        self.waiting = {channel: rank for rank, channel in pool.channels.items()}
        deadline = time.monotonic() + self.timeout
        # From the sizes taken before the Run went out: a rank may print before this line.
        echo = Echo(pool, self.logged) if _echoes(pool.config) else None
        try:
            while self.waiting:
                until = deadline if self.cut_at is None else min(deadline, self.cut_at)
                left = until - time.monotonic()
                wait = max(left, 0) if echo is None else max(min(left, _ECHO_EVERY), 0)
                readable = select.select(list(self.waiting), [], [], wait)[0]
                if echo is not None:
                    echo.flush()
                if not readable:
                    if time.monotonic() < until:
                        continue
                    ran_out = self.cut_at is None or deadline <= self.cut_at
                    self._end(sorted(self.waiting.values()), self.timeout if ran_out else None)
                    return self.results, False
                for channel in readable:
                    self._take(channel)
                if self.died:
                    # What the others said meanwhile (a report the death caused, or
                    # their whole test) is read before the ones still running are ended.
                    while self.waiting and (
                        ready := select.select(list(self.waiting), [], [], 0)[0]
                    ):
                        for channel in ready:
                            self._take(channel)
                    self._end(sorted(self.waiting.values()))
                    return self.results, False
        finally:
            if echo is not None:
                echo.flush(final=True)
        return self.results, self.usable

    def _failed(self, rank: int) -> None:
        if self.results[rank].order is None:
            self.results[rank].order, self.seen = self.seen, self.seen + 1

    def _cut_soon(self) -> None:
        if self.cut_at is None:
            self.cut_at = time.monotonic() + FAIL_GRACE

    def _take(self, channel: Channel) -> None:
        """Read one message of a rank still running the test."""
        rank = self.waiting[channel]
        result = self.results[rank]
        message = receive(channel)
        if isinstance(message, Failing):
            if result.failing is None:
                result.failing = unserialize(self.pool.config, message.report)
                result.consequence = message.consequence
                self._failed(rank)
            self._cut_soon()
            return
        del self.waiting[channel]
        if isinstance(message, Done):
            result.reports = [unserialize(self.pool.config, d) for d in message.reports]
            result.memory = message.memory
            self.usable = self.usable and message.intact
        elif isinstance(message, Missing):
            self._failed(rank)
            result.problem = (
                f"composable: rank {rank} did not collect {message.nodeid} (does "
                "collection depend on the process?)"
            )
            self._cut_soon()
        else:
            self._failed(rank)
            self._died(rank, message)
            self.died.append(rank)

    def _died(self, rank: int, message: Message | None) -> None:
        code = self.pool.wait_exit(rank, 1.0)
        if isinstance(message, Crash) and message.phase == "test":
            how = f"crashed while running the test ({describe_exit(code)}):\n{message.traceback}"
        elif isinstance(message, Crash) and message.phase == "clean":
            how = unclean(code, message.traceback, "its previous test")
        elif isinstance(message, Crash):
            how = f"crashed outside the test ({describe_exit(code)}):\n{message.traceback}"
        else:
            how = f"{describe_exit(code)} while running the test"
        self.results[rank].problem = (
            f"composable: rank {rank} {how}\n"
            f"{'_' * 20} rank {rank} output (tail) {'_' * 20}\n{tail(self.pool.log(rank))}"
        )

    def _end(self, late: Sequence[int], timed_out: float | None = None) -> None:
        """End the test on every rank: take the stacks of ``late`` (still running it), then
        kill the pool."""
        dumps = take_stacks(self.pool, late)
        for rank in late:
            result = self.results[rank]
            result.stack = dumps.get(rank, "")
            result.timed_out = timed_out
            # What it printed during the test: a rank ended here never reports it.
            result.output = tail(self.pool.log(rank), self.logged.get(rank, 0))
        self.pool.kill()


def take_stacks(pool: PoolView, ranks: Iterable[int]) -> dict[int, str]:
    """The Python stacks of ``ranks``, taken now (SIGUSR1 -> faulthandler on the rank):
    faulthandler's dump of every thread, per rank (empty where none came)."""
    asked = {}
    for rank in ranks:
        proc = pool.procs[rank]
        offset = _size(pool.stacks(rank))
        if proc.poll() is None and hasattr(signal, "SIGUSR1"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGUSR1)
                asked[rank] = offset
    # faulthandler writes from the signal handler, at once: wait until each dump has
    # stopped growing, at most _STACK_WAIT.
    sizes: dict[int, int] = {}
    end = time.monotonic() + _STACK_WAIT
    while time.monotonic() < end:
        time.sleep(0.05)
        now = {rank: _size(pool.stacks(rank)) for rank in asked}
        if all(now[r] > asked[r] and now[r] == sizes.get(r) for r in asked):
            break
        sizes = now
    dumps = {}
    for rank, offset in asked.items():
        try:
            with open(pool.stacks(rank), errors="replace") as f:
                f.seek(offset)
                dumps[rank] = f.read()
        except OSError:
            dumps[rank] = ""
    return dumps


def stack_dumps(pool: PoolView, late: Iterable[int]) -> str:
    """Every rank's stack (the ``late`` ones' as what they run), for a report."""
    late = set(late)
    dumps = take_stacks(pool, range(pool.world_size))
    parts = []
    for rank in range(pool.world_size):
        state = "still running" if rank in late else "finished"
        _, lines = summarize(dumps.get(rank, ""))
        parts.append(f"{'_' * 20} rank {rank} ({state}) {'_' * 20}\n" + "\n".join(lines))
    return "\n".join(parts)


def _echoes(config: pytest.Config) -> bool:
    """With ``-s`` (``--capture=no``) what the ranks print reaches the terminal live."""
    return bool(config.getoption("capture", None) == "no")


class Echo:
    """Writes what the ranks print during a test to this process's stdout as it comes,
    each line prefixed with its rank (``[rank1] ...``). The ranks write to their log
    files (read from where this test started), which stay whole for the reports."""

    def __init__(self, pool: PoolView, offsets: dict[int, int]) -> None:
        self.paths = {rank: pool.log(rank) for rank in range(pool.world_size)}
        self.offsets = dict(offsets)  # each log's size as the test began
        self.partial = {rank: b"" for rank in self.paths}

    def flush(self, final: bool = False) -> None:
        out = []
        for rank, path in self.paths.items():
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets[rank])
                    data = f.read()
            except OSError:
                continue
            self.offsets[rank] += len(data)
            *lines, rest = (self.partial[rank] + data).split(b"\n")
            if final and rest:
                lines, rest = [*lines, rest], b""
            self.partial[rank] = rest
            out += [f"[rank{rank}] {line.decode(errors='replace')}\n" for line in lines]
        if out:
            sys.stdout.write("".join(out))
            sys.stdout.flush()
