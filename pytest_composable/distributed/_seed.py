"""Seeding a process's global random state (torch's CPU and accelerator generators,
``random``, and numpy's when numpy is importable). Torch-free at import."""

from __future__ import annotations

import functools
import random
from typing import Any

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed every global generator of this process with ``seed`` (0 <= seed < 2**64).

    numpy is seeded only if it is importable (its seeds stop at 2**32, so it gets
    ``seed % 2**32``); it is never required.
    """
    import torch

    from ..devices import accelerator_present

    random.seed(seed)
    if accelerator_present():
        # The CPU generator and every accelerator's, now or when it is initialised.
        torch.manual_seed(seed)
    else:
        # The same where no accelerator can exist, and cheaper: torch.manual_seed
        # queues a seed for each accelerator type torch knows, with a traceback
        # of the caller for each, on every call (about 1 ms per world test).
        torch.default_generator.manual_seed(seed)
    numpy = _numpy()
    if numpy is not None:
        numpy.random.seed(seed % 2**32)


@functools.cache
def _numpy() -> Any:
    """numpy, or ``None`` where it is not installed (looked up once per process)."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy
