"""Distributed tests: pytest-composable's kept ranks vs PyTorch's unittest harnesses.

On the same 20 test bodies (``fully_shard`` on ``CompositeModel``, then forward
and backward; world size 2, gloo, CPU), each side one ``python -m pytest``
session timed from start to exit:

* ``plugin``: ``composable_world`` under plain ``pytest`` (ranks started once, warm);
* ``MultiProcessTestCase``: fresh processes for every test;
* ``MultiProcContinuousTest``: processes kept per class.

First, interleaved rounds (``_harness.compare``), medians, against
``MultiProcContinuousTest``:

* as each runs out of the box, ``OMP_NUM_THREADS`` unset on both sides (the
  plugin gives each rank ``max(1, cores // ranks)`` intra-op threads, torch's
  ranks take its default): target <= 0.45;
* the harness at its best on a small machine, ``OMP_NUM_THREADS=1`` on its side
  only: shown, no target.

Then, unless ``--no-multi-process``, one session each of the plugin and
``MultiProcessTestCase`` (``OMP_NUM_THREADS=1`` on both; target >= 10x) and the
plugin's per-test overhead: in a session of 101 trivial tests (one barrier each),
the time from the first test's end to the last's, over 100 (target <= 20 ms).

The PyTorch harnesses need ``expecttest`` (``pip install expecttest``).

    python benchmarks/bench_distributed.py [--rounds 5] [--tests 20] [--trivial 100]
        [--no-multi-process]

Exit status 1 if the interleaved target is missed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _harness import Result, add_arguments, apply_arguments, compare, pytest_command, scratch_dir

DEFAULT_ROUNDS = 5
TARGET = 0.45
"""The plugin's 20 sessions' time over ``MultiProcContinuousTest``'s, out of the box."""
UNSET_THREADS: dict[str, str | None] = {"OMP_NUM_THREADS": None}
ONE_THREAD: dict[str, str | None] = {"OMP_NUM_THREADS": "1"}

BODY = """
torch.manual_seed(0)
model = CompositeModel("cpu")
fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
model(torch.randn(4, 100)).sum().backward()
"""

PLUGIN = """
import pytest
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from pytest_composable.models import CompositeModel

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)


@pytest.mark.parametrize("i", range({n}))
def test_body(composable_world, i):
{body}
"""

MULTI_PROCESS = """
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.testing._internal.common_distributed import MultiProcessTestCase

from pytest_composable.models import CompositeModel


class Bench(MultiProcessTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def body(self):
        dist.init_process_group(
            "gloo", init_method=f"file://{{self.file_name}}", rank=self.rank, world_size=2
        )
        try:
{body}
        finally:
            dist.destroy_process_group()

{tests}
"""

CONTINUOUS = """
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.testing._internal.common_distributed import MultiProcContinuousTest

from pytest_composable.models import CompositeModel


class Bench(MultiProcContinuousTest):
    world_size = 2

    @classmethod
    def backend_str(cls):
        return "gloo"

    @classmethod
    def device_type(cls):
        return "cpu"

    def body(self):
{body}

{tests}
"""

# Records, in the main process, when each trivial test finished.
TIMER = """
import time

STAMPS = []


def pytest_runtest_logfinish(nodeid, location):
    STAMPS.append(time.perf_counter())


def pytest_sessionfinish(session):
    if not STAMPS:  # the ranks load this conftest too
        return
    with open("stamps.txt", "w") as f:
        f.write(" ".join(map(str, STAMPS)))
"""

TRIVIAL = """
import pytest
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)


@pytest.mark.parametrize("i", range({n}))
def test_barrier(composable_world, i):
    dist.barrier()
"""


def plugin_source(n: int) -> str:
    return PLUGIN.format(n=n, body=textwrap.indent(BODY.strip(), " " * 4))


def continuous_source(n: int) -> str:
    return CONTINUOUS.format(body=textwrap.indent(BODY.strip(), " " * 8), tests=_tests(n))


