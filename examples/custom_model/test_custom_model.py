"""Every model, the one ``conftest.py`` here adds included, with inputs of several sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.mark.parametrize("composable_batch_size", [2, 8, 20])
def test_forward_keeps_the_batch(
    composable_model: nn.Module, composable_input: torch.Tensor, composable_batch_size: int
) -> None:
    assert composable_input.shape[0] == composable_batch_size
    assert composable_model(composable_input).shape[0] == composable_batch_size


@pytest.mark.composable(models=["tiny_mlp"])
def test_tiny_mlp_runs_on_every_device(
    composable_model: nn.Module, composable_input: torch.Tensor, composable_device: torch.device
) -> None:
    out = composable_model(composable_input)
    assert (out.shape, out.device) == ((4, 2), composable_device)
