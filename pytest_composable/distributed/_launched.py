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
* Each rank gets ``max(1, usable cores // ranks on its node)`` intra-op threads unless
  ``OMP_NUM_THREADS`` is set (torchrun sets it to 1 for several processes per node),
  and after each world test it undoes what the test changed in the process
  (:class:`~._hygiene.Hygiene`), as plugin-started ranks do.
* ``-x``/``--maxfail``: rank 0 decides (it sees the merged reports) and tells
  the others at the next world test (or at the end), so every rank stops
  together.
* A rank whose test fails tells the others at once, through the launched
  world's store (:mod:`._launched_faults`). A rank still inside the test a moment later
  (waiting in a collective for the rank that failed) ends its wait: gloo's
  ``abort`` does not end a pending collective (torch 2.6 to 2.13), so the
  rank shuts the default group's connections down, and a group with an
  accelerator backend is aborted too. The report's headline is the rank that
  failed first on its own; the others show where they were waiting. The ranks
  then make a new default group (and control group) over the same store
  (:mod:`._launched_world`); if that fails, every later world test fails at once,
  naming the test that broke the world and its root cause.

This module is the session's plugin object: its hooks, and each world test run in
lockstep. The world itself is :mod:`._launched_world`'s, the two sets of process
groups :mod:`._launched_groups`'s.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable, Generator
from typing import Any

import pytest

from ._constants import THREADS_ENV
from ._hygiene import Hygiene, apply_threads, rank_threads, threads_note
from ._launch_env import Launch
from ._launched_faults import FailFast, headline, merge_gathered
from ._launched_groups import GroupRegistry, GroupSets, all_gather_bytes
from ._launched_world import LaunchedWorld
from ._policy import pg_timeout_for, timeout_of
from ._reports import failure, passed, serialize
from .world import RankContext, backend_for

__all__ = ["GroupRegistry", "LaunchedSession", "all_gather_bytes"]


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
        self.groups = GroupSets()
        self.world = LaunchedWorld(launch, backend, self.groups)
        self.faults = FailFast(
            self.rank, str(config.rootpath), lambda: self.world.store, self.world.end_waits
        )
        self.hygiene = Hygiene("cpu")  # the device type is known once the world is joined
        config.pluginmanager.register(self.hygiene, "composable.launched_hygiene")
        self.user_threads = os.environ.get(THREADS_ENV)
        self.threads = rank_threads(os.environ, launch.local_world_size)
        if self.threads is not None:
            if "torch" in sys.modules:
                apply_threads(self.threads)
            # What torch reads when it is imported, and what the tests' own processes get.
            os.environ[THREADS_ENV] = str(self.threads)

    @property
    def context(self) -> RankContext | None:
        """The launched world, once this rank has joined it."""
        return self.world.context

    def backend_for(self, device_type: str) -> str:
        """The backend this session's world uses for ``device_type`` tensors: what it
        joined with, or before it joins, what it will join with (a marker's
        ``backend=`` that equals it runs; another is skipped)."""
        context = self.context
        if context is not None and device_type in context.backends:
            return context.backends[device_type]
        import torch

        backends = self.world.backends(torch.cuda.is_available())
        return backends.get(device_type) or backend_for(device_type)

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

    def leave(self) -> None:
        """At the end of the session: the watcher stops, then the rank leaves the world."""
        self.faults.close()
        self.world.leave()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        """A test without a world (its setup, call and teardown) sees the tests' own process
        groups, never the plugin's."""
        if self.uses_world(item):
            return (yield)
        with self.groups.tests_own():
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        """A fixture ends with the groups it began with: a module fixture that made its own
        group may end in a world test's teardown, and must find its group there."""
        with self.groups.kept_by(fixturedef):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """A world test's phase that failed on this rank is announced to the others."""
        return self.faults.report(item, call, (yield))

    def run_item(self, item: pytest.Item, nextitem: pytest.Item | None, seed: int) -> bool:
        """One world test on this rank, in lockstep with the others; rank 0 logs the merged
        reports."""
        from _pytest.runner import runtestprotocol

        from ._seed import seed_everything

        world = self.world
        if world.broken is not None:
            self._log(item, [failure(item, "setup", world.broken), passed(item, "teardown")])
            return True
        timeout = timeout_of(item)
        world.keep.clear()  # the last test's: its workers are long done with them
        world.join(pg_timeout_for(timeout))
        self.faults.watch()
        # Each test's collectives wait as long as its own deadline allows.
        world.retime(pg_timeout_for(timeout))
        if world.told_to_stop(False):
            # Rank 0 stopped the session (-x, --maxfail, an interrupt): so do we, now.
            world.stopped = True
            item.session.shouldstop = "composable: rank 0 stopped the session"
            return True
        seed_everything(seed)
        hygiene = self.hygiene
        if hygiene.baseline is None:
            context = world.context
            hygiene.device_type = "cuda" if context and "cuda" in context.backends else "cpu"
            hygiene.start()
        self.faults.begin(item)
        try:
            reports = runtestprotocol(item, log=False, nextitem=nextitem)
        finally:
            told = self.faults.end()
            hygiene.clean()
        mine = {"reports": [serialize(self.config, r) for r in reports], **told}
        try:
            gathered = [
                pickle.loads(b)
                for b in all_gather_bytes(
                    pickle.dumps(mine), self.world_size, world.group, world.keep
                )
            ]
        except Exception as error:  # a rank hung or died: the world is lost
            world.broken = f"composable: the launched world broke during {item.nodeid}: {error}"
            gathered = [mine]
        merged = (
            merge_gathered(item, gathered, self.config, self.world_size, world.broken)
            if self.rank == 0
            else []
        )
        self._log(item, merged)
        if world.broken is None and any(data["ended"] for data in gathered):
            problem = world.remake()
            if problem is not None:
                world.broken = (
                    f"composable: the launched world is broken since {item.nodeid}"
                    f"{headline(merged)}; its process group could not be made again: {problem}"
                )
        return True

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Rank 0 names the ranks' intra-op thread count, once a world test ran."""
        baseline = self.hygiene.baseline
        if baseline is not None and terminalreporter.config.get_verbosity() >= 0:
            threads = {self.world_size: {int(baseline["intra-op threads"])}}
            terminalreporter.write_line(threads_note(threads, self.user_threads))

    def _log(self, item: pytest.Item, reports: list[pytest.TestReport]) -> None:
        """Rank 0 logs the merged reports: its exit status (and so the launcher's) is non-zero
        if any rank failed; the others log nothing and exit 0."""
        if self.rank != 0:
            return
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in reports:
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
