"""pytest-composable: PyTorch's composable test models as pytest fixtures, on every device.

``ModelSpec`` and ``materialize`` are the public API; the fixtures come from
the ``composable`` pytest plugin. Importing this package does not import torch
(``materialize`` and the model classes load it on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .meta_init import materialize
    from .spec import ModelSpec

__all__ = ["ModelSpec", "materialize"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that loading the plugin (which imports this package) stays cheap.
    if name == "ModelSpec":
        from .spec import ModelSpec

        return ModelSpec
    if name == "materialize":
        from .meta_init import materialize

        return materialize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
