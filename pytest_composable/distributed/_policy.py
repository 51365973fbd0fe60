"""What a distributed test asks for, read from its marker, its parameters and the settings.

World size, rank, device type, the test's deadline and the process group's
timeout that follows from it (torch-free). Shared by the plugin module, the
pool in the main process and the torchrun session, below all of them.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..marker import MarkerError, read_marker, shown
from ._constants import FAKE_FIXTURE, WORLD_FIXTURE
from ._options import settings_of

__all__ = [
    "PoolKey",
    "backend_of",
    "device_type_of",
    "pg_timeout_for",
    "pool_key",
    "rank_of",
    "sizes_of",
    "timeout_of",
    "world_size_of",
]

PoolKey = tuple[int, str, str]
"""A rank pool serves one (world size, device type, backend; "" for the device's default)."""


def sizes_of(node: Any, config: pytest.Config) -> tuple[int, ...]:
    """The world sizes ``node`` asks for: its marker's, else the session's default.

    Raises :class:`MarkerError` for a bad marker (:func:`read_marker` checks its values,
    sizes above :data:`MAX_WORLD_SIZE` included) and for a marker ``rank`` that is not
    below every size, the session's default where the marker gives none.
    """
    options = read_marker(node)
    sizes = options.world_size or (settings_of(config).world_size,)
    if options.rank is not None and options.rank >= min(sizes):
        raise MarkerError(
            f"composable(rank={shown(options.rank)}) is not below world size {min(sizes)}"
        )
    return sizes


def world_size_of(item: pytest.Item) -> int:
    """The world size of one collected test (its ``ws<N>`` parameter, if it has one)."""
    callspec = getattr(item, "callspec", None)
    for name in (WORLD_FIXTURE, FAKE_FIXTURE):
        if callspec is not None and name in callspec.params:
            return int(callspec.params[name])
    return sizes_of(item, item.config)[0]


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
