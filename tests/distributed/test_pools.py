"""Rank pools: one at a time, closed after their last test (or before another pool's
test), started again after a failed start, teardown errors reported, the main session's
files left to the main session."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import assert_gone, assert_no_pool_directory, output_of, verbose_outcomes

# Each rank process notes its pid as it starts (a conftest outside a package is imported
# by every rank, warm or cold), so a test can count the ranks alive at that moment.
RANK_PIDS = """
import os
from pathlib import Path

if "PYTEST_COMPOSABLE_RANK_WORKER" in os.environ:
    Path(os.environ["PIDS"], str(os.getpid())).touch()
"""

SIZES = """
import os
import tempfile
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=[2, 3, 4])


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _check(world):
    dist.barrier()
    ranks = sorted(int(p.name) for p in Path(os.environ["PIDS"]).iterdir() if _alive(p.name))
    assert len(ranks) == world.world_size, ranks
    pools = list(Path(tempfile.gettempdir()).glob("composable-ranks-*"))
    assert len(pools) == 1, pools


def test_first(composable_world):
    _check(composable_world)


def test_second(composable_world):
    _check(composable_world)
"""


def test_one_pool_at_a_time(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """World sizes 2, 3, 4, 2, 3, 4: each pool closes before the next size's starts (and
    starts again when needed), so only one pool's ranks and directory exist at a time."""
    pids = tmp_path / "pids"
    pids.mkdir()
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("PIDS", str(pids))
    monkeypatch.setenv("TMPDIR", str(temp))
    pytester.makeconftest(RANK_PIDS)
    pytester.makepyfile(test_sizes=SIZES)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    assert list(verbose_outcomes(result)) == [
        f"test_sizes.py::{test}[cpu-ws{size}]"
        for test in ("test_first", "test_second")
        for size in (2, 3, 4)
    ], output_of(result)
    result.assert_outcomes(passed=6)
    assert len(list(pids.iterdir())) == 2 * (2 + 3 + 4)  # every pool started twice
    assert_gone([int(p.name) for p in pids.iterdir()], within=0)
    assert_no_pool_directory(temp, within=0)


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


def test_plain_passes():
    pass
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
    """Under pytest-xdist a pool that is idle at the worker's last test (one of the main
    process) closes at the worker's end, whose report nobody sees: its errors reach the
    controller, which shows them and fails, instead of a green run."""
    pytest.importorskip("xdist")
    pytester.makepyfile(test_session=SESSION_FIXTURE)
    result = pytester.runpytest_subprocess(
        "-p", "xdist", "-n", "1", "-p", "no:cacheprovider", "-k", "first or plain_passes"
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


@pytest.mark.composable(backend="mpi")  # known to torch, not built into its wheels
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
    assert "mpi" in output_of(result).lower()


SHARED_MODULE = """
import os
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])


@pytest.fixture(scope="module")
def module_resource():
    Path(f"setup-{os.environ['RANK']}-{os.getpid()}").touch()
    yield
    Path(f"teardown-{os.environ['RANK']}-{os.getpid()}").touch()


@pytest.mark.composable(world_size=2)
def test_two(composable_world, module_resource):
    dist.barrier()


@pytest.mark.composable(world_size=4)
def test_four(composable_world, module_resource):
    dist.barrier()
"""

OTHER_MODULE = """
import pytest
import torch.distributed as dist


@pytest.mark.composable(devices=["cpu"], world_size=2)
def test_two_again(composable_world):
    dist.barrier()
"""


def test_ranks_are_told_their_own_pools_next_test(pytester: pytest.Pytester) -> None:
    """Sizes 2 and 4 in module a, then size 2 in module b. The pool of size 2 closes before
    size 4 starts, so its ranks end every fixture after ``test_two`` (told no next test,
    not ``test_four``, which would keep module a set up into ``test_two_again``)."""
    pytester.makepyfile(test_a=SHARED_MODULE, test_b=OTHER_MODULE)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    assert verbose_outcomes(result) == {
        "test_a.py::test_two[cpu]": "PASSED",
        "test_a.py::test_four[cpu]": "PASSED",
        "test_b.py::test_two_again[cpu]": "PASSED",
    }, output_of(result)
    # Each rank process that set module a up tore it down (2 + 4 ranks).
    setups = sorted(p.name.partition("-")[2] for p in pytester.path.glob("setup-*"))
    teardowns = sorted(p.name.partition("-")[2] for p in pytester.path.glob("teardown-*"))
    assert len(setups) == 6
    assert setups == teardowns


BETWEEN_MODULES = """
import pytest
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])


def test_world(composable_world):
    dist.barrier()


def test_plain():
    pass
"""


def test_ranks_keep_no_module_for_a_test_of_this_process_under_xdist(
    pytester: pytest.Pytester,
) -> None:
    """Under pytest-xdist a worker knows only its next test: a world test followed by a
    test of this process in module a, then a world test in module b, on one worker. The
    ranks kept module a for ``test_plain``; ``test_world`` of module b gets ranks that hold
    nothing of module a."""
    pytest.importorskip("xdist")
    pytester.makepyfile(test_a=BETWEEN_MODULES, test_b=BETWEEN_MODULES)
    result = pytester.runpytest_subprocess("-p", "xdist", "-n", "1", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


FIRST_START_FAILS = """
import os
from pathlib import Path

if "PYTEST_COMPOSABLE_RANK_WORKER" in os.environ and os.environ["RANK"] == "0":
    flag = Path("first-start-failed")
    if not flag.exists():
        flag.touch()
        os._exit(3)  # only the first pool's start fails
"""

RETRIES = """
import pytest
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])


def test_start_fails(composable_world):
    pass


@pytest.mark.composable(world_size=1)
def test_other_pool(composable_world):
    pass


def test_start_again(composable_world):
    dist.barrier()


def test_same_pool(composable_world):
    dist.barrier()
"""


def test_a_failed_start_fails_only_its_test(pytester: pytest.Pytester) -> None:
    """A pool whose start failed is started again for the next test that needs it."""
    pytester.makeconftest(FIRST_START_FAILS)
    pytester.makepyfile(test_retries=RETRIES)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    assert verbose_outcomes(result) == {
        "test_retries.py::test_start_fails[cpu]": "ERROR",
        "test_retries.py::test_other_pool[cpu]": "PASSED",
        "test_retries.py::test_start_again[cpu]": "PASSED",
        "test_retries.py::test_same_pool[cpu]": "PASSED",
    }, output_of(result)
    result.stdout.fnmatch_lines(
        ["composable: could not start 2 ranks on cpu: rank 0 failed to join the world*"]
    )
