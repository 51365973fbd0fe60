"""What a distributed test asks for, read from its marker, its parameters and the settings.

World size, rank, device type, the test's deadline and the process group's
timeout that follows from it (torch-free). Shared by the plugin module, the
pool in the main process and the torchrun session, below all of them.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import pytest

from ..marker import MarkerError, read_marker, shown
from ._constants import FAKE_FIXTURE, RANK_ENV, WORLD_FIXTURE
from ._launch_env import detect_launch
from ._mesh import MeshError, MeshLayout, layout_id, resolve, size_of
from ._options import settings_of

__all__ = [
    "PoolKey",
    "WorldShape",
    "backend_of",
    "device_type_of",
    "mesh_of",
    "pg_timeout_for",
    "pool_key",
    "rank_of",
    "shape_ids",
    "shapes_of",
    "sizes_of",
    "timeout_of",
    "world_size_of",
]

PoolKey = tuple[int, str, str]
"""A rank pool serves one (world size, device type, backend; "" for the device's default)."""


class WorldShape(NamedTuple):
    """One item of a world test: its world size and its mesh layout (``-1`` resolved;
    ``None``: the plain 1-D mesh over every rank)."""

    world_size: int
    mesh: MeshLayout | None


def _default_world_size(config: pytest.Config) -> int:
    """What a mesh's ``-1`` is resolved against where the marker gives no world size: the
    launched world's size under torchrun, srun or mpirun, else the session's setting (a
    rank the plugin started collects as its main process does, so it takes the setting
    too). A test without ``mesh=`` takes the session's setting, and under a launcher is
    skipped where that differs from the launched size."""
    if RANK_ENV not in os.environ:
        launch = detect_launch(os.environ)
        if launch is not None:
            return launch.world_size
    return settings_of(config).world_size


def shapes_of(node: Any, config: pytest.Config) -> list[WorldShape]:
    """Every (world size, mesh) item ``node`` asks for, in marker order, each once.

    World sizes are the marker's ``world_size=``, else, without ``mesh=``, the
    session's (:func:`_default_world_size`). A mesh of fixed sizes needs the world
    size they multiply to; a mesh with a ``-1`` is resolved against each of the
    marker's world sizes, else the session's. Raises :class:`MarkerError` for a bad
    marker, a mesh that does not fit a world size it is given, and a marker
    ``rank`` that is not below every world size.
    """
    options = read_marker(node)
    shapes: list[WorldShape] = []
    try:
        if options.mesh is None:
            sizes = options.world_size or (settings_of(config).world_size,)
            shapes = [WorldShape(size, None) for size in sizes]
        elif options.world_size is not None:
            shapes = [
                WorldShape(size, resolve(layout, size))
                for size in options.world_size
                for layout in options.mesh
            ]
        else:
            for layout in options.mesh:
                size = size_of(layout) or _default_world_size(config)
                shapes.append(WorldShape(size, resolve(layout, size)))
    except MeshError as error:
        raise MarkerError(str(error)) from None
    shapes = list(dict.fromkeys(shapes))
    smallest = min(shape.world_size for shape in shapes)
    if options.rank is not None and options.rank >= smallest:
        raise MarkerError(
            f"composable(rank={shown(options.rank)}) is not below world size {smallest}"
        )
    return shapes


def sizes_of(node: Any, config: pytest.Config) -> tuple[int, ...]:
    """The world sizes ``node`` asks for (see :func:`shapes_of`), each once."""
    return tuple(dict.fromkeys(shape.world_size for shape in shapes_of(node, config)))


def shape_ids(node: Any, shapes: list[WorldShape]) -> list[str]:
    """The id part of each shape: ``ws<N>`` where the marker lists several world sizes,
    then the mesh (``dp2xtp2``) where it lists several meshes; ``-`` joins the two."""
    options = read_marker(node)
    several_sizes = len(set(options.world_size or ())) > 1
    several_meshes = len(options.mesh or ()) > 1
    ids = []
    for shape in shapes:
        parts = [f"ws{shape.world_size}"] if several_sizes or not several_meshes else []
        if several_meshes and shape.mesh is not None:
            parts.append(layout_id(shape.mesh))
        ids.append("-".join(parts))
    return ids


_SHAPE = pytest.StashKey[WorldShape]()


def _shape(item: Any) -> WorldShape:
    """The item's own shape: its parameter, else its marker's first (read once per item:
    the pool's key, the world fixture and the reports each ask on every test)."""
    callspec = getattr(item, "callspec", None)
    for name in (WORLD_FIXTURE, FAKE_FIXTURE):
        if callspec is not None and name in callspec.params:
            param = callspec.params[name]
            if isinstance(param, WorldShape):
                return param
    shape: WorldShape | None = item.stash.get(_SHAPE, None)
    if shape is None:
        shape = item.stash[_SHAPE] = shapes_of(item, item.config)[0]
    return shape


def world_size_of(item: pytest.Item) -> int:
    """The world size of one collected test (its own item's, where the marker lists several)."""
    return _shape(item).world_size


def mesh_of(item: Any) -> MeshLayout | None:
    """The resolved mesh layout of one collected test, ``None`` for the 1-D mesh."""
    return _shape(item).mesh


def rank_of(node: Any) -> int:
    """The rank a fake world poses as: the marker's ``rank``, else 0."""
    return read_marker(node).rank or 0


def device_type_of(item: pytest.Item) -> str:
    """The device type of a test's ``composable_device`` parameter (cpu if it has none)."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "composable_device" in callspec.params:
        return str(callspec.params["composable_device"]).split(":")[0]
    return "cpu"


def backend_of(node: Any, config: pytest.Config) -> str | None:
    """The backend a test asks for: ``composable(backend=...)`` > the session's setting;
    ``None`` for the default of the test's device type."""
    return read_marker(node).backend or settings_of(config).backend


def pool_key(item: pytest.Item) -> PoolKey:
    return world_size_of(item), device_type_of(item), backend_of(item, item.config) or ""


def timeout_of(item: pytest.Item) -> float:
    """The test's deadline: ``composable(timeout=...)`` > the session's setting."""
    marker_timeout = read_marker(item).timeout
    if marker_timeout is not None:
        return marker_timeout
    return settings_of(item.config).timeout


def pg_timeout_for(timeout: float) -> float:
    """The process group's timeout for a test with deadline ``timeout``: a little below it,
    so a lost collective errors (with its own message) before the deadline kills the ranks.

    Never above ``timeout``: a deadline within ``(0, MAX_TIMEOUT]`` gives a group timeout
    within the same range, which fits every clock and integer torch and gloo keep it in
    (see :data:`~._constants.MAX_TIMEOUT`)."""
    return max(timeout - max(1.0, 0.1 * timeout), 0.5 * timeout)
