"""Command-line options and ini settings, and reading them with their precedence (torch-free)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

__all__ = [
    "DEVICE_ENV",
    "GROUP",
    "GROUP_DESCRIPTION",
    "DeviceSelection",
    "add_options",
    "read_seed",
    "read_selection",
]

DEVICE_ENV = "PYTEST_COMPOSABLE_DEVICE"
GROUP = "composable"
GROUP_DESCRIPTION = "composable models, devices and distributed worlds (pytest-composable)"


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, GROUP_DESCRIPTION)
    group.addoption(
        "--composable-device",
        action="append",
        dest="composable_device",
        default=None,
        metavar="SPEC",
        help=(
            "Device(s) the composable fixtures run on: cpu, meta, cuda (this process's GPU; "
            "under pytest-xdist the worker index modulo the visible GPUs), cuda:1, any other "
            "accelerator type, or all. Repeatable; comma lists work. Precedence: this option > "
            f"the {DEVICE_ENV} environment variable > the composable_devices ini setting > "
            "the default (cpu, meta and the first device of each available accelerator type). "
            "A device this machine lacks is a usage error."
        ),
    )
    group.addoption(
        "--composable-seed",
        action="store",
        type=int,
        dest="composable_seed",
        default=None,
        metavar="N",
        help=(
            "Seed the composable models and inputs are built with (default 0). Precedence: "
            "this option > the composable_seed ini setting > 0."
        ),
    )
    parser.addini(
        "composable_devices",
        type="args",
        default=[],
        help=(
            "Devices the composable fixtures run on (same specs as --composable-device, "
            f"space or comma separated); overridden by {DEVICE_ENV} and --composable-device. "
            "Default: cpu, meta and the first device of each available accelerator type."
        ),
    )
    parser.addini(
        "composable_seed",
        type="string",
        default="0",
        help="Seed for the composable models and inputs (default 0); --composable-seed wins.",
    )


@dataclass(frozen=True)
class DeviceSelection:
    """The device specs the user asked for and where they came from."""

    specs: tuple[str, ...]
    source: str  # "--composable-device", the env var name, "composable_devices ini" or "default"

    @property
    def is_default(self) -> bool:
        return self.source == "default"


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(p.strip() for v in values for p in v.replace(",", " ").split() if p.strip())


def read_selection(config: pytest.Config) -> DeviceSelection:
    """Device specs by precedence: CLI > environment > ini > default.

    A source that is present but empty (``--composable-device=""``,
    ``PYTEST_COMPOSABLE_DEVICE=","``) is kept, and so becomes a usage error
    when resolved, rather than a silent fall-through to the next source.
    """
    cli: list[str] | None = config.getoption("composable_device")
    if cli is not None:
        return DeviceSelection(_split(cli), "--composable-device")
    env = os.environ.get(DEVICE_ENV)
    if env is not None:
        return DeviceSelection(_split([env]), DEVICE_ENV)
    ini: list[str] = config.getini("composable_devices")
    if ini:
        return DeviceSelection(_split(ini), "composable_devices ini")
    return DeviceSelection((), "default")


def read_seed(config: pytest.Config) -> int:
    """The model seed by precedence: ``--composable-seed`` > ``composable_seed`` ini > 0."""
    cli: int | None = config.getoption("composable_seed")
    if cli is not None:
        return cli
    raw: str = config.getini("composable_seed")
    try:
        return int(raw)
    except ValueError:
        raise pytest.UsageError(
            f"composable: composable_seed ini value {raw!r} is not an integer"
        ) from None
