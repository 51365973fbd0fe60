"""The composable test models.

These are the six models that PyTorch's own composable-API tests use
(``torch.testing._internal.common_dist_composable``), written for this project.
They keep upstream's constructor signatures, attribute names, submodule order,
parameter and buffer names, shapes, registration and construction order, so

* ``named_parameters()``, ``named_modules()`` and ``state_dict()`` keys are
  identical to upstream's, and
* after ``torch.manual_seed(s)`` a model built here on CPU holds exactly the
  tensors upstream's would.

Deliberate differences from upstream:

* :class:`NestedSequentialModel` has a real ``forward`` (input ``(B, 1)``,
  output ``(B, 4)``). Upstream's ``forward`` is a local function inside
  ``__init__``, so calling the upstream model raises ``NotImplementedError``.
* :class:`FakeSequential` still keeps its layers *unregistered* (that is its
  purpose: module-wrap-policy traversal tests must not see them), but
  ``.to()``, ``.to_empty()``, ``.cuda()``, ``.float()`` and every other
  ``nn.Module._apply`` based conversion also reach those layers, so the model
  still runs after a move. Upstream leaves them behind (on meta after
  ``to_empty``).
* Full type hints and docstrings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from pytest_composable._mlp import MLP, MLPStack
from pytest_composable._transformer import (
    Attention,
    FeedForward,
    ModelArgs,
    Transformer,
    TransformerBlock,
)

__all__ = [
    "MLP",
    "Attention",
    "CompositeModel",
    "CompositeParamModel",
    "FakeSequential",
    "FeedForward",
    "MLPStack",
    "ModelArgs",
    "NestedSequentialModel",
    "Transformer",
    "TransformerBlock",
    "UnitModule",
    "UnitParamModule",
]

DeviceLike = torch.device | str | int | None


class UnitModule(nn.Module):
    """``l1 -> seq(ReLU, Linear, ReLU) -> l2``, all ``100 x 100``: 30,300 parameters.

    The unit that wrap policies such as ``ModuleWrapPolicy({UnitModule})`` and
    per-module ``fully_shard`` calls target. Input ``(B, 100)``, output ``(B, 100)``.
    """

    def __init__(self, device: DeviceLike) -> None:
        super().__init__()
        self.l1 = nn.Linear(100, 100, device=device)
        self.seq = nn.Sequential(
            nn.ReLU(),
            nn.Linear(100, 100, device=device),
            nn.ReLU(),
        )
        self.l2 = nn.Linear(100, 100, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.seq(self.l1(x)))  # type: ignore[no-any-return]


class CompositeModel(nn.Module):
    """``l1 -> u1 -> u2 -> l2`` with two :class:`UnitModule`: 80,800 parameters.

    Input ``(B, 100)``, output ``(B, 100)``.
    """

    def __init__(self, device: DeviceLike) -> None:
        super().__init__()
        self.l1 = nn.Linear(100, 100, device=device)
        self.u1 = UnitModule(device)
        self.u2 = UnitModule(device)
        self.l2 = nn.Linear(100, 100, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.u2(self.u1(self.l1(x))))  # type: ignore[no-any-return]


class UnitParamModule(nn.Module):
    """``l -> seq`` followed by a matmul with a raw parameter ``p``: 30,200 parameters.

    ``p`` is a plain ``nn.Parameter`` (``torch.randn``) with no
    ``reset_parameters``. Input ``(B, 100)``, output ``(B, 100)``.
    """

    def __init__(self, device: DeviceLike) -> None:
        super().__init__()
        self.l = nn.Linear(100, 100, device=device)
        self.seq = nn.Sequential(
            nn.ReLU(),
            nn.Linear(100, 100, device=device),
            nn.ReLU(),
        )
        self.p = nn.Parameter(torch.randn((100, 100), device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mm(self.seq(self.l(x)), self.p)


class CompositeParamModel(nn.Module):
    """``l -> u1 -> u2`` then a matmul with raw parameter ``p``, plus a persistent ``buffer``.

    80,700 parameters and a 10,000-element buffer. The module's own ``p`` and
    ``buffer`` come before its children's in ``named_parameters()`` and
    ``state_dict()``. Input ``(B, 100)``, output ``(B, 100)``.
    """

    def __init__(self, device: DeviceLike) -> None:
        super().__init__()
        self.l = nn.Linear(100, 100, device=device)
        self.u1 = UnitModule(device)
        self.u2 = UnitModule(device)
        self.p = nn.Parameter(torch.randn((100, 100), device=device))
        self.register_buffer("buffer", torch.randn((100, 100), device=device), persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.u2(self.u1(self.l(x)))
        b = self.p
        return torch.mm(a, b)


class FakeSequential(nn.Module):
    """Runs ``modules`` in order *without registering them*.

    This is what makes :class:`NestedSequentialModel` useful for wrap-policy
    traversal tests: ``ModuleWrapPolicy({nn.Sequential})`` and
    ``named_modules()`` do not see the layers held here, and neither do
    ``parameters()`` or ``state_dict()``.

    Unlike upstream, every ``nn.Module._apply`` based conversion (``.to()``,
    ``.to_empty()``, ``.cuda()``, ``.double()``, ...) is also applied to the held
    layers, so ``forward`` keeps working after the model is moved.
    """

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self._module_sequence = list(modules)

    def hidden_modules(self) -> Iterator[nn.Module]:
        """The layers this module runs but does not register, in order."""
        return iter(self._module_sequence)

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
    ) -> FakeSequential:
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        if recurse:
            for module in self._module_sequence:
                module._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self._module_sequence:
            x = module(x)
        return x


class NestedSequentialModel(nn.Module):
    """Nested ``nn.Sequential`` and :class:`FakeSequential` for traversal-order tests.

    21 registered parameters and 18 held unregistered by the
    :class:`FakeSequential` layers. The nesting catches differences between
    valid traversals (BFS and DFS variations) of wrap policies.

    Unlike upstream, ``forward`` is a real method: input ``(B, 1)``, output
    ``(B, 4)``.
    """

    def __init__(self, device: DeviceLike) -> None:
        super().__init__()
        self.seq1 = nn.Sequential(
            nn.Linear(1, 1, device=device),
            FakeSequential(
                nn.Linear(1, 1, device=device),
                nn.ReLU(),
                FakeSequential(
                    nn.Linear(1, 1, device=device),
                ),
                nn.ReLU(),
            ),
            nn.Linear(1, 2, device=device),
        )
        self.lin = nn.Linear(2, 2, device=device)
        self.seq2 = nn.Sequential(
            nn.ReLU(),
            nn.Linear(2, 3, device=device),
            FakeSequential(
                nn.Linear(3, 2, bias=False, device=device),
                nn.Linear(2, 4, bias=False, device=device),
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq2(self.lin(self.seq1(x)))  # type: ignore[no-any-return]
