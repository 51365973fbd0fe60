"""FSDP2 ``fully_shard`` on a one-rank gloo world, for every composable model.

Each ``UnitModule`` (what ``ModuleWrapPolicy({UnitModule})`` selects) and then
the root are sharded, the usual FSDP2 recipe. Sharding is in place: parameter
FQNs and state-dict keys stay the same (parameters become ``DTensor``), and a
forward, backward and optimizer step give what the unsharded model gives.
Activation checkpointing composes with it; ``replicate`` (composable DDP)
refuses a module that ``fully_shard`` already manages.

CPU only: the process group is gloo and the mesh a CPU mesh.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn
from torch.distributed._composable import checkpoint, replicate
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from pytest_composable.models import UnitModule

if TYPE_CHECKING:
    from conftest import FqnsOf, TrainStepCheck

pytestmark = pytest.mark.composable(devices=["cpu"])


def _shard(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """``fully_shard`` every ``UnitModule`` below the root, then the root."""
    for module in list(model.modules()):
        if isinstance(module, UnitModule) and module is not model:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def test_fully_shard_keeps_fqns(
    composable_model: nn.Module, cpu_mesh: DeviceMesh, fqns: FqnsOf
) -> None:
    cls = type(composable_model)
    before = fqns(composable_model)

    _shard(composable_model, cpu_mesh)

    assert isinstance(composable_model, cls)  # same object, its class plus an FSDP mixin
    assert fqns(composable_model) == before
    assert all(isinstance(p, DTensor) for p in composable_model.parameters())


@pytest.mark.usefixtures("fsdp2_trains_on_cpu")
def test_fully_shard_matches_unsharded_training_step(
    composable_model: nn.Module,
    composable_input: torch.Tensor,
    cpu_mesh: DeviceMesh,
    assert_train_step_matches: TrainStepCheck,
) -> None:
    reference = copy.deepcopy(composable_model)

    _shard(composable_model, cpu_mesh)

    assert_train_step_matches(composable_model, reference, composable_input)


@pytest.mark.composable(models=["composite_model", "composite_param_model"])
@pytest.mark.usefixtures("fsdp2_trains_on_cpu")
def test_checkpoint_composes_with_fully_shard(
    composable_model: nn.Module,
    composable_input: torch.Tensor,
    cpu_mesh: DeviceMesh,
    assert_train_step_matches: TrainStepCheck,
) -> None:
    reference = copy.deepcopy(composable_model)
    checkpoint(composable_model.get_submodule("u1"))
    checkpoint(composable_model.get_submodule("u2"))

    _shard(composable_model, cpu_mesh)

    assert_train_step_matches(composable_model, reference, composable_input)


def test_replicate_refuses_a_fully_sharded_module(
    composite_model: nn.Module, cpu_mesh: DeviceMesh
) -> None:
    fully_shard(composite_model, mesh=cpu_mesh)

    with pytest.raises(RuntimeError, match="already managed by `fully_shard`"):
        replicate(composite_model)
