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
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from collections.abc import Callable, Generator
from typing import Any

import pytest

from ._launch_env import Launch, launch_environment
from ._policy import pg_timeout_for, timeout_of
from ._rank import set_pg_timeout
from ._reports import failure, merge_reports, passed, serialize, unserialize
from .world import RankContext, backend_for, forget_meshes

__all__ = ["GroupRegistry", "LaunchedSession", "all_gather_bytes"]

_CONTROL_TIMEOUT = 3600.0
"""The plugin's own gloo group waits this long: while rank 0 runs the tests without a world,
the other ranks wait in it for the next world test."""


def all_gather_bytes(payload: bytes, world_size: int, group: Any) -> list[bytes]:
    """Every rank's ``payload``, in rank order, over ``group`` (uint8 tensors; torch's
    ``*_object`` collectives need numpy, which a user's environment may lack)."""
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
    return [bytes(t[: int(s.item())].tolist()) for t, s in zip(gathered, sizes, strict=True)]


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
            import torch.distributed as dist

            for key, value in launch_environment(self.launch).items():
                os.environ.setdefault(key, value)
            backends = self.backends(torch.cuda.is_available())
            if "cuda" in backends:
                torch.cuda.set_device(self.local_rank)
            spec = ",".join(f"{device}:{backend}" for device, backend in backends.items())
            dist.init_process_group(spec, timeout=datetime.timedelta(seconds=timeout))
            self.group = dist.new_group(
                backend="gloo", timeout=datetime.timedelta(seconds=_CONTROL_TIMEOUT)
            )
            self.context = RankContext(
                self.rank, self.world_size, self.local_rank, backends, group=dist.group.WORLD
            )
        return self.context

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
        dist.broadcast(flag, src=0, group=self.group)
        return bool(flag.item())

    def leave(self) -> None:
        """At the end of the session. Rank 0 tells every rank still waiting that the session
        is over; then no rank leaves before the others (torchrun would stop the others as
        soon as one exits with a failure, before rank 0 has printed)."""
        if self.context is not None:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                if not self.stopped:
                    self._told_to_stop(True)
                dist.barrier(group=self.group)
            forget_meshes()
            dist.destroy_process_group()
            self.context = None

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
        self.join(pg_timeout_for(timeout))
        # Each test's collectives wait as long as its own deadline allows (on a torch
        # that can retime a group in place; torch 2.6 keeps the first test's).
        set_pg_timeout(pg_timeout_for(timeout))
        if self._told_to_stop(False):
            # Rank 0 stopped the session (-x, --maxfail, an interrupt): so do we, now.
            self.stopped = True
            item.session.shouldstop = "composable: rank 0 stopped the session"
            return True
        seed_everything(seed)
        mine = [
            serialize(self.config, r) for r in runtestprotocol(item, log=False, nextitem=nextitem)
        ]
        try:
            gathered = [
                pickle.loads(b)
                for b in all_gather_bytes(pickle.dumps(mine), self.world_size, self.group)
            ]
        except Exception as error:  # a rank hung or died: the world is lost
            self.broken = f"composable: the launched world broke during {item.nodeid}: {error}"
            gathered = [mine]
        if self.rank == 0:
            self._log(item, self._merge(item, gathered))
        return True

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
            rank: [unserialize(self.config, d) for d in data] for rank, data in enumerate(gathered)
        }
        return merge_reports(item, reports, self.world_size)
