"""State-dict round trips over every composable model.

A checkpoint saved from the fixture model and loaded into a model built with
another seed (or allocated on ``meta`` and loaded with ``assign=True``) gives
the same tensors and the same outputs. ``nested_sequential_model`` is the
exception by design: its ``FakeSequential`` layers are unregistered, so they
are not in the state dict and a round trip does not carry them.

On ``meta`` the comparisons check shapes and dtypes only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from pytest_composable import ModelSpec
from pytest_composable.models import FakeSequential

if TYPE_CHECKING:
    from conftest import ModelCheck, TensorCheck

FULLY_REGISTERED = ["unit_module", "composite_model", "unit_param_module", "composite_param_model"]


def _build_with_seed(spec: ModelSpec, device: torch.device, seed: int) -> nn.Module:
    """``spec``'s model built on CPU after ``torch.manual_seed(seed)``, moved to ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build(torch.device("cpu")).to(device)


def _save_and_load(model: nn.Module, path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    torch.save(model.state_dict(), path)
    loaded: dict[str, torch.Tensor] = torch.load(path, map_location=device, weights_only=True)
    return loaded


@pytest.mark.composable(models=FULLY_REGISTERED)
def test_round_trip_into_model_with_other_seed(
    composable_model: nn.Module,
    composable_model_spec: ModelSpec,
    composable_input: torch.Tensor,
    composable_device: torch.device,
    composable_seed: int,
    tmp_path: Path,
    assert_match: TensorCheck,
    assert_models_match: ModelCheck,
) -> None:
    fresh = _build_with_seed(composable_model_spec, composable_device, composable_seed + 1)
    if composable_device.type != "meta":
        with pytest.raises(AssertionError):  # the fresh model really starts out different
            assert_models_match(fresh, composable_model)

    state = _save_and_load(composable_model, tmp_path / "model.pt", composable_device)
    result = fresh.load_state_dict(state)

    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert_models_match(fresh, composable_model, exact=True)
    assert_match(fresh(composable_input), composable_model(composable_input), exact=True)


@pytest.mark.composable(models=FULLY_REGISTERED)
def test_load_into_meta_skeleton_with_assign(
    composable_model: nn.Module,
    composable_model_spec: ModelSpec,
    composable_input: torch.Tensor,
    composable_device: torch.device,
    assert_match: TensorCheck,
    assert_models_match: ModelCheck,
) -> None:
    skeleton = composable_model_spec.build(torch.device("meta"))

    skeleton.load_state_dict(composable_model.state_dict(), assign=True)

    assert {t.device for t in skeleton.state_dict().values()} == {composable_device}
    assert_models_match(skeleton, composable_model, exact=True)
    assert_match(skeleton(composable_input), composable_model(composable_input), exact=True)


def _hidden_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters of the layers ``FakeSequential`` modules hold without registering them."""
    hidden: list[nn.Parameter] = []
    for fake in (m for m in module.modules() if isinstance(m, FakeSequential)):
        for layer in fake.hidden_modules():
            hidden.extend(layer.parameters())
            hidden.extend(_hidden_parameters(layer))
    return hidden


@pytest.mark.composable(models=["nested_sequential_model"])
def test_fake_sequential_layers_are_not_in_state_dict(composable_model: nn.Module) -> None:
    state = composable_model.state_dict(keep_vars=True)
    hidden = _hidden_parameters(composable_model)

    assert list(state) == [name for name, _ in composable_model.named_parameters()]
    assert sum(t.numel() for t in state.values()) == 21
    assert sum(p.numel() for p in hidden) == 18  # held by FakeSequential, run by forward
    assert not {id(p) for p in hidden} & {id(t) for t in state.values()}


@pytest.mark.composable(models=["nested_sequential_model"], devices=["cpu"])
def test_round_trip_does_not_carry_fake_sequential_layers(
    composable_model: nn.Module,
    composable_model_spec: ModelSpec,
    composable_input: torch.Tensor,
    composable_device: torch.device,
    composable_seed: int,
    assert_models_match: ModelCheck,
) -> None:
    fresh = _build_with_seed(composable_model_spec, composable_device, composable_seed + 1)

    fresh.load_state_dict(composable_model.state_dict())

    assert_models_match(fresh, composable_model, exact=True)  # every registered tensor
    assert not torch.allclose(fresh(composable_input), composable_model(composable_input))
