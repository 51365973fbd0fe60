"""Records, in the main process, whether CUDA was initialised when the first real world's
ranks started (``pytest_runtest_logstart`` comes before the ranks start)."""

from __future__ import annotations

import pytest
import torch

CUDA_IN_MAIN: list[bool] = []


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    # The first real world test in test_gpu_worlds.py is test_nccl_world.
    if "test_nccl_world" in nodeid and not CUDA_IN_MAIN:
        CUDA_IN_MAIN.append(torch.cuda.is_initialized())


@pytest.fixture
def cuda_in_main() -> list[bool]:
    """What :func:`pytest_runtest_logstart` saw: ``[torch.cuda.is_initialized()]``."""
    return CUDA_IN_MAIN
