"""Tutorial, step 3: a real world of 2 ranks (gloo, CPU), under plain ``pytest``.

The plugin starts two rank processes the first time a test needs them and keeps
them for the next world tests; the test body runs on both.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from pytest_composable import World
from pytest_composable.parity import assert_training_parity

pytestmark = pytest.mark.composable(world_size=2, devices=["cpu"])


def test_ranks_agree(composable_world: World) -> None:
    value = torch.tensor([float(composable_world.rank)])
    dist.all_reduce(value)  # 0 + 1 on every rank
    assert value.item() == 1.0


def test_fully_shard_trains_like_the_unsharded_model(
    composable_world: World, composite_model: nn.Module, composable_input: torch.Tensor
) -> None:
    # Every rank is seeded alike, so both ranks build the same model and input.
    reference = copy.deepcopy(composite_model)
    fully_shard(composite_model, mesh=composable_world.mesh)
    assert_training_parity(reference, composite_model, composable_input, steps=3)
