"""Per-session state: the device and dtype selections, the model registries, and which
dtypes each device runs; resolved lazily.

Nothing here imports torch until a device or model list is first needed, so a
session that never uses the plugin's fixtures stays torch-free.

Devices are session-wide: a named selection is validated at configure, when
pytest has loaded only the conftest files it starts with, so
``pytest_composable_devices`` is called once, through ``config.hook``. Models
are per test module: a test sees the models of the ``pytest_composable_models``
implementations in its own conftest files and in plugins, as it sees conftest
fixtures.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._options import DeviceSelection, DtypeSelection, read_dtypes, read_seed, read_selection

if TYPE_CHECKING:
    import torch

    from .devices import GpuShare, Selected
    from .spec import ModelSpec

__all__ = ["ComposableState", "resolve_selection", "state_of"]

STATE_KEY = pytest.StashKey["ComposableState"]()


class ComposableState:
    """What the plugin knows about this session; one per ``pytest.Config``."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.selection: DeviceSelection = read_selection(config)
        self.seed: int = read_seed(config)
        self.dtypes: DtypeSelection = read_dtypes(config)
        # Per device: why it cannot run each dtype (None: it can), probed once.
        self._dtype_support: dict[str, dict[str, str | None]] = {}
        self._models: dict[Path, dict[str, ModelSpec]] = {}
        self._known: dict[Path, dict[str, ModelSpec]] = {}
        self._header_named_devices = False
        self.gpu_share: GpuShare | None = None  # set by discovery, under pytest-xdist

    @cached_property
    def available(self) -> list[torch.device]:
        """The devices of this machine, after ``pytest_composable_devices`` edited them."""
        import torch

        from .devices import discover_devices, share_gpus

        # Before discovery: under pytest-xdist it narrows what this worker sees.
        self.gpu_share = share_gpus()
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
        from .devices import worker_index

        available = self.available
        # A worker that sees only its share of the GPUs uses the first of them.
        worker = 0 if self.gpu_share is not None else worker_index()
        return resolve_selection(self.selection, available, worker)

    @property
    def selected(self) -> list[torch.device]:
        """The devices the fixtures run on, in order."""
        return [s.device for s in self.selection_ids]

    def models(self, node: Any) -> dict[str, ModelSpec]:
        """Every model ``node`` (a test, its definition or a collector) sees, by name.

        The built-ins, then those that ``pytest_composable_models`` adds, called
        through the node's own hook proxy: the conftest files above the node and
        the plugins, not the conftest files of other directories.
        """
        path: Path = node.path
        found = self._models.get(path)
        if found is None:
            from .registry import RegistryError, collect_models

            try:
                found = collect_models(node.ihook.pytest_composable_models(config=self.config))
            except RegistryError as error:
                raise pytest.UsageError(f"composable: {error}") from None
            self._models[path] = found
        return found

    def known_models(self, node: Any) -> dict[str, ModelSpec]:
        """:meth:`models`, then the FSDP2/TP models (``mlp``, ``mlp_stack``, ``transformer``)
        a hook did not replace: what a marker's ``models=`` and the model fixtures may name."""
        path: Path = node.path
        known = self._known.get(path)
        if known is None:
            from .registry import with_extras

            known = self._known[path] = with_extras(self.models(node))
        return known

    def dtype_skip(self, device: torch.device, dtype: str) -> str | None:
        """Why ``device`` cannot run ``dtype`` (a skip reason), ``None`` where it can.

        float32 is never asked about: every device runs the float32 models. Each device
        is probed once per session, for every other dtype at once (:func:`._dtypes.probe`).
        """
        from . import _dtypes

        if dtype == _dtypes.DEFAULT_DTYPE:
            return None
        key = str(device)
        support = self._dtype_support.get(key)
        if support is None:
            others = [name for name in _dtypes.DTYPES if name != _dtypes.DEFAULT_DTYPE]
            support = self._dtype_support[key] = _dtypes.probe(device, others)
        reason = support.get(dtype)
        return None if reason is None else f"composable: {key} cannot run {dtype}: {reason}"

    def is_resolved(self) -> bool:
        return "selection_ids" in self.__dict__

    def header(self) -> list[str]:
        """Lines for ``pytest_report_header``; torch's version comes from package metadata.

        The devices are named when they are known, or cheap to find because
        torch is loaded already (a conftest imported it); a torch-free session
        gets the policy, and the devices after collection (:meth:`collected`).
        """
        torch_version = _installed_version("torch")
        if not self.is_resolved() and "torch" in sys.modules:
            # A bad devices hook is reported where the devices are first needed.
            with contextlib.suppress(pytest.UsageError):
                _ = self.selection_ids
        if self.is_resolved():
            devices = _ids(self.selection_ids)
            self._header_named_devices = True
        elif self.selection.is_default:
            devices = "cpu, meta and the first device of each available accelerator type"
        else:
            devices = ", ".join(self.selection.specs)
        line = (
            f"composable: torch {torch_version}, devices ({self.selection.source}): {devices}, "
            f"seed: {self.seed}"
        )
        if not self.dtypes.is_default:
            line += f", dtypes ({self.dtypes.source}): {', '.join(self.dtypes.names)}"
        return [line]

    def collected(self, verbosity: int) -> list[str]:
        """The line after collection naming the devices the header could only describe."""
        if self._header_named_devices or not self.is_resolved() or verbosity < 0:
            return []
        return [f"composable: resolved devices: {_ids(self.selection_ids)}"]


def _ids(selected: Sequence[Selected]) -> str:
    """``cpu, meta, cuda:0``; under xdist a device picked per worker reads ``cuda (cuda:1)``."""
    return ", ".join(s.id if s.id == str(s.device) else f"{s.id} ({s.device})" for s in selected)


def resolve_selection(
    selection: DeviceSelection, available: Sequence[torch.device], worker: int | None
) -> list[Selected]:
    """The devices ``selection`` names on a machine with ``available``, or a usage error."""
    from .devices import DeviceSpecError, default_devices, resolve_specs

    if selection.is_default:
        return default_devices(available, worker)
    try:
        return resolve_specs(selection.specs, available, worker)
    except DeviceSpecError as error:
        raise pytest.UsageError(f"composable: {selection.source}: {error}") from None


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
