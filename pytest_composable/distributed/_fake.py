"""The in-process fake world: one process posing as one rank of a world of any size.

It uses torch's ``fake`` process-group backend (collectives move no data), so
``fully_shard`` or ``replicate`` over a world of 8 runs in milliseconds in the
test's own process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._mesh import MeshLayout
from .world import World, WorldError, build_mesh

if TYPE_CHECKING:
    import torch

__all__ = ["fake_world", "register_fake_backend"]

_FAKE = "fake"


def register_fake_backend() -> None:
    """Make sure torch knows the ``fake`` backend.

    torch registers it on the first import of
    ``torch.testing._internal.distributed.fake_pg``. Where that module is missing it
    is registered here. Both happen only while torch does not know the backend yet:
    torch 2.6 refuses a second registration, and the module runs again whenever
    something dropped it from ``sys.modules`` (an in-process ``pytester`` run does).
    """
    import torch.distributed as dist

    # Backend.FAKE is a constant in newer torch; what counts is a creator for it.
    plugins = getattr(dist.Backend, "_plugins", None)
    if isinstance(plugins, dict) and _FAKE.upper() in plugins:
        return
    try:
        import torch.testing._internal.distributed.fake_pg  # noqa: F401
    except ImportError:  # pragma: no cover - a torch without the testing module
        from torch._C._distributed_c10d import FakeProcessGroup

        # The stubs lag behind: _create_internal takes the backend options too.
        fake: Any = FakeProcessGroup

        def create(common_opts: Any, backend_opts: Any) -> Any:
            rank, size = common_opts.group_rank, common_opts.group_size
            # Without _create_internal (torch 2.6) the constructor is the way in, and
            # it takes no options.
            if hasattr(fake, "_create_internal"):
                return fake._create_internal(rank, size, backend_opts)
            return fake(rank, size)

        dist.Backend.register_backend(
            _FAKE, create, extended_api=True, devices=["cpu", "cuda", "hpu", "xpu"]
        )


@contextmanager
def fake_world(
    world_size: int,
    rank: int,
    device: torch.device,
    seed: int,
    layout: MeshLayout | None = None,
) -> Iterator[World]:
    """Initialise the default process group on the fake backend, yield a :class:`World`
    whose mesh has ``layout`` (resolved; ``None``: 1-D over the world).

    The group and mesh are destroyed on exit. A default group that already
    exists is an error: the fake world never replaces someone else's.
    """
    import torch.distributed as dist
    from torch._C._distributed_c10d import HashStore

    if not 0 <= rank < world_size:
        raise WorldError(f"composable: rank {rank} is outside a world of size {world_size}")
    if dist.is_initialized():
        raise WorldError(
            "composable: a default process group already exists in this process; "
            "composable_fake_world needs to create its own"
        )
    register_fake_backend()
    dist.init_process_group(_FAKE, store=HashStore(), rank=rank, world_size=world_size)
    try:
        # A meta test builds its model on meta and shards it over a CPU mesh
        # (FSDP2's meta-device initialisation); meta has no mesh of its own.
        mesh = build_mesh("cpu" if device.type == "meta" else device.type, world_size, layout)
        yield World(rank, world_size, rank, device, _FAKE, mesh, fake=True, seed=seed)
    finally:
        dist.destroy_process_group()
