"""The world a launched rank joins: made once, made again after a failure, left at the end.

The rank joins with ``env://`` (``MASTER_ADDR``/``MASTER_PORT``) and keeps the
launcher's store: failures travel through it (:mod:`._launched_faults`), the default
group and the plugin's gloo control group are made (and made again) over prefixes of
it, and the ranks meet in it when the control group is gone.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from typing import Any

from ._launch_env import Launch, launch_environment
from ._launched_faults import shut_down, sockets
from ._launched_groups import GroupSets
from ._rank import set_pg_timeout
from .world import RankContext, backend_for, forget_meshes

__all__ = ["LaunchedWorld"]

_CONTROL_TIMEOUT = 3600.0
"""The plugin's own gloo group waits this long: while rank 0 runs the tests without a world,
the other ranks wait in it for the next world test."""

_RESTART_TIMEOUT = 60.0
"""How long the ranks may take to make a new default group after one was shut down."""

_SETTLE = 0.05
"""How long the ranks let their old groups' gloo workers run before the groups go."""


class LaunchedWorld:
    """This rank's launched world: the store, the default group, the plugin's control group
    (``group``), and whether the world is broken or stopped."""

    def __init__(self, launch: Launch, backend: str | None, groups: GroupSets) -> None:
        self.launch = launch
        self.backend = backend  # --composable-backend, if given
        self.groups = groups
        self.rank = launch.rank
        self.world_size = launch.world_size
        self.context: RankContext | None = None
        self.group: Any = None
        self.broken: str | None = None  # why every later world test fails at once
        self.stopped = False  # this rank has been told to stop (or told the others)
        self.store: Any = None  # the launched world's store (torchrun's, or rank 0's)
        self.world_sockets: frozenset[str] = frozenset()  # the default group's sockets
        self.generation = 0  # how many times the default group was made again
        self.pg_timeout = 0.0
        # The tensors of the last exchanges over the control group, held until the next
        # test or until the groups are gone: a gloo worker that freed the last reference
        # to one needs the GIL, and a group's destruction holds the GIL while it waits for
        # its workers (a deadlock on torch 2.6, at the session's end).
        self.keep: list[Any] = []

    def join(self, timeout: float) -> RankContext:
        if self.context is None:
            import torch

            for key, value in launch_environment(self.launch).items():
                os.environ.setdefault(key, value)
            backends = self.backends(torch.cuda.is_available())
            if "cuda" in backends:
                torch.cuda.set_device(self.launch.local_rank)
            # The launcher's store (torchrun's agent store, or a TCPStore rank 0 serves):
            # kept, so that failures travel through it and the group can be made again.
            from torch.distributed.rendezvous import rendezvous

            store, _, _ = next(rendezvous("env://", timeout=datetime.timedelta(seconds=timeout)))
            store.set_timeout(datetime.timedelta(seconds=timeout))
            self.store = store
            self.pg_timeout = timeout
            self._make(backends, timeout)
        assert self.context is not None
        return self.context

    def retime(self, timeout: float) -> None:
        """The current test's collectives wait ``timeout`` seconds (on a torch that can
        retime a group in place; torch 2.6 keeps the first test's)."""
        self.pg_timeout = timeout
        set_pg_timeout(timeout)

    def _make(self, backends: dict[str, str], timeout: float) -> None:
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
        before = set(sockets())
        dist.init_process_group(
            spec,
            store=PrefixStore(f"composable/world/{self.generation}", self.store),
            rank=self.rank,
            world_size=self.world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
        self.world_sockets = frozenset(set(sockets()) - before)
        self.group = dist.new_group(
            backend="gloo", timeout=datetime.timedelta(seconds=_CONTROL_TIMEOUT)
        )
        self.context = RankContext(
            self.rank, self.world_size, self.launch.local_rank, backends, group=dist.group.WORLD
        )

    def end_waits(self) -> None:
        """(The watcher's thread.) End what this rank waits for in the default group: its
        connections are shut down (gloo's abort leaves a pending collective waiting), and a
        backend that can abort is aborted."""
        shut_down(self.world_sockets)
        context = self.context
        if context is not None and set(context.backends.values()) != {"gloo"}:
            abort = getattr(context.group, "abort", None)
            if abort is not None:
                with contextlib.suppress(Exception):
                    abort()

    def remake(self) -> str | None:
        """After a test whose waits were ended: every rank makes the default group and the
        control group again. ``None`` if every rank managed, else why not."""
        import torch.distributed as dist
        from torch.distributed import distributed_c10d as c10d

        assert self.context is not None
        backends = self.context.backends
        self.groups.activate("world")
        error = None
        try:
            # A gloo worker may still hold the last reference to a tensor of the test or of
            # the report exchange, and needs the GIL to free it; a group's destruction holds
            # the GIL while it joins its workers. So the workers get the GIL first, and the
            # old groups go before a new one is made (a constructor that holds the GIL,
            # then an assignment that drops the old group, deadlocked on torch 2.6).
            time.sleep(_SETTLE)
            forget_meshes()
            names_from = self.groups.count_names()
            self.group = None
            self.context = None
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self.keep.clear()
            c10d._world.group_count = names_from
            self.generation += 1
            self._make(backends, self.pg_timeout)
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

    def told_to_stop(self, stop: bool) -> bool:
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
        if self.store is None:
            return  # never joined
        import torch.distributed as dist

        self.groups.activate("world")
        with contextlib.suppress(Exception):
            if self.broken is not None:
                # The control group may be gone: meet in the store instead.
                keys = [f"composable/left/{rank}" for rank in range(self.world_size)]
                self.store.set(keys[self.rank], "1")
                self.store.wait(keys, datetime.timedelta(seconds=_CONTROL_TIMEOUT))
            else:
                if not self.stopped:
                    self.told_to_stop(True)
                dist.barrier(group=self.group)
        time.sleep(_SETTLE)  # see remake
        forget_meshes()
        self.group = None
        self.context = None
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        self.keep.clear()
        self.store = None
