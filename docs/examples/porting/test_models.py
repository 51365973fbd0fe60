"""Ported from tests that import ``MLP``, ``MLPStack``, ``ModelArgs`` and ``Transformer``
from ``torch.testing._internal``.

The same classes, with upstream's names, signatures and values, are public in
``pytest_composable.models``; the fixtures ``mlp``, ``mlp_stack`` and ``transformer``
build small ones on every selected device.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from pytest_composable import World
from pytest_composable.models import MLPStack, ModelArgs, Transformer


@pytest.mark.composable(models=["mlp", "mlp_stack", "transformer"])
def test_every_fsdp2_model(composable_model: nn.Module, composable_input: torch.Tensor) -> None:
    # Inputs: (4, 16) floats for the MLPs, (4, 8) token ids for the Transformer.
    output = composable_model(composable_input)
    assert output.shape[0] == composable_input.shape[0]


def test_a_transformer_of_your_own_size(composable_device: torch.device) -> None:
    torch.manual_seed(0)
    args = ModelArgs(n_layers=1, dim=32, n_heads=2, dropout_p=0.0)
    model = Transformer(args).to(composable_device)
    tokens = torch.randint(0, args.vocab_size, (2, 8), device=composable_device)
    assert model(tokens).shape == (2, 8, args.vocab_size)


@pytest.mark.composable(devices=["cpu"], mesh={"dp": 2, "tp": 2})
def test_mlp_stack_parallelize(composable_fake_world: World, mlp_stack: MLPStack) -> None:
    mesh = composable_fake_world.mesh
    mlp_stack.parallelize(mesh["tp"], mesh["dp"], use_activation_checkpointing=False)
    weight = mlp_stack[0].in_proj.weight
    assert isinstance(weight, DTensor)
    assert weight.device_mesh.mesh_dim_names == ("dp", "tp")
