"""Distributed tests: pytest-composable's kept ranks vs PyTorch's unittest harnesses.

Measured side by side in one run, on the same 20 test bodies (``fully_shard``
on ``CompositeModel``, then forward and backward; world size 2, gloo, CPU):

* ``plugin``: ``composable_world`` under plain ``pytest`` (ranks started once);
* ``MultiProcessTestCase``: fresh processes for every test;
* ``MultiProcContinuousTest``: processes kept per class.

Each is one ``python -m pytest`` session, timed from start to exit. Then the
plugin's per-test overhead: in a session of 101 trivial tests (one barrier
each), the time from the first test's end to the last's, over 100.

The PyTorch harnesses need ``expecttest`` (``pip install expecttest``).

    python benchmarks/bench_distributed.py [--tests 20] [--trivial 100]

Targets: plugin total at least 10x below ``MultiProcessTestCase`` and below
``MultiProcContinuousTest``; overhead per trivial test at most 20 ms.
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
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=20)
    parser.add_argument("--trivial", type=int, default=100)
    args = parser.parse_args()
    n = args.tests
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    sources = {
        "plugin": PLUGIN.format(n=n, body=textwrap.indent(BODY.strip(), " " * 4)),
        "MultiProcessTestCase": MULTI_PROCESS.format(
            body=textwrap.indent(BODY.strip(), " " * 12), tests=_tests(n)
        ),
        "MultiProcContinuousTest": CONTINUOUS.format(
            body=textwrap.indent(BODY.strip(), " " * 8), tests=_tests(n)
        ),
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
        many = _write(trivial, "test_many.py", TRIVIAL.format(n=args.trivial + 1))
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
