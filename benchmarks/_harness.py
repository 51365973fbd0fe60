"""Shared by the benchmark scripts: interleaved subprocess timing and the generated suites.

Every benchmark compares two ``python -m pytest`` command lines, A (with
pytest-composable) and B (the baseline), in one process: after one untimed
warm-up run of each (which also writes the bytecode caches), it times
``rounds`` rounds, alternating the order (A B, B A, A B, ...) so that drift
in machine load hits both sides alike, and reports the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

MODELS = (
    ("unit_module", "UnitModule"),
    ("composite_model", "CompositeModel"),
    ("unit_param_module", "UnitParamModule"),
    ("composite_param_model", "CompositeParamModel"),
    ("nested_sequential_model", "NestedSequentialModel"),
)
DEVICES = ("cpu", "meta")
REPEATS = 100  # 100 x 5 models x 2 devices = 1,000 items


Side = tuple[str, Sequence[str], Path]  # label, command, working directory


@dataclass(frozen=True)
class Timings:
    """One side's timed runs, in seconds: wall-clock and CPU (user + system) time."""

    label: str
    wall: tuple[float, ...]
    cpu: tuple[float, ...]

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    def line(self, side: str, per_test: bool = False) -> str:
        if per_test:  # samples are per-test times: shown in ms, no CPU time
            times = ", ".join(f"{v * 1000:.2f}" for v in self.wall)
            return (
                f"  {side} {self.label}: per test median {self.wall_median * 1000:.2f} ms "
                f"(min {min(self.wall) * 1000:.2f})  [{times}]"
            )
        walls = ", ".join(f"{v:.3f}" for v in self.wall)
        return (
            f"  {side} {self.label}: wall median {self.wall_median:.3f} s "
            f"(min {min(self.wall):.3f}), CPU median {self.cpu_median:.3f} s  wall: [{walls}]"
        )


@dataclass(frozen=True)
class Result:
    """One benchmark: A (pytest-composable) against B (the baseline).

    ``kind`` says what is held to ``target``: ``"ratio"`` (A / B of the median wall
    times), ``"difference"`` (A - B, seconds) or ``"per-test"`` (A's median, in ms:
    A's samples are then per-test times, B's those of a reference shown beside them).
    """

    name: str
    target: float | None  # None: a figure shown beside the others, held to nothing
    a: Timings
    b: Timings
    kind: str = "ratio"

    @property
    def ratio(self) -> float:
        """The target metric (see ``kind``); for ``"ratio"``, median wall times A / B."""
        if self.kind == "difference":
            return self.a.wall_median - self.b.wall_median
        if self.kind == "per-test":
            return self.a.wall_median * 1000
        return self.a.wall_median / self.b.wall_median

    @property
    def metric(self) -> str:
        return {"difference": "wall A - B (s)", "per-test": "A per test (ms)"}.get(
            self.kind, "wall ratio"
        )

    @property
    def cpu_ratio(self) -> float:
        """Ratio of the median CPU times, A / B: steadier on a busy machine."""
        return self.a.cpu_median / self.b.cpu_median if self.b.cpu_median else float("nan")

    @property
    def met(self) -> bool:
        return self.target is None or self.ratio <= self.target

    @property
    def target_text(self) -> str:
        return "no target" if self.target is None else f"<= {self.target:.2f}"

    def report(self) -> str:
        verdict = "" if self.target is None else (", met" if self.met else ", MISSED")
        return "\n".join(
            [
                f"{self.name}: {self.metric} {self.ratio:.3f} ({self.target_text}{verdict}), "
                f"CPU ratio {self.cpu_ratio:.3f}",
                self.a.line("A", self.kind == "per-test"),
                self.b.line("B", self.kind == "per-test"),
            ]
        )


def pytest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *args]


BYTECODE_CACHE = True
"""Let the timed runs use ``__pycache__`` like a normal install (pip compiles a
wheel's modules at install time). Off with ``--no-bytecode-cache``, which keeps
a ``PYTHONDONTWRITEBYTECODE`` from the caller: then every run compiles the
plugin's modules (and the test files) from source."""


def add_arguments(parser: argparse.ArgumentParser, default_rounds: int | None) -> None:
    parser.add_argument("--rounds", type=int, default=default_rounds, help="timed rounds per side")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE from the environment (default: unset it)",
    )


def apply_arguments(args: argparse.Namespace) -> None:
    global BYTECODE_CACHE
    BYTECODE_CACHE = not args.no_bytecode_cache


def _environment() -> dict[str, str]:
    """The caller's environment without settings that would change what pytest runs."""
    env = dict(os.environ)
    for name in ("PYTEST_ADDOPTS", "PYTEST_COMPOSABLE_DEVICE", "PYTEST_PLUGINS"):
        env.pop(name, None)
    if BYTECODE_CACHE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


Env = Mapping[str, str | None]
"""Changes to a run's environment: a value sets a variable, ``None`` removes it."""


