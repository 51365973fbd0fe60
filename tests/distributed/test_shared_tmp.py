"""``composable_shared_tmp_path``: one directory for every rank of a world."""

from __future__ import annotations

import pytest

from tests.helpers import assert_no_plugin_frames, output_of

SHARED = """
import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

pytestmark = pytest.mark.composable(devices=["cpu"])


@pytest.mark.composable(world_size=3)
def test_every_rank_sees_rank_0s_directory(composable_world, composable_shared_tmp_path, tmp_path):
    paths = [None] * 3
    dist.all_gather_object(paths, str(composable_shared_tmp_path))
    assert len(set(paths)) == 1
    assert (composable_shared_tmp_path == tmp_path) == (composable_world.rank == 0)
    (composable_shared_tmp_path / f"rank{composable_world.rank}").touch()
    dist.barrier()
    assert sorted(p.name for p in composable_shared_tmp_path.iterdir()) == [
        "rank0", "rank1", "rank2"
    ]


@pytest.mark.composable(world_size=2)
def test_checkpoint_round_trip(composable_world, composable_shared_tmp_path):
    state = {"t": torch.full((4,), float(composable_world.rank))}
    dcp.save(state, checkpoint_id=composable_shared_tmp_path)
    loaded = {"t": torch.zeros(4)}
    dcp.load(loaded, checkpoint_id=composable_shared_tmp_path)
    # Every rank saved the same key: the checkpoint keeps rank 0's copy.
    assert torch.equal(loaded["t"], torch.zeros(4))


def test_fake_world_gets_its_tmp_path(composable_fake_world, composable_shared_tmp_path, tmp_path):
    assert composable_shared_tmp_path == tmp_path


def test_no_world_gets_its_tmp_path(composable_shared_tmp_path, tmp_path):
    assert composable_shared_tmp_path == tmp_path
"""


def test_shared_tmp_path(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_shared=SHARED)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    assert result.ret == 0, output_of(result)
    assert result.parseoutcomes()["passed"] == 4
    assert_no_plugin_frames(result)
