"""Named N-D mesh layouts from ``@pytest.mark.composable(mesh=...)`` (torch-free, pure).

A layout is a tuple of ``(dimension name, size)`` pairs, outermost first, as
``init_device_mesh`` takes them. One size may be ``-1``: the rest of the world,
resolved against the world size of each test item (:func:`resolve`).
"""

from __future__ import annotations

from collections.abc import Mapping
from math import prod
from typing import Any

from ._constants import MAX_WORLD_SIZE

__all__ = ["REST", "MeshError", "MeshLayout", "layout_id", "parse_meshes", "resolve", "size_of"]

REST = -1
"""The size that stands for the rest of the world."""

MeshLayout = tuple[tuple[str, int], ...]


class MeshError(ValueError):
    """A ``mesh=`` value that is no mesh, or one that cannot fit the world it is given."""


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _layout(value: Any) -> MeshLayout:
    if not isinstance(value, Mapping):
        raise MeshError(
            "composable(mesh=...) takes a mapping of dimension name to size (or a list of "
            f"them), e.g. {{'dp': 2, 'tp': 2}}; got {_show(value)}"
        )
    if not value:
        raise MeshError("composable(mesh=...) has an empty mapping; a mesh needs a dimension")
    pairs: list[tuple[str, int]] = []
    seen: set[str] = set()
    for name in value:
        if not isinstance(name, str) or not name.strip():
            raise MeshError(
                f"composable(mesh=...): a dimension name must be a non-empty string, "
                f"got {_show(name)}"
            )
        if name in seen:
            raise MeshError(f"composable(mesh=...): dimension {name!r} appears twice")
        seen.add(name)
        size = value[name]
        if isinstance(size, bool) or not isinstance(size, int) or size == 0 or size < REST:
            raise MeshError(
                f"composable(mesh=...): dimension {name!r} has size {_show(size)}; a size "
                "is an integer >= 1, or -1 for the rest of the world"
            )
        pairs.append((name, size))
    rest = [name for name, size in pairs if size == REST]
    if len(rest) > 1:
        raise MeshError(
            f"composable(mesh=...): only one dimension may be -1, got {', '.join(rest)}"
        )
    if _known_product(pairs) > MAX_WORLD_SIZE:
        raise MeshError(
            f"composable(mesh=...): {layout_id(tuple(pairs))} needs "
            f"{_known_product(pairs)} ranks; at most {MAX_WORLD_SIZE}"
        )
    return tuple(pairs)


def _known_product(layout: MeshLayout | list[tuple[str, int]]) -> int:
    return prod(size for _, size in layout if size != REST)


def parse_meshes(value: Any) -> tuple[MeshLayout, ...]:
    """The layouts of a marker's ``mesh=``: one mapping, or a list or tuple of them.

    Raises :class:`MeshError` for anything else: not a mapping, an empty one or an
    empty list, a name that is not a non-empty string or repeats, a size that is 0,
    below -1, not an int or a bool, two ``-1`` sizes, or more than
    ``MAX_WORLD_SIZE`` ranks from the sizes given.
    """
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise MeshError("composable(mesh=...) is an empty list")
    layouts = tuple(_layout(item) for item in items)
    if len(set(layouts)) != len(layouts):
        raise MeshError("composable(mesh=...) lists the same mesh twice")
    return layouts


def size_of(layout: MeshLayout) -> int | None:
    """The world size a layout needs, ``None`` where one size is ``-1``."""
    if any(size == REST for _, size in layout):
        return None
    return _known_product(layout)


def resolve(layout: MeshLayout, world_size: int) -> MeshLayout:
    """``layout`` with its ``-1`` replaced for a world of ``world_size`` ranks.

    Raises :class:`MeshError` where the sizes given do not divide ``world_size``,
    or (a layout without ``-1``) do not multiply to it.
    """
    known = _known_product(layout)
    if size_of(layout) is not None:
        if known != world_size:
            raise MeshError(
                f"composable(mesh=...): {layout_id(layout)} has {known} ranks; "
                f"the world size is {world_size}"
            )
        return layout
    if world_size % known:
        raise MeshError(
            f"composable(mesh=...): {layout_id(layout)} needs a world size divisible by "
            f"{known}; got {world_size}"
        )
    return tuple((name, world_size // known if size == REST else size) for name, size in layout)


def layout_id(layout: MeshLayout) -> str:
    """The test-id part of a layout: each name followed by its size, joined by ``x``
    (``dp_replicate2xdp_shard2``; ``-1`` shows as ``dp-1`` before it is resolved)."""
    return "x".join(f"{name}{size}" for name, size in layout)
