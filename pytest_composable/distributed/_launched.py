"""Sessions started by a launcher: ``torchrun``, SLURM's ``srun``, Open MPI's ``mpirun``.

Each launched process is one rank and runs its own pytest session; all of them
collect and run the same items in the same order (lockstep). One code path
serves every launcher: :func:`detect_launch` reads the launcher's environment
into a :class:`Launch`, and the rank joins the world with ``env://``
(``MASTER_ADDR``/``MASTER_PORT``, which torchrun sets and ``srun``/``mpirun``
users pass).

* A ``composable_world`` test whose world size differs from the launched one
  is skipped with a reason. The others run on every rank; after each, the ranks
  exchange their reports (tensors over a gloo group: no numpy needed) and
  rank 0, the only one that prints, logs one merged report per phase. Its exit
  status is non-zero if any rank failed.
* Tests without a world run on rank 0 only, as they would without the plugin:
  the plugin's process groups are hidden from them (``dist.is_initialized()`` is
  False unless a test makes its own; groups the tests make are theirs, kept from
  test to test as without the plugin), so a stray collective fails that test,
  not the world.
* ``-x``/``--maxfail``: rank 0 decides (it sees the merged reports) and tells
  the others at the next world test (or at the end), so every rank stops
  together.
* A rank whose test fails tells the others at once, through the launched
  world's store (:class:`_Watcher`). A rank still inside the test a moment later
  (waiting in a collective for the rank that failed) ends its wait: gloo's
  ``abort`` does not end a pending collective (torch 2.6 to 2.13), so the
  rank shuts the default group's connections down, and a group with an
  accelerator backend is aborted too. The report's headline is the rank that
  failed first on its own; the others show where they were waiting. The ranks
  then make a new default group (and control group) over the same store; if
  that fails, every later world test fails at once, naming the test that broke
  the world and its root cause.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

import pytest
from _pytest._code.code import ReprExceptionInfo

from ._launch_env import Launch, launch_environment
from ._policy import pg_timeout_for, timeout_of
from ._rank import set_pg_timeout
from ._reports import crash_line, failure, merge_reports, passed, serialize, unserialize
from .world import RankContext, backend_for, forget_meshes

__all__ = ["GroupRegistry", "LaunchedSession", "all_gather_bytes"]

_CONTROL_TIMEOUT = 3600.0
"""The plugin's own gloo group waits this long: while rank 0 runs the tests without a world,
the other ranks wait in it for the next world test."""

_POLL = 0.05
"""How often a rank inside a world test looks in the store for another rank's failure."""

_GRACE_IN_COLLECTIVE = 0.25
"""After a rank's failure, how long another rank may stay inside a ``torch.distributed``
call of the test before the plugin ends its wait (a collective among live ranks ends
sooner; one that needs the failed rank never does)."""

_GRACE = 3.0
"""After a rank's failure, how long another rank may stay inside the test at all (a
``work.wait()`` shows no ``torch.distributed`` frame) before the plugin ends its waits."""

_RESTART_TIMEOUT = 60.0
"""How long the ranks may take to make a new default group after one was shut down."""

_SETTLE = 0.05
"""How long the ranks let their old groups' gloo workers run before the groups go."""

_PLUGIN_MODULES = ("torch", "_pytest", "pytest", "pluggy", "pytest_composable")
"""Modules whose frames are left out of the stack shown for a waiting rank."""


def all_gather_bytes(
    payload: bytes, world_size: int, group: Any, keep: list[Any] | None = None
) -> list[bytes]:
    """Every rank's ``payload``, in rank order, over ``group`` (uint8 tensors; torch's
    ``*_object`` collectives need numpy, which a user's environment may lack). The
    tensors are added to ``keep``, if given (see :attr:`LaunchedSession.keep`)."""
    import torch
    import torch.distributed as dist

    data = torch.tensor(list(payload), dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.long)
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(world_size)]
    dist.all_gather(sizes, size, group=group)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: data.numel()] = data
    gathered = [torch.zeros(longest, dtype=torch.uint8) for _ in range(world_size)]
    dist.all_gather(gathered, padded, group=group)
    if keep is not None:
        keep += [size, data, padded, *sizes, *gathered]
    return [bytes(t[: int(s.item())].tolist()) for t, s in zip(gathered, sizes, strict=True)]


def _sockets() -> dict[str, int]:
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


