"""Which launcher, if any, started this process, read from its environment (pure, torch-free).

Kept apart from :mod:`._launched` so that every session can ask at configure time
without importing the launched-session machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

__all__ = ["Launch", "detect_launch", "launch_environment"]


class Launch(NamedTuple):
    """Where this process stands in a launched world, whoever launched it."""

    launcher: str  # "torchrun", "slurm" or "mpi"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def _int(environ: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value.isascii() and value.isdigit():
            return int(value)
    return None


def _slurm_tasks_per_node(environ: Mapping[str, str]) -> int | None:
    """``SLURM_NTASKS_PER_NODE``, else this node's entry of ``SLURM_TASKS_PER_NODE``
    (``"2(x3),1"``: 2 tasks on each of 3 nodes, then 1); the first entry is taken."""
    direct = _int(environ, "SLURM_NTASKS_PER_NODE")
    if direct is not None:
        return direct
    first = environ.get("SLURM_TASKS_PER_NODE", "").split(",")[0].split("(")[0]
    return int(first) if first.isascii() and first.isdigit() else None


def detect_launch(environ: Mapping[str, str]) -> Launch | None:
    """The launch this process belongs to, from its environment; ``None`` if none.

    * torchrun: ``TORCHELASTIC_RUN_ID`` with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
      ``LOCAL_WORLD_SIZE``;
    * SLURM (``srun``): ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``;
    * Open MPI (``mpirun``): ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_SIZE``,
      ``OMPI_COMM_WORLD_LOCAL_RANK`` (and ``..._LOCAL_SIZE``).

    SLURM and MPI count only with ``MASTER_ADDR`` and ``MASTER_PORT`` set: a batch
    script that runs plain ``pytest`` inside an allocation is not a launch.
    """
    if "TORCHELASTIC_RUN_ID" in environ:
        rank, size = _int(environ, "RANK"), _int(environ, "WORLD_SIZE")
        if rank is not None and size is not None:
            local = _int(environ, "LOCAL_RANK") or 0
            local_size = _int(environ, "LOCAL_WORLD_SIZE") or size
            return Launch("torchrun", rank, size, local, local_size)
        return None
    if not environ.get("MASTER_ADDR") or not environ.get("MASTER_PORT"):
        return None
    for launcher, rank_name, size_name, local_name, local_size_of in _LAUNCHERS:
        rank, size = _int(environ, rank_name), _int(environ, size_name)
        if rank is not None and size is not None:
            local = _int(environ, local_name) or 0
            return Launch(launcher, rank, size, local, local_size_of(environ) or size)
    return None


_LAUNCHERS: tuple[tuple[str, str, str, str, Callable[[Mapping[str, str]], int | None]], ...] = (
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", _slurm_tasks_per_node),
    (
        "mpi",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        lambda environ: _int(environ, "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ),
)
"""Launchers that set their own variables: name, then the variables of rank, world size,
local rank, and how to read the local world size."""


def launch_environment(launch: Launch) -> dict[str, str]:
    """The ``env://`` variables torch reads, for a launcher that does not set them."""
    return {
        "RANK": str(launch.rank),
        "WORLD_SIZE": str(launch.world_size),
        "LOCAL_RANK": str(launch.local_rank),
        "LOCAL_WORLD_SIZE": str(launch.local_world_size),
    }
