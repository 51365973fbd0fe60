"""Ported from ``FSDPTest`` with ``run_subtests`` and ``check_sharded_parity``.

The test class's ``world_size`` property becomes the marker's ``world_size``;
each ``run_subtests`` axis becomes a ``pytest.mark.parametrize`` (one item per
combination, each with its own id and report); ``check_sharded_parity`` becomes
:func:`pytest_composable.parity.assert_sharded_parity`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

from pytest_composable import World
from pytest_composable.models import UnitModule
from pytest_composable.parity import assert_sharded_parity, assert_training_parity

pytestmark = pytest.mark.composable(world_size=2, devices=["cpu"])


def _shard(model: nn.Module, world: World, reshard_after_forward: bool) -> None:
    for module in model.modules():
        if isinstance(module, UnitModule):
            fully_shard(module, mesh=world.mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=world.mesh, reshard_after_forward=reshard_after_forward)


@pytest.mark.parametrize("reshard_after_forward", [True, False])
def test_train_parity(
    composable_world: World,
    composite_model: nn.Module,
    composable_input: torch.Tensor,
    reshard_after_forward: bool,
) -> None:
    reference = copy.deepcopy(composite_model)
    _shard(composite_model, composable_world, reshard_after_forward)
    assert_training_parity(
        reference,
        composite_model,
        composable_input,
        steps=2,
        step_hook=lambda step, ref, sharded: assert_sharded_parity(ref, sharded),
    )


def test_sharded_parity_after_backward(
    composable_world: World, composite_model: nn.Module, composable_input: torch.Tensor
) -> None:
    reference = copy.deepcopy(composite_model)
    _shard(composite_model, composable_world, reshard_after_forward=True)
    assert_sharded_parity(reference, composite_model)  # parameters only: no gradients yet
    reference(composable_input).sum().backward()
    composite_model(composable_input).sum().backward()
    assert_sharded_parity(reference, composite_model)  # parameters and gradients
