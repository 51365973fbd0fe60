"""Rank pools: closed after their last test, teardown errors reported, the main session's
files left to the main session."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import pytest

from tests.helpers import output_of, verbose_outcomes

SIZES = """
import os
from pathlib import Path

import pytest
import torch.distributed as dist


def _ranks_of_the_main_process():
    # The ranks' parent: the main process (cold start) or its template (warm start), whose
    # command line is the main process's (pytester's is ``python -mpytest ...``).
    main = os.getppid()
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\\0")
        except OSError:
            continue
        if int(fields[1]) == main and any(arg.endswith(b"pytest") for arg in cmdline):
            count += 1
    return count


@pytest.mark.composable(devices=["cpu"], world_size=[1, 2, 3])
def test_live_ranks(composable_world):
    dist.barrier()
    assert _ranks_of_the_main_process() == composable_world.world_size
"""


def test_a_pool_closes_after_its_last_test(pytester: pytest.Pytester) -> None:
    """Sizes 1, 2, 3 in one session: when size 3 runs, only its 3 ranks are alive (not 6)."""
    pytester.makepyfile(test_sizes=SIZES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


MODULE_FIXTURE = """
import os

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])


@pytest.fixture(scope="module")
def resource():
    yield
    print(f"module teardown on rank {os.environ['RANK']}")
    if os.environ["RANK"] == "1":
        raise RuntimeError("module teardown failed on rank 1")


def test_one(composable_world, resource):
    dist.barrier()


def test_two(composable_world, resource):
    dist.barrier()


def test_plain_between():
    pass


def test_three(composable_world):
    dist.barrier()
"""


def test_module_fixture_teardown_errors_on_a_rank_are_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_module=MODULE_FIXTURE)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    outcomes = verbose_outcomes(result)
    # The module fixture ends with the last test that uses it on the ranks, and its
    # error is that test's teardown error.
    assert outcomes["test_module.py::test_two[cpu]"] == "PASSED", output_of(result)
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_three[[]cpu[]]*",
            "composable: teardown failed on rank(s) 1 of 2*",
            "*RuntimeError: module teardown failed on rank 1",
        ]
    )


def test_module_fixture_errors_are_reported_under_xdist(pytester: pytest.Pytester) -> None:
    """Each xdist worker tears its ranks' fixtures down after its own last test, and reports
    what failed there."""
    pytester.makepyfile(test_module=MODULE_FIXTURE)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 4, output_of(result)
    assert outcomes.get("error", outcomes.get("errors", 0)) >= 1, output_of(result)
    assert "RuntimeError: module teardown failed on rank 1" in output_of(result)


SESSION_FIXTURE = """
import pytest
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])


@pytest.fixture(scope="session")
def broken_at_end():
    yield
    raise RuntimeError("session teardown failed on the rank")


@pytest.mark.composable(world_size=2)
def test_first(composable_world, broken_at_end):
    dist.barrier()


def test_plain_fails():
    assert False


@pytest.mark.composable(world_size=2)
def test_never_reached(composable_world):
    dist.barrier()


@pytest.mark.composable(world_size=1)
def test_last(composable_world):
    dist.barrier()
"""

PROBLEMS = "*composable: errors on the ranks after their last test*"


def test_errors_when_a_pool_closes_at_the_end_are_reported(pytester: pytest.Pytester) -> None:
    """-x stops the session before the pool's last test: the pool closes at the session's
    end, and what its ranks' session fixtures raised then is in the report."""
    pytester.makepyfile(test_session=SESSION_FIXTURE)
    result = pytester.runpytest_subprocess("-x", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [PROBLEMS, "composable: rank * tearing down fixtures failed*", "*RuntimeError: session*"]
    )


def test_errors_when_a_workers_pool_closes_at_the_end_fail_the_session(
    pytester: pytest.Pytester,
) -> None:
    """Under pytest-xdist a pool that is idle at the worker's last test closes at the
    worker's end, whose report nobody sees: its errors reach the controller, which shows
    them and fails, instead of a green run."""
    pytest.importorskip("xdist")
    pytester.makepyfile(test_session=SESSION_FIXTURE)
    result = pytester.runpytest_subprocess(
        "-p", "xdist", "-n", "1", "-p", "no:cacheprovider", "-k", "first or last"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            PROBLEMS,
            "[[]gw0[]] composable: rank * tearing down fixtures failed*",
            "*RuntimeError: session*",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


FILES = """
import logging

import pytest
import torch.distributed as dist


def test_plain(tmp_path_factory):
    logging.getLogger("main").warning("record of the main process")
    (tmp_path_factory.getbasetemp() / "main-file").write_text("main")


@pytest.mark.composable(devices=["cpu"])
def test_world(composable_world, tmp_path):
    logging.getLogger("rank").warning("record of rank %d", composable_world.rank)
    (tmp_path / "rank-file").write_text("rank")
    dist.barrier()


def test_plain_after(tmp_path_factory):
    assert (tmp_path_factory.getbasetemp() / "main-file").read_text() == "main"
"""


def test_ranks_never_write_the_main_session_files(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_files=FILES)
    basetemp = pytester.path / "basetemp"
    coverage = pytester.path / "main.coverage"
    monkeypatch.setenv("COVERAGE_FILE", str(coverage))
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--basetemp={basetemp}",
        "--log-file=main.log",
        "--junitxml=main.xml",
        "--debug=debug.log",
        "--cov=test_files",
        "--cov-report=",
    )
    result.assert_outcomes(passed=3)
    log = (pytester.path / "main.log").read_text()
    assert "record of the main process" in log
    assert "record of rank" not in log
    cases = ET.parse(pytester.path / "main.xml").getroot().iter("testcase")
    assert sorted(case.get("name") for case in cases) == [
        "test_plain",
        "test_plain_after",
        "test_world[cpu]",
    ]
    debug = (pytester.path / "debug.log").read_text()
    assert "pytest_sessionfinish" in debug
    assert "PYTEST_COMPOSABLE_RANK_WORKER" not in debug
    assert coverage.is_file()
    assert not list(pytester.path.glob("main.coverage.*"))
    assert os.listdir(basetemp)  # the main session's, kept (a rank would have wiped it)


BACKENDS = """
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])


@pytest.mark.composable(backend="gloo")
def test_gloo(composable_world):
    assert composable_world.backend == "gloo" == dist.get_backend()


@pytest.mark.composable(backend="nosuch")
def test_unknown_backend(composable_world):
    pass


def test_default(composable_world):
    assert composable_world.backend == "gloo"
"""


def test_backend_from_the_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_backends=BACKENDS)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    assert verbose_outcomes(result) == {
        "test_backends.py::test_gloo[cpu]": "PASSED",
        "test_backends.py::test_unknown_backend[cpu]": "ERROR",
        "test_backends.py::test_default[cpu]": "PASSED",
    }, output_of(result)
    result.stdout.fnmatch_lines(["*could not start 2 ranks on cpu: rank * failed to join*"])
    assert "nosuch" in output_of(result)
