"""Parity against a reference, as PyTorch's own FSDP2 tests check it.

``composable_reference_model`` is a second instance of the test's model, built
the same way, so it starts equal; ``pytest_composable.parity`` trains both side
by side and compares losses at every step (``assert_training_parity``) and each
rank's shard of every parameter and gradient (``assert_sharded_parity``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from pytest_composable import World
from pytest_composable.models import MLP, Transformer
from pytest_composable.parity import assert_sharded_parity, assert_training_parity

pytestmark = [
    pytest.mark.composable(devices=["cpu"]),
    pytest.mark.usefixtures("fsdp2_trains_on_cpu"),
    # The row-wise output layers return views of their all-reduced outputs; nothing here
    # changes them in place, which is what this warning of torch's is about.
    pytest.mark.filterwarnings("ignore:FSDP2-wrapped module"),
]


def _batch(step: int) -> torch.Tensor:
    """The same batch on every rank: a plain reference then sees what the ranks see."""
    return torch.randn(8, 16, generator=torch.Generator().manual_seed(step))


def _tokens(step: int) -> torch.Tensor:
    return torch.randint(0, 8, (2, 8), generator=torch.Generator().manual_seed(step))


@pytest.mark.composable(world_size=2)
def test_fully_shard_trains_like_the_reference(
    composable_world: World, mlp: MLP, composable_reference_model: nn.Module
) -> None:
    fully_shard(mlp, mesh=composable_world.mesh)

    def check_gradients(step: int, reference: nn.Module, sharded: nn.Module) -> None:
        assert_sharded_parity(reference, sharded)

    losses = assert_training_parity(
        composable_reference_model, mlp, _batch, steps=5, step_hook=check_gradients
    )
    assert len(losses) == 5
    assert_sharded_parity(composable_reference_model, mlp)


@pytest.mark.composable(world_size=2, dtypes=["bfloat16"], cast_models=False)
def test_mixed_precision_against_the_reference(
    composable_world: World,
    mlp: MLP,
    composable_reference_model: nn.Module,
    composable_dtype: torch.dtype,
) -> None:
    # cast_models=False: both models keep float32 storage; FSDP computes in bfloat16.
    assert mlp.in_proj.weight.dtype == torch.float32
    policy = MixedPrecisionPolicy(param_dtype=composable_dtype, reduce_dtype=torch.float32)
    fully_shard(mlp, mesh=composable_world.mesh, mp_policy=policy)
    # The loss is computed in bfloat16: its tolerance is bfloat16's.
    assert_training_parity(composable_reference_model, mlp, _batch, steps=3)


@pytest.mark.composable(mesh={"dp_replicate": 2, "dp_shard": 2})
def test_hsdp_trains_like_the_reference(
    composable_world: World, mlp: MLP, composable_reference_model: nn.Module
) -> None:
    fully_shard(mlp, mesh=composable_world.mesh)
    assert_training_parity(composable_reference_model, mlp, _batch, steps=3)
    assert_sharded_parity(composable_reference_model, mlp)


@pytest.mark.composable(mesh={"dp": 2, "tp": 2})
def test_fsdp_tp_transformer_trains_like_the_reference(
    composable_world: World, transformer: Transformer, composable_reference_model: nn.Module
) -> None:
    mesh = composable_world.mesh
    # On CPU, tensor-parallel attention needs local_output_for_attn=True (torch has no
    # CPU sharding rule for flash attention).
    Transformer.parallelize(transformer, mesh["tp"], False, local_output_for_attn=True)
    for block in transformer.layers:
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(transformer, mesh=mesh["dp"])
    assert_training_parity(composable_reference_model, transformer, _tokens, steps=3)
    assert_sharded_parity(composable_reference_model, transformer)


@pytest.mark.composable(world_size=2)
def test_checkpoint_round_trip_keeps_the_shards(
    composable_world: World,
    mlp: MLP,
    composable_reference_model: nn.Module,
    composable_shared_tmp_path: object,
) -> None:
    import torch.distributed.checkpoint as dcp

    # DCP exchanges its save plans with torch's object collectives, which need numpy.
    pytest.importorskip("numpy", reason="torch.distributed.checkpoint needs numpy")
    fully_shard(mlp, mesh=composable_world.mesh)
    assert_training_parity(composable_reference_model, mlp, _batch, steps=2)
    dcp.save(get_model_state_dict(mlp), checkpoint_id=composable_shared_tmp_path)

    restored = MLP(16)  # other values: the seed has moved on
    fully_shard(restored, mesh=composable_world.mesh)
    state = get_model_state_dict(restored)
    dcp.load(state, checkpoint_id=composable_shared_tmp_path)
    set_model_state_dict(restored, state)
    composable_reference_model.zero_grad(set_to_none=True)
    assert_sharded_parity(composable_reference_model, restored)
