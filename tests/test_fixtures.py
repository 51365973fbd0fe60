"""The fixtures, run for real in pytester sessions on this machine's cpu and meta devices.

The runs are in-process (nothing here depends on the command line or the
environment), so the modules their tests import are imported here first.
"""

from __future__ import annotations

import pytest
import torch
import torch.testing._internal.common_dist_composable
from torch import nn

import pytest_composable.models  # noqa: F401  (imported before the in-process runs)
from pytest_composable import ModelSpec
from pytest_composable.registry import build_input, build_model
from tests.helpers import BUILTIN_MODELS, BUILTIN_NAMES, assert_no_plugin_frames, verbose_outcomes

# Test-module code shared by the runs below: upstream's model built on CPU after
# ``torch.manual_seed(seed)``, and a check that a fixture model equals it.
CHECKS = f"""
import pytest
import torch
import torch.testing._internal.common_dist_composable as upstream
from pytest_composable import models

BUILTIN = {BUILTIN_MODELS!r}
"""
CHECKS += """
CLASSES = {name: cls for name, cls, _ in BUILTIN}
FEATURES = {name: features for name, _, features in BUILTIN}


def upstream_model(name, seed):
    torch.manual_seed(seed)
    return getattr(upstream, CLASSES[name])(torch.device("cpu"))


def assert_equals_upstream(model, name, seed, device):
    assert type(model) is getattr(models, CLASSES[name])
    state = model.state_dict()
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(t.device == device for t in tensors)
    expected = upstream_model(name, seed).state_dict()
    assert list(state) == list(expected)
    if device.type == "meta":
        return
    for key, value in expected.items():
        assert torch.equal(state[key].cpu(), value), key
"""


def test_device_and_model_fixtures(pytester: pytest.Pytester) -> None:
    per_model = "".join(
        f"def test_{name}({name}, composable_device, composable_seed):\n"
        f"    assert_equals_upstream({name}, {name!r}, composable_seed, composable_device)\n\n"
        for name in BUILTIN_NAMES
    )
    pytester.makepyfile(
        test_fixtures=CHECKS
        + per_model
        + """
def test_device(composable_device, request):
    assert isinstance(composable_device, torch.device)
    assert request.node.name == f"test_device[{composable_device}]"


def test_seed_default(composable_seed):
    assert composable_seed == 0


def test_model(composable_model, composable_input, composable_model_spec, composable_device,
               composable_seed, request):
    name = composable_model_spec.name
    assert request.node.name == f"test_model[{name}-{composable_device}]"
    assert_equals_upstream(composable_model, name, composable_seed, composable_device)
    assert composable_input.shape == (4, FEATURES[name])
    assert composable_input.device == composable_device
    out = composable_model(composable_input)
    assert out.shape == (4, 4 if name == "nested_sequential_model" else 100)
    assert out.device == composable_device
    if composable_device.type == "cpu":
        torch.manual_seed(composable_seed)
        expected = torch.randn(4, FEATURES[name])
        assert torch.equal(composable_input, expected)
        torch.manual_seed(composable_seed)
        reference = getattr(models, CLASSES[name])("cpu")  # equals upstream's (test_models.py)
        assert torch.equal(out, reference(expected))


@pytest.mark.parametrize("fixture", ["composable_model", "composable_input"])
def test_fixtures_leave_global_state_alone(fixture, composable_model_spec, composable_device,
                                          request):
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            request.getfixturevalue(fixture)
            assert not torch.is_grad_enabled()
        assert torch.is_grad_enabled()
        assert torch.get_default_dtype() == torch.float64
        assert torch.get_default_device() == torch.device("cpu")
        assert torch.equal(torch.get_rng_state(), rng)
    finally:
        torch.set_default_dtype(previous_dtype)
"""
    )
    result = pytester.runpytest("-v")
    outcomes = verbose_outcomes(result)
    devices = ("cpu", "meta")
    expected = [f"test_{name}[{d}]" for name in BUILTIN_NAMES for d in devices]
    expected += [f"test_device[{d}]" for d in devices] + ["test_seed_default"]
    expected += [f"test_model[{name}-{d}]" for name in BUILTIN_NAMES for d in devices]
    expected += [
        f"test_fixtures_leave_global_state_alone[{name}-{d}-{fixture}]"
        for fixture in ("composable_model", "composable_input")
        for name in BUILTIN_NAMES
        for d in devices
    ]
    assert sorted(outcomes) == sorted(f"test_fixtures.py::{test}" for test in expected)
    assert set(outcomes.values()) == {"PASSED"}, result.stdout.str()


