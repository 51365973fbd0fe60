"""Composable DDP (``replicate``) on a one-rank gloo world, for every composable model.

``replicate(model)`` keeps parameter FQNs and state-dict keys, and a forward,
backward and optimizer step give what the plain model gives.

CPU only: the process group is gloo.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn
from torch.distributed._composable import replicate

if TYPE_CHECKING:
    from conftest import FqnsOf, TrainStepCheck

pytestmark = [pytest.mark.composable(devices=["cpu"]), pytest.mark.usefixtures("process_group")]


def test_replicate_keeps_fqns(composable_model: nn.Module, fqns: FqnsOf) -> None:
    cls = type(composable_model)
    before = fqns(composable_model)

    replicate(composable_model)

    assert isinstance(composable_model, cls)  # same object, its class plus a DDP mixin
    assert fqns(composable_model) == before


def test_replicate_matches_plain_training_step(
    composable_model: nn.Module,
    composable_input: torch.Tensor,
    assert_train_step_matches: TrainStepCheck,
) -> None:
    reference = copy.deepcopy(composable_model)

    replicate(composable_model)

    assert_train_step_matches(composable_model, reference, composable_input)
