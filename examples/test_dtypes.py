"""Every model in several dtypes, on every device: ``composable_dtype``.

A test that names ``composable_dtype`` runs once per dtype (ids
``test_x[composite_model-cpu-bfloat16]``: model, device, dtype), and its models and
input come in that dtype, the float32 values converted. The marker's ``dtypes=``
is what a test runs; without it, ``--composable-dtype`` (default float32) chooses.
``cast_models=False`` keeps the models float32 for a mixed-precision test, where
the dtype is the one ``torch.autocast`` computes in.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_composable import ModelSpec

pytestmark = pytest.mark.composable(dtypes=["float32", "bfloat16", "float64"])

# How far a forward pass in a dtype may be from the float32 one.
TOLERANCE = {torch.float32: 0.0, torch.bfloat16: 5e-2, torch.float64: 1e-5}


def test_forward_and_backward_in_the_dtype(
    composable_model: nn.Module,
    composable_model_spec: ModelSpec,
    composable_input: torch.Tensor,
    composable_dtype: torch.dtype,
    composable_device: torch.device,
    composable_seed: int,
) -> None:
    assert {p.dtype for p in composable_model.parameters()} == {composable_dtype}
    output = composable_model(composable_input)
    assert output.dtype == composable_dtype
    output.sum().backward()
    assert all(p.grad is not None for p in composable_model.parameters())
    if composable_device.type == "meta":
        return  # no values to compare
    # The same model and input in float32, built as the plugin builds them.
    torch.manual_seed(composable_seed)
    reference = composable_model_spec.build(torch.device("cpu"))
    torch.manual_seed(composable_seed)
    batch = composable_model_spec.make_input(torch.device("cpu"), composable_input.shape[0])
    tolerance = TOLERANCE[composable_dtype]
    torch.testing.assert_close(
        output.float().cpu(), reference(batch), rtol=tolerance, atol=tolerance
    )


@pytest.mark.composable(dtypes=["bfloat16"], cast_models=False, devices=["cpu"])
def test_autocast_keeps_float32_storage(
    composite_model: nn.Module, composable_input: torch.Tensor, composable_dtype: torch.dtype
) -> None:
    with torch.autocast("cpu", dtype=composable_dtype):
        output = composite_model(composable_input)
    assert output.dtype == composable_dtype
    output.float().sum().backward()
    assert {p.grad.dtype for p in composite_model.parameters() if p.grad is not None} == {
        torch.float32
    }
