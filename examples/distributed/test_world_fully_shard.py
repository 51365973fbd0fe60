"""FSDP2 ``fully_shard`` on 2 real ranks trains exactly like the unsharded model.

Runs under plain ``pytest``: the plugin starts two gloo ranks (CPU) and runs
the test body on both. Each rank trains on its own batch; the unsharded
reference sees both batches, with the loss averaged over ranks (what FSDP's
gradient reduce-scatter computes).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

from pytest_composable import World
from pytest_composable.models import UnitModule

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)

STEPS = 3


def _batches(world_size: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    return [torch.randn(4, 100, generator=generator) for _ in range(world_size)]


@pytest.mark.usefixtures("fsdp2_trains_on_cpu")
def test_training_parity(composable_world: World, composite_model: nn.Module) -> None:
    world = composable_world
    reference = copy.deepcopy(composite_model)
    for module in composite_model.modules():
        if isinstance(module, UnitModule):
            fully_shard(module, mesh=world.mesh)
    fully_shard(composite_model, mesh=world.mesh)
    optim = torch.optim.SGD(composite_model.parameters(), lr=0.1)
    ref_optim = torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in range(STEPS):
        batches = [b + step for b in _batches(world.world_size)]
        composite_model(batches[world.rank]).sum().backward()
        optim.step()
        optim.zero_grad()
        (sum(reference(b).sum() for b in batches) / world.world_size).backward()
        ref_optim.step()
        ref_optim.zero_grad()
    for (name, param), (_, expected) in zip(
        composite_model.named_parameters(), reference.named_parameters(), strict=True
    ):
        torch.testing.assert_close(param.full_tensor(), expected, msg=name)
