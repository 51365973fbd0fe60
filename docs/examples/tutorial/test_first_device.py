"""Tutorial, step 1: a test that runs once per device.

Name a model fixture and the test runs on every selected device: cpu, meta and
the first device of each accelerator type this machine has.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed._composable import checkpoint


def test_checkpoint_keeps_fqns(composite_model: nn.Module) -> None:
    names = [name for name, _ in composite_model.named_parameters()]
    checkpoint(composite_model.u1)
    assert [name for name, _ in composite_model.named_parameters()] == names


def test_every_model_runs(
    composable_model: nn.Module, composable_input: torch.Tensor, composable_device: torch.device
) -> None:
    output = composable_model(composable_input)
    assert output.device.type == composable_device.type
    assert output.shape[0] == composable_input.shape[0]  # 4 rows unless the test chooses
