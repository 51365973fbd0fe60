"""The distributed options and ini settings, read with their precedence and checked (torch-free).

``--composable-world-size``, ``--composable-timeout``, ``--composable-backend`` and
``--composable-start`` each have an environment variable and an ini setting.
Precedence, for each one: the command line > the environment variable > the ini
setting > the default.
A value from any source is checked at configure time: a bad one is a usage
error (exit 4) that names its source and the value, before anything is
collected.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import pytest

from .._options import GROUP, GROUP_DESCRIPTION
from .._text import quote
from ._constants import (
    BACKEND_ENV,
    DEFAULT_TIMEOUT,
    DEFAULT_WORLD_SIZE,
    MAX_WORLD_SIZE,
    START_ENV,
    START_MODES,
    TIMEOUT_ENV,
    WORLD_SIZE_ENV,
)

__all__ = [
    "SETTINGS_KEY",
    "DistributedSettings",
    "add_options",
    "parse_backend",
    "parse_start",
    "parse_timeout",
    "parse_world_size",
    "read_settings",
    "settings_of",
]

T = TypeVar("T")

_WORLD_SIZE_INI = "composable_world_size"
_TIMEOUT_INI = "composable_timeout"
_BACKEND_INI = "composable_backend"
_START_INI = "composable_start"


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, GROUP_DESCRIPTION)
    group.addoption(
        "--composable-world-size",
        default=None,
        dest="composable_world_size",
        metavar="N",
        help=(
            "World size of tests that use composable_world or composable_fake_world without "
            f"a composable(world_size=...) marker: 1 to {MAX_WORLD_SIZE}. Precedence: this "
            f"option > {WORLD_SIZE_ENV} > the {_WORLD_SIZE_INI} ini setting > "
            f"{DEFAULT_WORLD_SIZE}; the marker wins over all of them."
        ),
    )
    group.addoption(
        "--composable-timeout",
        default=None,
        dest="composable_timeout",
        metavar="SECONDS",
        help=(
            "Deadline of each composable_world test (setup, call and teardown on every rank), "
            "a finite number of seconds > 0. Precedence: composable(timeout=...) > this option "
            f"> {TIMEOUT_ENV} > the {_TIMEOUT_INI} ini setting > {DEFAULT_TIMEOUT:g}. A test "
            "past it fails with every rank's Python stack and its ranks are restarted; the "
            "process group's own timeout follows the test's deadline, a little below it."
        ),
    )
    group.addoption(
        "--composable-backend",
        default=None,
        dest="composable_backend",
        metavar="NAME",
        help=(
            "Process-group backend of composable_world tests: gloo (also with CUDA tensors), "
            "nccl, or any backend registered with torch. Precedence: composable(backend=...) > "
            f"this option > {BACKEND_ENV} > the {_BACKEND_INI} ini setting > the default "
            "for the test's device (gloo on cpu, nccl on cuda, torch's default elsewhere)."
        ),
    )
    group.addoption(
        "--composable-start",
        default=None,
        dest="composable_start",
        metavar="|".join(START_MODES),
        help=(
            "How rank processes start under plain pytest. warm (the default): each rank is "
            "forked from a template process that already imported torch and the test modules "
            "(fast; module-level code of test modules runs once, in the main process, before "
            "any rank exists). cold: each rank is a fresh interpreter that imports and collects "
            "everything itself. warm falls back to cold, saying why, where forking is unsafe "
            f"(threads, an initialised accelerator). Precedence: this option > {START_ENV} > "
            f"the {_START_INI} ini setting > warm."
        ),
    )
    parser.addini(
        _START_INI,
        type="string",
        default="",
        help=f"How ranks start: warm (default) or cold; {START_ENV} and --composable-start win.",
    )
    parser.addini(
        _BACKEND_INI,
        type="string",
        default="",
        help=(
            "Process-group backend of composable_world tests (default: by device); "
            f"{BACKEND_ENV} and --composable-backend win."
        ),
    )
    parser.addini(
        _WORLD_SIZE_INI,
        type="string",
        default="",
        help=(
            f"World size of world tests without a marker (default {DEFAULT_WORLD_SIZE}); "
            f"{WORLD_SIZE_ENV} and --composable-world-size win."
        ),
    )
    parser.addini(
        _TIMEOUT_INI,
        type="string",
        default="",
        help=(
            f"Deadline of each composable_world test in seconds (default {DEFAULT_TIMEOUT:g}); "
            f"{TIMEOUT_ENV} and --composable-timeout win."
        ),
    )


def parse_world_size(raw: str) -> int:
    """A world size from text: an integer in [1, MAX_WORLD_SIZE]; ``ValueError`` otherwise."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{quote(raw)} is not a whole number")
    value = int(text)
    if not 1 <= value <= MAX_WORLD_SIZE:
        raise ValueError(f"{value} is outside 1..{MAX_WORLD_SIZE}")
    return value


