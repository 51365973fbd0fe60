"""The :class:`World` a distributed test sees: its rank, world size, device, backend and mesh.

torch-free at import: the torch types are for type checkers only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch.distributed.device_mesh import DeviceMesh

__all__ = [
    "RankContext",
    "World",
    "WorldError",
    "backend_for",
    "forget_meshes",
    "make_world",
]


class WorldError(Exception):
    """A world the test asked for cannot be made here; the test fails with this message."""


@dataclass(frozen=True)
class World:
    """One rank's view of the process group a test runs in.

    ``mesh`` is a 1-D ``DeviceMesh`` over every rank on ``device``'s type.
    ``fake`` is true for the in-process fake world (one real process posing
    as ``rank`` of ``world_size``; collectives move no data). ``seed`` is the
    session's ``composable_seed``: every rank's global generators are seeded
    with it when the test starts, so ranks agree (see :meth:`seed_per_rank`).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    mesh: DeviceMesh
    fake: bool = False
    seed: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    @property
    def rank_seed(self) -> int:
        """A seed of this rank's own: ``(seed + rank) % 2**64``. Different on every rank,
        the same on every run."""
        return (self.seed + self.rank) % 2**64

    def seed_per_rank(self) -> int:
        """Reseed this process's global generators (torch's, ``random``'s, numpy's) with
        :attr:`rank_seed`, for a test that wants different data on each rank; returns it.

        Every world test starts with all ranks seeded alike, with ``seed``
        (``composable_seed``); call this where the test should diverge.
        """
        from ._seed import seed_everything

        seed_everything(self.rank_seed)
        return self.rank_seed


def backend_for(device_type: str) -> str:
    """The process-group backend for a device type: gloo on cpu, nccl on cuda, else torch's."""
    if device_type == "cpu":
        return "gloo"
    if device_type == "cuda":
        return "nccl"
    import torch.distributed as dist

    getter = getattr(dist, "get_default_backend_for_device", None)
    try:
        if getter is not None:
            return str(getter(device_type))
    except (RuntimeError, ValueError):
        pass  # torch knows no backend for it either
    raise WorldError(f"composable: no process-group backend known for {device_type!r}")


@dataclass(frozen=True)
class RankContext:
    """The process group this process joined: set once per rank session."""

    rank: int
    world_size: int
    local_rank: int
    backends: dict[str, str]  # device type -> the backend its tensors go through
    group: Any = None  # the default process group as joined (to tell if a test replaced it)


_meshes: dict[str, DeviceMesh] = {}


def make_world(context: RankContext, device: torch.device, seed: int) -> World:
    """The :class:`World` for a test on ``device`` (cuda becomes ``cuda:<local rank>``)."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh

    if device.type not in ("cpu", "meta"):
        device = torch.device(device.type, context.local_rank)
    mesh = _meshes.get(device.type)
    if mesh is None:
        mesh = _meshes[device.type] = init_device_mesh(device.type, (context.world_size,))
    backend = context.backends.get(device.type) or next(iter(context.backends.values()))
    return World(
        context.rank,
        context.world_size,
        context.local_rank,
        device,
        backend,
        mesh,
        seed=seed,
    )


def forget_meshes() -> None:
    """Drop cached meshes (before the process group they belong to is destroyed)."""
    _meshes.clear()
