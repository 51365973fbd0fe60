"""Hooks that let a ``conftest.py`` or plugin add models and devices.

Implement them like any pytest hook (a function of that name in a
``conftest.py`` or a registered plugin). They are called once per session, the
first time the plugin needs the model or device list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import pytest
    import torch

    from .spec import ModelSpec

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_composable_models(config: pytest.Config) -> list[ModelSpec]:  # type: ignore[empty-body]
    """Return model specs to add to the built-in ones.

    Every returned :class:`pytest_composable.ModelSpec` joins the
    ``composable_model`` parametrization and can be selected with
    ``@pytest.mark.composable(models=[name])``. Names must be unique across
    all models, built-ins included; a clash is a usage error.
    """


@hookspec
def pytest_composable_devices(config: pytest.Config, devices: list[torch.device]) -> None:
    """Edit the list of devices discovered on this machine, in place.

    ``devices`` starts as ``cpu``, ``meta`` and every visible accelerator
    device. Append (``torch.device`` or a string such as ``"privateuseone:0"``),
    remove or reorder entries; the result is what ``--composable-device``
    specs are validated against and what ``all`` and the default select from.
    """
