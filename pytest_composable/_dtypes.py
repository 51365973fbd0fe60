"""The floating dtypes a test can run over: names, and which ones a device can run.

Names are torch's (``float16``, ``bfloat16``, ``float32``, ``float64``) and the
short forms ``fp16``, ``bf16``, ``fp32``, ``fp64`` (torch's own aliases ``half``,
``float`` and ``double`` are read too); each maps to torch's name, which is also
the test-id part (``test_x[cpu-bfloat16]``). Parsing is torch-free and pure.

Whether a device can run a dtype (:func:`probe`) is asked once per device and
session (``ComposableState.dtype_skip``). cpu and meta run all four: a ``Linear``
forward and backward in each works there on every supported torch (checked on
2.6 and 2.13), so they are not probed. An accelerator is probed in a short
subprocess that runs that forward and backward on it, unless its runtime is
already initialised in this process: the pytest process must not create a CUDA
context of its own, as ranks forked later (warm start) could not use CUDA.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ._runtime import initialised
from ._text import quote

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_DTYPE",
    "DTYPES",
    "DTYPE_NAMES",
    "KNOWN",
    "DtypeError",
    "parse_dtype",
    "parse_dtypes",
    "probe",
    "to_torch",
]

DEFAULT_DTYPE = "float32"
DTYPES = ("float16", "bfloat16", "float32", "float64")
DTYPE_NAMES: dict[str, str] = {
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "float64": "float64",
    "double": "float64",
    "fp64": "float64",
}
KNOWN = "float16 (fp16), bfloat16 (bf16), float32 (fp32), float64 (fp64)"
# Devices whose every dtype of DTYPES runs (see the module docstring): never probed.
_HOST_TYPES = ("cpu", "meta")
_PROBE_TIMEOUT = 120.0


class DtypeError(ValueError):
    """A dtype name that is not one of the floating dtypes a test can run over."""


def parse_dtype(text: object) -> str:
    """torch's name for ``text`` (``"bf16"`` -> ``"bfloat16"``); a ``torch.dtype`` is taken
    by its name too. Raises :class:`DtypeError` for anything else, integer, complex and
    8-bit float dtypes included."""
    name = text if isinstance(text, str) else str(text)
    key = name.strip().lower().removeprefix("torch.")
    if key in DTYPE_NAMES:
        return DTYPE_NAMES[key]
    shown = quote(text) if isinstance(text, str) else quote(name)
    raise DtypeError(f"{shown} is not a floating dtype a test can run over; known: {KNOWN}")


def parse_dtypes(names: Iterable[str]) -> tuple[str, ...]:
    """torch's names of ``names`` (each one dtype: the option, environment and ini values
    split at commas and spaces), in order, each once. :class:`DtypeError` for a bad name
    or none at all."""
    parsed = [parse_dtype(name) for name in names]
    if not parsed:
        raise DtypeError(f"no dtype given; known: {KNOWN}")
    return tuple(dict.fromkeys(parsed))


def to_torch(name: str) -> torch.dtype:
    """The ``torch.dtype`` of a name :func:`parse_dtype` returned (imports torch)."""
    import torch

    dtype: torch.dtype = getattr(torch, name)
    return dtype


# Run by the probe, in a fresh interpreter or in this process (``exec``): prints, or
# leaves in ``result``, ``{dtype name: None, or why it failed}``.
_PROBE = """
import json
import sys

import torch


def run(device, names):
    result = {}
    module = getattr(torch, device.type, None)
    for name in names:
        try:
            dtype = getattr(torch, name)
            layer = torch.nn.Linear(8, 8).to(device, dtype)
            layer(torch.ones(2, 8).to(device, dtype)).sum().backward()
            synchronize = getattr(module, "synchronize", None)
            if callable(synchronize):
                synchronize()
            result[name] = None
        except Exception as error:
            lines = str(error).strip().splitlines() or [""]
            result[name] = f"{type(error).__name__}: {lines[0]}"[:200]
    return result


if __name__ == "__main__":
    print(json.dumps(run(torch.device(sys.argv[1]), sys.argv[2:])))
"""


def probe(device: torch.device, names: Iterable[str]) -> dict[str, str | None]:
    """For each dtype name, ``None`` where ``device`` runs a ``Linear`` forward and backward
    in it, else why not (the error, or why the probe itself failed)."""
    wanted = list(names)
    if device.type in _HOST_TYPES:
        return dict.fromkeys(wanted)
    if initialised(device.type) is not None:
        # The runtime is up in this process already (a rank, or a test of the user's):
        # asking here costs no subprocess and creates no context that was not there.
        scope: dict[str, object] = {"__name__": "composable_probe"}
        exec(compile(_PROBE, "<composable dtype probe>", "exec"), scope)
        found = scope["run"](device, wanted)  # type: ignore[operator]
        return _checked(found, wanted, f"the probe of {device} gave no answer")
    return _in_subprocess(device, wanted)


def _in_subprocess(device: torch.device, wanted: list[str]) -> dict[str, str | None]:
    command = [sys.executable, "-c", _PROBE, str(device), *wanted]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return dict.fromkeys(wanted, f"the probe of {device} failed: {error}")
    lines = done.stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    except ValueError:
        found = None
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return _checked(found, wanted, f"the probe of {device} failed: {last[:200]}")


def _checked(found: object, wanted: list[str], failed: str) -> dict[str, str | None]:
    """The probe's answer for every wanted name; ``failed`` for each it did not give."""
    answer: Mapping[str, object] = found if isinstance(found, dict) else {}
    checked: dict[str, str | None] = {}
    for name in wanted:
        value = answer.get(name, failed)
        checked[name] = value if isinstance(value, str) else None
    return checked
