"""Launched sessions (torchrun, srun, mpirun) beyond the basics of ``test_torchrun.py``:
tests without a world, ``-x``, and the SLURM and Open MPI environments."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import launch, launch_output
from tests.ports import free_port

OUTSIDE_THE_WORLD = """
import pytest
import torch
import torch.distributed as dist


def test_world_first(composable_world):
    dist.barrier()


def test_no_dist():
    assert not dist.is_initialized()


def test_stray_collective():
    dist.all_reduce(torch.ones(1))  # no group here: fails this test only


@pytest.mark.composable(devices=["cpu"])
def test_fake_world_on_rank_zero(composable_fake_world):
    assert composable_fake_world.world_size == 2


@pytest.fixture(scope="module")
def own_group():
    from torch._C._distributed_c10d import HashStore

    dist.init_process_group("gloo", store=HashStore(), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()  # which unregisters every group torch knows


def test_own_group(own_group):
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == 1  # its own world of one, not the plugin's


def test_world_between(composable_world):
    dist.barrier()


def test_own_group_kept_between_tests(own_group):
    assert dist.group.WORLD is own_group
    dist.all_reduce(torch.ones(1))


def test_after_the_own_group(own_group):
    pass


def test_world_after(composable_world):
    from torch.distributed import _functional_collectives as funcol

    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == composable_world.world_size
    # Functional collectives (DTensor's) find the mesh's group by name.
    total = funcol.all_reduce(torch.ones(1), "sum", composable_world.mesh)
    assert total.item() == composable_world.world_size
"""

ARGS = ["-p", "no:cacheprovider", "--composable-device=cpu", "-rs", "-v"]


def _torchrun(path: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return launch(path, [*command, "--nproc-per-node=2", "-m", "pytest", *ARGS, *args])


def test_tests_without_a_world_do_not_see_the_plugins_group(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_outside=OUTSIDE_THE_WORLD)
    launched = _torchrun(pytester.path)
    output = launch_output(launched)
    assert "test_outside.py::test_no_dist PASSED" in output, output
    assert "test_outside.py::test_stray_collective FAILED" in output, output
    assert "test_outside.py::test_own_group PASSED" in output, output
    assert "test_outside.py::test_fake_world_on_rank_zero[cpu] PASSED" in output, output
    assert "test_outside.py::test_world_after[cpu] PASSED" in output, output
    assert "test_outside.py::test_world_between[cpu] PASSED" in output, output
    assert "test_outside.py::test_own_group_kept_between_tests PASSED" in output, output
    # The module's own group ended in test_world_after's teardown, with its own groups.
    assert "1 failed, 8 passed in" in output, output


STOPS = """
import time

import torch.distributed as dist


def test_fails(composable_world):
    dist.barrier()
    assert composable_world.rank != 1, "rank 1 fails"


def test_plain():
    pass


def test_never_runs(composable_world):
    time.sleep(600)
"""


@pytest.mark.parametrize("stop", ["-x", "--maxfail=1"])
def test_x_stops_every_rank_together(pytester: pytest.Pytester, stop: str) -> None:
    pytester.makepyfile(test_stops=STOPS)
    start = time.monotonic()
    launched = _torchrun(pytester.path, stop, "--composable-timeout=60")
    output = launch_output(launched)
    took = time.monotonic() - start
    assert "stopping after 1 failures" in output, output
    assert "1 failed" in output, output
    assert "test_never_runs" not in output, output
    assert launched.returncode != 0
    assert took < 40, f"took {took:.0f} s: a rank waited for a timeout"


WORLD = """
import torch
import torch.distributed as dist


def test_all_reduce(composable_world):
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == 2 == composable_world.world_size


def test_fails_on_rank_one(composable_world):
    dist.barrier()
    assert composable_world.rank != 1, "rank 1 fails"
"""


def _by_hand(pytester: pytest.Pytester, variables: list[dict[str, str]]) -> list[str]:
    """Start one plain ``python -m pytest`` per entry of ``variables`` (a launcher's
    environment, set by hand), on localhost."""
    pytester.makepyfile(test_world=WORLD)
    port = str(free_port())
    launches = [
        launch(
            pytester.path,
            [sys.executable, "-m", "pytest", *ARGS],
            {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, **env},
        )
        for env in variables
    ]
    outputs = [launch_output(launched) for launched in launches]
    assert launches[0].returncode == pytest.ExitCode.TESTS_FAILED, outputs[0]
    assert launches[1].returncode == pytest.ExitCode.OK, outputs[1]
    return outputs


def _check_merged(outputs: list[str]) -> None:
    assert "1 failed, 1 passed" in outputs[0], outputs[0]
    assert "composable: call failed on rank(s) 1 of 2" in outputs[0], outputs[0]
    assert "test session starts" not in outputs[1]  # only rank 0 prints


def test_slurm_environment_joins_the_world(pytester: pytest.Pytester) -> None:
    outputs = _by_hand(
        pytester,
        [{"SLURM_PROCID": str(r), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(r)} for r in range(2)],
    )
    _check_merged(outputs)


def test_open_mpi_environment_joins_the_world(pytester: pytest.Pytester) -> None:
    outputs = _by_hand(
        pytester,
        [
            {
                "OMPI_COMM_WORLD_RANK": str(r),
                "OMPI_COMM_WORLD_SIZE": "2",
                "OMPI_COMM_WORLD_LOCAL_RANK": str(r),
                "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
            }
            for r in range(2)
        ],
    )
    _check_merged(outputs)


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun (openmpi-bin) not installed")
def test_real_mpirun(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_world=WORLD)
    command = [
        "mpirun",
        "-n",
        "2",
        "--oversubscribe",
        "--allow-run-as-root",
        "-x",
        "MASTER_ADDR=127.0.0.1",
        "-x",
        f"MASTER_PORT={free_port()}",
        "-x",
        "PATH",
        "-x",
        "PYTHONPATH",
        sys.executable,
        "-m",
        "pytest",
        *ARGS,
    ]
    launched = launch(
        pytester.path,
        command,
        {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"},
    )
    output = launch_output(launched)
    assert "1 failed, 1 passed" in output, output
    assert "composable: call failed on rank(s) 1 of 2" in output, output
    assert output.count("test session starts") == 1, output
    assert launched.returncode != 0
