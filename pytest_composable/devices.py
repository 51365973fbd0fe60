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
device this process uses: index 0; under pytest-xdist the first GPU of the
worker's share (:func:`share_gpus`), or, where the share could not be made
and for other accelerator types, the worker index modulo the number of
visible devices of that type), ``cuda:1`` (that
exact device) or ``all`` (every discovered device). An index is written in the
ASCII digits ``0-9``, without leading zeros, and must name a device the list
of available devices holds: it is compared as text with each device's index and
never converted, neither by ``torch.device``, which would wrap ``cuda:256`` round
to ``cuda:0``, nor by ``int()``, which refuses more than 4,300 digits.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ._options import ascii_digits
from ._text import quote

__all__ = [
    "DeviceSpecError",
    "MissingDeviceError",
    "Selected",
    "accelerator_present",
    "default_devices",
    "discover_devices",
    "gpu_share",
    "matcher",
    "resolve_specs",
    "share_gpus",
    "worker_index",
]

_SPEC = re.compile(r"(?P<type>[a-z][a-z0-9_]*)(?::(?P<index>0|[1-9][0-9]*))?", re.ASCII)
# ``cuda:\u0661`` (Arabic-Indic one): an index in decimal digits of another script,
# which int() would accept.
_OTHER_DIGITS = re.compile(r"(?P<type>[A-Za-z][A-Za-z0-9_]*):(?P<index>\d+)")
_HOST_TYPES = ("cpu", "meta")


class DeviceSpecError(ValueError):
    """A device spec that is malformed or names a device this machine lacks."""


class MissingDeviceError(DeviceSpecError):
    """A well-formed spec of a device type torch knows, naming no device of this machine.

    ``reason`` is the message after the spec, for a caller that names the spec itself.
    """

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(f"{quote(spec)}{reason}")
        self.reason = reason


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


def accelerator_present() -> bool:
    """Whether this process sees a device of any accelerator type, counted as
    :func:`discover_devices` counts them (no accelerator is initialised)."""
    return any(_count(device_type) > 0 for device_type in _accelerator_types())


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


