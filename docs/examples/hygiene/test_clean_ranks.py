"""What a world test changes in a kept rank's process, the next test does not see.

The two ranks run these tests one after the other in the same two processes (the
pool is kept), in file order. The first test changes global state and compiles a
function; the second finds the state as it was and compiles again from scratch.
Module globals stay: they are the test module's, not the process's state.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch._dynamo.utils import counters

from pytest_composable import World

pytestmark = pytest.mark.composable(world_size=2, devices=["cpu"])

BEFORE: dict[str, object] = {}  # a module global: kept from test to test on each rank


def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


COMPILED = torch.compile(double, backend="aot_eager")


def test_changes_the_process(composable_world: World, tmp_path: os.PathLike[str]) -> None:
    BEFORE.update(pid=os.getpid(), cwd=os.getcwd())
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    os.environ["MY_TEST_FLAG"] = "1"
    os.chdir(tmp_path)
    COMPILED(torch.ones(2))
    assert counters["stats"]["unique_graphs"] == 1


def test_finds_the_process_as_it_was(composable_world: World) -> None:
    if not BEFORE:
        pytest.skip("runs after test_changes_the_process, on the same ranks")
    assert os.getpid() == BEFORE["pid"]  # the same rank process...
    assert torch.get_default_dtype() == torch.float32  # ...with its state put back
    assert torch.is_grad_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    assert "MY_TEST_FLAG" not in os.environ
    assert os.getcwd() == BEFORE["cwd"]
    assert not any(counters.values())  # torch._dynamo was reset
    COMPILED(torch.ones(2))  # compiled again, from scratch
    assert counters["stats"]["unique_graphs"] == 1
