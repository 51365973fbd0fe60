"""Meta-device initialisation: build on ``meta``, then ``materialize`` on the test's device.

For every model, a meta-built model materialized with the session's seed holds
exactly the tensors of the eagerly built fixture model, so it computes exactly
the same outputs (``nested_sequential_model``'s unregistered ``FakeSequential``
layers included).

On ``meta`` itself ``materialize`` only allocates (there is nothing to
initialise), and the comparisons check shapes and dtypes only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from pytest_composable import ModelSpec, materialize

if TYPE_CHECKING:
    from conftest import ModelCheck, TensorCheck


def test_materialize_equals_eager_model(
    composable_model: nn.Module,
    composable_model_spec: ModelSpec,
    composable_input: torch.Tensor,
    composable_device: torch.device,
    composable_seed: int,
    assert_match: TensorCheck,
    assert_models_match: ModelCheck,
) -> None:
    skeleton = composable_model_spec.build(torch.device("meta"))
    assert all(t.is_meta for t in skeleton.state_dict().values())

    model = materialize(skeleton, composable_device, composable_seed)

    assert model is skeleton
    assert {t.device for t in model.state_dict().values()} == {composable_device}
    assert_models_match(model, composable_model, exact=True)
    assert_match(model(composable_input), composable_model(composable_input), exact=True)


def test_materialize_leaves_callers_rng_alone(
    composable_model_spec: ModelSpec, composable_device: torch.device, composable_seed: int
) -> None:
    before = torch.get_rng_state()

    materialize(
        composable_model_spec.build(torch.device("meta")), composable_device, composable_seed
    )

    assert torch.equal(torch.get_rng_state(), before)
