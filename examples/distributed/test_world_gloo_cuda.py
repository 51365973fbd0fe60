"""gloo with CUDA tensors, as upstream's GPU ``replicate`` tests use it.

One rank per GPU; the collectives go through gloo (the CPU backend), the
tensors stay on the GPU. On a machine without CUDA these tests are skipped,
saying so.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable.replicate import replicate

from pytest_composable import World

pytestmark = pytest.mark.composable(devices=["cuda"], backend="gloo", world_size=1)


def test_all_reduce_of_a_cuda_tensor(composable_world: World) -> None:
    assert composable_world.backend == "gloo"
    assert composable_world.device.type == "cuda"
    value = torch.ones(4, device=composable_world.device)
    dist.all_reduce(value)
    assert value.device.type == "cuda"
    torch.testing.assert_close(value.cpu(), torch.full((4,), float(composable_world.world_size)))


def test_replicate_on_the_gpu(composable_world: World, composite_model: nn.Module) -> None:
    assert next(composite_model.parameters()).device == composable_world.device
    replicate(composite_model, device_ids=[composable_world.device.index])
    composite_model(torch.randn(4, 100, device=composable_world.device)).sum().backward()
    assert all(p.grad is not None for p in composite_model.parameters())