@pytest.mark.parametrize(
    ("args", "ini", "seed"),
    [
        (["--composable-seed", "3"], None, 3),
        ([], "3", 3),
        (["--composable-seed=5"], "3", 5),
        ([f"--composable-seed={2**64 - 1}"], None, 2**64 - 1),
    ],
    ids=["cli", "ini", "cli-over-ini", "largest"],
)
def test_seed(pytester: pytest.Pytester, args: list[str], ini: str | None, seed: int) -> None:
    if ini is not None:
        pytester.makeini(f"[pytest]\ncomposable_seed = {ini}\n")
    pytester.makepyfile(
        test_seed=CHECKS
        + f"""
def test_seed(composable_seed, composite_param_model, composable_device):
    assert composable_seed == {seed}
    assert_equals_upstream(composite_param_model, "composite_param_model", {seed},
                           composable_device)
    torch.manual_seed({seed} - 1)
    other = getattr(upstream, "CompositeParamModel")(torch.device("cpu"))
    if composable_device.type == "cpu":
        assert not torch.equal(composite_param_model.p, other.p)
"""
    )
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"composable: *seed: {seed}*"])


def test_user_overrides_and_direct_parametrization(pytester: pytest.Pytester) -> None:
    """A conftest's ``composable_device`` wins; direct indirect parametrization is not doubled."""
    override = pytester.mkpydir("override")
    (override / "conftest.py").write_text(
        "import pytest, torch\n\n"
        "@pytest.fixture\n"
        "def composable_device():\n"
        "    return torch.device('meta')\n"
    )
    (override / "test_override.py").write_text(
        "def test_override(composable_device, unit_module):\n"
        "    assert composable_device.type == 'meta'\n"
        "    assert all(p.is_meta for p in unit_module.parameters())\n"
    )
    pytester.makepyfile(
        test_direct="""
import pytest
import torch

@pytest.mark.parametrize("composable_device", ["cpu"], indirect=True)
def test_direct(composable_device, unit_module):
    assert composable_device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in unit_module.parameters())

@pytest.mark.parametrize("composable_device", ["meta", "cpu"], indirect=True)
@pytest.mark.parametrize("composable_model_spec", ["unit_module"], indirect=True)
def test_direct_model(composable_model_spec, composable_device, composable_model):
    assert composable_model_spec.name == "unit_module"
    assert next(composable_model.parameters()).device == composable_device
"""
    )
    result = pytester.runpytest("-v")
    assert verbose_outcomes(result) == {
        "override/test_override.py::test_override": "PASSED",
        "test_direct.py::test_direct[cpu]": "PASSED",
        "test_direct.py::test_direct_model[unit_module-meta]": "PASSED",
        "test_direct.py::test_direct_model[unit_module-cpu]": "PASSED",
    }


def test_fixtures_ignore_the_tests_default_device(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_default_device=CHECKS
        + """
def test_model(composable_model_spec, composable_seed, request):
    torch.set_default_device("meta")
    try:
        model = request.getfixturevalue("composable_model")
        batch = request.getfixturevalue("composable_input")
        assert torch.get_default_device() == torch.device("meta")
    finally:
        torch.set_default_device(None)
    name = composable_model_spec.name
    assert_equals_upstream(model, name, composable_seed, torch.device("cpu"))
    torch.manual_seed(composable_seed)
    assert torch.equal(batch, torch.randn(4, FEATURES[name]))
"""
    )
    result = pytester.runpytest("--composable-device=cpu")
    result.assert_outcomes(passed=5)


