"""Every world test starts with every rank seeded alike, whatever ran before it."""

from __future__ import annotations

import pytest

SEEDED = """
import random

import numpy
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])

DRAWS = []


def _draw():
    return [torch.rand(3).tolist(), random.random(), float(numpy.random.rand())]


def _everyone(value):
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


@pytest.mark.parametrize("i", range(3))
def test_ranks_agree_and_tests_repeat(composable_world, i):
    draws = _draw()
    if composable_world.rank == 1:
        torch.rand(100)  # rank 1's state moves on: the next test must not care
    assert all(d == draws for d in _everyone(draws))
    DRAWS.append(draws)
    assert all(d == DRAWS[0] for d in DRAWS)
    torch.manual_seed(0)
    assert draws[0] == torch.rand(3).tolist()  # composable_seed is 0 by default


def test_seed_per_rank(composable_world):
    seed = composable_world.seed_per_rank()
    assert seed == composable_world.rank_seed == composable_world.rank
    draws = _everyone(torch.rand(3).tolist())
    assert draws[0] != draws[1]
    torch.manual_seed(composable_world.rank)
    assert draws[composable_world.rank] == torch.rand(3).tolist()


def test_fake_world_is_seeded(composable_fake_world):
    value = torch.rand(3).tolist()
    torch.manual_seed(composable_fake_world.seed)
    assert value == torch.rand(3).tolist()
"""


def test_every_world_test_starts_seeded(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_seeded=SEEDED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--composable-seed=7")
    result.assert_outcomes(passed=1, failed=4)  # the draws assume seed 0


def _seeded_accelerators(monkeypatch: pytest.MonkeyPatch, cuda_devices: int) -> list[int]:
    """Run ``seed_everything(5)`` on a machine simulated to have ``cuda_devices`` GPUs and
    no other accelerator; the seeds the CUDA generators were given, and the CPU draw
    checked."""
    import torch

    from pytest_composable import devices
    from pytest_composable.distributed import _seed

    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", calls.append)
    monkeypatch.setattr(devices, "_count", lambda t: cuda_devices if t == "cuda" else 0)
    with torch.random.fork_rng(devices=[]):
        _seed.seed_everything(5)
        drawn = torch.rand(2)
        torch.default_generator.manual_seed(5)
        assert torch.equal(drawn, torch.rand(2))
    return calls


def test_seeding_skips_accelerator_generators_where_there_are_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch.manual_seed queues a seed, with the caller's traceback, for each accelerator
    type torch knows: about 1 ms per world test on a machine that has none."""
    assert _seeded_accelerators(monkeypatch, 0) == []


def test_seeding_seeds_an_accelerator_that_is_present(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _seeded_accelerators(monkeypatch, 2) == [5]
