"""Warm rank start: ranks forked from the template, the fallback to cold, restarts."""

from __future__ import annotations

import pytest

from tests.helpers import output_of, verbose_outcomes

pytestmark = pytest.mark.start_mode

# The main process's pid reaches the ranks through the environment they inherit.
CONFTEST = """
import os
from pathlib import Path


def pytest_configure(config):
    os.environ.setdefault("MAIN_PID", str(os.getpid()))


def parent_of(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
"""

PARENTS = """
import os

import pytest
import torch.distributed as dist

from conftest import parent_of

pytestmark = pytest.mark.composable(devices=["cpu"])
MAIN = int(os.environ["MAIN_PID"])


def test_parent(composable_world):
    dist.barrier()
    # Every rank runs under a supervisor of its own (started by the main process, or
    # forked by the template), in the supervisor's process group.
    supervisor = os.getppid()
    assert os.getpgrp() == supervisor
    if os.environ["EXPECT"] == "warm":
        # Forked by the template, itself forked by the main process.
        assert parent_of(supervisor) != MAIN and parent_of(parent_of(supervisor)) == MAIN
    else:
        assert parent_of(supervisor) == MAIN
"""


@pytest.mark.parametrize("mode", ["warm", "cold"])
def test_the_option_chooses_how_ranks_start(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_parents=PARENTS)
    monkeypatch.setenv("EXPECT", mode)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--composable-start={mode}")
    result.assert_outcomes(passed=1)
    assert "ranks started cold" not in output_of(result)


def test_warm_is_the_default(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_parents=PARENTS)
    monkeypatch.setenv("EXPECT", "warm")
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.delenv("PYTEST_COMPOSABLE_START", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


THREAD = """
import threading
import time

threading.Thread(target=time.sleep, args=(600,), name="sleeper", daemon=True).start()
"""


def test_unsafe_to_fork_falls_back_cold_and_says_why(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(CONFTEST + THREAD)
    pytester.makepyfile(test_parents=PARENTS)
    monkeypatch.setenv("EXPECT", "cold")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--composable-start=warm")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["composable: ranks started cold: the main process runs other Python threads (sleeper)"]
    )
    assert output_of(result).count("ranks started cold") == 1


OPENMP = """
import torch

torch.randn(4_000_000).sum()  # a parallel operation: an OpenMP pool now runs
"""


def test_an_openmp_pool_in_the_main_process_falls_back_cold(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_parents=PARENTS, test_openmp=OPENMP)
    monkeypatch.setenv("EXPECT", "cold")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--composable-start=warm")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["composable: ranks started cold: *native thread(s)*OpenMP*"])


RESTART = """
import os

import pytest
import torch
import torch.distributed as dist

from conftest import parent_of

pytestmark = pytest.mark.composable(devices=["cpu"])
MAIN = int(os.environ["MAIN_PID"])


def test_crash(composable_world):
    if composable_world.rank == 1:
        os._exit(7)
    dist.barrier()


def test_hang(composable_world):
    if composable_world.rank == 0:
        import time

        time.sleep(600)
    dist.barrier()


@pytest.mark.parametrize("i", range(2))
def test_after(composable_world, i):
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == 2
    template = parent_of(os.getppid())  # the rank's parent is its supervisor
    assert template != MAIN and parent_of(template) == MAIN
"""


def test_a_pool_restarted_after_a_crash_or_a_hang_starts_warm(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_restart=RESTART)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    result = pytester.runpytest_subprocess(
        "-v", "-p", "no:cacheprovider", "--composable-start=warm", "--composable-timeout=4"
    )
    assert verbose_outcomes(result) == {
        "test_restart.py::test_crash[cpu]": "FAILED",
        "test_restart.py::test_hang[cpu]": "FAILED",
        "test_restart.py::test_after[cpu-0]": "PASSED",
        "test_restart.py::test_after[cpu-1]": "PASSED",
    }, output_of(result)
    result.stdout.fnmatch_lines(["composable: rank 1 exited with status 7*"])
    result.stdout.fnmatch_lines(["composable: timed out after 4 s; rank(s) 0 did not finish*"])


def test_a_workers_fallback_reaches_the_controllers_report(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pytest-xdist worker's own summary is not shown: its reason comes through the
    controller, once for all the workers it applies to."""
    pytest.importorskip("xdist")
    pytester.makeconftest(THREAD)
    pytester.makepyfile(
        test_barrier="""
        import pytest
        import torch.distributed as dist

        @pytest.mark.composable(devices=["cpu"])
        def test_barrier(composable_world):
            dist.barrier()
        """
    )
    monkeypatch.delenv("PYTEST_COMPOSABLE_START", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "xdist", "-n", "1")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["composable: ranks started cold on gw0: the main process runs other Python threads*"]
    )
    assert output_of(result).count("ranks started cold") == 1