def test_fixtures_leave_no_torch_function_mode_behind(pytester: pytest.Pytester) -> None:
    """Restoring the cpu default device must not push a global DeviceContext mode,
    which would route every later torch call of the session through Python."""
    pytester.makepyfile(
        """
        import torch

        def test_a(composable_model, composable_input):
            pass

        def test_b():
            assert torch.overrides._get_current_function_mode_stack() == []
        """
    )
    result = pytester.runpytest("--composable-device=cpu")
    result.assert_outcomes(passed=6)


def _deterministic() -> tuple[bool, bool]:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )


@pytest.mark.parametrize("before", [(False, False), (True, True), (True, False)], ids=str)
def test_a_build_that_switches_deterministic_algorithms_does_not_leak(
    before: tuple[bool, bool],
) -> None:
    """Before: a hook's ``build`` that turned them on left them on for every later test.

    ``build_model`` and ``build_input`` are what the fixtures call, with a hook's
    spec as with a built-in one; called directly, as switching the setting the
    first time imports torch's inductor, which an in-process run would drop.
    """

    def switch() -> None:
        torch.use_deterministic_algorithms(not before[0], warn_only=not before[1])

    def build(device: torch.device) -> nn.Module:
        switch()
        return nn.Linear(2, 2, device=device)

    def make_input(device: torch.device, batch: int) -> torch.Tensor:
        switch()
        return torch.zeros(batch, 2, device=device)

    spec = ModelSpec("switches", build, make_input)
    outer = _deterministic()
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    try:
        build_model(spec, torch.device("cpu"), 0)
        assert _deterministic() == before
        build_input(spec, torch.device("meta"), 0, 4)
        assert _deterministic() == before
    finally:
        torch.use_deterministic_algorithms(outer[0], warn_only=outer[1])


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_a_build_that_switches_dtype_or_grad_mode_does_not_leak(
    dtype: torch.dtype, grad: bool
) -> None:
    """The build puts back what it found, whether its ``build`` changed the default
    dtype and grad mode (each is set back only where it changed) or left them."""

    other = torch.float64 if dtype == torch.float32 else torch.float32

    def build(device: torch.device) -> nn.Module:
        torch.set_default_dtype(other)
        torch.set_grad_enabled(not grad)
        return nn.Linear(2, 2, device=device)

    def untouched(device: torch.device) -> nn.Module:
        return nn.Linear(2, 2, device=device)

    outer = torch.get_default_dtype(), torch.is_grad_enabled()
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)
    try:
        for make, built_in in ((build, other), (untouched, dtype)):
            model = build_model(ModelSpec("m", make, _no_input), torch.device("cpu"), 0)
            assert (torch.get_default_dtype(), torch.is_grad_enabled()) == (dtype, grad)
            assert model.weight.dtype == built_in
    finally:
        torch.set_default_dtype(outer[0])
        torch.set_grad_enabled(outer[1])


def _no_input(device: torch.device, batch: int) -> torch.Tensor:
    return torch.zeros(batch, 2, device=device)


def test_the_test_chooses_the_input_size(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_sizes="""
import pytest

@pytest.mark.parametrize("composable_batch_size", [2, 8, 20])
def test_parametrized(composable_input, composable_model, composable_batch_size):
    assert composable_input.shape[0] == composable_batch_size
    assert composable_model(composable_input).shape[0] == composable_batch_size

def test_default(composable_input):
    assert composable_input.shape[0] == 4
""",
        test_overridden="""
import pytest

@pytest.fixture
def composable_batch_size():
    return 3

def test_module_wide(composable_input):
    assert composable_input.shape[0] == 3
""",
        test_bad="""
import pytest

@pytest.mark.parametrize("composable_batch_size", [0, 2.5, True])
def test_bad(composable_input):
    pass
""",
    )
    result = pytester.runpytest("--composable-device=cpu")
    models = len(BUILTIN_NAMES)
    result.assert_outcomes(passed=3 * models + models + models, errors=3 * models)
    result.stdout.fnmatch_lines(
        ["*composable: composable_batch_size must be an integer >= 1, got 0*"]
    )
    assert_no_plugin_frames(result)


