"""Names and defaults shared by the distributed modules (torch-free, imports nothing)."""

from __future__ import annotations

__all__ = [
    "BACKEND_ENV",
    "DEFAULT_MEMORY_LIMIT_MIB",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WORLD_SIZE",
    "FAKE_FIXTURE",
    "MAX_MEMORY_LIMIT_MIB",
    "MAX_TIMEOUT",
    "MAX_WORLD_SIZE",
    "MEMORY_LIMIT_ENV",
    "MIN_START_TIMEOUT",
    "MIN_WARM_START_TIMEOUT",
    "NOTES_OUTPUT",
    "RANK_ENV",
    "START_ENV",
    "START_MODES",
    "THREADS_ENV",
    "TIMEOUT_ENV",
    "TIMEOUT_RANGE",
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
MAX_TIMEOUT = 604800.0
"""The longest deadline of a world test, in seconds (one week), from every channel: the
options, the environment, the ini setting and the marker (pytest-timeout's timer is taken
as the smaller of it and the plugin's deadline, so it is bounded too).

Every span derived from a deadline must fit where it goes: the process group's timeout
(a little below the deadline, ``pg_timeout_for``), the rendezvous' (the start-up allowance
plus a grace of seconds) and the health barrier's become ``datetime.timedelta`` values
(a C ``int`` of days; 1e300 s overflowed it, 1e14 s passed its 999,999,999 days), then
deadlines in c10d and gloo, ``now`` plus the timeout in 64-bit nanoseconds (a process
group timeout of 8.1e9 s wrapped round and hung both ranks of an ``all_reduce``) or in
``time_t`` (1e10 s overflowed it). A backend may keep its timeout as a C ``int`` of
milliseconds, 2**31 - 1 ms or about 24.8 days, the tightest of these limits: a week stays
below it whatever margin is added, and is longer than any test should wait."""
TIMEOUT_RANGE = f"a number of seconds above 0 and at most {MAX_TIMEOUT:g} (one week)"
"""How messages and help texts state the accepted deadlines."""
MIN_START_TIMEOUT = 20.0
"""Starting a pool counts against its first test's deadline, but may take at least this long
(importing torch and collecting on every rank of a loaded machine)."""
MIN_WARM_START_TIMEOUT = 10.0
"""The same for ranks forked from the template: their imports are done already."""
TIMEOUT_ENV = "PYTEST_COMPOSABLE_TIMEOUT"
BACKEND_ENV = "PYTEST_COMPOSABLE_BACKEND"
WORLD_SIZE_ENV = "PYTEST_COMPOSABLE_WORLD_SIZE"
START_ENV = "PYTEST_COMPOSABLE_START"
START_MODES = ("warm", "cold")
"""How rank processes start; the first is the default."""

MEMORY_LIMIT_ENV = "PYTEST_COMPOSABLE_RANK_MEMORY_LIMIT"
DEFAULT_MEMORY_LIMIT_MIB = 4096
"""How far a kept rank's memory (resident set; allocated accelerator memory) may grow since its
pool started before the pool is started again for the next test, in MiB: well above what
importing and first running torch's distributed code adds (some hundreds of MiB), so that
only a test that keeps memory alive (a tensor in a global, a cache) recycles a pool."""
MAX_MEMORY_LIMIT_MIB = 2**30
"""The largest limit accepted (1 PiB): a bound, so that the value is a number, not a digit
string of any length."""
THREADS_ENV = "OMP_NUM_THREADS"
"""Where a user chooses the ranks' intra-op thread count (OpenMP's own variable, which torch
reads): set, it is passed to the ranks as it is; unset, the plugin chooses."""
NOTES_OUTPUT = "composable_rank_notes"
"""The key of a pytest-xdist worker's notes about its ranks in its ``workeroutput``: a dict
with ``"recycled"`` (one line per pool restarted for memory) and ``"threads"`` (the thread
line, or ``None``), for the controller's terminal summary."""