def gpu_share(worker: int, workers: int, count: int) -> list[int]:
    """The GPUs (positions among the visible ones) of pytest-xdist worker ``worker`` of
    ``workers``, with ``count`` GPUs visible.

    At least as many GPUs as workers: each worker gets a block of its own, as even as
    can be (4 GPUs, 2 workers: ``[0, 1]`` and ``[2, 3]``; 3 GPUs, 2 workers: ``[0]`` and
    ``[1, 2]``). Fewer: one each, round robin, so no GPU gets a second worker while
    another has fewer.
    """
    if count <= 0 or workers <= 0:
        return []
    if workers <= count:
        return list(range(worker * count // workers, (worker + 1) * count // workers))
    return [worker % count]


class GpuShare(NamedTuple):
    """What :func:`share_gpus` gave this worker: positions among ``of`` visible GPUs."""

    gpus: list[int]
    of: int


def share_gpus(environ: dict[str, str] | os._Environ[str] | None = None) -> GpuShare | None:
    """Under pytest-xdist, narrow this worker's ``CUDA_VISIBLE_DEVICES`` to its share.

    Everything in the worker then follows: ``cuda`` (``cuda:0``) is its first GPU and
    the current device, a fake world's mesh lands there, and its rank pools inherit
    the share (rank ``r`` on the share's ``r``-th GPU). Entries of an existing
    ``CUDA_VISIBLE_DEVICES`` are kept as they are (indices or UUIDs), only fewer.

    Done only before CUDA is initialised in this process (the variable is read then):
    ``None`` where it cannot be (CUDA already initialised), or there is nothing to share
    (not an xdist worker, one worker, no CUDA device).
    """
    env = os.environ if environ is None else environ
    worker, workers = worker_index(env), _int(env.get("PYTEST_XDIST_WORKER_COUNT", ""))
    if worker is None or workers is None or workers < 2 or not _cuda_ready():
        return None
    visible = env.get("CUDA_VISIBLE_DEVICES")
    count = _count("cuda")
    if count == 0:
        return None
    names = visible.split(",")[:count] if visible else [str(i) for i in range(count)]
    share = gpu_share(worker, workers, count)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(names[i].strip() for i in share)
    return GpuShare(share, count)


def _cuda_ready() -> bool:
    """This torch has CUDA, not yet initialised in this process. (Not ``is_available()``:
    it starts the CUDA driver, which reads ``CUDA_VISIBLE_DEVICES`` once and for all.)"""
    cuda: Any = torch.cuda
    built: Any = torch.backends.cuda.is_built
    return bool(built()) and not cuda.is_initialized()


def _int(text: str) -> int | None:
    # A worker count, from pytest-xdist: a few digits; more cannot be a count of workers.
    return int(text) if ascii_digits(text) and len(text) <= 6 else None


class Selected(NamedTuple):
    """A selected device and its test-id part."""

    device: torch.device
    id: str


def _pick(available: Sequence[torch.device], device_type: str, worker: int | None) -> Selected:
    """This process's device of ``device_type``: the worker index modulo the visible count
    (a worker that sees only its share of the GPUs is given ``worker=0``).

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
    ``available`` for a spec that is not a device, or one this machine lacks
    (:class:`MissingDeviceError`).
    """
    if not specs:
        raise DeviceSpecError(f"no device given; this machine has: {describe(available)}")
    resolved: dict[torch.device, Selected] = {}
    for spec in specs:
        for selected in _resolve_one(spec, available, worker):
            resolved.setdefault(selected.device, selected)
    return list(resolved.values())


def matcher(spec: str, available: Sequence[torch.device]) -> Callable[[torch.device], bool]:
    """Which selected devices a marker's spec keeps: ``cuda`` every cuda device, ``cuda:1``
    only that one, ``all`` every one. Raises like :func:`resolve_specs`."""
    parsed = _parse(spec, available)
    if parsed is None:
        return lambda _device: True
    device_type, device = parsed
    if device is None:
        return lambda candidate: candidate.type == device_type
    return lambda candidate: candidate == device


def _resolve_one(
    spec: str, available: Sequence[torch.device], worker: int | None
) -> list[Selected]:
    parsed = _parse(spec, available)
    if parsed is None:
        return [Selected(d, str(d)) for d in available]
    device_type, device = parsed
    if device is None:
        return [_pick(available, device_type, worker)]
    return [Selected(device, str(device))]


def _parse(spec: str, available: Sequence[torch.device]) -> tuple[str, torch.device | None] | None:
    """``None`` for ``all``, else the type and, for a spec with an index, the device itself."""
    has = f"this machine has: {describe(available)}"
    text = spec.strip()
    # Only ASCII text is lower-cased: str.lower() turns some other letters into
    # ASCII ones (the Kelvin sign into "k"), which would name another device.
    match = _SPEC.fullmatch(text.lower()) if text.isascii() else _OTHER_DIGITS.fullmatch(text)
    if match is None:
        raise DeviceSpecError(
            f"{quote(spec)} is not a device spec (expected e.g. cpu, meta, cuda, cuda:1 or "
            f"all); {has}"
        )
    device_type, index = match.group("type").lower(), match.group("index")
    if device_type == "all" and index is None:
        return None
    if device_type in _HOST_TYPES and index is not None:
        raise DeviceSpecError(
            f"{quote(spec)}: {device_type} takes no device index, use {device_type!r}; {has}"
        )
    if device_type not in {d.type for d in available}:
        try:
            torch.device(device_type)
        except (RuntimeError, ValueError):
            raise DeviceSpecError(
                f"{quote(spec)} is not a device type torch knows; {has}"
            ) from None
        raise MissingDeviceError(spec, f" is not available on this machine; {has}")
    if index is None:
        return device_type, None
    if not ascii_digits(index):
        raise MissingDeviceError(
            spec,
            f" is not available on this machine (a device index is written in the digits "
            f"0-9); {has}",
        )
    # Compared as text, never converted: torch.device's index is 8 bits wide (cuda:256
    # would become cuda:0, a longer number overflows), and int() refuses more than 4,300
    # digits. The pattern admits no leading zero, so equal text is equal numbers.
    for device in available:
        if device.type == device_type and str(device.index) == index:
            return device_type, device
    raise MissingDeviceError(spec, f" is not available on this machine; {has}")
