"""The ``@pytest.mark.composable(...)`` marker: parsing and validation (torch-free).

Keywords, each optional:

* ``devices=[...]``: device specs (``cpu``, ``meta``, ``cuda``, ``cuda:1``, ``all``);
  the test runs on the intersection of these and the session's selection.
* ``models=[...]``: model names; ``composable_model`` runs over these only.
* ``world_size=N`` or ``[N, ...]``, ``rank=R``, ``timeout=S``, ``backend="gloo"``:
  the distributed world a test asks for. Sizes are 1 to ``MAX_WORLD_SIZE``, a rank is
  below every size the marker gives, a timeout is a number of seconds above 0 and at
  most ``MAX_TIMEOUT`` (one week), a backend one torch knows. These are checked on
  every test with the marker, whether or not it uses a world fixture.
* ``mesh={"dp": 2, "tp": 2}`` or a list of such mappings: the named N-D device mesh of
  the test's world, outermost dimension first (one size may be ``-1``, the rest of the
  world); a list parametrizes the test, one item per mesh (:mod:`.distributed._mesh`).
* ``dtypes=[...]``: the dtypes ``composable_dtype`` runs over (``float32``, ``bf16``...):
  what that test runs, whatever the session's selection (a dtype is a property of the
  test, not of the machine; a device that cannot run one skips it).
* ``cast_models=False``: the test's models and inputs stay ``float32`` and
  ``composable_dtype`` is only the value under test (mixed precision: float32
  storage, the compute dtype varies). Default ``True``.

A marker may sit on a test, a class or a module. For each keyword the closest
marker that sets it wins (test over class over module), so a test can widen or
narrow what its module chose.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import pytest

from ._dtypes import DtypeError, parse_dtype
from ._text import shorten
from .distributed._constants import MAX_TIMEOUT, MAX_WORLD_SIZE, TIMEOUT_RANGE
from .distributed._mesh import MeshError, MeshLayout, parse_meshes

__all__ = ["MARKER", "MARKER_HELP", "MarkerError", "MarkerOptions", "read_marker", "shown"]

MARKER = "composable"
MARKER_HELP = (
    "composable(devices=[...], models=[...], dtypes=[...], cast_models=True, world_size=N, "
    "rank=R, timeout=S, backend=B, mesh={name: size, ...}): narrow the devices and models a "
    "test runs on (intersection with the session's selection), choose its dtypes (these "
    "replace the session's; cast_models=False keeps its models float32) and its "
    "distributed world and mesh; the closest marker wins per keyword."
)


class MarkerError(ValueError):
    """A ``composable`` marker with an unknown keyword or a value of the wrong type."""


class MarkerOptions(NamedTuple):
    """What the closest ``composable`` markers of one test ask for (``None``: not set)."""

    devices: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    world_size: tuple[int, ...] | None = None
    rank: int | None = None
    timeout: float | None = None
    backend: str | None = None
    mesh: tuple[MeshLayout, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    cast_models: bool | None = None


_KEYWORDS = MarkerOptions._fields


def shown(value: Any) -> str:
    """``repr(value)`` cut as the options' messages cut a value, so that a 4,000-digit
    number keeps a collection error readable; never an exception of its own."""
    try:
        text = repr(value)
    except Exception:
        # int's repr refuses more than 4,300 digits (ValueError), and a user's own
        # __repr__ may raise anything: the message must still come out.
        return f"<{type(value).__name__} that repr() cannot show>"
    return shorten(text)


def _strings(key: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Iterable) or not all(isinstance(v, str) for v in items):
        raise MarkerError(f"composable({key}=...) takes a list of strings, got {shown(value)}")
    result = tuple(items)
    if not result:
        raise MarkerError(f"composable({key}=...) is empty")
    return result


def _int(key: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        wanted = f"an integer >= {minimum}"
        if maximum is not None:
            wanted = f"integers from {minimum} to {maximum}"
        raise MarkerError(f"composable({key}=...) takes {wanted}, got {shown(value)}")
    return value


def _backend(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MarkerError(f"composable(backend=...) takes a backend name, got {shown(value)}")
    # Imports torch.distributed, only for a marker that names a backend.
    from .distributed._options import parse_backend

    try:
        return parse_backend(value)
    except ValueError as error:
        raise MarkerError(f"composable(backend=...): {error}") from None


def _dtypes(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) or not isinstance(value, Iterable) else value
    names: list[str] = []
    for item in items:
        try:
            names.append(parse_dtype(item))
        except DtypeError as error:
            raise MarkerError(f"composable(dtypes=...): {error}") from None
    if not names:
        raise MarkerError("composable(dtypes=...) is empty")
    return tuple(dict.fromkeys(names))


def _timeout(value: Any) -> float:
    # No math.isfinite(): it converts to float, which a 400-digit int overflows. The
    # chained comparison refuses nan and inf as well.
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (0 < value <= MAX_TIMEOUT)
    ):
        raise MarkerError(f"composable(timeout=...) takes {TIMEOUT_RANGE}, got {shown(value)}")
    return float(value)


def _convert(key: str, value: Any) -> Any:
    if key in ("devices", "models"):
        return _strings(key, value)
    if key == "world_size":
        sizes = value if isinstance(value, (list, tuple)) else [value]
        if not sizes:
            raise MarkerError("composable(world_size=...) is empty")
        return tuple(_int(key, v, 1, MAX_WORLD_SIZE) for v in sizes)
    if key == "rank":
        return _int(key, value, 0)
    if key == "backend":
        return _backend(value)
    if key == "mesh":
        try:
            return parse_meshes(value)
        except MeshError as error:
            raise MarkerError(str(error)) from None
    if key == "dtypes":
        return _dtypes(value)
    if key == "cast_models":
        if not isinstance(value, bool):
            raise MarkerError(
                f"composable(cast_models=...) takes True or False, got {shown(value)}"
            )
        return value
    return _timeout(value)


def read_marker(node: pytest.Item | pytest.Collector | Any) -> MarkerOptions:
    """Merge the ``composable`` markers of ``node`` and its parents, closest first.

    ``node`` is anything with ``iter_markers`` (an item, a collector, or
    ``metafunc.definition``). Raises :class:`MarkerError` for positional
    arguments, unknown keywords, values of the wrong type or out of range, and a
    ``rank`` not below every ``world_size`` of the markers (a rank against the
    session's default world size is checked by the caller, which has the config).
    """
    found: dict[str, Any] = {}
    for mark in node.iter_markers(MARKER):
        if mark.args:
            raise MarkerError(
                f"composable marker takes keywords only ({', '.join(_KEYWORDS)}), "
                f"got positional {shown(mark.args)}"
            )
        unknown = sorted(set(mark.kwargs) - set(_KEYWORDS))
        if unknown:
            raise MarkerError(
                f"composable marker got unknown keyword(s) {', '.join(unknown)}; "
                f"known: {', '.join(_KEYWORDS)}"
            )
        for key, value in mark.kwargs.items():
            if key not in found:
                found[key] = _convert(key, value)
    options = MarkerOptions(**found)
    if options.rank is not None and options.world_size is not None:
        smallest = min(options.world_size)
        if options.rank >= smallest:
            raise MarkerError(
                f"composable(rank={shown(options.rank)}) is not below world size {smallest}"
            )
    return options
