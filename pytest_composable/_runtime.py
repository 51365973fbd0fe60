"""Which of torch's accelerator runtimes this process has started (torch-free to import)."""

from __future__ import annotations

import contextlib
import sys
from types import ModuleType

__all__ = ["initialised"]


def initialised(device_type: str) -> ModuleType | None:
    """torch's module for ``device_type`` (``torch.cuda``, ``torch.xpu``...) where torch is
    imported and that runtime is initialised in this process, else ``None``.

    Never imports torch and never initialises a runtime: asking must not create the
    context whose absence warm start and the dtype probe depend on.
    """
    module = getattr(sys.modules.get("torch"), device_type, None)
    is_initialized = getattr(module, "is_initialized", None)
    with contextlib.suppress(Exception):
        if callable(is_initialized) and is_initialized():
            return module
    return None
