"""Time to a failed report when one rank fails and the other waits in a collective.

Two sessions of one world test (2 gloo ranks, ``--composable-timeout=120``) in
which rank 1 raises ``ValueError``: in A rank 0 then waits in ``all_reduce`` for
rank 1, which never comes (the plugin must end it); in B rank 0 just returns.
A - B is what a rank left waiting costs: the target is 3 s, against the deadline's
108 s (the process group's timeout) of a run that waited.

    python benchmarks/bench_fail_fast.py [--rounds N]
"""

from __future__ import annotations

from _harness import Result, main, pytest_command, scratch_dir, write
from bench_warm import compare_env

TARGET = 3.0
DEFAULT_ROUNDS = 5

RANK1_RAISES = """
import os

import pytest
import torch
import torch.distributed as dist


@pytest.mark.composable(devices=["cpu"], world_size=2)
def test_rank1_raises(composable_world):
    if composable_world.rank == 1:
        raise ValueError("boom on rank 1")
    if os.environ["WAIT"] == "1":
        dist.all_reduce(torch.ones(1))
"""


def measure(rounds: int) -> Result:
    with scratch_dir() as root:
        write(root / "test_r1.py", RANK1_RAISES)
        command = pytest_command("-q", "-p", "no:cacheprovider", "--composable-timeout=120")
        return compare_env(
            "rank 1 raises, rank 0 waits in all_reduce: added time to the failed report (s)",
            TARGET,
            (("waits", command, root), {"WAIT": "1"}, 1, "1 failed"),
            (("returns", command, root), {"WAIT": "0"}, 1, "1 failed"),
            rounds,
        )


if __name__ == "__main__":
    main(measure, DEFAULT_ROUNDS)
