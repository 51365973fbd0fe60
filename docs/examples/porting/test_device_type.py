"""Ported from ``instantiate_device_type_tests`` with ``@dtypes`` and ``@onlyCPU``.

One function per test: the plugin parametrizes it over the selected devices
(``composable_device``, or a model fixture) and, where it names
``composable_dtype``, over the marker's dtypes. Ids: ``test_x[cpu-bfloat16]``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.mark.composable(dtypes=["float32", "bfloat16"])
def test_forward_keeps_the_dtype(
    composite_model: nn.Module, composable_input: torch.Tensor, composable_dtype: torch.dtype
) -> None:
    # The model and its input are built in float32 (same values), then converted.
    assert composite_model.l1.weight.dtype == composable_dtype
    assert composite_model(composable_input).dtype == composable_dtype


@pytest.mark.composable(devices=["cpu"])  # was @onlyCPU
def test_cpu_only(composable_device: torch.device) -> None:
    assert torch.ones(2, device=composable_device).sum().item() == 2.0


@pytest.mark.composable(dtypes=["bfloat16"], cast_models=False)
def test_autocast_compute_dtype(
    unit_module: nn.Module, composable_input: torch.Tensor, composable_dtype: torch.dtype
) -> None:
    # Mixed precision: float32 storage, the dtype under test is the compute dtype.
    assert unit_module.l1.weight.dtype == torch.float32
    if composable_input.device.type == "meta":
        pytest.skip("autocast needs values")
    with torch.autocast(composable_input.device.type, dtype=composable_dtype):
        assert unit_module(composable_input).dtype == composable_dtype
