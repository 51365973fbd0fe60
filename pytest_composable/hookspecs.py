"""Hooks that let a ``conftest.py`` or plugin add models and devices.

Implement them like any pytest hook (a function of that name in a
``conftest.py`` or a registered plugin), marked
``@pytest.hookimpl(optionalhook=True)``: without this plugin (``-p
no:composable``) pytest does not know these hooks and would stop at an
unmarked implementation with "unknown hook".

``pytest_composable_models`` is called once per test module, through that
module's hook proxy, so a conftest's models reach the tests under it only.
``pytest_composable_devices`` is called once per session (devices are
session-wide and validated at configure).
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
    ``composable_model`` parametrization of the tests under the implementing
    conftest's directory (all tests, for a plugin) and can be selected there
    with ``@pytest.mark.composable(models=[name])``. Names must be unique among
    the models a test sees, built-ins included; a clash is a usage error.
    """


@hookspec
def pytest_composable_devices(config: pytest.Config, devices: list[torch.device]) -> None:
    """Edit the list of devices discovered on this machine, in place.

    ``devices`` starts as ``cpu``, ``meta`` and every visible accelerator
    device. Append (``torch.device`` or a string such as ``"privateuseone:0"``),
    remove or reorder entries; the result is what ``--composable-device``
    specs are validated against and what ``all`` and the default select from.
    """
