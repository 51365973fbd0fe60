"""A model of your own next to the built-in ones, for the tests in this directory only.

``pytest_composable_models`` works like a conftest fixture: the models a
``conftest.py`` adds join ``composable_model`` for the tests under its
directory, and nowhere else.

Each hook implementation is marked ``optionalhook=True``: pytest then accepts it
when the plugin, and so its hook specifications, is not loaded
(``pytest -p no:composable``), instead of stopping with "unknown hook".
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_composable import ModelSpec


class TinyMLP(nn.Module):
    """``(B, 8) -> (B, 2)``: two linear layers."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.l1 = nn.Linear(8, 16, device=device)
        self.l2 = nn.Linear(16, 2, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)))  # type: ignore[no-any-return]


def _tiny_input(device: torch.device, batch: int) -> torch.Tensor:
    return torch.randn(batch, 8, device=device)


@pytest.hookimpl(optionalhook=True)
def pytest_composable_models(config: pytest.Config) -> list[ModelSpec]:
    return [ModelSpec("tiny_mlp", TinyMLP, _tiny_input)]
