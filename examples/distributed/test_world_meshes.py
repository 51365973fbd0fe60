"""HSDP and FSDP + tensor parallelism on named N-D meshes.

``@pytest.mark.composable(mesh=...)`` gives ``world.mesh`` as a named N-D
``DeviceMesh``: ``world.mesh["dp_shard"]``, ``world.mesh["tp"]``. The same
tests run on 4 real ranks (values compared against an unsharded reference) and
on a fake world of 8 in this process (shapes and placements only: the fake
backend moves no data). The ranks build each mesh layout's sub-groups once and
keep them for every later test with that layout.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)

from pytest_composable import World
from pytest_composable.models import UnitModule

pytestmark = [
    pytest.mark.composable(devices=["cpu"]),
    pytest.mark.usefixtures("fsdp2_trains_on_cpu"),
    # The row-wise layer returns a view of its all-reduced output; nothing here changes
    # it in place, which is what this warning of torch's is about.
    pytest.mark.filterwarnings("ignore:FSDP2-wrapped module"),
]

HSDP = {"dp_replicate": 2, "dp_shard": -1}
FSDP_TP = {"dp": -1, "tp": 2}
STEPS = 2


def _batch(index: int, step: int, features: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * step + index)
    return torch.randn(4, features, generator=generator)


def _train(model: nn.Module, reference: nn.Module, batch_of: int, batches: int, dim: int) -> None:
    """Train ``model`` on data-parallel batch ``batch_of`` and ``reference`` on all of
    them, with the loss averaged over the batches (what the gradient reduction does)."""
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_optim = torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in range(STEPS):
        model(_batch(batch_of, step, dim)).sum().backward()
        optim.step()
        optim.zero_grad()
        loss = sum(reference(_batch(i, step, dim)).sum() for i in range(batches))
        (loss / batches).backward()
        ref_optim.step()
        ref_optim.zero_grad()


def _full_parameters_match(model: nn.Module, reference: nn.Module) -> None:
    for (name, param), (_, expected) in zip(
        model.named_parameters(), reference.named_parameters(), strict=True
    ):
        assert isinstance(param, DTensor), name
        torch.testing.assert_close(param.full_tensor(), expected, msg=name)


def _hsdp(model: nn.Module, world: World) -> None:
    for module in model.modules():
        if isinstance(module, UnitModule):
            fully_shard(module, mesh=world.mesh)
    fully_shard(model, mesh=world.mesh)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))


def _fsdp_tp(model: nn.Module, world: World) -> None:
    parallelize_module(model, world.mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    fully_shard(model, mesh=world.mesh["dp"])


@pytest.mark.composable(mesh=HSDP, world_size=4)
def test_hsdp_trains_like_the_unsharded_model(
    composable_world: World, composite_model: nn.Module
) -> None:
    world = composable_world
    assert world.mesh.mesh_dim_names == ("dp_replicate", "dp_shard")
    reference = copy.deepcopy(composite_model)
    _hsdp(composite_model, world)
    # HSDP: replicated across dp_replicate, sharded within dp_shard.
    assert composite_model.l1.weight.placements == (Replicate(), Shard(0))
    _train(composite_model, reference, world.rank, world.world_size, 100)
    _full_parameters_match(composite_model, reference)


@pytest.mark.composable(mesh=FSDP_TP, world_size=4)
def test_fsdp_tp_trains_like_the_unsharded_model(composable_world: World) -> None:
    world = composable_world
    model = _mlp()
    reference = copy.deepcopy(model)
    _fsdp_tp(model, world)
    # The ranks of one tensor-parallel group share a batch; each dp rank has its own.
    dp_rank, dp_size = world.mesh["dp"].get_local_rank(), world.mesh["dp"].size()
    _train(model, reference, dp_rank, dp_size, 16)
    _full_parameters_match(model, reference)


@pytest.mark.composable(mesh=HSDP, world_size=8)
def test_hsdp_on_a_fake_world_of_eight(
    composable_fake_world: World, composite_model: nn.Module
) -> None:
    world = composable_fake_world
    assert world.mesh.shape == (2, 4)
    _hsdp(composite_model, world)
    weight = composite_model.l1.weight
    assert weight.placements == (Replicate(), Shard(0))
    assert weight.to_local().shape == (25, 100)  # 100 rows over 4 shards
    composite_model(torch.randn(4, 100)).sum().backward()
    assert weight.grad is not None
    assert weight.grad.placements == weight.placements


@pytest.mark.composable(mesh=FSDP_TP, world_size=8)
def test_fsdp_tp_on_a_fake_world_of_eight(composable_fake_world: World) -> None:
    world = composable_fake_world
    assert world.mesh.mesh_dim_names == ("dp", "tp")
    assert world.mesh.shape == (4, 2)
    model = _mlp()
    _fsdp_tp(model, world)
    up, down = model[0].weight, model[2].weight
    # dp shards rows (of the tp shard, a strided shard in newer torch), tp its own dim.
    assert [getattr(p, "dim", None) for p in up.placements] == [0, 0]
    assert [getattr(p, "dim", None) for p in down.placements] == [0, 1]
    assert up.to_local().shape == (4, 16)  # 32 rows: 16 per tp rank, 4 per dp rank
    model(torch.randn(4, 16)).sum().backward()
