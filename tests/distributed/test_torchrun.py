"""``torchrun ... -m pytest``: one session per rank, one merged report printed by rank 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ports import free_port

TESTS = """
import pytest
import torch
import torch.distributed as dist


def test_all_reduce(composable_world):
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == composable_world.world_size == dist.get_world_size()


def test_fails_on_last_rank(composable_world):
    dist.barrier()
    assert composable_world.rank != composable_world.world_size - 1, "the last rank fails"


@pytest.mark.composable(world_size=4)
def test_needs_four(composable_world):
    pass


def test_plain():
    pass
"""

DEVICE_ARGS = ["-p", "no:cacheprovider", "--composable-device=cpu", "-rs"]


def _torchrun(path: Path, *launch: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "pytest", *DEVICE_ARGS],
        cwd=path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so a stuck launch can be killed with its workers
    )


def _output(launch: subprocess.Popen[str]) -> str:
    """The launch's output; a launch still running after 120 s is killed, never left behind."""
    try:
        return launch.communicate(timeout=120)[0]
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.communicate()


def _check(output: str, world_size: int) -> None:
    assert output.count("test session starts") == 1, output  # only rank 0 prints
    assert "1 failed, 2 passed, 1 skipped" in output, output
    assert f"composable: call failed on rank(s) {world_size - 1} of {world_size}" in output
    assert "AssertionError: the last rank fails" in output
    assert f"composable: needs world size 4; torchrun launched {world_size} ranks" in output


def test_two_processes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_world=TESTS)
    launch = _torchrun(pytester.path, "--standalone", "--nproc-per-node=2")
    output = _output(launch)
    _check(output, 2)
    assert launch.returncode != 0


def test_two_nodes_on_localhost(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_world=TESTS)
    port = free_port()
    nodes = [
        _torchrun(
            pytester.path,
            "--nnodes=2",
            f"--node-rank={node}",
            "--nproc-per-node=1",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
        )
        for node in range(2)
    ]
    outputs = [_output(node) for node in nodes]
    _check(outputs[0], 2)
    assert "test session starts" not in outputs[1]
    assert nodes[0].returncode != 0


def test_all_passing_exits_zero(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import torch.distributed as dist

        def test_x(composable_world):
            dist.barrier()
        """
    )
    launch = _torchrun(pytester.path, "--standalone", "--nproc-per-node=2")
    output = _output(launch)
    assert "1 passed" in output, output
    assert launch.returncode == 0, output
