"""FSDP2 ``fully_shard`` on real ranks, once per dtype.

``composable_dtype`` runs each test once per dtype the marker lists (ids
``test_x[cpu-float32]``, ``test_x[cpu-bfloat16]``), and the test's model comes in
that dtype: the float32 model, the same values, converted. With
``cast_models=False`` the model stays float32 and the dtype is the compute dtype
of FSDP2's ``MixedPrecisionPolicy``, the usual mixed-precision recipe.

World size 4, so that ``torchrun --nproc-per-node=4 -m pytest`` runs it as plain
``pytest`` does (a launch of another size skips it, saying so).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from pytest_composable import World
from pytest_composable.models import UnitModule

pytestmark = pytest.mark.composable(devices=["cpu"], dtypes=["float32", "bfloat16"], world_size=4)

# How far a trained parameter may drift from the unsharded reference's: the ranks
# reduce their gradients in another order than the reference sums its batches.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _shard(model: nn.Module, world: World, **options: object) -> None:
    """``fully_shard`` every ``UnitModule``, then the root."""
    for module in model.modules():
        if isinstance(module, UnitModule):
            fully_shard(module, mesh=world.mesh, **options)
    fully_shard(model, mesh=world.mesh, **options)


def _batches(world: World, dtype: torch.dtype) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    return [torch.randn(4, 100, generator=generator).to(dtype) for _ in range(world.world_size)]


def test_sharding_keeps_dtype_and_values(
    composable_world: World, composite_model: nn.Module, composable_dtype: torch.dtype
) -> None:
    reference = copy.deepcopy(composite_model)
    _shard(composite_model, composable_world)
    for (name, param), (_, expected) in zip(
        composite_model.named_parameters(), reference.named_parameters(), strict=True
    ):
        assert isinstance(param, DTensor), name
        assert param.dtype == param.to_local().dtype == composable_dtype, name
        torch.testing.assert_close(param.full_tensor(), expected, rtol=0, atol=0, msg=name)


@pytest.mark.usefixtures("fsdp2_trains_on_cpu")
def test_a_training_step_matches_the_unsharded_model(
    composable_world: World, composite_model: nn.Module, composable_dtype: torch.dtype
) -> None:
    world = composable_world
    reference = copy.deepcopy(composite_model)
    _shard(composite_model, world)
    batches = _batches(world, composable_dtype)
    output = composite_model(batches[world.rank])
    assert output.dtype == composable_dtype
    output.sum().backward()
    torch.optim.SGD(composite_model.parameters(), lr=0.1).step()
    (sum(reference(b).sum() for b in batches) / world.world_size).backward()
    torch.optim.SGD(reference.parameters(), lr=0.1).step()
    tolerance = TOLERANCE[composable_dtype]
    for (name, param), (_, expected) in zip(
        composite_model.named_parameters(), reference.named_parameters(), strict=True
    ):
        assert param.dtype == composable_dtype, name
        torch.testing.assert_close(
            param.full_tensor(), expected, rtol=tolerance, atol=tolerance, msg=name
        )


@pytest.mark.composable(dtypes=["bfloat16", "float16"], cast_models=False)
@pytest.mark.usefixtures("fsdp2_trains_on_cpu")
def test_mixed_precision_keeps_float32_parameters(
    composable_world: World,
    composite_model: nn.Module,
    composable_input: torch.Tensor,
    composable_dtype: torch.dtype,
) -> None:
    assert composable_input.dtype == torch.float32  # cast_models=False: float32 storage
    policy = MixedPrecisionPolicy(param_dtype=composable_dtype, reduce_dtype=torch.float32)
    _shard(composite_model, composable_world, mp_policy=policy)
    output = composite_model(composable_input)
    assert output.dtype == composable_dtype  # computed in the dtype under test
    output.float().sum().backward()
    for name, param in composite_model.named_parameters():
        assert param.dtype == torch.float32, name
        assert param.grad is not None, name
        assert param.grad.dtype == torch.float32, name
