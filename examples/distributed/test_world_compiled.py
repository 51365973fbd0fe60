"""``torch.compile`` on a ``fully_shard``-ed model, on 2 real ranks (CPU, gloo).

The compiled FSDP2 model computes the same gradients as the unsharded eager model
that sees every rank's batch. Runs under plain ``pytest`` (warm or cold rank start)
and under ``torchrun --nproc-per-node=2 -m pytest``. After each world test the
plugin resets ``torch._dynamo`` on the ranks, so each test compiles from a clean
slate (the compiled kernels themselves come from inductor's on-disk cache).

Inductor on CPU needs a C++ compiler; the first compile on a machine takes tens of
seconds, hence the longer deadline.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

from pytest_composable import World

pytestmark = [
    pytest.mark.composable(devices=["cpu"], world_size=2, timeout=600),
    # Importing inductor on a recent torch warns about TorchScript's own deprecation, and
    # without numpy (as torch alone installs) about numpy.
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated"),
    pytest.mark.filterwarnings("ignore:Failed to initialize NumPy"),
    # torch 2.6's FSDP2 cannot be compiled on the CPU: its CPU stream has no record_event.
    pytest.mark.skipif(
        torch.torch_version.TorchVersion(torch.__version__) < (2, 7),
        reason="compiling a fully_shard-ed model on the CPU needs a torch newer than 2.6",
    ),
]


def _batches(world_size: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    return [torch.randn(4, 100, generator=generator) for _ in range(world_size)]


def _check_grads(sharded: nn.Module, reference: nn.Module) -> None:
    for (name, param), (_, expected) in zip(
        sharded.named_parameters(), reference.named_parameters(), strict=True
    ):
        assert param.grad is not None, name
        assert expected.grad is not None, name
        torch.testing.assert_close(param.grad.full_tensor(), expected.grad, msg=name)


def _reference_grads(reference: nn.Module, world_size: int) -> None:
    """What FSDP's gradient reduce-scatter computes: the loss averaged over the ranks'
    batches, on the whole model."""
    (sum(reference(b).sum() for b in _batches(world_size)) / world_size).backward()


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_compiled_fully_shard_matches_eager(
    composable_world: World, unit_module: nn.Module, backend: str
) -> None:
    # Imported here, on the ranks: the main process, which only collects, need not load it.
    import torch._inductor.config

    world = composable_world
    reference = copy.deepcopy(unit_module)
    fully_shard(unit_module, mesh=world.mesh)
    compiled = torch.compile(unit_module, backend=backend)
    # Each rank compiles in its own process: no pool of compile workers (both ranks
    # would start one on the same cores).
    with torch._inductor.config.patch(compile_threads=1):
        compiled(_batches(world.world_size)[world.rank]).sum().backward()
    _reference_grads(reference, world.world_size)
    _check_grads(unit_module, reference)