def environment_with(env: Env | None) -> dict[str, str]:
    """:func:`_environment` with ``env``'s changes."""
    merged = _environment()
    for name, value in (env or {}).items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def run_once(
    command: Sequence[str],
    cwd: Path,
    expect_output: str,
    expect_code: int | None = 0,
    env: Env | None = None,
) -> tuple[float, float]:
    """Wall and CPU time of one run of ``command`` (``env``: changes to the environment);
    fails loudly unless pytest exits with ``expect_code`` (``None``: any) and prints
    ``expect_output``."""
    cpu_before = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=cwd, env=environment_with(env), capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    cpu = _children_cpu() - cpu_before
    code_ok = expect_code is None or done.returncode == expect_code
    if not code_ok or expect_output not in done.stdout:
        raise SystemExit(
            f"benchmark command failed (exit {done.returncode}): {' '.join(command)} in {cwd}\n"
            f"expected output: {expect_output!r}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return wall, cpu


T = TypeVar("T")


def interleave(once: Callable[[int], T], rounds: int) -> tuple[list[T], list[T]]:
    """``once(0)`` (side A) and ``once(1)`` (side B): one untimed warm-up run of each
    (bytecode and file system caches), then ``rounds`` rounds alternating the order
    (A B, B A, ...); the samples of each side."""
    samples: tuple[list[T], list[T]] = ([], [])
    once(0)
    once(1)
    for round_index in range(rounds):
        for side in (0, 1) if round_index % 2 == 0 else (1, 0):
            samples[side].append(once(side))
    return samples


def compare(
    name: str,
    target: float | None,
    a: Side,
    b: Side,
    rounds: int,
    expect_output: str | tuple[str, str],
    *,
    codes: tuple[int | None, int | None] = (0, 0),
    env: Env | tuple[Env | None, Env | None] | None = None,
    kind: str = "ratio",
) -> Result:
    """Time A and B interleaved (see the module docstring); each run must print that text
    (one for both sides, or A's and B's) and exit with its side's code (``None``: any).
    ``env``: changes to the environment of both sides, or of A and of B."""
    sides = (a, b)
    outputs = (expect_output, expect_output) if isinstance(expect_output, str) else expect_output
    envs = env if isinstance(env, tuple) else (env, env)

    def once(side: int) -> tuple[float, float]:
        _, command, cwd = sides[side]
        return run_once(command, cwd, outputs[side], codes[side], envs[side])

    samples = interleave(once, rounds)

    def timings(side: int) -> Timings:
        walls, cpus = zip(*samples[side], strict=True)
        return Timings(sides[side][0], walls, cpus)

    return Result(name, target, timings(0), timings(1), kind)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


# An ini file of its own keeps the generated suites independent of any
# surrounding project configuration (rootdir, addopts, testpaths).
INI = """
    [pytest]
    addopts = -p no:cacheprovider
"""

MODEL_TEST = f"""
    import pytest


    @pytest.mark.parametrize("i", range({REPEATS}))
    def test_model(i, composable_model):
        assert composable_model.training
"""

BASELINE_CONFTEST = f"""
    # The same parametrization as pytest-composable's composable_model, by hand:
    # every model on every device, each built on CPU from the CPU generator
    # seeded with 0 (the caller's generator state restored afterwards, as the
    # plugin does) and moved to the device. The cheapest faithful way to write it,
    # so the comparison does not flatter the plugin.
    import pytest
    import torch

    from pytest_composable import models

    MODELS = {dict(MODELS)!r}
    DEVICES = {list(DEVICES)!r}
    PARAMS = [(name, device) for name in MODELS for device in DEVICES]


    @pytest.fixture(params=PARAMS, ids=[f"{{name}}-{{device}}" for name, device in PARAMS])
    def composable_model(request):
        name, device = request.param
        cls = getattr(models, MODELS[name])
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(0)
        try:
            model = cls(torch.device("meta" if device == "meta" else "cpu"))
        finally:
            torch.set_rng_state(state)
        return model.to(device)
"""


def model_suite_sides(root: Path, *extra_args: str) -> tuple[Side, Side]:
    """Two suites of 1,000 ``composable_model`` items under ``root``: the plugin's and by hand.

    Returns the (label, command, directory) of each side for :func:`compare`.
    """
    ours, baseline = root / "composable", root / "by_hand"
    write(ours / "pytest.ini", INI + f"    composable_device = {' '.join(DEVICES)}\n")
    write(ours / "test_models.py", MODEL_TEST)
    write(baseline / "pytest.ini", INI)
    write(baseline / "conftest.py", BASELINE_CONFTEST)
    write(baseline / "test_models.py", MODEL_TEST)
    return (
        ("pytest-composable", pytest_command("-q", *extra_args), ours),
        (
            "by hand, -p no:composable",
            pytest_command("-q", "-p", "no:composable", *extra_args),
            baseline,
        ),
    )


@contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pytest-composable-bench-") as tmp:
        yield Path(tmp)


def main(measure: Callable[[int], Result], default_rounds: int) -> None:
    """Command line of a benchmark script: ``--rounds N``; prints the report."""
    parser = argparse.ArgumentParser(
        description=sys.modules["__main__"].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, default_rounds)
    args = parser.parse_args()
    apply_arguments(args)
    print(measure(args.rounds).report())
