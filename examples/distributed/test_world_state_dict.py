"""A distributed state-dict round trip on 2 real ranks.

The sharded model's full state dict equals the unsharded model's; a fresh
sharded model built from another seed takes it back (``set_model_state_dict``)
and then holds the original values; and a ``torch.distributed.checkpoint``
save and load through a directory all ranks share gives the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.fsdp import fully_shard

from pytest_composable import World
from pytest_composable.models import CompositeModel

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)

FULL = StateDictOptions(full_state_dict=True)


def _sharded(world: World, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = CompositeModel(world.device)
    fully_shard(model, mesh=world.mesh)
    return model


def _shared_dir(tmp_path: Path) -> Path:
    """Rank 0's ``tmp_path``, the same directory on every rank (ranks share a machine)."""
    path = [str(tmp_path)]
    dist.broadcast_object_list(path, src=0)
    return Path(path[0])


def test_round_trip(composable_world: World, composite_model: nn.Module, tmp_path: Path) -> None:
    world = composable_world
    expected = {k: v.clone() for k, v in composite_model.state_dict().items()}
    fully_shard(composite_model, mesh=world.mesh)
    full = get_model_state_dict(composite_model, options=FULL)
    assert full.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(full[key], value, msg=key)

    fresh = _sharded(world, seed=99)
    set_model_state_dict(fresh, full, options=FULL)
    for key, value in get_model_state_dict(fresh, options=FULL).items():
        torch.testing.assert_close(value, expected[key], msg=key)


def test_dcp_round_trip(
    composable_world: World, composite_model: nn.Module, tmp_path: Path
) -> None:
    # DCP exchanges its save plans with torch's object collectives, which need numpy.
    pytest.importorskip("numpy", reason="torch.distributed.checkpoint needs numpy")
    world = composable_world
    expected = {k: v.clone() for k, v in composite_model.state_dict().items()}
    fully_shard(composite_model, mesh=world.mesh)
    checkpoint = _shared_dir(tmp_path) / "checkpoint"
    dcp.save(get_model_state_dict(composite_model), checkpoint_id=str(checkpoint))
    loaded = _sharded(world, seed=5)
    state = get_model_state_dict(loaded)
    dcp.load(state, checkpoint_id=str(checkpoint))
    set_model_state_dict(loaded, state)
    for key, value in get_model_state_dict(loaded, options=FULL).items():
        torch.testing.assert_close(value, expected[key], msg=key)
