"""Activation checkpointing with the composable ``checkpoint()`` API.

``checkpoint(module)`` installs hooks on ``module`` in place: the model keeps
its classes, its parameter FQNs and its state-dict keys, computes the same
outputs and gradients, and recomputes the checkpointed forward during backward.

These run on every selected device; on ``meta`` the numeric comparisons check
shapes and dtypes only (meta tensors hold no values).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn
from torch.distributed._composable import checkpoint

from pytest_composable.models import UnitModule

if TYPE_CHECKING:
    from conftest import FqnsOf, ModelCheck, TrainStepCheck

pytestmark = pytest.mark.composable(models=["composite_model", "composite_param_model"])


def _units(model: nn.Module) -> list[nn.Module]:
    """The ``UnitModule`` submodules (``u1``, ``u2``) of a composite model."""
    return [m for m in model.modules() if isinstance(m, UnitModule) and m is not model]


def test_checkpoint_keeps_fqns_and_adds_no_wrappers(
    composable_model: nn.Module, fqns: FqnsOf
) -> None:
    before = fqns(composable_model)
    types = [type(m) for m in composable_model.modules()]
    units = _units(composable_model)
    assert [id(u) for u in units] == [id(composable_model.u1), id(composable_model.u2)]

    for unit in units:
        assert checkpoint(unit) is unit

    assert fqns(composable_model) == before
    assert [type(m) for m in composable_model.modules()] == types  # no wrapper, no class swap
    assert composable_model.u1 is units[0]


def test_checkpoint_matches_plain_training_step(
    composable_model: nn.Module,
    composable_input: torch.Tensor,
    assert_train_step_matches: TrainStepCheck,
) -> None:
    reference = copy.deepcopy(composable_model)
    for unit in _units(composable_model):
        checkpoint(unit)

    assert_train_step_matches(composable_model, reference, composable_input)


def test_checkpoint_recomputes_forward_in_backward(
    composable_model: nn.Module, composable_input: torch.Tensor, assert_models_match: ModelCheck
) -> None:
    reference = copy.deepcopy(composable_model)
    u1, _ = _units(composable_model)
    calls: list[str] = []
    u1.get_submodule("l1").register_forward_hook(lambda *_: calls.append("u1.l1"))
    checkpoint(u1)

    out = composable_model(composable_input)
    assert calls == ["u1.l1"]
    out.sum().backward()
    assert calls == ["u1.l1", "u1.l1"]  # u1's forward ran again to rebuild its activations

    reference(composable_input).sum().backward()
    assert_models_match(composable_model, reference, grads=True)


def test_checkpoint_applies_once_per_module(composable_model: nn.Module) -> None:
    u1, _ = _units(composable_model)
    checkpoint(u1)
    with pytest.raises(AssertionError, match="only be applied to a module once"):
        checkpoint(u1)
