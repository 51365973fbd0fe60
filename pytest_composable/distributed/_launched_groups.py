"""A launched session's process groups: which set torch sees, and the plugin's exchanges.

Under a launcher a rank has two sets of process groups (:class:`GroupRegistry`): the
plugin's (its world, seen by world tests) and the tests' own (what tests without a
world see). :class:`GroupSets` swaps them in torch's registries as tests and fixtures
come and go. :func:`all_gather_bytes` is how the ranks exchange what they report over
the plugin's control group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["GroupRegistry", "GroupSets", "all_gather_bytes"]


def all_gather_bytes(
    payload: bytes, world_size: int, group: Any, keep: list[Any] | None = None
) -> list[bytes]:
    """Every rank's ``payload``, in rank order, over ``group`` (uint8 tensors; torch's
    ``*_object`` collectives need numpy, which a user's environment may lack). The
    tensors are added to ``keep``, if given (see :attr:`~._launched_world.LaunchedWorld.keep`)."""
    import torch
    import torch.distributed as dist

    data = torch.tensor(list(payload), dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.long)
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(world_size)]
    dist.all_gather(sizes, size, group=group)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: data.numel()] = data
    gathered = [torch.zeros(longest, dtype=torch.uint8) for _ in range(world_size)]
    dist.all_gather(gathered, padded, group=group)
    if keep is not None:
        keep += [size, data, padded, *sizes, *gathered]
    return [bytes(t[: int(s.item())].tolist()) for t, s in zip(gathered, sizes, strict=True)]


_REGISTRIES = (
    "_pg_map",
    "_pg_names",
    "_pg_group_ranks",
    "_pg_backend_config",
    "_tags_to_pg",
    "_pg_to_tag",
)
"""torch's module-level registries of process groups (``distributed_c10d``)."""


class GroupRegistry:
    """One complete set of torch's process-group registries: the default group, every
    other group, and their names in torch's C++ registry (which functional collectives,
    and so DTensor, resolve groups by).

    Under a launcher there are two: the plugin's (its world, seen by world tests) and
    the tests' own (what tests without a world see: empty at first, then whatever
    groups they make, kept between them as in a process without the plugin).
    """

    def __init__(self, maps: dict[str, Any], world: Any) -> None:
        self.maps = maps
        self.world = world

    @classmethod
    def installed(cls) -> GroupRegistry:
        """The registries torch uses now."""
        from torch.distributed import distributed_c10d as c10d

        maps = {name: getattr(c10d, name) for name in _REGISTRIES if hasattr(c10d, name)}
        return cls(maps, c10d._world)

    @classmethod
    def empty(cls) -> GroupRegistry:
        """Registries of a process that never joined a group."""
        current = cls.installed()
        return cls({n: type(m)() for n, m in current.maps.items()}, type(current.world)())

    def install(self, names_from: int) -> None:
        """Make torch use these registries; new groups are named from ``names_from`` on, so
        no name is used by both sets. Each of these groups is found by its name again."""
        from torch.distributed import distributed_c10d as c10d

        for name, registry in self.maps.items():
            setattr(c10d, name, registry)
        c10d._world = self.world
        c10d._world.group_count = max(names_from, c10d._world.group_count)
        register = getattr(c10d, "_register_process_group", None)
        unregister = getattr(c10d, "_unregister_process_group", None)
        resolve = getattr(c10d, "_resolve_process_group", None)
        if register is None or unregister is None or resolve is None:
            return
        for group, name in self.maps.get("_pg_names", {}).items():
            try:
                found = resolve(name)
            except Exception:
                found = None
            if found is not group:
                with contextlib.suppress(Exception):
                    unregister(name)
                with contextlib.suppress(Exception):
                    register(name, group)


class GroupSets:
    """Whose process groups torch sees now: the plugin's (``"world"``) or the tests' own
    (``"tests"``); the other set waits here."""

    def __init__(self) -> None:
        self.active = "world"
        self.waiting: dict[str, GroupRegistry] = {}
        self.names_from = 0

    def count_names(self) -> int:
        """Group names in use so far: new groups of either set are named from here on.
        torch restarts its count of group names when a default group is destroyed;
        counting on from the highest keeps the two sets' names apart."""
        from torch.distributed import distributed_c10d as c10d

        self.names_from = max(self.names_from, c10d._world.group_count)
        return self.names_from

    def activate(self, name: str) -> None:
        """Let torch see the ``"world"`` (the plugin's) or the ``"tests"`` process groups."""
        if name == self.active:
            return
        self.count_names()
        self.waiting[self.active] = GroupRegistry.installed()
        registry = self.waiting.pop(name, None) or GroupRegistry.empty()
        registry.install(self.names_from)
        self.active = name

    @contextlib.contextmanager
    def tests_own(self) -> Iterator[None]:
        """Torch sees the tests' own groups inside, the plugin's after."""
        self.activate("tests")
        try:
            yield
        finally:
            self.activate("world")

    @contextlib.contextmanager
    def kept_by(self, fixturedef: pytest.FixtureDef[Any]) -> Iterator[None]:
        """Around a fixture's setup: its teardown sees the groups its setup began with, and
        then the groups torch saw before that teardown."""
        owner = self.active
        before: list[str] = []

        def restore() -> None:  # runs last
            if before:  # empty where the setup raised: it registered no own_groups below
                self.activate(before.pop())

        fixturedef.addfinalizer(restore)
        yield  # the fixture's setup

        def own_groups() -> None:
            before.append(self.active)
            self.activate(owner)

        fixturedef.addfinalizer(own_groups)
