"""The ``pytest_composable_models`` and ``pytest_composable_devices`` hooks, and ``ModelSpec``.

The runs are in-process: nothing here depends on the command line or the environment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pytest_composable import ModelSpec
from tests.helpers import (
    BUILTIN_NAMES,
    DEVICE_TEST,
    PLAIN_TEST,
    assert_clear_error,
    assert_no_plugin_frames,
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
    result = pytester.runpytest("-v")
    expected = {f"test_hooks.py::test_every_model[{m}-cpu]" for m in (*BUILTIN_NAMES, "tiny")}
    expected |= {"test_hooks.py::test_tiny[tiny-cpu]", "test_hooks.py::test_device[cpu]"}
    outcomes = verbose_outcomes(result)
    assert set(outcomes) == expected
    assert set(outcomes.values()) == {"PASSED"}
    result.stdout.fnmatch_lines(["composable: *devices*: cpu*"])


SCOPED_TEST = "def test_model(composable_model):\n    pass\n"
TINY_TEST = """
import pytest

@pytest.mark.composable(models=["tiny"])
def test_tiny(composable_model):
    assert composable_model.weight.shape == (2, 3)
"""


def test_models_hook_in_a_conftest_adds_models_to_its_directory_only(
    pytester: pytest.Pytester,
) -> None:
    """Before: ``a/conftest.py``'s models reached ``b/`` too, and changed its ids."""
    a, b = pytester.mkdir("a"), pytester.mkdir("b")
    (a / "conftest.py").write_text(
        TINY_SPEC
        + "\nimport pytest\n\n@pytest.hookimpl(optionalhook=True)\n"
        + "def pytest_composable_models(config):\n    return [TINY]\n"
    )
    (a / "test_a.py").write_text(SCOPED_TEST + TINY_TEST)
    (b / "test_b.py").write_text(SCOPED_TEST)
    (b / "test_tiny.py").write_text(TINY_TEST)
    result = pytester.runpytest("-v", "--composable-device=cpu", "--continue-on-collection-errors")
    outcomes = verbose_outcomes(result)
    in_a = {n for n in outcomes if n.startswith("a/test_a.py::test_model[")}
    in_b = {n for n in outcomes if n.startswith("b/test_b.py::test_model[")}
    assert in_a == {f"a/test_a.py::test_model[{m}-cpu]" for m in (*BUILTIN_NAMES, "tiny")}
    assert in_b == {f"b/test_b.py::test_model[{m}-cpu]" for m in BUILTIN_NAMES}
    assert outcomes["a/test_a.py::test_tiny[tiny-cpu]"] == "PASSED"
    assert {outcome for name, outcome in outcomes.items() if name.startswith("a/")} == {"PASSED"}
    result.stdout.fnmatch_lines(["*ERROR collecting b/test_tiny.py*", "*unknown model(s) tiny*"])
    alone = pytester.runpytest(
        "-v", "--composable-device=cpu", "--continue-on-collection-errors", "b"
    )
    assert verbose_outcomes(alone) == {n: o for n, o in outcomes.items() if n.startswith("b/")}


ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
# The conftest.py the docs' hooks guide shows (docs/how-to/hooks.md includes it).
DOCS_HOOKS_EXAMPLE = ROOT / "docs" / "examples" / "hooks" / "conftest.py"
HOOK_DEFINITION = re.compile(
    r"^(?P<decorator>.*)\n(?:async )?def (?P<hook>pytest_composable_\w+)\(", re.M
)


def readme_hooks_example() -> str:
    """The conftest.py the docs show for the hooks (it once lived in the README)."""
    return DOCS_HOOKS_EXAMPLE.read_text()


def test_every_hook_implementation_shown_is_an_optional_hook() -> None:
    shown = [
        *EXAMPLES.rglob("*.py"),
        *(ROOT / "docs").rglob("*.py"),
        *(ROOT / "docs").rglob("*.md"),
    ]
    sources = {path: path.read_text() for path in shown if "_build" not in path.parts}
    sources[ROOT / "README.md"] = (ROOT / "README.md").read_text()
    found = [
        (path, match) for path, text in sources.items() for match in HOOK_DEFINITION.finditer(text)
    ]
    assert {match["hook"] for _, match in found} >= {
        "pytest_composable_models",
        "pytest_composable_devices",
    }
    for path, match in found:
        assert match["decorator"] == "@pytest.hookimpl(optionalhook=True)", (path, match[0])


def test_readme_hooks_example_without_the_plugin_and_with_it(pytester: pytest.Pytester) -> None:
    """Before: with ``-p no:composable`` the hooks example's conftest.py (then in the README,
    now in the docs) stopped pytest with
    ``PluginValidationError: unknown hook 'pytest_composable_models'`` (exit 3)."""
    pytester.makeconftest(readme_hooks_example())
    pytester.makepyfile(
        test_x="def test_model(composable_model, composable_input):\n"
        "    composable_model(composable_input)\n\n" + PLAIN_TEST
    )
    without = pytester.runpytest("-p", "no:composable", "-k", "test_a")
    without.assert_outcomes(passed=1, deselected=1)
    assert_no_plugin_frames(without)
    with_plugin = pytester.runpytest("-v")
    outcomes = verbose_outcomes(with_plugin)
    assert "test_x.py::test_model[tiny_mlp-cpu]" in outcomes
    assert not [n for n in outcomes if "meta" in n]
    assert set(outcomes.values()) == {"PASSED"}


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
    result = pytester.runpytest("-v", *args)
    assert verbose_outcomes(result) == {f"test_x.py::test_x[{d}]": "PASSED" for d in devices}


def test_devices_hook_additions_are_listed_in_errors(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(ADD_DEVICES)
    pytester.makepyfile(test_x=DEVICE_TEST)
    result = pytester.runpytest("--composable-device=xpu:2")
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
    result = pytester.runpytest()
    assert_clear_error(result, message)


def test_bad_models_hook_with_a_per_model_fixture_has_no_plugin_frames(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest("def pytest_composable_models(config):\n    return ['not a spec']\n")
    pytester.makepyfile(test_x="def test_x(unit_module):\n    pass\n")
    result = pytester.runpytest()
    assert_clear_error(result, "*'not a spec', which is not a ModelSpec*")


def test_devices_hook_leaving_a_non_device_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "def pytest_composable_devices(config, devices):\n    devices.append('cdua')\n"
    )
    pytester.makepyfile(test_x=DEVICE_TEST)
    result = pytester.runpytest()
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
