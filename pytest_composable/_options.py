"""Command-line options and ini settings, and reading them with their precedence (torch-free)."""

from __future__ import annotations

import os
from typing import NamedTuple

import pytest

from ._dtypes import DEFAULT_DTYPE, KNOWN, DtypeError, parse_dtypes
from ._text import quote

__all__ = [
    "DEVICE_ENV",
    "DEVICE_INI",
    "DTYPE_ENV",
    "DTYPE_INI",
    "GROUP",
    "GROUP_DESCRIPTION",
    "SEED_LIMIT",
    "DeviceSelection",
    "DtypeSelection",
    "add_options",
    "ascii_digits",
    "decimal_value",
    "digits_value",
    "parse_seed",
    "read_dtypes",
    "read_seed",
    "read_selection",
    "split_specs",
]

DEVICE_ENV = "PYTEST_COMPOSABLE_DEVICE"
DEVICE_INI = "composable_device"
DEVICE_INI_ALIAS = "composable_devices"
DTYPE_ENV = "PYTEST_COMPOSABLE_DTYPE"
DTYPE_INI = "composable_dtype"
SEED_LIMIT = 2**64
# The default of the device and dtype ini settings: "unset", as no ini value can hold a NUL
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
        "--composable-dtype",
        action="append",
        dest="composable_dtype",
        default=None,
        metavar="DTYPE",
        help=(
            f"Dtype(s) a test that uses composable_dtype runs over, its models and inputs "
            f"built in each: {KNOWN}. Repeatable; comma lists work. Precedence: a "
            f"composable(dtypes=[...]) marker (what that test runs) > this option > the "
            f"{DTYPE_ENV} environment variable > the {DTYPE_INI} ini setting > the default "
            f"({DEFAULT_DTYPE}). Tests without composable_dtype keep {DEFAULT_DTYPE} models. "
            "Any other dtype is a usage error."
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
        DTYPE_INI,
        type="args",
        default=_UNSET,
        help=(
            "Dtypes a test that uses composable_dtype runs over (as --composable-dtype, "
            f"space or comma separated); overridden by {DTYPE_ENV} and --composable-dtype. "
            f"Default: {DEFAULT_DTYPE}."
        ),
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


class DtypeSelection(NamedTuple):
    """The dtypes (torch's names) a ``composable_dtype`` test runs over, and their source."""

    names: tuple[str, ...]
    source: str  # "--composable-dtype", the env var name, "<name> ini" or "default"

    @property
    def is_default(self) -> bool:
        return self.source == "default"


def _read_source(
    config: pytest.Config, dest: str, option: str, env: str, inis: tuple[str, ...]
) -> tuple[tuple[str, ...], str] | None:
    """The values of the first source that is set (CLI > environment > ini, the first
    ini name of ``inis`` that is set), split as :func:`split_specs` does, and the
    source's name; ``None`` where none is set.

    A source that is present but empty (``--composable-device=""``,
    ``PYTEST_COMPOSABLE_DEVICE=","``, ``composable_device =``) is kept, and so
    becomes a usage error where it is read, rather than a silent fall-through to
    the next source.
    """
    cli: list[str] | None = config.getoption(dest)
    if cli is not None:
        return split_specs(cli), option
    value = os.environ.get(env)
    if value is not None:
        return split_specs([value]), env
    for name in inis:
        ini: list[str] = config.getini(name)
        if ini != _UNSET:
            return split_specs(ini), f"{name} ini"
    return None


def read_selection(config: pytest.Config) -> DeviceSelection:
    """Device specs by precedence: CLI > environment > ini > default (an empty source is
    kept: resolving it is the usage error)."""
    found = _read_source(
        config,
        "composable_device",
        "--composable-device",
        DEVICE_ENV,
        (DEVICE_INI, DEVICE_INI_ALIAS),
    )
    return DeviceSelection(*found) if found is not None else DeviceSelection((), "default")


def read_dtypes(config: pytest.Config) -> DtypeSelection:
    """Dtypes by precedence: CLI > environment > ini > ``float32``.

    A bad or empty value is a usage error here, at configure, even in a suite that
    never uses ``composable_dtype``.
    """
    found = _read_source(config, "composable_dtype", "--composable-dtype", DTYPE_ENV, (DTYPE_INI,))
    if found is None:
        return DtypeSelection((DEFAULT_DTYPE,), "default")
    values, source = found
    try:
        return DtypeSelection(parse_dtypes(values), source)
    except DtypeError as error:
        raise pytest.UsageError(f"composable: {source}: {error}") from None


def ascii_digits(text: str) -> bool:
    """Whether ``text`` is one or more of the digits 0-9 and nothing else.

    The one test of "written in digits" for every number a user writes: the seed, a
    world size, a device index, a deadline. ``int()`` and ``float()`` also take signs,
    ``_``, surrounding spaces and the decimal digits of other scripts (``'\u0663'``
    reads as 3), and ``str.isdigit`` alone takes those digits and superscripts.
    """
    return text.isascii() and text.isdigit()


def digits_value(digits: str, limit: int) -> int | None:
    """The value of ``digits`` (text :func:`ascii_digits` accepts) where it is at most
    ``limit``; ``None`` above it.

    A number longer than ``limit`` is never converted: ``int()`` refuses text of more
    than 4,300 digits, with a ``ValueError`` of its own.
    """
    significant = digits.lstrip("0") or "0"
    if len(significant) > len(str(limit)):
        return None
    value = int(significant)
    return value if value <= limit else None


def decimal_value(text: str) -> float | None:
    """The value of a decimal number written in the digits 0-9: ``120``, ``0.5``, ``.5``,
    ``5.``, ``1e3``, ``2.5E-1``; ``None`` for anything else.

    ``float()`` alone would also take signs, ``_``, ``inf``, ``nan`` and the digits of
    other scripts; a number too large for a float is ``inf`` here, for the caller's
    range check to refuse.
    """
    number, marked, exponent = text.replace("E", "e").partition("e")
    whole, _, fraction = number.partition(".")
    if exponent[:1] in ("+", "-"):
        exponent = exponent[1:]
    parts = [part for part in (whole, fraction) if part]
    if not parts or not all(ascii_digits(part) for part in parts):
        return None
    if marked and not ascii_digits(exponent):
        return None
    return float(text)


def parse_seed(text: str) -> int:
    """A seed written in the digits 0-9, below 2**64; ``ValueError`` saying why otherwise."""
    digits = text.strip()
    if not ascii_digits(digits):
        raise ValueError("is not an integer from 0 to 2**64 - 1")
    seed = digits_value(digits, SEED_LIMIT - 1)
    if seed is None:
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
