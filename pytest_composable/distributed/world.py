"""The :class:`World` a distributed test sees: its rank, world size, device, backend and mesh.

torch-free at import: the torch types are for type checkers only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._mesh import MeshLayout

if TYPE_CHECKING:
    import torch
    from torch.distributed.device_mesh import DeviceMesh

__all__ = [
    "RankContext",
    "World",
    "WorldError",
    "backend_for",
    "build_mesh",
    "cached_mesh",
    "clear_dtensor_caches",
    "forget_meshes",
    "make_world",
]


class WorldError(Exception):
    """A world the test asked for cannot be made here; the test fails with this message."""


@dataclass(frozen=True)
class World:
    """One rank's view of the process group a test runs in.

    ``mesh`` is the test's ``DeviceMesh`` on ``device``'s type: the named N-D mesh of
    its marker's ``mesh=`` (``world.mesh["dp_shard"]``, ``mesh_dim_names``), else a
    1-D mesh over every rank.
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


_meshes: dict[tuple[str, MeshLayout | None], DeviceMesh] = {}
_stale = False  # groups were made again since DTensor's caches were last cleared


def build_mesh(device_type: str, world_size: int, layout: MeshLayout | None) -> DeviceMesh:
    """A ``DeviceMesh`` over the default group: named N-D for ``layout``, else 1-D."""
    from torch.distributed.device_mesh import init_device_mesh

    if layout is None:
        return init_device_mesh(device_type, (world_size,))
    names = tuple(name for name, _ in layout)
    return init_device_mesh(device_type, tuple(size for _, size in layout), mesh_dim_names=names)


def _alive(mesh: DeviceMesh) -> bool:
    """Whether every sub-group of ``mesh`` still exists (a test may destroy one)."""
    import torch.distributed as dist

    groups = dist.distributed_c10d._world.pg_map
    try:
        return all(mesh.get_group(dim) in groups for dim in range(mesh.ndim))
    except (RuntimeError, KeyError, ValueError, TypeError):
        # What a lookup of a destroyed group raises differs by torch version (2.6: a
        # TypeError from its not-None check).
        return False


def cached_mesh(device_type: str, world_size: int, layout: MeshLayout | None) -> DeviceMesh:
    """The mesh of this layout, made on the first test that asks for it and kept for every
    later one (its sub-groups are made once); made again where a test destroyed a group."""
    global _stale
    key = (device_type, layout)
    mesh = _meshes.get(key)
    if mesh is not None and not _alive(mesh):
        _stale = True
        mesh = None
    if _stale:
        # Here, in the thread that runs the tests: torch keeps some caches per thread.
        clear_dtensor_caches()
        _stale = False
    if mesh is None:
        mesh = _meshes[key] = build_mesh(device_type, world_size, layout)
    return mesh


def make_world(
    context: RankContext, device: torch.device, seed: int, layout: MeshLayout | None = None
) -> World:
    """The :class:`World` for a test on ``device`` (cuda becomes ``cuda:<local rank>``),
    with the mesh of ``layout`` (resolved; ``None``: 1-D)."""
    import torch

    if device.type not in ("cpu", "meta"):
        device = torch.device(device.type, context.local_rank)
    mesh = cached_mesh(device.type, context.world_size, layout)
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
    """Drop cached meshes (before the process group they belong to is destroyed); the next
    mesh made clears the DTensor caches that may hold them first."""
    global _stale
    _meshes.clear()
    _stale = True


def clear_dtensor_caches() -> None:
    """Empty DTensor's sharding-propagation and redistribution caches.

    Their entries hold the ``DeviceMesh`` of the tensors they were made for, and a mesh
    equals another of the same shape whatever its process groups: after the groups are
    made again, a cached entry would hand a later test's DTensor the old mesh, whose
    groups are gone ("Could not resolve the process group registered under the name
    0"). What each torch version keeps differs, so each cache is cleared where it exists.
    """
    import sys

    if "torch.distributed.tensor" not in sys.modules:
        return  # no DTensor made here: nothing cached
    import torch
    from torch.distributed.tensor import DTensor, _redistribute

    propagate = DTensor._op_dispatcher.sharding_propagator.propagate_op_sharding
    for cache in (
        getattr(propagate, "cache_clear", None),
        # torch 2.6: a per-thread lru_cache wrapper without cache_clear of its own.
        getattr(getattr(propagate, "cache", None), "cache_clear", None),
        getattr(torch._C, "_clear_DTensor_sharding_propagator_cache", None),
        getattr(getattr(_redistribute, "_gen_transform_infos", None), "cache_clear", None),
    ):
        if cache is not None:
            cache()
