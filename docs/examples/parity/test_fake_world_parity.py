"""The layout of a sharded model, checked in a fake world of 8.

``fully_shard`` cuts each rank's shard locally, with no collective, so the shards a
fake world's rank 0 (or the marker's ``rank=``) holds are real values:
``assert_sharded_parity`` checks them in milliseconds. (Tensor parallelism scatters
its shards with a collective, which moves no data in a fake world: check its
placements there, and its values on real ranks.)
"""

from __future__ import annotations

import pytest
from torch import nn
from torch.distributed.fsdp import fully_shard

from pytest_composable import World
from pytest_composable.models import MLPStack
from pytest_composable.parity import assert_sharded_parity


@pytest.mark.composable(devices=["cpu"], mesh={"dp_replicate": 2, "dp_shard": 4}, rank=5)
def test_hsdp_shards_of_rank_5(
    composable_fake_world: World, mlp_stack: MLPStack, composable_reference_model: nn.Module
) -> None:
    for mlp in mlp_stack:
        fully_shard(mlp, mesh=composable_fake_world.mesh)
    fully_shard(mlp_stack, mesh=composable_fake_world.mesh)
    assert_sharded_parity(composable_reference_model, mlp_stack)
