"""Ported from ``DTensorTestBase`` with ``@with_comms`` and a hand-made N-D mesh.

``@with_comms`` (make the process group, then destroy it) is what
``composable_world`` does for every test, with the group kept between tests;
``init_device_mesh(..., mesh_dim_names=...)`` becomes the marker's ``mesh=``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from pytest_composable import World
from pytest_composable.models import MLP
from pytest_composable.parity import assert_training_parity

pytestmark = [
    pytest.mark.composable(world_size=4, devices=["cpu"]),
    # The row-wise layer's output is a view; nothing here changes it in place.
    pytest.mark.filterwarnings("ignore:FSDP2-wrapped module"),
]


def test_distribute_tensor(composable_world: World) -> None:
    tensor = torch.randn(12, 3)  # the same on every rank: every rank is seeded alike
    dtensor = distribute_tensor(tensor, composable_world.mesh, [Shard(0)])
    assert dtensor.to_local().shape == (3, 3)
    torch.testing.assert_close(dtensor.full_tensor(), tensor)


@pytest.mark.composable(mesh={"dp": 2, "tp": 2})
def test_fsdp_with_tensor_parallel(composable_world: World) -> None:
    mesh = composable_world.mesh
    assert mesh.mesh_dim_names == ("dp", "tp")
    model = MLP(16)  # in_proj 16 -> 64, out_proj 64 -> 16
    reference = copy.deepcopy(model)
    parallelize_module(
        model, mesh["tp"], {"in_proj": ColwiseParallel(), "out_proj": RowwiseParallel()}
    )
    fully_shard(model, mesh=mesh["dp"])
    assert isinstance(model.in_proj.weight, DTensor)
    assert_training_parity(reference, model, torch.randn(2, 16), steps=2)