def measure(rounds: int, n: int = 20) -> list[Result]:
    """The plugin's ``n`` ``fully_shard`` tests against ``MultiProcContinuousTest``'s,
    interleaved rounds: out of the box (target :data:`TARGET`), then with the harness on
    one thread per rank (no target)."""
    with scratch_dir() as root:
        plugin, continuous = root / "plugin", root / "continuous"
        _write_dir(plugin, "test_plugin.py", plugin_source(n))
        _write_dir(continuous, "test_continuous.py", continuous_source(n))
        a = ("plugin", pytest_command("-q", "-p", "no:cacheprovider"), plugin)
        b = (
            "MultiProcContinuousTest",
            pytest_command("-q", "-p", "no:cacheprovider", "-p", "no:composable"),
            continuous,
        )

        def against(name: str, target: float | None, threads: dict[str, str | None]) -> Result:
            return compare(
                f"{n} fully_shard tests vs MultiProcContinuousTest, {name}",
                target,
                a,
                b,
                rounds,
                f"{n} passed",
                # The PyTorch harness sometimes fails at process exit after its tests passed.
                codes=(0, None),
                env=(UNSET_THREADS, threads),
            )

        return [
            against("OMP_NUM_THREADS unset", TARGET, UNSET_THREADS),
            against("OMP_NUM_THREADS=1 on its side", None, ONE_THREAD),
        ]


def _write_dir(directory: Path, name: str, text: str) -> None:
    directory.mkdir(parents=True)
    _write(directory, name, text)


def _tests(n: int) -> str:
    return "\n".join(f"    def test_body_{i}(self):\n        self.body()\n" for i in range(n))


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text.lstrip())
    return path


def _time(command: list[str], cwd: Path, *, must_pass: bool = True) -> tuple[float, str]:
    """Wall time of one session and its summary line; a baseline's own failures (the
    PyTorch harnesses are flaky at process exit) are reported, not fatal."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    if done.returncode != 0 and (must_pass or " passed" not in summary):
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return took, summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, DEFAULT_ROUNDS)
    parser.add_argument("--tests", type=int, default=20)
    parser.add_argument("--trivial", type=int, default=100)
    parser.add_argument(
        "--no-multi-process",
        action="store_true",
        help="only the interleaved rounds against MultiProcContinuousTest",
    )
    args = parser.parse_args()
    apply_arguments(args)
    results = measure(args.rounds, args.tests)
    for result in results:
        print(result.report(), flush=True)
    if not args.no_multi_process:
        print()
        multi_process(args.tests, args.trivial)
    sys.exit(0 if all(r.met for r in results) else 1)


def multi_process(n: int, trivial_tests: int) -> None:
    """One session each: the plugin, ``MultiProcessTestCase`` and ``MultiProcContinuousTest``
    (``OMP_NUM_THREADS=1``), and the plugin's per-test time with a trivial body."""
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    sources = {
        "plugin": plugin_source(n),
        "MultiProcessTestCase": MULTI_PROCESS.format(
            body=textwrap.indent(BODY.strip(), " " * 12), tests=_tests(n)
        ),
        "MultiProcContinuousTest": continuous_source(n),
    }
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        root = Path(tmp)
        for name, source in sources.items():
            directory = root / name  # one directory each: a session collects only its file
            directory.mkdir()
            path = _write(directory, f"test_{name.lower()}.py", source)
            command = [*pytest_cmd, path.name]
            if name != "plugin":
                command += ["-p", "no:composable"]
            results[name], summary = _time(command, directory, must_pass=name == "plugin")
            print(f"{name:>24}: {results[name]:7.2f} s for {n} tests ({summary})", flush=True)
        trivial = root / "trivial"
        trivial.mkdir()
        _write(trivial, "conftest.py", TIMER)
        many = _write(trivial, "test_many.py", TRIVIAL.format(n=trivial_tests + 1))
        session, _ = _time([*pytest_cmd, many.name], trivial)
        stamps = [float(x) for x in (trivial / "stamps.txt").read_text().split()]
    plugin = results["plugin"]
    overhead_ms = (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1000
    print()
    for name in ("MultiProcessTestCase", "MultiProcContinuousTest"):
        print(f"{name} / plugin: {results[name] / plugin:6.1f}x")
    print(
        f"plugin per-test time, trivial body (one barrier): {overhead_ms:.1f} ms "
        f"(steady state over {len(stamps) - 1} tests; whole session {session:.2f} s)"
    )


if __name__ == "__main__":
    main()
