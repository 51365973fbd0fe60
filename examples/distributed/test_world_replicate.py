"""``replicate`` (composable DDP) on 2 real ranks: gradients are equal on every rank.

Each rank feeds a different batch; after backward the gradients are the
average over ranks, so all ranks hold the same gradients (and they equal the
reference's on the concatenated batches).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable.replicate import replicate

from pytest_composable import World

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)


def test_gradients_equal_across_ranks(composable_world: World, composite_model: nn.Module) -> None:
    world = composable_world
    reference = copy.deepcopy(composite_model)
    replicate(composite_model)
    generator = torch.Generator().manual_seed(7)
    batches = [torch.randn(4, 100, generator=generator) for _ in range(world.world_size)]
    composite_model(batches[world.rank]).sum().backward()
    (sum(reference(b).sum() for b in batches) / world.world_size).backward()
    for (name, param), (_, expected) in zip(
        composite_model.named_parameters(), reference.named_parameters(), strict=True
    ):
        assert param.grad is not None
        assert expected.grad is not None
        gathered = [torch.empty_like(param.grad) for _ in range(world.world_size)]
        dist.all_gather(gathered, param.grad)
        for other in gathered:
            torch.testing.assert_close(other, param.grad, msg=name)
        torch.testing.assert_close(param.grad, expected.grad, msg=name)
