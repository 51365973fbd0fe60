"""Meta initialisation: a model built on meta, then materialized with the values of a
CPU build after ``torch.manual_seed(seed)``."""

from __future__ import annotations

import torch

from pytest_composable import materialize
from pytest_composable.models import CompositeParamModel


def test_materialize_equals_a_seeded_cpu_build() -> None:
    model = CompositeParamModel("meta")  # no memory, no values
    materialize(model, "cpu", seed=0)

    torch.manual_seed(0)
    expected = CompositeParamModel("cpu")
    for (name, value), (_, reference) in zip(
        model.state_dict().items(), expected.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(value, reference, rtol=0, atol=0, msg=name)
