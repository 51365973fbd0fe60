"""Under ``torchrun`` (and ``srun``/``mpirun``: the same code path), a rank that fails a
world test while the others wait in a collective for it ends the test at once: its
error is the headline, the others show where they were waiting, and the next world
test gets a working world.

Every session here runs with ``--composable-timeout=120`` (the default), so a test
that waited for its process group's timeout (108 s) could not pass: the failing rank
writes the time it failed, and a conftest on rank 0 writes the time the merged failed
report arrived; the target between the two is 10 s.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.helpers import launch, launch_output
from tests.ports import free_port

BOUND = 10.0  # seconds from a rank's failure to its test's failed report

CONFTEST = """
import json
import os
import time
from pathlib import Path


def pytest_runtest_logreport(report):
    if report.failed:
        name = report.nodeid.split("::")[-1].partition("[")[0]
        Path(os.environ["TIMES"], f"{name}.reported").write_text(json.dumps(time.time()))
"""

RAISES = """
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist


def _fail(name, message):
    Path(os.environ["TIMES"], f"{name}.failed").write_text(json.dumps(time.time()))
    raise ValueError(message)


def _waits():
    dist.all_reduce(torch.ones(1))


def test_rank1_raises(composable_world):
    if composable_world.rank == 1:
        _fail("test_rank1_raises", "boom on rank 1")
    dist.all_reduce(torch.ones(1))


def test_after_rank1(composable_world):
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == 2


def test_plain():
    pass


def test_rank0_raises(composable_world):
    if composable_world.rank == 0:
        _fail("test_rank0_raises", "boom on rank 0")
    _waits()


def test_after_rank0(composable_world):
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == 2
"""

ARGS = [
    "-p",
    "no:cacheprovider",
    "--composable-device=cpu",
    "--composable-timeout=120",
    "-rA",
    "-v",
]


def _launch(
    path: Path, command: list[str], env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    # Whole short-summary lines; TIMES: where the tests write when they failed.
    return launch(path, command, {"COLUMNS": "300", "TIMES": str(path), **(env or {})})


def _output(launched: subprocess.Popen[str]) -> str:
    return launch_output(launched, 200)


def _torchrun(path: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return _launch(path, [*command, "--nproc-per-node=2", "-m", "pytest", *ARGS, *args])


def _took(path: Path, name: str) -> float:
    failed = json.loads((path / f"{name}.failed").read_text())
    reported = json.loads((path / f"{name}.reported").read_text())
    return float(reported - failed)


def _check_rank1_raises(path: Path, output: str) -> None:
    assert (
        "FAILED test_faults.py::test_rank1_raises[cpu] - ValueError: boom on rank 1 (rank 1 of 2)\n"
        in output
    ), output
    assert re.search(
        r"rank 0 was waiting in test_rank1_raises \(test_faults.py:\d+\) when rank 1 failed",
        output,
    ), output
    took = _took(path, "test_rank1_raises")
    assert took < BOUND, f"{took:.1f} s from rank 1's failure to the report"


def test_a_failing_rank_ends_the_others_wait(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_faults=RAISES)
    launch = _torchrun(pytester.path)
    output = _output(launch)
    _check_rank1_raises(pytester.path, output)
    assert (
        "FAILED test_faults.py::test_rank0_raises[cpu] - ValueError: boom on rank 0 (rank 0 of 2)\n"
        in output
    ), output
    # Rank 1 waited in a helper the test called: the innermost frame of the user's, with
    # the stack from the test down (no pytest, pluggy or torch frames).
    assert re.search(r"rank 1 was waiting in _waits \(test_faults.py:\d+\) when rank 0", output)
    assert 'File "test_faults.py", line' in output, output
    assert "_pytest" not in output.partition("rank 1 was waiting")[2].partition("RuntimeError")[0]
    took = _took(pytester.path, "test_rank0_raises")
    assert took < BOUND, f"{took:.1f} s from rank 0's failure to the report"
    # The world was made again: the next world tests pass, so do tests without a world.
    for name in ("test_after_rank1[cpu]", "test_plain", "test_after_rank0[cpu]"):
        assert f"test_faults.py::{name} PASSED" in output, output
    assert "2 failed, 3 passed" in output, output
    assert output.count("test session starts") == 1, output
    assert launch.returncode != 0


REFUSES = """
from pytest_composable.distributed import _launched_world


def _refuse(self):
    return "refused by the test's conftest"


