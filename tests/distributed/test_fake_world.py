"""The in-process fake world: ``composable_fake_world``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pytest_composable import World

pytestmark = pytest.mark.composable(devices=["cpu"])

# FSDP2 orders its collectives with stream events, on CPU those of torch.cpu.Stream,
# which has none on torch 2.6: there fully_shard shards on CPU, but cannot run a forward.
FSDP2_TRAINS_ON_CPU = all(hasattr(torch.cpu.Stream, m) for m in ("record_event", "wait_event"))


def _shard_eight_ways(world: World, model: nn.Module) -> None:
    from torch.distributed.fsdp import fully_shard

    for unit in (model.u1, model.u2):
        fully_shard(unit, mesh=world.mesh)
    fully_shard(model, mesh=world.mesh)


@pytest.mark.composable(world_size=8)
def test_fully_shard_over_a_fake_world_of_eight(
    composable_fake_world: World, composite_model: nn.Module
) -> None:
    world = composable_fake_world
    assert (world.rank, world.world_size, world.backend, world.fake) == (0, 8, "fake", True)
    assert dist.get_world_size() == 8
    assert world.mesh.device_type == "cpu"
    assert world.mesh.size() == 8
    _shard_eight_ways(world, composite_model)
    # Each rank holds 1/8 of every parameter's rows (100 rows -> 13 on rank 0).
    assert composite_model.l1.weight.to_local().shape == (13, 100)


@pytest.mark.skipif(
    not FSDP2_TRAINS_ON_CPU,
    reason="torch.cpu.Stream has no record_event/wait_event: FSDP2 cannot train on CPU",
)
@pytest.mark.composable(world_size=8)
def test_fully_shard_trains_over_a_fake_world_of_eight(
    composable_fake_world: World, composite_model: nn.Module
) -> None:
    _shard_eight_ways(composable_fake_world, composite_model)
    composite_model(torch.randn(4, 100)).sum().backward()


@pytest.mark.composable(world_size=4, rank=3)
def test_marker_rank(composable_fake_world: World) -> None:
    assert (composable_fake_world.rank, dist.get_rank()) == (3, 3)


@pytest.mark.composable(world_size=[2, 4])
def test_world_size_list_parametrizes(
    composable_fake_world: World, request: pytest.FixtureRequest
) -> None:
    assert request.node.name.endswith(f"-ws{composable_fake_world.world_size}]")


def test_default_world_size_is_two(composable_fake_world: World) -> None:
    assert composable_fake_world.world_size == 2


def test_torn_down_after_each_test() -> None:
    assert not dist.is_initialized()


def test_ids_and_meta(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.composable(world_size=[2, 8])
        def test_x(composable_fake_world, composite_model):
            from torch.distributed.fsdp import fully_shard

            # meta: the model stays on meta and is sharded over a CPU mesh
            fully_shard(composite_model, mesh=composable_fake_world.mesh)
            assert composite_model.l1.weight.device.type == composable_fake_world.device.type
        """
    )
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["*test_x[[]cpu-ws2[]] PASSED*", "*test_x[[]cpu-ws8[]] PASSED*", "*[[]meta-ws8[]] PASSED*"]
    )


WITHOUT_TESTING_MODULE = """
import sys

sys.modules["torch.testing._internal.distributed.fake_pg"] = None  # as if it were missing
import torch
import torch.distributed as dist

from pytest_composable.distributed._fake import fake_world

for device in ("cpu", "meta"):  # twice: a second registration must not be tried
    with fake_world(8, 3, torch.device(device), 0) as world:
        t = torch.ones(2)
        dist.all_reduce(t)
        assert (dist.get_rank(), dist.get_world_size(), world.mesh.size()) == (3, 8, 8)
"""


def test_fake_backend_without_torchs_testing_module() -> None:
    """The backend the plugin registers itself where torch's fake_pg module is missing."""
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TESTING_MODULE], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


MODULE_DROPPED = """
import sys

import torch
import torch.distributed as dist

from pytest_composable.distributed._fake import fake_world

for _ in range(2):
    with fake_world(2, 0, torch.device("cpu"), 0):
        dist.all_reduce(torch.ones(1))
    # What an in-process pytester run does with the modules its run imported: torch's
    # fake_pg module runs again on the next import, and torch 2.6 refused the
    # registration it tries a second time.
    sys.modules.pop("torch.testing._internal.distributed.fake_pg", None)
"""


def test_fake_world_after_torchs_fake_pg_module_was_dropped() -> None:
    result = subprocess.run([sys.executable, "-c", MODULE_DROPPED], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