def parse_timeout(raw: str) -> float:
    """A deadline from text: a finite number of seconds > 0; ``ValueError`` otherwise."""
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"{quote(raw)} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{quote(raw)} is not a finite number of seconds > 0")
    return value


def parse_backend(raw: str) -> str:
    """A backend name (``gloo``, ``nccl``, ``cpu:gloo,cuda:nccl``...); ``ValueError`` for an
    empty one or one with characters no backend name has. Whether torch knows it is
    found out when a world starts."""
    text = raw.strip()
    if not text or not all(c.isascii() and (c.isalnum() or c in "_-:,") for c in text):
        raise ValueError(f"{quote(raw)} is not a backend name")
    return text


def parse_start(raw: str) -> str:
    """A start mode from text: one of :data:`START_MODES`; ``ValueError`` otherwise."""
    value = raw.strip().lower()
    if value not in START_MODES:
        raise ValueError(f"{quote(raw)} is not one of {', '.join(START_MODES)}")
    return value


class DistributedSettings(NamedTuple):
    """The session's default world size, deadline, backend and rank start mode, after
    precedence and checks."""

    world_size: int
    timeout: float
    backend: str | None = None  # None: the default for each device type
    start: str = START_MODES[0]


def _pick(config: pytest.Config, option: str, env: str, ini: str) -> tuple[str, str] | None:
    cli: str | None = config.getoption(option.lstrip("-").replace("-", "_"))
    if cli is not None:
        return cli, option
    if env in os.environ:
        return os.environ[env], env
    value: str = config.getini(ini)
    if value.strip():
        return value, f"{ini} ini setting"
    return None


def _read(
    config: pytest.Config,
    option: str,
    env: str,
    ini: str,
    parse: Callable[[str], T],
    what: str,
) -> T | None:
    """One setting by precedence, parsed; ``None`` where no source sets it."""
    picked = _pick(config, option, env, ini)
    if picked is None:
        return None
    raw, source = picked
    try:
        return parse(raw)
    except ValueError as error:
        raise pytest.UsageError(f"composable: {source}: {what} {error}") from None


def read_settings(config: pytest.Config) -> DistributedSettings:
    """Read every setting by precedence; a bad value is a :class:`pytest.UsageError`."""
    world_size = _read(
        config,
        "--composable-world-size",
        WORLD_SIZE_ENV,
        _WORLD_SIZE_INI,
        parse_world_size,
        "world size",
    )
    timeout = _read(
        config, "--composable-timeout", TIMEOUT_ENV, _TIMEOUT_INI, parse_timeout, "timeout"
    )
    backend = _read(
        config, "--composable-backend", BACKEND_ENV, _BACKEND_INI, parse_backend, "backend"
    )
    start = _read(config, "--composable-start", START_ENV, _START_INI, parse_start, "start mode")
    return DistributedSettings(
        DEFAULT_WORLD_SIZE if world_size is None else world_size,
        DEFAULT_TIMEOUT if timeout is None else timeout,
        backend,
        START_MODES[0] if start is None else start,
    )


SETTINGS_KEY = pytest.StashKey[DistributedSettings]()


def settings_of(config: pytest.Config) -> DistributedSettings:
    """The settings :func:`read_settings` stored at configure time."""
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        settings = config.stash[SETTINGS_KEY] = read_settings(config)
    return settings
