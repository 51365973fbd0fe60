"""Tutorial, step 2: a fake world of 8 ranks, in this one process.

The default process group is on torch's ``fake`` backend: collectives move no
data, so a test checks what does not need the other ranks' values (shapes,
placements, that the code runs), in milliseconds.
"""

from __future__ import annotations

import pytest
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard

from pytest_composable import World


@pytest.mark.composable(world_size=8, devices=["cpu"])
def test_shards_over_eight(composable_fake_world: World, composite_model: nn.Module) -> None:
    world = composable_fake_world
    assert (world.rank, world.world_size, world.fake) == (0, 8, True)
    fully_shard(composite_model, mesh=world.mesh)
    weight = composite_model.l1.weight
    assert isinstance(weight, DTensor)
    assert weight.placements == (Shard(0),)
    assert weight.to_local().shape == (13, 100)  # rank 0 holds ceil(100 / 8) rows
