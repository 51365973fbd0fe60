"""What ``.ci/gpu-check`` runs on a GPU: worlds with nccl and with gloo on CUDA tensors,
``fully_shard`` on cuda in a fake and in a real world, ``materialize`` on cuda, and that
the main process had not initialised CUDA when the ranks started."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from pytest_composable import World, materialize
from pytest_composable.models import CompositeModel


@pytest.mark.composable(world_size=1, backend="nccl")
def test_nccl_world(composable_world: World) -> None:
    assert composable_world.backend == "nccl"
    value = torch.ones(2, device=composable_world.device)
    dist.all_reduce(value)
    torch.testing.assert_close(value.cpu(), torch.ones(2))


@pytest.mark.composable(world_size=1, backend="gloo")
def test_gloo_world_on_cuda_tensors(composable_world: World) -> None:
    assert composable_world.backend == "gloo"
    value = torch.ones(2, device=composable_world.device)
    dist.all_reduce(value)
    assert value.device.type == "cuda"


@pytest.mark.composable(world_size=1)
def test_fully_shard_real_world(composable_world: World, composite_model: nn.Module) -> None:
    fully_shard(composite_model, mesh=composable_world.mesh)
    composite_model(torch.randn(4, 100, device=composable_world.device)).sum().backward()


@pytest.mark.composable(world_size=4)
def test_fully_shard_fake_world(composable_fake_world: World, composite_model: nn.Module) -> None:
    fully_shard(composite_model, mesh=composable_fake_world.mesh)
    assert composable_fake_world.mesh.device_type == "cuda"


def test_materialize_on_cuda(composable_device: torch.device) -> None:
    with torch.device("meta"):
        model = CompositeModel(torch.device("meta"))
    materialize(model, composable_device)
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_main_process_had_no_cuda_context_when_the_ranks_started(
    cuda_in_main: list[bool],
) -> None:
    assert cuda_in_main == [False]
