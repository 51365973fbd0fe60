"""Per-session state: the device selection and the model registry, resolved lazily.

Nothing here imports torch until a device or model list is first needed, so a
session that never uses the plugin's fixtures stays torch-free.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import pytest

from ._options import DeviceSelection, read_seed, read_selection

if TYPE_CHECKING:
    import torch

    from .devices import Selected
    from .spec import ModelSpec

__all__ = ["ComposableState", "state_of"]

STATE_KEY = pytest.StashKey["ComposableState"]()


class ComposableState:
    """What the plugin knows about this session; one per ``pytest.Config``."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.selection: DeviceSelection = read_selection(config)
        self.seed: int = read_seed(config)

    @cached_property
    def available(self) -> list[torch.device]:
        """The devices of this machine, after ``pytest_composable_devices`` edited them."""
        import torch

        from .devices import discover_devices

        devices: list[torch.device] = discover_devices()
        self.config.hook.pytest_composable_devices(config=self.config, devices=devices)
        try:
            normalised = [torch.device(d) for d in devices]
        except (RuntimeError, TypeError) as error:
            raise pytest.UsageError(
                f"composable: pytest_composable_devices left a non-device in the list: {error}"
            ) from None
        return list(dict.fromkeys(normalised))

    @cached_property
    def selection_ids(self) -> list[Selected]:
        """The devices the fixtures run on with their test ids (usage error for a bad spec)."""
        from .devices import DeviceSpecError, default_devices, resolve_specs, worker_index

        if self.selection.is_default:
            return default_devices(self.available, worker_index())
        try:
            return resolve_specs(self.selection.specs, self.available, worker_index())
        except DeviceSpecError as error:
            raise pytest.UsageError(f"composable: {self.selection.source}: {error}") from None

    @property
    def selected(self) -> list[torch.device]:
        """The devices the fixtures run on, in order."""
        return [s.device for s in self.selection_ids]

    @cached_property
    def models(self) -> dict[str, ModelSpec]:
        """Every registered model by name: the built-ins, then those the hooks add."""
        from .registry import RegistryError, collect_models

        try:
            return collect_models(self.config.hook.pytest_composable_models(config=self.config))
        except RegistryError as error:
            raise pytest.UsageError(f"composable: {error}") from None

    def is_resolved(self) -> bool:
        return "selection_ids" in self.__dict__

    def header(self) -> list[str]:
        """Lines for ``pytest_report_header``; torch's version comes from package metadata."""
        torch_version = _installed_version("torch")
        if self.is_resolved():
            devices = ", ".join(str(d) for d in self.selected)
        elif self.selection.is_default:
            devices = "cpu, meta and the first device of each available accelerator type"
        else:
            devices = ", ".join(self.selection.specs)
        return [
            f"composable: torch {torch_version}, devices ({self.selection.source}): {devices}, "
            f"seed: {self.seed}"
        ]


def _installed_version(name: str) -> str:
    """A distribution's version from its metadata, without importing it.

    Reads the ``Version:`` header itself: ``importlib.metadata.version`` parses
    the whole METADATA file (torch's long description included), which costs
    a torch-free session more than everything else in the header.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        text = distribution(name).read_text("METADATA") or ""
    except PackageNotFoundError:
        return "not installed"
    for line in text.splitlines():
        if line.startswith("Version:"):
            return line.partition(":")[2].strip()
        if not line:
            break
    return "unknown"


def state_of(config: pytest.Config) -> ComposableState:
    return config.stash[STATE_KEY]
