"""The hooks of ``conftest.py`` beside this file at work (run as its own session:
``pytest docs/examples/hooks``, so that the devices hook is loaded at start-up)."""

from __future__ import annotations

import torch
from torch import nn


def test_every_model(composable_model: nn.Module, composable_input: torch.Tensor) -> None:
    composable_model(composable_input)  # the five built-ins and tiny_mlp


def test_no_meta(composable_device: torch.device) -> None:
    assert composable_device.type != "meta"
