"""Real ranks under plain ``pytest``: results merged per test, fixtures working on every rank."""

from __future__ import annotations

import pytest

from tests.helpers import verbose_outcomes

CONFTEST = """
import pytest

@pytest.fixture
def greeting():
    return "hello"
"""

TESTS = """
import os
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])


@pytest.mark.parametrize("factor", [1, 3])
def test_fixtures_on_every_rank(composable_world, tmp_path, greeting, composite_model, factor):
    world = composable_world
    assert (world.world_size, world.backend, str(world.device)) == (2, "gloo", "cpu")
    assert world.mesh.size() == 2 and world.local_rank == world.rank
    assert greeting == "hello" and tmp_path.is_dir()
    assert next(composite_model.parameters()).device.type == "cpu"
    t = torch.ones(1) * factor * (world.rank + 1)
    dist.all_reduce(t)
    assert t.item() == 3 * factor
    print(f"output of rank {world.rank}")


def test_fails_on_rank_one(composable_world):
    dist.barrier()
    assert composable_world.rank != 1, "only rank one fails"


def test_skipped_everywhere(composable_world):
    pytest.skip("nothing to do here")


def test_skipped_on_one_rank(composable_world):
    if composable_world.rank == 0:
        pytest.skip("rank zero has nothing to do")


@pytest.mark.composable(world_size=[1, 3])
def test_other_world_sizes(composable_world):
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == composable_world.world_size == dist.get_world_size()


def test_same_processes_for_the_session(composable_world, tmp_path_factory):
    pids = [None] * composable_world.world_size
    dist.all_gather_object(pids, os.getpid())
    assert len(set(pids)) == composable_world.world_size


def test_plain():
    pass
"""


def test_plain_pytest_runs_every_rank_and_merges(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_world=TESTS)
    result = pytester.runpytest_subprocess("-v", "-rA", "-p", "no:cacheprovider")
    outcomes = verbose_outcomes(result)
    assert outcomes == {
        "test_world.py::test_fixtures_on_every_rank[cpu-1]": "PASSED",
        "test_world.py::test_fixtures_on_every_rank[cpu-3]": "PASSED",
        "test_world.py::test_fails_on_rank_one[cpu]": "FAILED",
        "test_world.py::test_skipped_everywhere[cpu]": "SKIPPED",
        "test_world.py::test_skipped_on_one_rank[cpu]": "FAILED",
        "test_world.py::test_other_world_sizes[cpu-ws1]": "PASSED",
        "test_world.py::test_other_world_sizes[cpu-ws3]": "PASSED",
        "test_world.py::test_same_processes_for_the_session[cpu]": "PASSED",
        "test_world.py::test_plain": "PASSED",
    }, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*_ test_fails_on_rank_one[[]cpu[]] _*",
            "composable: call failed on rank(s) 1 of 2",
            "composable: rank 0 passed",
            "*_ rank 1 _*",
            '*assert composable_world.rank != 1, "only rank one fails"',
            "E *AssertionError: only rank one fails",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "composable: the ranks disagree in call*",
            "composable: rank 0 skipped: *rank zero has nothing to do",
            "composable: rank 1 passed",
        ]
    )
    result.stdout.fnmatch_lines(["*Captured stdout call (rank 1)*", "output of rank 1"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_world_size_from_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.composable(devices=["cpu"])
        def test_x(composable_fake_world):
            assert composable_world.world_size == 3
        """.replace("composable_world.", "composable_fake_world.")
    )
    result = pytester.runpytest("--composable-world-size=3", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_devices_without_a_backend_are_skipped(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.composable(devices=["meta", "cuda"])
        def test_x(composable_world):
            pass
        """
    )
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*meta has none*", "*cuda is not available*"])
