"""The ``pytest_composable_models`` and ``pytest_composable_devices`` hooks, and ``ModelSpec``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from pytest_composable import ModelSpec
from tests.helpers import (
    BUILTIN_NAMES,
    DEVICE_TEST,
    assert_clear_error,
    verbose_outcomes,
)

TINY_SPEC = """
import torch
from torch import nn
from pytest_composable import ModelSpec

def build_tiny(device):
    return nn.Linear(3, 2, device=device)

def tiny_input(device, batch):
    return torch.randn(batch, 3, device=device)

TINY = ModelSpec("tiny", build_tiny, tiny_input)
"""


def test_models_hook_adds_a_model_and_devices_hook_removes_meta(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        TINY_SPEC
        + """
def pytest_composable_models(config):
    return [TINY]

def pytest_composable_devices(config, devices):
    devices.remove(torch.device("meta"))
"""
    )
    pytester.makepyfile(
        test_hooks="""
import pytest
import torch
from torch import nn

def test_every_model(composable_model, composable_input, composable_model_spec):
    out = composable_model(composable_input)
    assert out.shape[0] == 4

@pytest.mark.composable(models=["tiny"])
def test_tiny(composable_model, composable_input, composable_seed):
    torch.manual_seed(composable_seed)
    expected = nn.Linear(3, 2)
    assert torch.equal(composable_model.weight, expected.weight)
    assert composable_input.shape == (4, 3)

def test_device(composable_device):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-v")
    expected = {f"test_hooks.py::test_every_model[{m}-cpu]" for m in (*BUILTIN_NAMES, "tiny")}
    expected |= {"test_hooks.py::test_tiny[tiny-cpu]", "test_hooks.py::test_device[cpu]"}
    outcomes = verbose_outcomes(result)
    assert set(outcomes) == expected
    assert set(outcomes.values()) == {"PASSED"}
    result.stdout.fnmatch_lines(["composable: *devices*: cpu*"])


ADD_DEVICES = """
import torch

def pytest_composable_devices(config, devices):
    devices.append("xpu:0")
    devices.append(torch.device("xpu", 1))
    devices.append(torch.device("cpu"))  # a duplicate is dropped
"""


@pytest.mark.parametrize(
    ("args", "devices"),
    [
        ([], ["cpu", "meta", "xpu:0"]),
        (["--composable-device=xpu:1,cpu"], ["xpu:1", "cpu"]),
    ],
    ids=["default", "named"],
)
def test_devices_hook_adds_devices(
    pytester: pytest.Pytester, args: list[str], devices: list[str]
) -> None:
    """Devices a hook appends (simulated xpu) join the default selection and validation."""
    pytester.makeconftest(ADD_DEVICES)
    pytester.makepyfile(test_x=DEVICE_TEST)
    result = pytester.runpytest_subprocess("-v", *args)
    assert verbose_outcomes(result) == {f"test_x.py::test_x[{d}]": "PASSED" for d in devices}


def test_devices_hook_additions_are_listed_in_errors(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(ADD_DEVICES)
    pytester.makepyfile(test_x=DEVICE_TEST)
    result = pytester.runpytest_subprocess("--composable-device=xpu:2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'xpu:2' is not available*has: cpu, meta, xpu:0, xpu:1*"])


BAD_MODEL_HOOKS = {
    "duplicate": (
        "return [ModelSpec('unit_module', build_tiny, tiny_input)]",
        "*model name 'unit_module' is registered twice; model names must be unique*",
    ),
    "not-a-spec": (
        "return ['tiny']",
        "*pytest_composable_models returned 'tiny', which is not a ModelSpec*",
    ),
    "not-a-list": (
        "return TINY",
        "*pytest_composable_models must return a list of ModelSpec, got ModelSpec(name='tiny'*",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MODEL_HOOKS))
def test_bad_models_hook_is_a_clear_error(pytester: pytest.Pytester, case: str) -> None:
    body, message = BAD_MODEL_HOOKS[case]
    pytester.makeconftest(f"{TINY_SPEC}\ndef pytest_composable_models(config):\n    {body}\n")
    pytester.makepyfile(test_x="def test_x(composable_model):\n    pass\n")
    result = pytester.runpytest_subprocess()
    assert_clear_error(result, message)


def test_bad_models_hook_with_a_per_model_fixture_has_no_plugin_frames(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest("def pytest_composable_models(config):\n    return ['not a spec']\n")
    pytester.makepyfile(test_x="def test_x(unit_module):\n    pass\n")
    result = pytester.runpytest_subprocess()
    assert_clear_error(result, "*'not a spec', which is not a ModelSpec*")


def test_devices_hook_leaving_a_non_device_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "def pytest_composable_devices(config, devices):\n    devices.append('cdua')\n"
    )
    pytester.makepyfile(test_x=DEVICE_TEST)
    result = pytester.runpytest_subprocess()
    assert_clear_error(
        result, "*composable: pytest_composable_devices left a non-device in the list*cdua*"
    )


def _build(device: torch.device) -> nn.Module:
    return nn.Linear(1, 1, device=device)


def _input(device: torch.device, batch: int) -> torch.Tensor:
    return torch.zeros(batch, 1, device=device)


@pytest.mark.parametrize("name", ["", "1model", "my-model", "a b", "x[cpu]", None])
def test_model_spec_rejects_a_name_that_is_not_an_identifier(name: Any) -> None:
    with pytest.raises(ValueError, match="ModelSpec name must be a Python identifier"):
        ModelSpec(name, _build, _input)


def test_model_spec_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="build and make_input must be callables"):
        ModelSpec("model", _build, "not callable")  # type: ignore[arg-type]


def test_model_spec_is_a_frozen_value() -> None:
    spec = ModelSpec("model", _build, _input)
    assert spec == ModelSpec("model", _build, _input)
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