def _shut_down(inodes: frozenset[str]) -> int:
    """Shut down the connected sockets among ``inodes`` (a gloo group's pairs): what waits
    on them ends with an error, here and on the peers. Listening sockets are left alone
    (gloo's listener aborts the process if its socket is shut down)."""
    count = 0
    for link, fd in _sockets().items():
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
        if str(frame.f_globals.get("__name__", "")).startswith("torch.distributed"):
            return True
        frame = frame.f_back
    return False


def _user_frames(frame: Any) -> list[traceback.FrameSummary]:
    """The stack from ``frame`` out, outermost first: the frames pytest called (the test,
    its fixtures) and what they called, without torch's frames."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    kept: list[Any] = []
    for each in frames:
        module = str(each.f_globals.get("__name__", "")).partition(".")[0]
        if module in _PLUGIN_MODULES and module != "torch":
            kept = []  # the runner's frames: the user's start after the last of them
        elif module != "torch":
            kept.append(each)
    return list(traceback.StackSummary.extract((f, f.f_lineno) for f in kept))


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
    ends its wait by shutting the default group's connections down (and aborting it,
    for backends that can)."""

    def __init__(self, session: LaunchedSession) -> None:
        self.session = session
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
                        store = self.session.store
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
        root = str(self.session.config.rootpath)
        for summary in frames:
            summary.filename = _relative(summary.filename, root)
        where = f"{frames[-1].name} ({frames[-1].filename}:{frames[-1].lineno})" if frames else "?"
        self.session.end_waits()
        return _Ended(failed_rank, waiting, where, "".join(traceback.format_list(frames)))


_REGISTRIES = (
    "_pg_map",
    "_pg_names",
    "_pg_group_ranks",
    "_pg_backend_config",
    "_tags_to_pg",
    "_pg_to_tag",
)
"""torch's module-level registries of process groups (``distributed_c10d``)."""


class GroupRegistry:
    """One complete set of torch's process-group registries: the default group, every
    other group, and their names in torch's C++ registry (which functional collectives,
    and so DTensor, resolve groups by).

    Under a launcher there are two: the plugin's (its world, seen by world tests) and
    the tests' own (what tests without a world see: empty at first, then whatever
    groups they make, kept between them as in a process without the plugin).
    """

    def __init__(self, maps: dict[str, Any], world: Any) -> None:
        self.maps = maps
        self.world = world

    @classmethod
    def installed(cls) -> GroupRegistry:
        """The registries torch uses now."""
        from torch.distributed import distributed_c10d as c10d

        maps = {name: getattr(c10d, name) for name in _REGISTRIES if hasattr(c10d, name)}
        return cls(maps, c10d._world)

    @classmethod
    def empty(cls) -> GroupRegistry:
        """Registries of a process that never joined a group."""
        current = cls.installed()
        return cls({n: type(m)() for n, m in current.maps.items()}, type(current.world)())

    def install(self, names_from: int) -> None:
        """Make torch use these registries; new groups are named from ``names_from`` on, so
        no name is used by both sets. Each of these groups is found by its name again."""
        from torch.distributed import distributed_c10d as c10d

        for name, registry in self.maps.items():
            setattr(c10d, name, registry)
        c10d._world = self.world
        c10d._world.group_count = max(names_from, c10d._world.group_count)
        register = getattr(c10d, "_register_process_group", None)
        unregister = getattr(c10d, "_unregister_process_group", None)
        resolve = getattr(c10d, "_resolve_process_group", None)
        if register is None or unregister is None or resolve is None:
            return
        for group, name in self.maps.get("_pg_names", {}).items():
            try:
                found = resolve(name)
            except Exception:
                found = None
            if found is not group:
                with contextlib.suppress(Exception):
                    unregister(name)
                with contextlib.suppress(Exception):
                    register(name, group)


