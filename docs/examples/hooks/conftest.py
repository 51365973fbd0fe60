# conftest.py
import pytest
import torch
from torch import nn

from pytest_composable import ModelSpec


@pytest.hookimpl(optionalhook=True)
def pytest_composable_models(config):
    """Add models to composable_model for the tests under this directory."""
    return [
        ModelSpec(
            "tiny_mlp",
            build=lambda device: nn.Sequential(nn.Linear(8, 2, device=device)),
            make_input=lambda device, batch: torch.randn(batch, 8, device=device),
        )
    ]


@pytest.hookimpl(optionalhook=True)
def pytest_composable_devices(config, devices):
    """Edit the discovered device list in place: here, no test runs on meta."""
    devices.remove(torch.device("meta"))
