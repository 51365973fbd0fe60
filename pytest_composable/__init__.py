"""pytest-composable: PyTorch's composable test models as pytest fixtures, on every device.

``ModelSpec``, ``materialize`` and ``World`` (what ``composable_world`` and
``composable_fake_world`` give a test) are the public API; the fixtures come from
the ``composable`` pytest plugin. Importing this package does not import torch
(``materialize`` and the model classes load it on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .distributed.world import World
    from .meta_init import materialize
    from .spec import ModelSpec

__all__ = ["ModelSpec", "World", "materialize"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that loading the plugin (which imports this package) stays cheap.
    if name == "ModelSpec":
        from .spec import ModelSpec

        return ModelSpec
    if name == "materialize":
        from .meta_init import materialize

        return materialize
    if name == "World":
        from .distributed.world import World

        return World
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
