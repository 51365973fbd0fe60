"""Names and defaults shared by the distributed modules (torch-free, imports nothing)."""

from __future__ import annotations

__all__ = [
    "BACKEND_ENV",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WORLD_SIZE",
    "FAKE_FIXTURE",
    "MAX_WORLD_SIZE",
    "MIN_START_TIMEOUT",
    "MIN_WARM_START_TIMEOUT",
    "RANK_ENV",
    "START_ENV",
    "START_MODES",
    "TIMEOUT_ENV",
    "WORLD_FIXTURE",
    "WORLD_SIZE_ENV",
]

RANK_ENV = "PYTEST_COMPOSABLE_RANK_WORKER"
"""Set in a rank process the plugin started; its value is the rank's ``RankSpec`` (JSON)."""

WORLD_FIXTURE = "composable_world"
FAKE_FIXTURE = "composable_fake_world"

DEFAULT_WORLD_SIZE = 2
MAX_WORLD_SIZE = 1024
"""The largest world size accepted from an option or a marker: a real world starts one process
per rank, and a fake world's mesh holds one entry per rank."""

DEFAULT_TIMEOUT = 120.0
MIN_START_TIMEOUT = 20.0
MIN_WARM_START_TIMEOUT = 10.0
"""The same for ranks forked from the template: their imports are done already."""
"""Starting a pool counts against its first test's deadline, but may take at least this long
(importing torch and collecting on every rank of a loaded machine)."""
TIMEOUT_ENV = "PYTEST_COMPOSABLE_TIMEOUT"
BACKEND_ENV = "PYTEST_COMPOSABLE_BACKEND"
WORLD_SIZE_ENV = "PYTEST_COMPOSABLE_WORLD_SIZE"
START_ENV = "PYTEST_COMPOSABLE_START"
START_MODES = ("warm", "cold")
"""How rank processes start; the first is the default."""