class LaunchedSession:
    """This rank's view of a launched session; registered as a plugin for that session."""

    def __init__(
        self,
        config: pytest.Config,
        launch: Launch,
        uses_world: Callable[[pytest.Item], bool],
        backend: str | None,
    ) -> None:
        self.config = config
        self.launch = launch
        self.backend = backend
        self.uses_world = uses_world
        self.rank = launch.rank
        self.world_size = launch.world_size
        self.local_rank = launch.local_rank
        self.context: RankContext | None = None
        self.group: Any = None
        self.broken: str | None = None
        self.stopped = False  # this rank has been told to stop (or told the others)
        # Whose process groups torch sees now: the plugin's ("world") or the tests' own
        # ("tests"); the other set waits here.
        self.active = "world"
        self.waiting: dict[str, GroupRegistry] = {}
        self.names_from = 0
        self.store: Any = None  # the launched world's store (torchrun's, or rank 0's)
        self.world_sockets: frozenset[str] = frozenset()  # the default group's sockets
        self.generation = 0  # how many times the default group was made again
        self.pg_timeout = 0.0
        self.tests_run = 0  # world tests run so far: every rank counts the same
        self.watcher: _Watcher | None = None
        self.test: _Test | None = None  # the world test running now
        # The tensors of the last exchanges over the control group, held until the next
        # test or until the groups are gone: a gloo worker that freed the last reference
        # to one needs the GIL, and a group's destruction holds the GIL while it waits for
        # its workers (a deadlock on torch 2.6, at the session's end).
        self.keep: list[Any] = []

    def silence(self) -> None:
        """Only rank 0 prints; the others' failures reach it with each test."""
        if self.rank == 0:
            return
        from _pytest.config import create_terminal_writer

        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            self._devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the session
            terminal._tw = create_terminal_writer(self.config, self._devnull)

    def skip_reason(self, item: pytest.Item) -> str | None:
        """Why a test that does not use ``composable_world`` is skipped on this rank."""
        if self.rank != 0:
            return (
                f"composable: under {self.launch.launcher}, tests without composable_world "
                "run on rank 0"
            )
        return None

    def join(self, timeout: float) -> RankContext:
        if self.context is None:
            import torch

            for key, value in launch_environment(self.launch).items():
                os.environ.setdefault(key, value)
            backends = self.backends(torch.cuda.is_available())
            if "cuda" in backends:
                torch.cuda.set_device(self.local_rank)
            # The launcher's store (torchrun's agent store, or a TCPStore rank 0 serves):
            # kept, so that failures travel through it and the group can be made again.
            from torch.distributed.rendezvous import rendezvous

            store, _, _ = next(rendezvous("env://", timeout=datetime.timedelta(seconds=timeout)))
            store.set_timeout(datetime.timedelta(seconds=timeout))
            self.store = store
            self.pg_timeout = timeout
            self._make_world(backends, timeout)
            self.watcher = _Watcher(self)
        assert self.context is not None
        return self.context

    def _make_world(self, backends: dict[str, str], timeout: float) -> None:
        """Make the default group and the plugin's control group (over a prefix of the
        store of their own), noting the default group's sockets."""
        import torch.distributed as dist
        from torch._C._distributed_c10d import PrefixStore

        # One device type, one backend: its plain name. A device spec ("cpu:gloo") leaves
        # the group without a default backend when another backend is registered (torch's
        # fake one, which fully_shard's import brings), and torch warns at its destruction.
        names = set(backends.values())
        spec = (
            next(iter(names))
            if len(backends) == 1
            else ",".join(f"{device}:{backend}" for device, backend in backends.items())
        )
        before = set(_sockets())
        dist.init_process_group(
            spec,
            store=PrefixStore(f"composable/world/{self.generation}", self.store),
            rank=self.rank,
            world_size=self.world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
        self.world_sockets = frozenset(set(_sockets()) - before)
        self.group = dist.new_group(
            backend="gloo", timeout=datetime.timedelta(seconds=_CONTROL_TIMEOUT)
        )
        self.context = RankContext(
            self.rank, self.world_size, self.local_rank, backends, group=dist.group.WORLD
        )

    def end_waits(self) -> None:
        """(The watcher's thread.) End what this rank waits for in the default group: its
        connections are shut down (gloo's abort leaves a pending collective waiting), and a
        backend that can abort is aborted."""
        _shut_down(self.world_sockets)
        context = self.context
        if context is not None and set(context.backends.values()) != {"gloo"}:
            abort = getattr(context.group, "abort", None)
            if abort is not None:
                with contextlib.suppress(Exception):
                    abort()

    def _remake_world(self) -> str | None:
        """After a test whose waits were ended: every rank makes the default group and the
        control group again. ``None`` if every rank managed, else why not."""
        import torch.distributed as dist
        from torch.distributed import distributed_c10d as c10d

        assert self.context is not None
        backends = self.context.backends
        self.activate("world")
        error = None
        try:
            # A gloo worker may still hold the last reference to a tensor of the test or of
            # the report exchange, and needs the GIL to free it; a group's destruction holds
            # the GIL while it joins its workers. So the workers get the GIL first, and the
            # old groups go before a new one is made (a constructor that holds the GIL,
            # then an assignment that drops the old group, deadlocked on torch 2.6).
            time.sleep(_SETTLE)
            forget_meshes()
            self.names_from = max(self.names_from, c10d._world.group_count)
            self.group = None
            self.context = None
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self.keep.clear()
            c10d._world.group_count = self.names_from
            self.generation += 1
            self._make_world(backends, self.pg_timeout)
        except Exception as problem:
            error = f"{type(problem).__name__}: {problem}"
        # Every rank says whether it managed; the world goes on only if all did.
        prefix = f"composable/remade/{self.generation}"
        try:
            self.store.set(f"{prefix}/{self.rank}", "" if error is None else error)
            keys = [f"{prefix}/{rank}" for rank in range(self.world_size)]
            self.store.wait(keys, datetime.timedelta(seconds=_RESTART_TIMEOUT))
            errors = [self.store.get(key).decode(errors="replace") for key in keys]
        except Exception as problem:
            return error or f"{type(problem).__name__}: {problem}"
        failed = [(rank, e) for rank, e in enumerate(errors) if e]
        if failed:
            return "; ".join(f"rank {rank}: {e}" for rank, e in failed)
        return None

    def backends(self, cuda: bool) -> dict[str, str]:
        """The backend of each device type this world serves: the session's backend
        (``--composable-backend``) for the accelerator, else gloo on cpu and nccl on cuda."""
        if not cuda:
            return {"cpu": self.backend or backend_for("cpu")}
        return {"cpu": backend_for("cpu"), "cuda": self.backend or backend_for("cuda")}

    def _told_to_stop(self, stop: bool) -> bool:
        """Rank 0's ``stop``, on every rank (a broadcast over the plugin's own group)."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if stop else 0], dtype=torch.uint8)
        self.keep.append(flag)
        dist.broadcast(flag, src=0, group=self.group)
        return bool(flag.item())

    def leave(self) -> None:
        """At the end of the session. Rank 0 tells every rank still waiting that the session
        is over; then no rank leaves before the others (torchrun would stop the others as
        soon as one exits with a failure, before rank 0 has printed)."""
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        if self.store is None:
            return  # never joined
        import torch.distributed as dist

        self.activate("world")
        with contextlib.suppress(Exception):
            if self.broken is not None:
                # The control group may be gone: meet in the store instead.
                keys = [f"composable/left/{rank}" for rank in range(self.world_size)]
                self.store.set(keys[self.rank], "1")
                self.store.wait(keys, datetime.timedelta(seconds=_CONTROL_TIMEOUT))
            else:
                if not self.stopped:
                    self._told_to_stop(True)
                dist.barrier(group=self.group)
        time.sleep(_SETTLE)  # see _remake_world
        forget_meshes()
        self.group = None
        self.context = None
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        self.keep.clear()
        self.store = None

    def activate(self, name: str) -> None:
        """Let torch see the ``"world"`` (the plugin's) or the ``"tests"`` process groups."""
        if name == self.active:
            return
        from torch.distributed import distributed_c10d as c10d

        # torch restarts its count of group names when a default group is destroyed;
        # counting on from the highest keeps the two sets' names apart.
        self.names_from = max(self.names_from, c10d._world.group_count)
        self.waiting[self.active] = GroupRegistry.installed()
        registry = self.waiting.pop(name, None) or GroupRegistry.empty()
        registry.install(self.names_from)
        self.active = name

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        """A test without a world (its setup, call and teardown) sees the tests' own process
        groups, never the plugin's."""
        if self.uses_world(item):
            return (yield)
        self.activate("tests")
        try:
            return (yield)
        finally:
            self.activate("world")

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        """A fixture ends with the groups it began with: a module fixture that made its own
        group may end in a world test's teardown, and must find its group there."""
        owner = self.active
        before: list[str] = []
        fixturedef.addfinalizer(lambda: self.activate(before.pop()))  # runs last
        result = yield

        def own_groups() -> None:
            before.append(self.active)
            self.activate(owner)

        fixturedef.addfinalizer(own_groups)
        return result

    def run_item(self, item: pytest.Item, nextitem: pytest.Item | None, seed: int) -> bool:
        from _pytest.runner import runtestprotocol

        from ._seed import seed_everything

        if self.broken is not None:
            self._log(item, [failure(item, "setup", self.broken), passed(item, "teardown")])
            return True
        timeout = timeout_of(item)
        self.keep.clear()  # the last test's: its workers are long done with them
        self.join(pg_timeout_for(timeout))
        # Each test's collectives wait as long as its own deadline allows (on a torch
        # that can retime a group in place; torch 2.6 keeps the first test's).
        self.pg_timeout = pg_timeout_for(timeout)
        set_pg_timeout(self.pg_timeout)
        if self._told_to_stop(False):
            # Rank 0 stopped the session (-x, --maxfail, an interrupt): so do we, now.
            self.stopped = True
            item.session.shouldstop = "composable: rank 0 stopped the session"
            return True
        seed_everything(seed)
        self.tests_run += 1
        test = self.test = _Test(item, f"composable/test/{self.tests_run}")
        assert self.watcher is not None
        self.watcher.arm(test.first_key)
        try:
            reports = runtestprotocol(item, log=False, nextitem=nextitem)
        finally:
            ended = self.watcher.disarm()
            self.test = None
        mine = {
            "reports": [serialize(self.config, r) for r in reports],
            "orders": test.orders,
            "consequences": test.consequences,
            "ended": ended is not None,
        }
        try:
            gathered = [
                pickle.loads(b)
                for b in all_gather_bytes(
                    pickle.dumps(mine), self.world_size, self.group, self.keep
                )
            ]
        except Exception as error:  # a rank hung or died: the world is lost
            self.broken = f"composable: the launched world broke during {item.nodeid}: {error}"
            gathered = [mine]
        merged = self._merge(item, gathered) if self.rank == 0 else []
        self._log(item, merged)
        if self.broken is None and any(data["ended"] for data in gathered):
            problem = self._remake_world()
            if problem is not None:
                self.broken = (
                    f"composable: the launched world is broken since {item.nodeid}"
                    f"{_headline(merged)}; its process group could not be made again: {problem}"
                )
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """A world test's phase failed on this rank: tell the other ranks at once (the
        first to fail is the root cause); a failure the plugin caused by ending this rank's
        wait says where the rank was waiting."""
        report = yield
        test = self.test
        if test is None or test.item is not item or not report.failed or self.store is None:
            return report
        import torch.distributed as dist

        ended = self.watcher.ended if self.watcher is not None else None
        error = call.excinfo.value if call.excinfo is not None else None
        dist_error = getattr(dist, "DistError", None)
        consequence = ended is not None or (
            dist_error is not None and isinstance(error, dist_error)
        )
        with contextlib.suppress(Exception):
            order = int(self.store.add(test.order_key, 1))
            if order == 1:
                self.store.set(test.first_key, str(self.rank))
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

    def _log(self, item: pytest.Item, reports: list[pytest.TestReport]) -> None:
        """Rank 0 logs the merged reports: its exit status (and so the launcher's) is non-zero
        if any rank failed; the others log nothing and exit 0."""
        if self.rank != 0:
            return
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in reports:
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    def _merge(self, item: pytest.Item, gathered: list[Any]) -> list[pytest.TestReport]:
        if self.broken is not None:
            return [
                passed(item, "setup"),
                failure(item, "call", self.broken),
                passed(item, "teardown"),
            ]
        reports = {
            rank: [unserialize(self.config, d) for d in data["reports"]]
            for rank, data in enumerate(gathered)
        }
        merged = merge_reports(item, reports, self.world_size)
        for report in merged:
            if report.failed:
                self._root_cause(item, report, reports, gathered)
        return merged

    def _root_cause(
        self,
        item: pytest.Item,
        merged: pytest.TestReport,
        reports: dict[int, list[pytest.TestReport]],
        gathered: list[Any],
    ) -> None:
        """The merged report's headline (its crash line: the short summary, ``--tb=line``,
        JUnit's message) is the rank that failed first on its own, not one whose failure
        another rank's caused (a wait the plugin ended, a ``DistError``)."""
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
        merged.longrepr.reprcrash = crash_line(item, per_rank, roots, self.world_size)


class _Test:
    """The world test a rank runs now, and what it told the others through the store."""

    def __init__(self, item: pytest.Item, prefix: str) -> None:
        self.item = item
        self.order_key = f"{prefix}/failures"  # counts the ranks' failures, in order
        self.first_key = f"{prefix}/first"  # the rank whose failure came first
        self.orders: dict[str, int] = {}  # phase -> its failure's place in that count
        self.consequences: dict[str, bool] = {}  # phase -> failed because of another rank


def _headline(merged: list[pytest.TestReport]) -> str:
    """``, which failed with: <its crash line>`` for the first failed report, else ``""``."""
    for report in merged:
        crash = getattr(report.longrepr, "reprcrash", None)
        if report.failed and crash is not None:
            return f", which failed with: {str(crash.message).partition(chr(10))[0]}"
    return ""
