"""A launched world test that fails on one rank ends at once on every rank.

A rank whose test fails tells the others through the launched world's store
(:class:`FailFast`); the first to say so is the root cause. A rank still inside the
test a moment later (waiting in a collective for the rank that failed) has its wait
ended by its watcher thread (:class:`_Watcher`): gloo's ``abort`` does not end a
pending collective (torch 2.6 to 2.13), so the default group's connections are shut
down (:func:`shut_down`), and a group with an accelerator backend is aborted too. That
rank's report says where it was waiting, with the user's frames only. On rank 0,
:func:`merge_gathered` heads the merged report with the rank that failed first on its
own; :func:`headline` quotes it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from _pytest._code.code import ReprExceptionInfo

from ._reports import crash_line, failure, merge_reports, passed, unserialize
from ._stacks import in_torch_distributed, is_consequence, is_library

__all__ = ["FailFast", "headline", "merge_gathered", "shut_down", "sockets"]

_POLL = 0.05
"""How often a rank inside a world test looks in the store for another rank's failure."""

_GRACE_IN_COLLECTIVE = 0.25
"""After a rank's failure, how long another rank may stay inside a ``torch.distributed``
call of the test before the plugin ends its wait (a collective among live ranks ends
sooner; one that needs the failed rank never does)."""

_GRACE = 3.0
"""After a rank's failure, how long another rank may stay inside the test at all (a
``work.wait()`` shows no ``torch.distributed`` frame) before the plugin ends its waits."""


