"""The dtype axis: ``composable_dtype`` runs a test once per dtype.

Ids put the dtype after the device (``test_x[cpu-bfloat16]``). The test's models and
floating inputs come in that dtype: built in float32 (the same values), then
converted; ``cast_models=False`` keeps them float32 for mixed precision.
"""

from __future__ import annotations

import pytest
import torch

from pytest_composable import World
from pytest_composable.models import MLP

pytestmark = pytest.mark.composable(devices=["cpu"])


def test_in_the_sessions_dtypes(
    mlp: MLP, composable_input: torch.Tensor, composable_dtype: torch.dtype
) -> None:
    # --composable-dtype chooses (float32 by default): test_in_the_sessions_dtypes[cpu-float32]
    assert composable_input.dtype == composable_dtype
    assert mlp(composable_input).dtype == composable_dtype


@pytest.mark.composable(dtypes=["float32", "bf16", "float64"])  # whatever the session chose
def test_the_float32_build_converted(
    mlp: MLP, composable_dtype: torch.dtype, composable_seed: int
) -> None:
    torch.manual_seed(composable_seed)
    built_in_float32 = MLP(16)
    assert mlp.in_proj.weight.dtype == composable_dtype
    torch.testing.assert_close(
        mlp.in_proj.weight, built_in_float32.in_proj.weight.to(composable_dtype)
    )


@pytest.mark.composable(dtypes=["bfloat16"], cast_models=False)
def test_autocast(mlp: MLP, composable_input: torch.Tensor, composable_dtype: torch.dtype) -> None:
    # Mixed precision: float32 storage; the dtype under test is the compute dtype.
    assert mlp.in_proj.weight.dtype == composable_input.dtype == torch.float32
    with torch.autocast("cpu", dtype=composable_dtype):
        assert mlp(composable_input).dtype == composable_dtype


# Every axis at once: test_matrix[cpu-bfloat16-ws2], [cpu-bfloat16-ws4], [cpu-float64-ws2]...
@pytest.mark.composable(dtypes=["bf16", "fp64"], world_size=[2, 4])
def test_matrix(composable_fake_world: World, mlp: MLP, composable_dtype: torch.dtype) -> None:
    assert composable_fake_world.world_size in (2, 4)
    assert mlp.in_proj.weight.dtype == composable_dtype
