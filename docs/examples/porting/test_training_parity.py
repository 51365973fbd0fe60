"""Ported from an ``FSDPTest`` training-parity loop (``test_train_parity_single_group``).

The loop of forward, backward, optimizer step and ``assertEqual(losses[0],
losses[1])`` over a reference and a sharded model is
:func:`pytest_composable.parity.assert_training_parity`; upstream's
``torch.manual_seed(42 + self.rank + 1)`` for per-rank data is
``world.seed_per_rank()``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.distributed._composable.replicate import replicate
from torch.distributed.fsdp import fully_shard

from pytest_composable import World
from pytest_composable.parity import assert_training_parity

pytestmark = pytest.mark.composable(world_size=2, devices=["cpu"])


def adam(parameters: object) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=1e-2)  # type: ignore[arg-type]


@pytest.mark.parametrize("lin_shapes", [[(16, 15), (15, 8)], [(7, 15), (15, 3)]])
def test_train_parity_single_group(
    composable_world: World, lin_shapes: list[tuple[int, int]]
) -> None:
    model = nn.Sequential(nn.Linear(*lin_shapes[0]), nn.ReLU(), nn.Linear(*lin_shapes[1]))
    reference = copy.deepcopy(model)
    replicate(reference)  # averages gradients over the ranks, as FSDP does
    fully_shard(model, mesh=composable_world.mesh)
    composable_world.seed_per_rank()  # was torch.manual_seed(42 + self.rank + 1)
    inp = torch.randn(4, lin_shapes[0][0])
    assert_training_parity(reference, model, inp, steps=10, optimizer=adam)
