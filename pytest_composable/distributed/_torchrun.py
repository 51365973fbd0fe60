"""``torchrun --nproc-per-node=N -m pytest ...``: each rank's session joins the launched world.

Every rank collects and runs the same items in the same order (lockstep).
A ``composable_world`` test whose world size differs from the launched one
is skipped with a reason; other tests run on rank 0 only. After each world
test the ranks gather their reports on rank 0 (over a gloo group), which
logs one merged report per phase; only rank 0 prints, and its exit status is
non-zero if any rank failed (torchrun's own is non-zero too).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any

import pytest

from ._policy import pg_timeout_for, timeout_of
from ._reports import failure, merge_reports, passed, serialize, unserialize
from .world import RankContext, backend_for, forget_meshes

__all__ = ["TorchrunSession"]


class TorchrunSession:
    """This rank's view of a torchrun-launched session."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.context: RankContext | None = None
        self.group: Any = None
        self.broken: str | None = None

    def silence(self) -> None:
        """Only rank 0 prints; the others' failures reach it with each test."""
        if self.rank == 0:
            return
        from _pytest.config import create_terminal_writer

        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            self._devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the session
            terminal._tw = create_terminal_writer(self.config, self._devnull)

    def skip_reason(self, item: pytest.Item, fake: bool) -> str | None:
        """Why a test that does not use ``composable_world`` is skipped on this rank."""
        if fake:
            return "composable: a fake world cannot be created inside a torchrun-launched world"
        if self.rank != 0:
            return "composable: under torchrun, tests without composable_world run on rank 0"
        return None

    def join(self, timeout: float) -> RankContext:
        if self.context is None:
            import torch
            import torch.distributed as dist

            delta = datetime.timedelta(seconds=timeout)
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
            if device_type == "cuda":
                torch.cuda.set_device(self.local_rank)
                backend = "cpu:gloo,cuda:nccl"
            else:
                backend = backend_for("cpu")
            dist.init_process_group(backend, timeout=delta)
            self.group = dist.new_group(backend="gloo", timeout=delta)
            self.context = RankContext(self.rank, self.world_size, self.local_rank, backend)
        return self.context

    def leave(self) -> None:
        """After rank 0 printed its report: no rank exits first (torchrun would stop the
        others as soon as one exits with a failure)."""
        if self.context is not None:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.barrier(group=self.group)
            forget_meshes()
            dist.destroy_process_group()
            self.context = None

    def run_item(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool:
        import torch.distributed as dist
        from _pytest.runner import runtestprotocol

        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        if self.broken is not None:
            for report in (failure(item, "setup", self.broken), passed(item, "teardown")):
                item.ihook.pytest_runtest_logreport(report=report)
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            return True
        self.join(pg_timeout_for(timeout_of(item)))
        mine = [
            serialize(self.config, r) for r in runtestprotocol(item, nextitem=nextitem, log=False)
        ]
        gathered: list[Any] = [None] * self.world_size if self.rank == 0 else []
        try:
            dist.gather_object(mine, gathered if self.rank == 0 else None, dst=0, group=self.group)
        except Exception as error:  # a rank hung or died: the world is lost
            self.broken = f"composable: the torchrun world broke during {item.nodeid}: {error}"
            gathered = [mine] + [None] * (self.world_size - 1) if self.rank == 0 else []
        # Rank 0 logs the merged reports: its exit status (and so torchrun's) is
        # non-zero if any rank failed. The others exit 0 so that torchrun never
        # stops rank 0 before it has printed.
        if self.rank == 0:
            for report in self._merge(item, gathered):
                item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _merge(self, item: pytest.Item, gathered: list[Any]) -> list[pytest.TestReport]:
        if self.broken is not None:
            return [
                passed(item, "setup"),
                failure(item, "call", self.broken),
                passed(item, "teardown"),
            ]
        reports = {
            rank: [unserialize(self.config, d) for d in data]
            for rank, data in enumerate(gathered)
            if data is not None
        }
        return merge_reports(item, reports, self.world_size)
