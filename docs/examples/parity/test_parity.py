"""Parity of a sharded model with its unsharded reference, on 2 real ranks.

``composable_reference_model`` is a second instance of the test's model, built the
same way, so both start equal on every rank. ``assert_training_parity`` trains both
side by side and compares their losses at every step; ``assert_sharded_parity``
compares each rank's shard of every parameter (and gradient) with the reference's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._composable.replicate import replicate
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from pytest_composable import World
from pytest_composable.models import MLP, Transformer
from pytest_composable.parity import (
    FailedOnAnotherRank,
    assert_sharded_parity,
    assert_training_parity,
)

pytestmark = [
    pytest.mark.composable(world_size=2, devices=["cpu"]),
    # Tensor parallelism's row-wise layers return views of their all-reduced output;
    # nothing here changes them in place, which is what this torch warning is about.
    pytest.mark.filterwarnings("ignore:FSDP2-wrapped module"),
]


def test_fully_shard(
    composable_world: World,
    mlp: MLP,
    composable_reference_model: nn.Module,
    composable_input: torch.Tensor,
) -> None:
    fully_shard(mlp, mesh=composable_world.mesh)
    assert_sharded_parity(composable_reference_model, mlp)  # parameters: no gradients yet

    def gradients_too(step: int, reference: nn.Module, sharded: nn.Module) -> None:
        assert_sharded_parity(reference, sharded)  # between backward and the optimizer step

    losses = assert_training_parity(
        composable_reference_model, mlp, composable_input, steps=3, step_hook=gradients_too
    )
    assert len(losses) == 3  # (reference loss, sharded loss) for each step


@pytest.mark.composable(dtypes=["bfloat16"], cast_models=False)
def test_mixed_precision(
    composable_world: World,
    mlp: MLP,
    composable_reference_model: nn.Module,
    composable_input: torch.Tensor,
    composable_dtype: torch.dtype,
) -> None:
    # cast_models=False: both models keep float32 parameters; FSDP computes in bfloat16.
    policy = MixedPrecisionPolicy(param_dtype=composable_dtype, reduce_dtype=torch.float32)
    fully_shard(mlp, mesh=composable_world.mesh, mp_policy=policy)
    # The sharded loss is a bfloat16 tensor: the tolerance is bfloat16's.
    assert_training_parity(composable_reference_model, mlp, composable_input, steps=3)


@pytest.mark.composable(mesh={"tp": 2})
def test_tensor_parallel_transformer(
    composable_world: World,
    transformer: Transformer,
    composable_reference_model: nn.Module,
    composable_input: torch.Tensor,  # token ids, (4, 8)
) -> None:
    # On CPU, tensor-parallel attention needs local_output_for_attn=True.
    Transformer.parallelize(
        transformer, composable_world.mesh["tp"], False, local_output_for_attn=True
    )
    assert_training_parity(composable_reference_model, transformer, composable_input, steps=2)
    assert_sharded_parity(composable_reference_model, transformer)


def test_different_data_on_each_rank(
    composable_world: World, mlp: MLP, composable_reference_model: nn.Module
) -> None:
    composable_world.seed_per_rank()
    batches = [torch.randn(4, 16) for _ in range(3)]  # one per step, other on each rank
    # The sharded model averages gradients over the ranks' data: so must the reference.
    replicate(composable_reference_model)
    fully_shard(mlp, mesh=composable_world.mesh)
    assert_training_parity(composable_reference_model, mlp, batches, steps=3)


def test_a_failure_on_one_rank_raises_on_every_rank(
    composable_world: World, mlp: MLP, composable_reference_model: nn.Module
) -> None:
    fully_shard(mlp, mesh=composable_world.mesh)
    if composable_world.rank == 1:
        with torch.no_grad():
            mlp.out_proj.bias.to_local()[0] += 1.0  # only rank 1's shard differs
    with pytest.raises(AssertionError) as raised:
        assert_sharded_parity(composable_reference_model, mlp)
    if composable_world.rank == 1:
        assert "'out_proj.bias' on rank 1 of 2 differs" in str(raised.value)
    else:
        assert isinstance(raised.value, FailedOnAnotherRank)


def test_checkpoint_round_trip(
    composable_world: World,
    mlp: MLP,
    composable_reference_model: nn.Module,
    composable_input: torch.Tensor,
    composable_shared_tmp_path: Path,  # rank 0's tmp_path, on every rank
) -> None:
    fully_shard(mlp, mesh=composable_world.mesh)
    assert_training_parity(composable_reference_model, mlp, composable_input, steps=2)
    dcp.save(get_model_state_dict(mlp), checkpoint_id=composable_shared_tmp_path)

    restored = MLP(16)  # other values: the generator has moved on
    fully_shard(restored, mesh=composable_world.mesh)
    state = get_model_state_dict(restored)
    dcp.load(state, checkpoint_id=composable_shared_tmp_path)
    set_model_state_dict(restored, state)
    composable_reference_model.zero_grad(set_to_none=True)  # restored has no gradients
    assert_sharded_parity(composable_reference_model, restored)
