"""Command-line options and ini settings, and reading them with their precedence (torch-free)."""

from __future__ import annotations

import os
from typing import NamedTuple

import pytest

from ._text import quote

__all__ = [
    "DEVICE_ENV",
    "DEVICE_INI",
    "GROUP",
    "GROUP_DESCRIPTION",
    "SEED_LIMIT",
    "DeviceSelection",
    "add_options",
    "parse_seed",
    "read_seed",
    "read_selection",
    "split_specs",
]

DEVICE_ENV = "PYTEST_COMPOSABLE_DEVICE"
DEVICE_INI = "composable_device"
DEVICE_INI_ALIAS = "composable_devices"
SEED_LIMIT = 2**64
# The default of the device ini settings: "unset", as no ini value can hold a NUL
# character, so that an ini line with an empty value is told apart from no line.
_UNSET = ["\0"]
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
            "under pytest-xdist the first of the worker's share of the GPUs), cuda:1, any other "
            "accelerator type, or all. Repeatable; comma lists work. Precedence: this option > "
            f"the {DEVICE_ENV} environment variable > the {DEVICE_INI} ini setting > "
            "the default (cpu, meta and the first device of each available accelerator type). "
            "A device this machine lacks is a usage error."
        ),
    )
    group.addoption(
        "--composable-seed",
        action="store",
        dest="composable_seed",
        default=None,
        metavar="N",
        help=(
            "Seed the composable models and inputs are built with: an integer from 0 to "
            "2**64 - 1 (default 0). Precedence: this option > the composable_seed ini "
            "setting > 0."
        ),
    )
    parser.addini(
        DEVICE_INI,
        type="args",
        default=_UNSET,
        help=(
            "Devices the composable fixtures run on (same specs as --composable-device, "
            f"space or comma separated); overridden by {DEVICE_ENV} and --composable-device. "
            "Default: cpu, meta and the first device of each available accelerator type."
        ),
    )
    parser.addini(
        DEVICE_INI_ALIAS,
        type="args",
        default=_UNSET,
        help=f"Old name of {DEVICE_INI}, still read; {DEVICE_INI} wins where both are set.",
    )
    parser.addini(
        "composable_seed",
        type="string",
        default="0",
        help=(
            "Seed for the composable models and inputs, 0 to 2**64 - 1 (default 0); "
            "--composable-seed wins."
        ),
    )


class DeviceSelection(NamedTuple):
    """The device specs the user asked for and where they came from."""

    specs: tuple[str, ...]
    source: str  # "--composable-device", the env var name, "<name> ini" or "default"

    @property
    def is_default(self) -> bool:
        return self.source == "default"


def split_specs(values: list[str]) -> tuple[str, ...]:
    """The specs in option, environment or ini values: comma or space separated."""
    return tuple(p.strip() for v in values for p in v.replace(",", " ").split() if p.strip())


def read_selection(config: pytest.Config) -> DeviceSelection:
    """Device specs by precedence: CLI > environment > ini > default.

    A source that is present but empty (``--composable-device=""``,
    ``PYTEST_COMPOSABLE_DEVICE=","``, ``composable_device =``) is kept, and so
    becomes a usage error when resolved, rather than a silent fall-through to
    the next source.
    """
    cli: list[str] | None = config.getoption("composable_device")
    if cli is not None:
        return DeviceSelection(split_specs(cli), "--composable-device")
    env = os.environ.get(DEVICE_ENV)
    if env is not None:
        return DeviceSelection(split_specs([env]), DEVICE_ENV)
    for name in (DEVICE_INI, DEVICE_INI_ALIAS):
        ini: list[str] = config.getini(name)
        if ini != _UNSET:
            return DeviceSelection(split_specs(ini), f"{name} ini")
    return DeviceSelection((), "default")


def parse_seed(text: str) -> int:
    """A seed written in the digits 0-9, below 2**64; ``ValueError`` saying why otherwise."""
    digits = text.strip()
    # int() would also take "-1", "1_000", " +7" and digits of other scripts.
    if not digits or not digits.isascii() or not digits.isdigit():
        raise ValueError("is not an integer from 0 to 2**64 - 1")
    seed = int(digits)
    if seed >= SEED_LIMIT:
        raise ValueError("is out of range: a seed is an integer from 0 to 2**64 - 1")
    return seed


def read_seed(config: pytest.Config) -> int:
    """The model seed by precedence: ``--composable-seed`` > ``composable_seed`` ini > 0.

    A bad value is a usage error here, at configure, not at a fixture's setup.
    """
    cli: str | None = config.getoption("composable_seed")
    raw, source = (
        (cli, "--composable-seed")
        if cli is not None
        else (config.getini("composable_seed"), "composable_seed ini")
    )
    try:
        return parse_seed(str(raw))
    except ValueError as error:
        raise pytest.UsageError(f"composable: {source} value {quote(str(raw))} {error}") from None
