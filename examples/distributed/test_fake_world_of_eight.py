"""The same checks on a fake world of 8, in this one process, in milliseconds.

The fake backend moves no data, so values are not compared: what is checked
is everything that does not need the other ranks' data: sharded shapes,
placements, that training steps run, gradients' shapes and state-dict keys.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard

from pytest_composable import World
from pytest_composable.models import UnitModule

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=8)


@pytest.mark.usefixtures("fsdp2_trains_on_cpu")
def test_fully_shard_training_runs(
    composable_fake_world: World, composite_model: nn.Module
) -> None:
    world = composable_fake_world
    full_shapes = {name: p.shape for name, p in composite_model.named_parameters()}
    for module in composite_model.modules():
        if isinstance(module, UnitModule):
            fully_shard(module, mesh=world.mesh)
    fully_shard(composite_model, mesh=world.mesh)
    optim = torch.optim.SGD(composite_model.parameters(), lr=0.1)
    for _ in range(2):
        composite_model(torch.randn(4, 100)).sum().backward()
        optim.step()
        optim.zero_grad()
    for name, param in composite_model.named_parameters():
        assert isinstance(param, DTensor)
        assert param.placements == (Shard(0),)
        assert param.shape == full_shapes[name]
        rows = -(-full_shapes[name][0] // world.world_size)  # rank 0 holds ceil(rows / 8)
        assert param.to_local().shape[0] == rows


def test_replicate_gradients(composable_fake_world: World, composite_model: nn.Module) -> None:
    # The DDP-based ``replicate`` needs its all-reduce to return data, which the
    # fake backend does not; the FSDP-based one (torch >= 2.10) runs on it.
    module = pytest.importorskip("torch.distributed._composable.replicate_with_fsdp")
    module.replicate(composite_model, mesh=composable_fake_world.mesh)
    composite_model(torch.randn(4, 100)).sum().backward()
    for param in composite_model.parameters():
        assert isinstance(param, DTensor)
        assert param.placements == (Replicate(),)
        assert param.grad is not None
        assert param.grad.shape == param.shape


def test_state_dict_round_trip(composable_fake_world: World, composite_model: nn.Module) -> None:
    keys = set(composite_model.state_dict())
    fully_shard(composite_model, mesh=composable_fake_world.mesh)
    state = get_model_state_dict(composite_model)
    assert set(state) == keys
    assert all(isinstance(v, DTensor) for v in state.values())
    set_model_state_dict(composite_model, state)