def test_input_of_a_model_fixture(pytester: pytest.Pytester) -> None:
    """``composable_input`` beside one model fixture is that model's input, on its device,
    and the test runs once per device, not once per model. Before, it ran over all five
    models, with ids such as ``[unit_module-cpu]`` for a ``CompositeModel``, and the
    ``nested_sequential_model`` test failed with a shape error on four of them."""
    per_model = "".join(
        f"def test_{name}({name}, composable_input, composable_device, composable_seed):\n"
        f"    check({name}, {name!r}, composable_input, composable_device, composable_seed)\n\n"
        for name in BUILTIN_NAMES
    )
    pytester.makepyfile(
        test_input=CHECKS
        + per_model
        + """
def check(model, name, batch, device, seed):
    assert type(model) is getattr(models, CLASSES[name])
    assert batch.shape == (4, FEATURES[name])
    assert batch.device == device
    assert model(batch).shape[0] == 4
    if device.type == "cpu":
        torch.manual_seed(seed)
        assert torch.equal(batch, torch.randn(4, FEATURES[name]))


def test_composite(composite_model, composable_input, request):
    assert request.node.name in ("test_composite[cpu]", "test_composite[meta]")
    assert composable_input.shape == (4, 100)
    composite_model(composable_input)


def test_nested(nested_sequential_model, composable_input):
    assert nested_sequential_model(composable_input).shape == (4, 4)


@pytest.mark.parametrize("composable_batch_size", [2, 7])
def test_batch(nested_sequential_model, composable_input, composable_batch_size):
    assert composable_input.shape == (composable_batch_size, 1)


class TestInClass:
    def test_method(self, unit_param_module, composable_input):
        assert unit_param_module(composable_input).shape == (4, 100)


def test_with_composable_model(composable_model, nested_sequential_model, composable_input,
                               composable_model_spec):
    # composable_model decides: the test runs over every model, the input fits each.
    assert composable_model(composable_input).shape[0] == 4


@pytest.fixture
def spec_name(composable_model_spec):
    return composable_model_spec.name


def test_with_a_fixture_on_the_spec(spec_name, nested_sequential_model, composable_input):
    # A fixture of the test's own asks for composable_model_spec: it decides, as before.
    assert composable_input.shape == (4, FEATURES[spec_name])


def test_alone(composable_input, request):
    # composable_input alone still runs over every model.
    assert request.node.callspec.params["composable_model_spec"] in CLASSES
"""
    )
    result = pytester.runpytest("-v", "-p", "no:randomly")
    outcomes = verbose_outcomes(result)
    devices = ("cpu", "meta")
    expected = [f"test_{name}[{d}]" for d in devices for name in BUILTIN_NAMES]
    expected += [f"test_composite[{d}]" for d in devices]
    expected += [f"test_nested[{d}]" for d in devices]
    expected += [f"test_batch[{d}-{b}]" for d in devices for b in (2, 7)]
    expected += [f"TestInClass::test_method[{d}]" for d in devices]
    for test in ("test_with_composable_model", "test_with_a_fixture_on_the_spec", "test_alone"):
        expected += [f"{test}[{name}-{d}]" for name in BUILTIN_NAMES for d in devices]
    assert sorted(outcomes) == sorted(f"test_input.py::{test}" for test in expected), (
        result.stdout.str()
    )
    assert set(outcomes.values()) == {"PASSED"}, result.stdout.str()


def test_input_beside_two_model_fixtures_is_a_collection_error(pytester: pytest.Pytester) -> None:
    """Two model fixtures, each with its own input shape, and no ``composable_model``:
    ``composable_input`` cannot be the input of both. Before, the test silently ran over
    all five models."""
    pytester.makepyfile(
        test_two="""
def test_two(unit_module, nested_sequential_model, composable_input):
    pass

def test_innocent():
    pass
"""
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*test_two.py::test_two: composable_input is the input of one model, and this test "
            "uses unit_module, nested_sequential_model; use composable_model*"
        ]
    )
    assert_no_plugin_frames(result)
