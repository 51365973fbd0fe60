"""A kept 2x2 mesh against a 1-D world of 4: the time per test after the first.

Two sessions of 41 world tests on 4 gloo ranks (CPU), each test one
``all_reduce`` over the whole world: in A the tests ask for
``mesh={"dp_replicate": 2, "dp_shard": 2}`` (the ranks build its sub-groups on
the first test and keep them), in B for ``world_size=4`` (the plain 1-D mesh).
Measured from the first test's end to the last's, over 40: the mesh's sub-groups
are built in the first test, and every later test must cost no more than a 1-D
world test of the same size. The target, 1.05, allows for this machine's noise
between interleaved runs (about 3 %); a mesh rebuilt per test costs several times more.

    python benchmarks/bench_mesh.py [--rounds N]
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from _harness import Result, Timings, _environment, interleave, main, pytest_command, scratch_dir
from _harness import write as write_file
from bench_warm import STAMPS

TARGET = 1.05
DEFAULT_ROUNDS = 5
TESTS = 41

SUITE = """
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"], {marker})


@pytest.mark.parametrize("i", range({n}))
def test_all_reduce(composable_world, i):
    assert composable_world.world_size == 4
    dist.all_reduce(torch.ones(1))
"""


def _side(root: Path, name: str, marker: str) -> tuple[str, list[str], Path]:
    directory = root / name
    write_file(directory / "conftest.py", STAMPS)
    write_file(directory / "test_many.py", SUITE.format(marker=marker, n=TESTS))
    return name, pytest_command("-q", "-p", "no:cacheprovider"), directory


def measure(rounds: int) -> Result:
    with scratch_dir() as root:
        sides = (
            _side(root, "mesh_2x2", 'mesh={"dp_replicate": 2, "dp_shard": 2}'),
            _side(root, "world_of_4", "world_size=4"),
        )

        def once(side: int) -> float:
            _, command, cwd = sides[side]
            done = subprocess.run(
                command, cwd=cwd, env=_environment(), capture_output=True, text=True
            )
            if done.returncode != 0 or f"{TESTS} passed" not in done.stdout:
                raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}")
            stamps = [float(x) for x in (cwd / "stamps.txt").read_text().split()]
            return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

        samples = interleave(once, rounds)

        def timings(side: int) -> Timings:
            zeros = tuple(0.0 for _ in samples[side])
            return Timings(sides[side][0], tuple(samples[side]), zeros)

        return Result(
            "per test after the first: 2x2 mesh vs 1-D world of 4", TARGET, timings(0), timings(1)
        )


if __name__ == "__main__":
    main(measure, DEFAULT_ROUNDS)
