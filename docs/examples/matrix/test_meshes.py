"""Named N-D meshes with the marker's ``mesh=``: shapes checked in fake worlds.

A fake world (torch's ``fake`` backend, in this one process) builds the same named
``DeviceMesh`` a real world does, so a mesh's shape, its sub-meshes and the
placements a model gets on it are checked in milliseconds, for worlds of any size.
"""

from __future__ import annotations

import pytest
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, Shard

from pytest_composable import World
from pytest_composable.models import MLP

pytestmark = pytest.mark.composable(devices=["cpu"])


@pytest.mark.composable(mesh={"dp_replicate": 2, "dp_shard": 2})
def test_hsdp_mesh(composable_fake_world: World, mlp: MLP) -> None:
    world = composable_fake_world
    assert world.world_size == 4  # the product of the sizes
    assert world.mesh.mesh_dim_names == ("dp_replicate", "dp_shard")
    assert world.mesh["dp_shard"].size() == 2
    fully_shard(mlp, mesh=world.mesh)  # a 2-D mesh: HSDP
    assert mlp.in_proj.weight.placements == (Replicate(), Shard(0))
    assert mlp.in_proj.weight.to_local().shape == (32, 16)  # 64 rows over 2 shards


# One item per mesh: test_each_layout[cpu-dp_shard4], [cpu-dp_replicate2xdp_shard2].
@pytest.mark.composable(mesh=[{"dp_shard": 4}, {"dp_replicate": 2, "dp_shard": 2}])
def test_each_layout(composable_fake_world: World) -> None:
    mesh = composable_fake_world.mesh
    assert mesh.size() == 4
    assert mesh["dp_shard"].size() == (4 if mesh.ndim == 1 else 2)


# -1 is the rest of the world, resolved for each world size: ids ws4 and ws8.
@pytest.mark.composable(mesh={"dp": -1, "tp": 2}, world_size=[4, 8])
def test_rest_of_the_world(composable_fake_world: World) -> None:
    world = composable_fake_world
    assert world.mesh["tp"].size() == 2
    assert world.mesh["dp"].size() == world.world_size // 2
