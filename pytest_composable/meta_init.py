"""Meta initialisation: ``materialize`` a meta-built module with deterministic values."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .models import FakeSequential
from .rng import preserved_global_state, seeded_cpu_rng

__all__ = ["materialize"]


def materialize(module: nn.Module, device: torch.device | str, seed: int = 0) -> nn.Module:
    """Allocate ``module`` on ``device`` (``to_empty``) and re-initialise it deterministically.

    Every parameter and buffer is re-initialised, raw ones included: a module
    with a ``reset_parameters()`` method is reset with it; the parameters and
    buffers of a module without one (such as ``CompositeParamModel.p`` and
    ``.buffer``, which upstream leaves as uninitialised memory after
    ``to_empty``) are filled from a standard normal distribution (floating
    point) or with zeros (integers, bools).

    Modules are visited depth first, children before their parent's own
    tensors, in registration order, the layers a ``FakeSequential`` holds
    included, and each module once. That is the order in which the built-in
    models create their tensors, so for every built-in model, materializing a
    meta-built model gives exactly the values of the model built on CPU after
    ``torch.manual_seed(seed)``, on every device. Values are drawn from the CPU
    generator and then moved to ``device``; the caller's generator state,
    default dtype, default device and grad mode are left as they were.

    Returns ``module``. On ``meta`` there is nothing to initialise, so this is
    only ``to_empty``.
    """
    target = torch.device(device)
    with preserved_global_state():
        if target.type == "meta":
            return module.to_empty(device=target)
        module.to_empty(device="cpu")
        with torch.no_grad(), seeded_cpu_rng(seed):
            _reinit(module, set())
        if target.type != "cpu":
            module.to(target)
    return module


def _submodules(module: nn.Module) -> Iterator[nn.Module]:
    yield from module.children()
    if isinstance(module, FakeSequential):
        yield from module.hidden_modules()


def _reinit(module: nn.Module, seen: set[int]) -> None:
    if id(module) in seen:
        return
    seen.add(id(module))
    for child in _submodules(module):
        _reinit(child, seen)
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        if tensor.is_floating_point() or tensor.is_complex():
            tensor.normal_()
        else:
            tensor.zero_()
