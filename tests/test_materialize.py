"""``materialize``: ``to_empty`` plus a deterministic re-init, equal to a seeded CPU build."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import pytest_composable
from pytest_composable import materialize, models
from pytest_composable.rng import default_device
from tests.test_models import MODEL_NAMES, assert_same_tensors, build, hidden_tensors


def all_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()
    yield from hidden_tensors(model)


def model_input(name: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    features = 1 if name == "NestedSequentialModel" else 100
    return torch.randn(4, features, generator=generator)


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_materialize_equals_seeded_cpu_build(name: str, seed: int) -> None:
    expected = build(models, name, seed)
    materialized = materialize(getattr(models, name)("meta"), "cpu", seed)
    assert all(t.device == torch.device("cpu") for t in all_tensors(materialized))
    assert_same_tensors(materialized, expected)
    batch = model_input(name)
    assert torch.equal(materialized(batch), expected(batch))


def test_materialize_returns_the_module_and_takes_a_device_object() -> None:
    model = models.UnitModule("meta")
    assert materialize(model, torch.device("cpu"), seed=3) is model
    assert_same_tensors(model, build(models, "UnitModule", 3))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_materialize_to_meta_stays_meta(name: str) -> None:
    model = materialize(getattr(models, name)("meta"), "meta")
    tensors = list(all_tensors(model))
    assert tensors
    assert all(t.is_meta for t in tensors)


def test_materialize_reinitialises_raw_parameters_and_buffers() -> None:
    """A module with no ``reset_parameters``: floats from N(0, 1), integers zeroed."""

    class Raw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.empty(1000, device="meta"))
            self.register_buffer("steps", torch.empty(3, dtype=torch.long, device="meta"))

    first, again, other = (dict(materialize(Raw(), "cpu", seed).state_dict()) for seed in (1, 1, 2))
    assert torch.equal(first["steps"], torch.zeros(3, dtype=torch.long))
    assert torch.equal(first["weight"], again["weight"])
    assert not torch.equal(first["weight"], other["weight"])
    assert abs(first["weight"].mean().item()) < 0.15
    assert 0.85 < first["weight"].std().item() < 1.15


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_materialize_leaves_global_state_alone(device: str) -> None:
    torch.manual_seed(99)
    rng_before = torch.get_rng_state()
    dtype_before = torch.get_default_dtype()
    device_before = default_device()
    with torch.no_grad():
        materialize(models.CompositeParamModel("meta"), device, seed=4)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    materialize(models.NestedSequentialModel("meta"), device, seed=4)
    assert torch.is_grad_enabled()
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_default_dtype() == dtype_before
    assert default_device() == device_before


def test_materialize_keeps_a_non_default_dtype() -> None:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        materialize(models.UnitModule("meta"), "cpu")
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(previous)


def test_materialize_is_exported() -> None:
    assert pytest_composable.materialize is materialize
    assert "materialize" in pytest_composable.__all__
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = pytest_composable.no_such_name


def test_importing_the_package_and_plugin_does_not_import_torch() -> None:
    code = (
        "import sys, pytest_composable, pytest_composable.plugin\n"
        "from pytest_composable import ModelSpec\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "pytest_composable.materialize\n"
        "assert 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
