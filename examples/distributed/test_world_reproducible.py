"""Reproducible data across ranks, as PyTorch's own replicate tests need it.

Every world test starts with each rank's global generators seeded with
``composable_seed``: a model built with ``nn.Linear`` (global RNG) is the same
on every rank, whatever ran before on the kept ranks. For per-rank data,
``World.seed_per_rank()`` gives each rank its own reproducible seed.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable.replicate import replicate

from pytest_composable import World

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)


def _on_every_rank(world: World, tensor: torch.Tensor) -> list[torch.Tensor]:
    gathered = [torch.empty_like(tensor) for _ in range(world.world_size)]
    dist.all_gather(gathered, tensor.contiguous())
    return gathered


@pytest.mark.parametrize("step", range(3))
def test_models_built_from_the_global_rng_agree(composable_world: World, step: int) -> None:
    # Upstream builds models this way (no seed of its own) and expects equal ranks.
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    replicate(model)
    for param in model.parameters():
        for other in _on_every_rank(composable_world, param.detach()):
            torch.testing.assert_close(other, param.detach())
    if composable_world.rank == 1:
        torch.randn(1000)  # rank 1 draws more: the next test must not notice


def test_per_rank_data_differs_and_repeats(composable_world: World) -> None:
    composable_world.seed_per_rank()
    batch = torch.randn(4, 8)
    first, second = _on_every_rank(composable_world, batch)
    assert not torch.equal(first, second)
    generator = torch.Generator().manual_seed(composable_world.rank_seed)
    torch.testing.assert_close(batch, torch.randn(4, 8, generator=generator))