def sockets() -> dict[str, int]:
    """This process's sockets: ``socket:[inode]`` -> a descriptor of it (Linux; elsewhere
    none, and a rank waiting for one that failed waits for the group's timeout)."""
    found: dict[str, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            link = os.readlink(f"/proc/self/fd/{name}")
            if link.startswith("socket:["):
                found[link] = int(name)
    return found


def shut_down(inodes: frozenset[str]) -> int:
    """Shut down the connected sockets among ``inodes`` (a gloo group's pairs): what waits
    on them ends with an error, here and on the peers. Listening sockets are left alone
    (gloo's listener aborts the process if its socket is shut down)."""
    count = 0
    for link, fd in sockets().items():
        if link not in inodes:
            continue
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with sock, contextlib.suppress(OSError):
            sock.getpeername()  # raises for a listening socket
            sock.shutdown(socket.SHUT_RDWR)
            count += 1
    return count


def _in_torch_distributed(frame: Any) -> bool:
    """Whether a thread's stack, from ``frame`` out, is inside a ``torch.distributed`` call."""
    while frame is not None:
        if in_torch_distributed(frame):
            return True
        frame = frame.f_back
    return False


def _user_frames(frame: Any) -> list[traceback.FrameSummary]:
    """The user's frames of the stack from ``frame`` out, outermost first: the test, its
    fixtures and helpers, as :func:`~._stacks.is_library` tells them from Python's,
    installed packages' and this plugin's."""
    frames = []
    while frame is not None:
        if not is_library(frame.f_code.co_filename):
            frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    return list(traceback.StackSummary.extract((f, f.f_lineno) for f in frames))


class _Ended(NamedTuple):
    """What a rank's watcher did when another rank's failure left it waiting."""

    failed_rank: int  # the rank whose failure was announced first
    waiting: bool  # inside a torch.distributed call (else still running the test)
    where: str  # the innermost user frame: ``name (path:line)``
    stack: str  # the user frames, formatted


def _relative(path: str, root: str) -> str:
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(path, root)
        if not relative.startswith(".."):
            return relative
    return path


class _Watcher:
    """A daemon thread that, while this rank runs a world test, watches the store for
    another rank's failure and, if this rank is still inside the test a moment later,
    ends its wait (``end_waits``: shutting the default group's connections down, and
    aborting it, for backends that can)."""

    def __init__(self, store: Callable[[], Any], end_waits: Callable[[], None], root: str) -> None:
        self.store = store  # the launched world's store now (None once it is gone)
        self.end_waits = end_waits
        self.root = root
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.closing = False
        self.key: str | None = None  # the store key of the current test's first failure
        self.ended: _Ended | None = None
        self.thread = threading.Thread(target=self._run, name="composable-watcher", daemon=True)
        self.main = threading.main_thread().ident
        self.thread.start()

    def arm(self, key: str) -> None:
        with self.lock:
            self.key = key
            self.ended = None
        self.wake.set()

    def disarm(self) -> _Ended | None:
        """Stop watching; what this rank's watcher did during the test, if anything."""
        with self.lock:
            self.key = None
            self.wake.clear()
            return self.ended

    def close(self) -> None:
        self.closing = True
        self.wake.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        seen: tuple[str, int, float] | None = None  # key, failed rank, when seen
        while not self.closing:
            if not self.wake.wait(timeout=1.0):
                continue
            time.sleep(_POLL)
            with self.lock:
                key = self.key
                if key is None or self.ended is not None:
                    seen = None
                    continue
                try:
                    if seen is None or seen[0] != key:
                        seen = None
                        store = self.store()
                        if store is None or not store.check([key]):
                            continue
                        seen = (key, int(store.get(key)), time.monotonic())
                except Exception:  # the store is gone: nothing to watch any more
                    continue
                frame = sys._current_frames().get(self.main or -1)
                waiting = _in_torch_distributed(frame)
                waited = time.monotonic() - seen[2]
                if waited >= (_GRACE_IN_COLLECTIVE if waiting else _GRACE):
                    self.ended = self._end(seen[1], frame, waiting)

    def _end(self, failed_rank: int, frame: Any, waiting: bool) -> _Ended:
        frames = _user_frames(frame)
        for summary in frames:
            summary.filename = _relative(summary.filename, self.root)
        where = f"{frames[-1].name} ({frames[-1].filename}:{frames[-1].lineno})" if frames else "?"
        self.end_waits()
        return _Ended(failed_rank, waiting, where, "".join(traceback.format_list(frames)))


class _Test:
    """The world test a rank runs now, and what it told the others through the store."""

    def __init__(self, item: pytest.Item, prefix: str) -> None:
        self.item = item
        self.order_key = f"{prefix}/failures"  # counts the ranks' failures, in order
        self.first_key = f"{prefix}/first"  # the rank whose failure came first
        self.orders: dict[str, int] = {}  # phase -> its failure's place in that count
        self.consequences: dict[str, bool] = {}  # phase -> failed because of another rank


class FailFast:
    """This rank's part in ending a failed world test at once: it tells the other ranks
    of this rank's failures through the store (``store``: the launched world's, or None),
    and its watcher ends this rank's waits (``end_waits``) after another rank's."""

    def __init__(
        self, rank: int, root: str, store: Callable[[], Any], end_waits: Callable[[], None]
    ) -> None:
        self.rank = rank
        self.root = root  # stacks show paths relative to it
        self.store = store
        self.end_waits = end_waits
        self.watcher: _Watcher | None = None
        self.test: _Test | None = None  # the world test running now
        self.tests_run = 0  # world tests run so far: every rank counts the same

    def watch(self) -> None:
        """Start the watcher, once the world is joined."""
        if self.watcher is None:
            self.watcher = _Watcher(self.store, self.end_waits, self.root)

    def begin(self, item: pytest.Item) -> None:
        """A world test starts: watch for the other ranks' failures in it."""
        self.tests_run += 1
        test = self.test = _Test(item, f"composable/test/{self.tests_run}")
        assert self.watcher is not None
        self.watcher.arm(test.first_key)

    def end(self) -> dict[str, Any]:
        """The test is over: stop watching. What this rank tells the others about its
        failures (their order and which another rank's failure caused) and whether its
        waits were ended."""
        assert self.watcher is not None
        ended = self.watcher.disarm()
        test, self.test = self.test, None
        assert test is not None
        return {
            "orders": test.orders,
            "consequences": test.consequences,
            "ended": ended is not None,
        }

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def report(
        self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
    ) -> pytest.TestReport:
        """A world test's phase failed on this rank: tell the other ranks at once (the
        first to fail is the root cause); a failure the plugin caused by ending this rank's
        wait says where the rank was waiting."""
        test = self.test
        store = self.store()
        if test is None or test.item is not item or not report.failed or store is None:
            return report
        ended = self.watcher.ended if self.watcher is not None else None
        excinfo = call.excinfo
        # As on the plugin's own ranks: a wait the plugin ended, or an error of the kind
        # another rank's failure causes.
        consequence = ended is not None or (
            excinfo is not None and is_consequence(excinfo.value, excinfo.tb)
        )
        with contextlib.suppress(Exception):
            order = int(store.add(test.order_key, 1))
            if order == 1:
                store.set(test.first_key, str(self.rank))
            test.orders.setdefault(report.when, order)
        test.consequences[report.when] = test.consequences.get(report.when, True) and consequence
        if ended is not None:
            what = "waiting" if ended.waiting else "running"
            lines = [
                f"composable: rank {self.rank} was {what} in {ended.where} when rank "
                f"{ended.failed_rank} failed; the plugin ended its wait (shut the process "
                "group's connections down)",
                ended.stack.rstrip("\n"),
            ]
            if call.excinfo is not None:
                lines.append(call.excinfo.exconly())
            report.longrepr = "\n".join(line for line in lines if line)
        return report


def merge_gathered(
    item: pytest.Item,
    gathered: list[Any],
    config: pytest.Config,
    world_size: int,
    broken: str | None,
) -> list[pytest.TestReport]:
    """Rank 0's reports of a world test, from what every rank said (``gathered``): one per
    phase, each failed one headed by its root cause; or, once the world is ``broken``, a
    failed call that says so."""
    if broken is not None:
        return [passed(item, "setup"), failure(item, "call", broken), passed(item, "teardown")]
    reports = {
        rank: [unserialize(config, d) for d in data["reports"]]
        for rank, data in enumerate(gathered)
    }
    merged = merge_reports(item, reports, world_size)
    for report in merged:
        if report.failed:
            _root_cause(item, report, reports, gathered, world_size)
    return merged


def _root_cause(
    item: pytest.Item,
    merged: pytest.TestReport,
    reports: dict[int, list[pytest.TestReport]],
    gathered: list[Any],
    world_size: int,
) -> None:
    """The merged report's headline (its crash line: the short summary, ``--tb=line``,
    JUnit's message) is the rank that failed first on its own, not one whose failure
    another rank's caused (a wait the plugin ended, :func:`~._stacks.is_consequence`)."""
    when = merged.when
    per_rank = {rank: r for rank, rs in reports.items() for r in rs if r.when == when}
    roots = [
        rank
        for rank, report in per_rank.items()
        if report.failed and not gathered[rank]["consequences"].get(when, False)
    ]
    if not roots or not isinstance(merged.longrepr, ReprExceptionInfo):
        return
    roots.sort(key=lambda rank: (gathered[rank]["orders"].get(when, sys.maxsize), rank))
    crashes = {getattr(per_rank[r].longrepr, "reprcrash", None) for r in roots}
    if len(roots) > 1 and len({getattr(c, "message", None) for c in crashes}) == 1:
        roots.sort()  # the same error on each: in rank order
    merged.longrepr.reprcrash = crash_line(item, per_rank, roots, world_size)


def headline(merged: list[pytest.TestReport]) -> str:
    """``, which failed with: <its crash line>`` for the first failed report, else ``""``."""
    for report in merged:
        crash = getattr(report.longrepr, "reprcrash", None)
        if report.failed and crash is not None:
            return f", which failed with: {str(crash.message).partition(chr(10))[0]}"
    return ""
