"""The ``@pytest.mark.composable(...)`` marker: parsing and validation (torch-free).

Keywords, each optional:

* ``devices=[...]``: device specs (``cpu``, ``meta``, ``cuda``, ``cuda:1``, ``all``);
  the test runs on the intersection of these and the session's selection.
* ``models=[...]``: model names; ``composable_model`` runs over these only.
* ``world_size=N`` or ``[N, ...]``, ``rank=R``, ``timeout=S``, ``backend="gloo"``:
  the distributed world a test asks for.

A marker may sit on a test, a class or a module. For each keyword the closest
marker that sets it wins (test over class over module), so a test can widen or
narrow what its module chose.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import pytest

__all__ = ["MARKER", "MARKER_HELP", "MarkerError", "MarkerOptions", "read_marker"]

MARKER = "composable"
MARKER_HELP = (
    "composable(devices=[...], models=[...], world_size=N, rank=R, timeout=S, backend=B): "
    "narrow the "
    "devices and models a test runs on (intersection with the session's selection) and "
    "choose its distributed world; the closest marker wins per keyword."
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


_KEYWORDS = MarkerOptions._fields


def _strings(key: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Iterable) or not all(isinstance(v, str) for v in items):
        raise MarkerError(f"composable({key}=...) takes a list of strings, got {value!r}")
    result = tuple(items)
    if not result:
        raise MarkerError(f"composable({key}=...) is empty")
    return result


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MarkerError(f"composable({key}=...) takes an integer >= {minimum}, got {value!r}")
    return value


def _convert(key: str, value: Any) -> Any:
    if key in ("devices", "models"):
        return _strings(key, value)
    if key == "world_size":
        sizes = value if isinstance(value, (list, tuple)) else [value]
        if not sizes:
            raise MarkerError("composable(world_size=...) is empty")
        return tuple(_int(key, v, 1) for v in sizes)
    if key == "rank":
        return _int(key, value, 0)
    if key == "backend":
        if not isinstance(value, str) or not value.strip():
            raise MarkerError(f"composable(backend=...) takes a backend name, got {value!r}")
        return value.strip()
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise MarkerError(
            f"composable(timeout=...) takes a finite number of seconds > 0, got {value!r}"
        )
    return float(value)


def read_marker(node: pytest.Item | pytest.Collector | Any) -> MarkerOptions:
    """Merge the ``composable`` markers of ``node`` and its parents, closest first.

    ``node`` is anything with ``iter_markers`` (an item, a collector, or
    ``metafunc.definition``). Raises :class:`MarkerError` for positional
    arguments, unknown keywords and values of the wrong type.
    """
    found: dict[str, Any] = {}
    for mark in node.iter_markers(MARKER):
        if mark.args:
            raise MarkerError(
                f"composable marker takes keywords only ({', '.join(_KEYWORDS)}), "
                f"got positional {mark.args!r}"
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
    return MarkerOptions(**found)
