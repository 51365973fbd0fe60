"""Device discovery and device specs.

Discovery finds ``cpu``, ``meta`` and every device of every accelerator type
the installed torch can see: ``cuda`` (also ROCm builds), ``xpu``, ``mps``,
``hpu`` and the ``privateuse1`` backend, each through its own
``device_count()`` (``torch.accelerator`` names the build's accelerator where
the installed torch can say so without touching a device).

CUDA is never initialised here: ``torch.cuda.device_count()`` asks NVML first
(and only falls back to the CUDA runtime where NVML is missing), so a process
forked after discovery can still use CUDA, and ``CUDA_VISIBLE_DEVICES`` is
honoured (``CUDA_VISIBLE_DEVICES=""`` means no CUDA device, even where
``is_available()`` would say otherwise).

A *device spec* is what a user writes: ``cpu``, ``meta``, ``cuda`` (the
device this process uses: under pytest-xdist, the worker index modulo the
number of visible devices of that type, otherwise index 0), ``cuda:1`` (that
exact device) or ``all`` (every discovered device).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

__all__ = [
    "DeviceSpecError",
    "Selected",
    "default_devices",
    "discover_devices",
    "resolve_specs",
    "worker_index",
]

_SPEC = re.compile(r"^(?P<type>[a-z][a-z0-9_]*)(?::(?P<index>\d+))?$")
_HOST_TYPES = ("cpu", "meta")


class DeviceSpecError(ValueError):
    """A device spec that is malformed or names a device this machine lacks."""


def _count(device_type: str) -> int:
    """Devices of one accelerator type, without initialising its runtime."""
    if device_type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return int(mps is not None and mps.is_available())
    module = getattr(torch, device_type, None)
    count = getattr(module, "device_count", None)
    if not callable(count):
        return 0
    try:
        return int(count())
    except Exception:
        # A backend whose driver is missing or broken has no usable device.
        return 0


def _accelerator_types() -> list[str]:
    types = ["cuda", "xpu", "mps", "hpu"]
    privateuse1 = torch._C._get_privateuse1_backend_name()
    if privateuse1 not in types:
        types.append(privateuse1)
    built_for = _built_accelerator()
    if built_for is not None and built_for not in types:
        types.append(built_for)
    return types


def _built_accelerator() -> str | None:
    """The accelerator type this torch build targets, asked without touching any device.

    Only a ``current_accelerator`` that takes ``check_available`` can say so: the
    older one (torch 2.6) probes for devices (on a CUDA build that is
    ``cudaGetDeviceCount``, the CUDA initialisation discovery must avoid) and raises
    where none is present. There the listed types stand alone, so only a build for an
    accelerator outside them (MTIA) goes undiscovered.
    """
    current = getattr(getattr(torch, "accelerator", None), "current_accelerator", None)
    if not callable(current) or "check_available" not in inspect.signature(current).parameters:
        return None
    found = current(check_available=False)
    return None if found is None else str(found.type)


def discover_devices() -> list[torch.device]:
    """``cpu``, ``meta``, then every device of each accelerator type, in index order."""
    devices = [torch.device(t) for t in _HOST_TYPES]
    for device_type in _accelerator_types():
        devices.extend(torch.device(device_type, i) for i in range(_count(device_type)))
    return devices


def worker_index(environ: Mapping[str, str] | None = None) -> int | None:
    """The pytest-xdist worker number (``gw3`` -> 3), or ``None`` outside xdist."""
    env = os.environ if environ is None else environ
    match = re.fullmatch(r"gw(\d+)", env.get("PYTEST_XDIST_WORKER", ""))
    return int(match.group(1)) if match else None


class Selected(NamedTuple):
    """A selected device and its test-id part."""

    device: torch.device
    id: str


def _pick(available: Sequence[torch.device], device_type: str, worker: int | None) -> Selected:
    """This process's device of ``device_type``: the worker index modulo the visible count.

    Under xdist every worker must collect the same test ids, so a device picked
    by worker index is named by its type alone (``test_x[cuda]``); outside
    xdist it is the device itself (``test_x[cuda:0]``).
    """
    candidates = [d for d in available if d.type == device_type]
    device = candidates[(worker or 0) % len(candidates)]
    named_by_type = worker is not None and device_type not in _HOST_TYPES
    return Selected(device, device_type if named_by_type else str(device))


def default_devices(available: Sequence[torch.device], worker: int | None = None) -> list[Selected]:
    """cpu, meta, and this process's device of each available accelerator type."""
    types = dict.fromkeys(d.type for d in available)
    return [_pick(available, t, worker) for t in types]


def describe(available: Sequence[torch.device]) -> str:
    """``cpu, meta, cuda:0, cuda:1``: the devices listed in errors and the report header."""
    return ", ".join(str(d) for d in available)


def resolve_specs(
    specs: Sequence[str], available: Sequence[torch.device], worker: int | None = None
) -> list[Selected]:
    """Turn specs into devices of this machine, in order, without duplicate devices.

    Raises :class:`DeviceSpecError` naming the bad value and listing
    ``available`` for a spec that is not a device, or one this machine lacks.
    """
    if not specs:
        raise DeviceSpecError(f"no device given; this machine has: {describe(available)}")
    resolved: dict[torch.device, Selected] = {}
    for spec in specs:
        for selected in _resolve_one(spec, available, worker):
            resolved.setdefault(selected.device, selected)
    return list(resolved.values())


def _resolve_one(
    spec: str, available: Sequence[torch.device], worker: int | None
) -> list[Selected]:
    text = spec.strip().lower()
    if text == "all":
        return [Selected(d, str(d)) for d in available]
    match = _SPEC.match(text)
    has = f"this machine has: {describe(available)}"
    if match is None:
        raise DeviceSpecError(
            f"{spec!r} is not a device spec (expected e.g. cpu, meta, cuda, cuda:1 or all); {has}"
        )
    device_type, index = match.group("type"), match.group("index")
    if device_type in _HOST_TYPES and index is not None:
        raise DeviceSpecError(
            f"{spec!r}: {device_type} takes no device index, use {device_type!r}; {has}"
        )
    if device_type not in {d.type for d in available}:
        try:
            torch.device(device_type)
        except RuntimeError:
            raise DeviceSpecError(f"{spec!r} is not a device type torch knows; {has}") from None
        raise DeviceSpecError(f"{spec!r} is not available on this machine; {has}")
    if index is None:
        return [_pick(available, device_type, worker)]
    device = torch.device(device_type, int(index))
    if device not in available:
        raise DeviceSpecError(f"{spec!r} is not available on this machine; {has}")
    return [Selected(device, str(device))]