_launched_world.LaunchedWorld.remake = _refuse
"""


def test_a_world_that_cannot_be_made_again_fails_later_world_tests_at_once(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(CONFTEST + REFUSES)
    pytester.makepyfile(test_faults=RAISES)
    start = time.monotonic()
    launch = _torchrun(pytester.path)
    output = _output(launch)
    took = time.monotonic() - start
    _check_rank1_raises(pytester.path, output)
    broken = (
        "composable: the launched world is broken since "
        "test_faults.py::test_rank1_raises[cpu], which failed with: ValueError: boom on "
        "rank 1 (rank 1 of 2); its process group could not be made again: refused by the "
        "test's conftest"
    )
    for name in ("test_after_rank1[cpu]", "test_rank0_raises[cpu]", "test_after_rank0[cpu]"):
        assert f"ERROR test_faults.py::{name} - {broken}\n" in output, output
    assert "test_faults.py::test_plain PASSED" in output, output  # rank 0's own tests run on
    assert "Connection closed" not in output.partition("short test summary info")[2], output
    assert launch.returncode != 0
    assert took < 90, f"took {took:.0f} s: a rank waited for a timeout"


FULLY_SHARD = """
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard


def test_fully_shard(composable_world):
    model = nn.Linear(4, 4)
    fully_shard(model, mesh=composable_world.mesh)
    # torch 2.6 shards on CPU, but its forward needs stream events CPU streams lack there.
    if all(hasattr(torch.cpu.Stream, name) for name in ("record_event", "wait_event")):
        model(torch.ones(2, 4)).sum().backward()
"""


def test_no_torch_warning_at_exit_after_fully_shard(pytester: pytest.Pytester) -> None:
    """torch's ``No backend of type 0 found for Process Group`` warning, printed at exit by
    every rank when the default group was made with a device spec (``cpu:gloo``) while
    another backend was registered (``fully_shard``'s import registers one)."""
    pytester.makepyfile(test_fsdp=FULLY_SHARD)
    launch = _torchrun(pytester.path)
    output = _output(launch)
    assert "1 passed" in output, output
    assert "No backend of type" not in output, output
    assert "ProcessGroup.hpp" not in output, output
    assert launch.returncode == 0, output


def test_srun_environment_ends_the_wait_too(pytester: pytest.Pytester) -> None:
    """SLURM's variables by hand: rank 0 serves the store (no torchrun agent)."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_faults=RAISES)
    port = str(free_port())
    launches = [
        _launch(
            pytester.path,
            [sys.executable, "-m", "pytest", *ARGS],
            {
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "SLURM_PROCID": str(rank),
                "SLURM_NTASKS": "2",
                "SLURM_LOCALID": str(rank),
            },
        )
        for rank in range(2)
    ]
    outputs = [_output(launch) for launch in launches]
    _check_rank1_raises(pytester.path, outputs[0])
    assert "2 failed, 3 passed" in outputs[0], outputs[0]
    assert launches[0].returncode == pytest.ExitCode.TESTS_FAILED, outputs[0]
    assert launches[1].returncode == pytest.ExitCode.OK, outputs[1]


AFTER_A_REMAKE = """
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import distribute_tensor, Shard

pytestmark = pytest.mark.composable(devices=["cpu"])


def _gathered(world):
    # A DTensor op and a redistribution: torch caches both with the mesh they ran on.
    tensor = distribute_tensor(torch.arange(4.0), world.mesh, [Shard(0)])
    return (tensor * 2).full_tensor()


def test_before(composable_world):
    assert _gathered(composable_world).tolist() == [0.0, 2.0, 4.0, 6.0]


@pytest.fixture
def fails_on_rank1(composable_world):
    if composable_world.rank == 1:
        raise RuntimeError("setup fails on rank 1")


def test_setup_fails_on_rank1(composable_world, fails_on_rank1):
    dist.all_reduce(torch.ones(1))


def test_after(composable_world, composable_shared_tmp_path):
    assert _gathered(composable_world).tolist() == [0.0, 2.0, 4.0, 6.0]
    (composable_shared_tmp_path / str(composable_world.rank)).touch()
    dist.barrier()
    assert sorted(p.name for p in composable_shared_tmp_path.iterdir()) == ["0", "1"]
"""


def test_dtensors_and_fixtures_after_a_failed_setup(pytester: pytest.Pytester) -> None:
    """A fixture whose setup fails on one rank while the other waits: the wait is ended,
    the failed fixture's teardown raises nothing of the plugin's, and the next test's
    DTensors work on the world made again (torch's DTensor caches held the old mesh, whose
    groups were gone). ``composable_shared_tmp_path`` needs no numpy (``make
    runtime-check`` runs this in a venv without it)."""
    pytester.makepyfile(test_remake=AFTER_A_REMAKE)
    output = _output(_torchrun(pytester.path))
    assert re.search(r"1 failed, 2 passed, (\d+ warnings?, )?1 error", output), output
    assert "ERROR test_remake.py::test_setup_fails_on_rank1[cpu] - RuntimeError: setup" in output
    assert "IndexError" not in output, output
    assert "Could not resolve the process group" not in output, output
