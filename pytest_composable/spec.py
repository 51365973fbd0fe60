"""``ModelSpec``: how the plugin builds a model and its input (torch-free to import)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ModelSpec"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ModelSpec:
    """A model the ``composable_model`` fixture is parametrized over.

    ``name`` is the model's test-id part (``test_x[<name>-cpu]``) and the name
    the ``composable(models=[...])`` marker selects it by; it must be a Python
    identifier and unique across all registered models.

    ``build(device)`` returns a fresh ``nn.Module``. The plugin calls it with
    ``torch.device("cpu")`` inside a CPU generator seeded with the session's
    seed and moves the result to the test's device (on ``meta`` it is called
    with the meta device), so a model holds the same values on every device.

    ``make_input(device, batch)`` returns an input batch of ``batch`` rows for
    the model; the plugin calls it the same way as ``build``.
    """

    name: str
    build: Callable[[torch.device], nn.Module]
    make_input: Callable[[torch.device, int], torch.Tensor]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"ModelSpec name must be a Python identifier, got {self.name!r}")
        if not callable(self.build) or not callable(self.make_input):
            raise TypeError(f"ModelSpec {self.name!r}: build and make_input must be callables")
