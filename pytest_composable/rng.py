"""Global-state guards: seeded CPU generator and restore of torch's global settings.

Every value a fixture or :func:`~pytest_composable.materialize` creates comes
from the CPU generator seeded with the seed, so the result is the same on every
device, and the test's own generator state is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["default_device", "preserved_global_state", "seeded_cpu_rng"]


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Run the block with the global CPU generator seeded to ``seed``, then restore it.

    Only the CPU generator is touched: ``torch.manual_seed`` would also reseed
    (and initialise) every accelerator's generator.
    """
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


def default_device() -> torch.device:
    """``torch.get_default_device()``, also where torch's own getter fails.

    After ``set_default_device(None)`` (which this module and the fixtures use to
    restore the cpu default), an older torch (2.6) reads the cleared context and
    raises ``AttributeError``; the default is then cpu.
    """
    try:
        return torch.get_default_device()
    except AttributeError:
        return torch.device("cpu")


@contextmanager
def preserved_global_state() -> Iterator[torch.device]:
    """Restore the default dtype, default device, grad mode and deterministic-algorithms
    setting (with its warn-only flag) after the block, as a ``build()`` may change any;
    yields the default device found on entry."""
    dtype = torch.get_default_dtype()
    device = default_device()
    grad = torch.is_grad_enabled()
    deterministic = _deterministic()
    try:
        yield device
    finally:
        if torch.get_default_dtype() != dtype:
            torch.set_default_dtype(dtype)
        if _deterministic() != deterministic:
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        if default_device() != device:
            # set_default_device(cpu) would push a global DeviceContext mode that
            # slows every later torch call; None is the same cpu default without one.
            torch.set_default_device(None if device.type == "cpu" else device)
        if torch.is_grad_enabled() != grad:
            torch.set_grad_enabled(grad)


def _deterministic() -> tuple[bool, bool]:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
