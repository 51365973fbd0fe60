"""The distributed options and ini settings, read with their precedence and checked (torch-free).

``--composable-world-size``, ``--composable-timeout``, ``--composable-backend``,
``--composable-start`` and ``--composable-rank-memory-limit`` each have an environment
variable and an ini setting.
Precedence, for each one: the command line > the environment variable > the ini
setting > the default.
A value from any source is checked at configure time: a bad one is a usage
error (exit 4) that names its source and the value, before anything is
collected.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import pytest

from .._options import GROUP, GROUP_DESCRIPTION, ascii_digits, decimal_value, digits_value
from .._text import quote, shorten
from ._constants import (
    BACKEND_ENV,
    DEFAULT_MEMORY_LIMIT_MIB,
    DEFAULT_TIMEOUT,
    DEFAULT_WORLD_SIZE,
    MAX_MEMORY_LIMIT_MIB,
    MAX_TIMEOUT,
    MAX_WORLD_SIZE,
    MEMORY_LIMIT_ENV,
    START_ENV,
    START_MODES,
    TIMEOUT_ENV,
    TIMEOUT_RANGE,
    WORLD_SIZE_ENV,
)

__all__ = [
    "SETTINGS_KEY",
    "DistributedSettings",
    "add_options",
    "known_backends",
    "parse_backend",
    "parse_memory_limit",
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
_MEMORY_LIMIT_INI = "composable_rank_memory_limit"
_MEMORY_LIMIT_FORM = (
    "a whole number of MiB in the digits 0-9, optionally followed by MiB or GiB "
    f"(512, 512MiB, 4GiB; at most {MAX_MEMORY_LIMIT_MIB} MiB), or off"
)


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
            f"{TIMEOUT_RANGE}, in the digits 0-9 (120, 0.5, 1e3). Precedence: "
            "composable(timeout=...) > this option "
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
            "nccl, or any backend registered with torch by the time pytest configures (one "
            "torch does not know is a usage error listing those it knows; naming one imports "
            "torch). Precedence: composable(backend=...) > "
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
    group.addoption(
        "--composable-rank-memory-limit",
        default=None,
        dest="composable_rank_memory_limit",
        metavar="SIZE",
        help=(
            "How much a kept rank's memory (its resident set size; allocated accelerator "
            "memory, where it has an accelerator) may grow since its pool started: past it, "
            "the pool's ranks are started again before the next test, and the terminal "
            f"summary says so. {_MEMORY_LIMIT_FORM[0].upper()}{_MEMORY_LIMIT_FORM[1:]}. "
            f"Precedence: this option > {MEMORY_LIMIT_ENV} > the {_MEMORY_LIMIT_INI} ini "
            f"setting > {DEFAULT_MEMORY_LIMIT_MIB}MiB. Plain pytest only (a launcher's ranks "
            "are never restarted)."
        ),
    )
    parser.addini(
        _MEMORY_LIMIT_INI,
        type="string",
        default="",
        help=(
            f"How much a kept rank's memory may grow before its pool restarts (default "
            f"{DEFAULT_MEMORY_LIMIT_MIB}MiB; off: never); {MEMORY_LIMIT_ENV} and "
            "--composable-rank-memory-limit win."
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
            f"Deadline of each composable_world test, {TIMEOUT_RANGE} (default "
            f"{DEFAULT_TIMEOUT:g}); {TIMEOUT_ENV} and --composable-timeout win."
        ),
    )


def parse_world_size(raw: str) -> int:
    """A world size from text: an integer in [1, MAX_WORLD_SIZE] written in the digits 0-9;
    ``ValueError`` otherwise."""
    text = raw.strip()
    if not ascii_digits(text):
        raise ValueError(f"{quote(raw)} is not a whole number")
    value = digits_value(text, MAX_WORLD_SIZE)
    if value is None or value < 1:
        raise ValueError(f"{shorten(text)} is outside 1..{MAX_WORLD_SIZE}")
    return value


def parse_timeout(raw: str) -> float:
    """A deadline from text: a decimal number of seconds above 0 and at most
    :data:`MAX_TIMEOUT`, written in the digits 0-9 (``120``, ``0.5``, ``1e3``);
    ``ValueError`` otherwise (signs, ``nan``, ``inf``, digits of other scripts)."""
    value = decimal_value(raw.strip())
    if value is None:
        raise ValueError(
            f"{quote(raw)} is not a number of seconds in the digits 0-9 (such as 120, 0.5 or 1e3)"
        )
    # Compared so that a NaN could never pass, whatever decimal_value gives.
    if not 0 < value <= MAX_TIMEOUT:
        raise ValueError(f"{quote(raw)} is not {TIMEOUT_RANGE}")
    return value


def known_backends() -> list[str]:
    """The process-group backends torch knows, in its order: its own and those registered
    with ``torch.distributed.Backend.register_backend``.

    Imports ``torch.distributed``: called only where a backend is named. Empty where
    this torch has no distributed support.
    """
    import torch.distributed as dist

    # Backend is missing where torch.distributed is not available in this build.
    names: list[str] = list(getattr(getattr(dist, "Backend", None), "backend_list", []))
    return [name for name in names if name != "undefined"]


def parse_backend(raw: str) -> str:
    """A process-group backend torch knows, as torch reads it (lower case): a name
    (``gloo``, ``nccl``, a registered one) or one per device type
    (``cpu:gloo,cuda:nccl``); ``ValueError`` listing the backends torch knows otherwise.

    Imports ``torch.distributed``, only because a backend was named.
    """
    known = known_backends()
    parts = [part.strip() for part in raw.strip().split(",")]
    chosen: list[str] = []
    for part in parts:
        device, colon, name = part.rpartition(":")
        # torch looks a backend name up case-insensitively (Backend("GLOO") is "gloo").
        name = name.lower() if name.isascii() else name
        device_ok = not colon or (device.isascii() and device.isidentifier())
        if name not in known or not device_ok:
            listed = ", ".join(known) or "none (this torch has no torch.distributed)"
            raise ValueError(f"{quote(raw)} is not a backend torch knows; known backends: {listed}")
        chosen.append(f"{device}:{name}" if colon else name)
    return ",".join(chosen)


def parse_start(raw: str) -> str:
    """A start mode from text: one of :data:`START_MODES`; ``ValueError`` otherwise."""
    value = raw.strip().lower()
    if value not in START_MODES:
        raise ValueError(f"{quote(raw)} is not one of {', '.join(START_MODES)}")
    return value


_UNITS = {"": 1, "mib": 1, "gib": 1024}


def parse_memory_limit(raw: str) -> int | None:
    """A rank memory limit from text, in MiB (``None``: ``off``, no limit): a whole number
    of MiB from 1 in the digits 0-9, optionally followed by ``MiB`` or ``GiB`` (either
    case), at most :data:`MAX_MEMORY_LIMIT_MIB`; ``ValueError`` otherwise."""
    text = raw.strip()
    if text.lower() == "off":
        return None
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = _UNITS.get(text[len(digits) :].lower())
    if unit is None or not ascii_digits(digits):
        raise ValueError(f"{quote(raw)} is not {_MEMORY_LIMIT_FORM}")
    value = digits_value(digits, MAX_MEMORY_LIMIT_MIB // unit)
    if value is None or value < 1:
        raise ValueError(f"{quote(raw)} is outside 1..{MAX_MEMORY_LIMIT_MIB} MiB")
    return value * unit


class DistributedSettings(NamedTuple):
    """The session's default world size, deadline, backend, rank start mode and rank memory
    limit (MiB; ``None``: off), after precedence and checks."""

    world_size: int
    timeout: float
    backend: str | None = None  # None: the default for each device type
    start: str = START_MODES[0]
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT_MIB


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
    # parse_memory_limit's None ("off") is a value: kept apart from "not set".
    memory_limit = _read(
        config,
        "--composable-rank-memory-limit",
        MEMORY_LIMIT_ENV,
        _MEMORY_LIMIT_INI,
        lambda raw: (parse_memory_limit(raw),),
        "rank memory limit",
    )
    return DistributedSettings(
        DEFAULT_WORLD_SIZE if world_size is None else world_size,
        DEFAULT_TIMEOUT if timeout is None else timeout,
        backend,
        START_MODES[0] if start is None else start,
        DEFAULT_MEMORY_LIMIT_MIB if memory_limit is None else memory_limit[0],
    )


SETTINGS_KEY = pytest.StashKey[DistributedSettings]()


def settings_of(config: pytest.Config) -> DistributedSettings:
    """The settings :func:`read_settings` stored at configure time."""
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None:
        settings = config.stash[SETTINGS_KEY] = read_settings(config)
    return settings
