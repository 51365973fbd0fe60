"""Ranks that stay clean: what a world test changed in a kept rank is undone before the next.

A rank runs test after test in one process, so whatever a test leaves behind in the
process would reach the next test on that rank, as it would not on a fresh process per
test (``MultiProcessTestCase``). After each world test, on plugin-started ranks and on a
launcher's ranks alike, :meth:`Hygiene.clean`:

* resets ``torch._dynamo`` where something was compiled since the last reset (its
  counters or frame count say so; a test that never compiles pays a dictionary look-up),
  so no compiled graph, guard or recompile counter reaches the next test;
* puts back the default dtype, the default device, grad mode, the deterministic
  algorithms setting (and its ``warn_only``), the cuDNN flags, the intra-op thread count,
  the working directory and every environment variable (see :class:`Hygiene` for what a
  fixture wider than a test keeps);
* on an accelerator, synchronises it and releases its caching allocator's unused blocks.

The rank then measures its memory (:func:`measure`) for the main process, which restarts a
pool whose ranks grew past ``--composable-rank-memory-limit`` since they joined.

Also here, used by the main process when it starts ranks: the intra-op thread count each
rank gets (:func:`rank_threads`). Torch-free at import.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import sys
from collections.abc import Generator, Mapping
from typing import Any

import pytest

from .._runtime import initialised
from ._constants import THREADS_ENV
from ._protocol import Memory

__all__ = [
    "Hygiene",
    "apply_threads",
    "capture",
    "grown",
    "machine_ranks",
    "measure",
    "rank_threads",
    "release_accelerator",
    "release_heap",
    "reset_compiler",
    "restore",
    "threads_note",
    "usable_cores",
]

_ENV = "env:"  # prefix of the environment's entries in a captured state
_CPU_TYPES = ("cpu", "meta")

State = dict[str, Any]
"""What :func:`capture` records: one entry per setting, one per environment variable."""


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one, as
    under ``taskset`` or a container's cpuset), else every CPU of the machine."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def machine_ranks(environ: Mapping[str, str], world_size: int) -> int:
    """How many plugin-started ranks share this machine while a pool of ``world_size`` runs:
    its own, times the pytest-xdist workers (each runs one pool at a time)."""
    workers = environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    # A worker count is a few digits; anything else is not one.
    count = int(workers) if workers.isascii() and workers.isdigit() and len(workers) <= 6 else 1
    return world_size * max(1, count)


def rank_threads(environ: Mapping[str, str], ranks_on_node: int) -> int | None:
    """The intra-op thread count for each of ``ranks_on_node`` ranks sharing this machine:
    ``max(1, usable cores // ranks)``, so that the ranks together do not ask for more
    threads than there are cores; ``None`` where the user chose (``OMP_NUM_THREADS`` set)."""
    if THREADS_ENV in environ:
        return None
    return max(1, usable_cores() // max(1, ranks_on_node))


def threads_note(found: Mapping[int, set[int]], user: str | None) -> str:
    """The report's line on the ranks' intra-op threads: ``found`` holds the counts the
    ranks had, by world size; ``user``: the user's ``OMP_NUM_THREADS``, if set."""
    counts = ", ".join(
        f"{'/'.join(str(n) for n in sorted(threads))} in worlds of {size}"
        for size, threads in sorted(found.items())
    )
    how = (
        f"{THREADS_ENV}={user} from the environment"
        if user is not None
        else f"max(1, {usable_cores()} usable cores // ranks on the machine) unless the "
        f"session set its own; {THREADS_ENV} chooses another"
    )
    return f"composable: intra-op threads per rank: {counts} ({how})"


def apply_threads(threads: int | None) -> None:
    """Give torch's intra-op pool ``threads`` threads (``None``: leave it)."""
    torch = sys.modules.get("torch")
    if threads is not None and torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the test removed it
        return None


def _default_device(torch: Any) -> Any:
    try:
        return torch.get_default_device()
    except AttributeError:  # torch < 2.7, after set_default_device(None): the CPU
        return torch.device("cpu")


def _no_default_device(torch: Any) -> None:
    """Drop any default device: the CPU, without a device context (which would intercept
    every factory call). On torch < 2.7, ``set_default_device(None)`` leaves a context of
    ``None`` that ``get_default_device`` then fails on: that is removed too."""
    torch.set_default_device(None)
    local = getattr(torch, "_GLOBAL_DEVICE_CONTEXT", None)
    if local is not None and getattr(local, "device_context", False) is None:
        del local.device_context


def capture() -> State:
    """The process state a test may change and the next test must not see changed."""
    import torch

    cudnn = torch.backends.cudnn
    state: State = {
        "default dtype": torch.get_default_dtype(),
        "default device": _default_device(torch),
        "grad mode": torch.is_grad_enabled(),
        "deterministic algorithms": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        "cudnn flags": (cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32),
        "intra-op threads": torch.get_num_threads(),
        "working directory": _cwd(),
    }
    state.update((_ENV + name, value) for name, value in os.environ.items())
    return state


def _differ(a: State, b: State) -> list[str]:
    return [key for key in a.keys() | b.keys() if a.get(key) != b.get(key)]


def _set(key: str, value: Any) -> None:
    import torch

    if key.startswith(_ENV):
        name = key[len(_ENV) :]
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    elif key == "default dtype":
        torch.set_default_dtype(value)
    elif key == "default device":
        if value == torch.device("cpu"):
            _no_default_device(torch)
        else:
            torch.set_default_device(value)
    elif key == "grad mode":
        torch.set_grad_enabled(value)
    elif key == "deterministic algorithms":
        torch.use_deterministic_algorithms(value[0], warn_only=value[1])
    elif key == "cudnn flags":
        cudnn = torch.backends.cudnn
        cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = value
    elif key == "intra-op threads":
        torch.set_num_threads(value)
    elif key == "working directory" and value is not None:
        os.chdir(value)


def restore(target: State, now: State | None = None) -> list[str]:
    """Put back every entry of ``target`` that differs now (an environment variable absent
    from ``target`` is removed); the keys put back."""
    changed = _differ(target, capture() if now is None else now)
    for key in changed:
        _set(key, target.get(key))
    return changed


def reset_compiler() -> bool:
    """Reset ``torch._dynamo`` (its code caches, guards and counters) if anything was
    compiled since the last reset; whether it was. Cheap when nothing was: dynamo is not
    imported at all, or its counters are empty and its frame count is 0."""
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return False
    convert_frame = sys.modules.get("torch._dynamo.convert_frame")
    frames = getattr(convert_frame, "FRAME_COUNTER", 0)
    counters = getattr(utils, "counters", {})
    if not frames and not any(counters.values()):
        return False
    import torch._dynamo

    torch._dynamo.reset()
    # reset() leaves the counters (torch's own test harness clears them beside it).
    counters.clear()
    return True


def _accelerator(device_type: str) -> Any:
    """torch's module for ``device_type`` (``torch.cuda``...) where it is initialised in
    this process, else ``None``: nothing to synchronise, release or measure there."""
    return None if device_type in _CPU_TYPES else initialised(device_type)


def release_accelerator(device_type: str) -> None:
    """Wait for the accelerator's queued work, then hand the caching allocator's unused
    blocks back to the driver (so the next test, or another process, can have them).

    Not run by this project's CI, which has no accelerator: it only calls torch's
    ``synchronize`` and ``empty_cache`` where the device type's module is initialised.
    """
    module = _accelerator(device_type)
    if module is not None:
        for name in ("synchronize", "empty_cache"):
            call = getattr(module, name, None)
            if call is not None:
                call()


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 4096


_PAGE = _page_size()


def _rss() -> int:
    """This process's resident set size now, in bytes (Linux); elsewhere its peak so far."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):  # pragma: no cover - no procfs
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def measure(device_type: str) -> Memory:
    """This process's memory: resident set, and what is allocated on its accelerator."""
    module = _accelerator(device_type)
    allocated = getattr(module, "memory_allocated", None)
    return Memory(_rss(), int(allocated()) if allocated is not None else 0)


def release_heap() -> None:
    """Collect garbage, then hand the C heap's free pages back to the system (glibc's
    ``malloc_trim``): what a test freed stops counting in the resident set."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


def grown(memory: Memory, since: Memory) -> int:
    """How far ``memory`` grew past ``since``: the larger of its two kinds, in bytes."""
    return max(memory.rss - since.rss, memory.accelerator - since.accelerator)


class Hygiene:
    """A rank's state between world tests (registered as a plugin on the rank).

    :meth:`start` records the state the tests start from, once the rank's session has
    configured (so a conftest's own choices are part of it). After each world test,
    :meth:`clean` puts that state back. A fixture wider than a test (module, class,
    package or session scope) keeps what its setup changed until it is torn down, as in
    one process: a module fixture that sets the default dtype holds for every test of the
    module. What the fixture's teardown leaves is undone too.
    """

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.baseline: State | None = None
        self._owned: dict[object, State] = {}  # fixture -> what its setup changed, as before
        self.joined: Memory | None = None  # memory when the rank joined

    def start(self) -> None:
        if self.baseline is None:
            self.baseline = capture()

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        baseline = self.baseline
        if baseline is None or fixturedef.scope == "function":
            return (yield)
        before = capture()
        result = yield
        after = capture()
        changed = _differ(before, after)
        if changed:
            self._owned[fixturedef] = {key: before.get(key) for key in changed}
            baseline.update((key, after.get(key)) for key in changed)
        return result

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[Any]) -> None:
        owned = self._owned.pop(fixturedef, None)
        if owned is not None and self.baseline is not None:
            self.baseline.update(owned)

    def clean(self) -> None:
        """After a world test: reset the compiler, put the state back, release the
        accelerator's unused memory."""
        reset_compiler()
        if self.baseline is not None:
            restore(self.baseline)
        release_accelerator(self.device_type)

    def memory(self, limit: int | None) -> Memory:
        """The rank's memory for the main process; past ``limit`` (bytes of growth since
        :attr:`joined`), only after garbage is collected and the heap trimmed."""
        memory = measure(self.device_type)
        if limit is not None and self.joined is not None and grown(memory, self.joined) > limit:
            release_heap()
            memory = measure(self.device_type)
        return memory
