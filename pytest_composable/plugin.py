"""pytest-composable's pytest plugin: hooks and fixtures (registered as ``composable``).

Disable it with ``-p no:composable``. This module imports no torch: torch is
imported only when a test uses one of the fixtures below or a device is named
with ``--composable-device``, ``PYTEST_COMPOSABLE_DEVICE`` or the
``composable_device`` ini setting (a dtype named with ``--composable-dtype`` and
the like is checked by name, without torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from . import _summary, hookspecs
from ._dtypes import DtypeError, parse_dtype, to_torch
from ._options import add_options
from .marker import MARKER_HELP, read_marker
from .parametrize import (
    DEVICE_FIXTURE,
    DTYPE_FIXTURE,
    MODEL_SPEC_FIXTURE,
    input_model,
    parametrize,
)
from .state import STATE_KEY, ComposableState, state_of

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .spec import ModelSpec

DEFAULT_BATCH_SIZE = 4


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)
    from .distributed import plugin as distributed

    pluginmanager.register(distributed, "composable.distributed")


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    state = ComposableState(config)
    config.stash[STATE_KEY] = state
    _summary.register(config)
    if not state.selection.is_default:
        # Validate named devices now, before collection, so a bad or missing
        # device is a usage error even in a suite that never uses a fixture.
        _ = state.selected


def pytest_report_header(config: pytest.Config) -> list[str]:
    return state_of(config).header()


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    return state_of(config).collected(config.get_verbosity())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize(
        metafunc,
        state_of(metafunc.config),
        composable_device,
        composable_model_spec,
        composable_dtype,
    )


def _param(request: pytest.FixtureRequest) -> Any:
    return getattr(request, "param", None)


@pytest.fixture
def composable_device(request: pytest.FixtureRequest) -> torch.device:
    """The ``torch.device`` this test runs on; the test runs once per selected device.

    Selected with ``--composable-device`` > ``PYTEST_COMPOSABLE_DEVICE`` >
    ini ``composable_device`` > default (cpu, meta, first device of each
    accelerator type), narrowed by ``@pytest.mark.composable(devices=[...])``.
    Test ids are the device's string: ``test_x[cpu]``, ``test_x[cuda:0]``.
    Override it like any fixture, or parametrize it directly
    (``@pytest.mark.parametrize("composable_device", ["cpu"], indirect=True)``).
    """
    import torch

    param = _param(request)
    if param is None:
        return state_of(request.config).selected[0]
    return torch.device(param)


@pytest.fixture
def composable_dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """The floating ``torch.dtype`` this test runs in; the test runs once per selected dtype.

    Selected with ``@pytest.mark.composable(dtypes=[...])`` (what that test runs: it
    replaces the session's selection) > ``--composable-dtype`` >
    ``PYTEST_COMPOSABLE_DTYPE`` > ini ``composable_dtype`` > ``float32``. Names:
    float16 (fp16), bfloat16 (bf16), float32 (fp32), float64 (fp64). Ids follow the
    device's: ``test_x[cpu-bfloat16]``. The test's model fixtures are built in it (the
    float32 model, same values, then ``.to(dtype)``) and ``composable_input``'s
    floating inputs are converted to it; with ``composable(cast_models=False)`` they
    stay float32 (float32 storage, mixed precision: this is the compute dtype under
    test). A device that cannot run the dtype skips the test, saying why. Tests that
    do not name ``composable_dtype`` keep their ids and float32 models.
    """
    state = state_of(request.config)
    param = _param(request)
    if param is None:
        param = (read_marker(request.node).dtypes or state.dtypes.names)[0]
    name = str(param)
    if DEVICE_FIXTURE in request.fixturenames:
        import torch

        device = torch.device(request.getfixturevalue(DEVICE_FIXTURE))
        reason = state.dtype_skip(device, name)
        if reason is not None:
            pytest.skip(reason)
    return to_torch(name)


def _model_dtype(request: pytest.FixtureRequest) -> torch.dtype | None:
    """The dtype the test's models and input are converted to: ``composable_dtype``'s,
    where the test uses it (the plugin's or an override) and its marker does not say
    ``cast_models=False``; ``None`` (float32, as built) otherwise."""
    __tracebackhide__ = True
    if DTYPE_FIXTURE not in request.fixturenames:
        return None
    if read_marker(request.node).cast_models is False:
        return None
    value = request.getfixturevalue(DTYPE_FIXTURE)
    try:
        return to_torch(parse_dtype(value))
    except DtypeError as error:
        pytest.fail(f"composable: {DTYPE_FIXTURE} gave {error}", pytrace=False)


@pytest.fixture
def composable_seed(request: pytest.FixtureRequest) -> int:
    """The seed the composable models and inputs are built with.

    ``--composable-seed`` > ini ``composable_seed`` > 0. A model built at seed
    ``s`` equals the upstream model built on CPU after ``torch.manual_seed(s)``,
    moved to the test's device.
    """
    return state_of(request.config).seed


@pytest.fixture
def composable_model_spec(request: pytest.FixtureRequest) -> ModelSpec:
    """The ``ModelSpec`` behind ``composable_model``; the test runs once per registered model.

    Registered models are the built-ins plus those returned by the
    ``pytest_composable_models`` hooks of the test's own conftest files and of
    plugins, narrowed by ``@pytest.mark.composable(models=[...])``.
    """
    models = state_of(request.config).known_models(request.node)
    param = _param(request)
    if param is None:
        return next(iter(models.values()))
    if param not in models:
        pytest.fail(f"composable: unknown model {param!r}; known: {', '.join(models)}", False)
    return models[param]


def _build(request: pytest.FixtureRequest, spec: ModelSpec, device: torch.device) -> nn.Module:
    __tracebackhide__ = True
    from .registry import build_model

    return build_model(spec, device, state_of(request.config).seed, _model_dtype(request))


@pytest.fixture
def composable_model(
    request: pytest.FixtureRequest,
    composable_model_spec: ModelSpec,
    composable_device: torch.device,
) -> nn.Module:
    """A fresh instance of every registered model on every selected device.

    Ids name both: ``test_x[composite_model-cpu]``. Values come from the CPU
    generator seeded with ``composable_seed`` and are then moved to the device,
    inside a forked generator: the test's own CPU RNG state, default dtype,
    default device, grad mode and deterministic-algorithms setting are the same
    before and after. In a test that uses ``composable_dtype`` the model is then
    converted to that dtype (unless ``composable(cast_models=False)``).
    """
    __tracebackhide__ = True
    return _build(request, composable_model_spec, composable_device)


@pytest.fixture
def composable_batch_size() -> int:
    """The number of rows in ``composable_input`` (default 4).

    Choose it per test by parametrizing it directly
    (``@pytest.mark.parametrize("composable_batch_size", [2, 8, 20])``), or
    for a module or directory by overriding this fixture.
    """
    return DEFAULT_BATCH_SIZE


@pytest.fixture
def composable_input(
    request: pytest.FixtureRequest,
    composable_model_spec: ModelSpec,
    composable_device: torch.device,
    composable_batch_size: int,
) -> torch.Tensor:
    """An input batch for the test's model on its device, ``composable_batch_size`` rows.

    The test's model is ``composable_model``'s (the test runs over every model), or,
    in a test that names one built-in model fixture (``composite_model``...) and no
    ``composable_model``, that fixture's: the test then runs over devices only, as the
    model fixture does. A test that names ``composable_input`` alone runs over every
    model. ``(B, 100)`` for most models, ``(B, 1)`` for ``nested_sequential_model``,
    ``(B, 16)`` for ``mlp`` and ``mlp_stack``, ``(B, 8)`` token ids for ``transformer``
    (B is 4 unless the test chooses); same value rule as the models (seeded CPU
    generator, then moved). In a test that uses ``composable_dtype`` a floating input
    is in that dtype, as the model is (unless ``composable(cast_models=False)``).
    """
    __tracebackhide__ = True
    from .registry import build_input

    batch = composable_batch_size
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        pytest.fail(
            f"composable: composable_batch_size must be an integer >= 1, got {batch!r}",
            pytrace=False,
        )
    spec = _test_model_spec(request, composable_model_spec)
    return build_input(
        spec, composable_device, state_of(request.config).seed, batch, _model_dtype(request)
    )


def _test_model_spec(request: pytest.FixtureRequest, spec: ModelSpec) -> ModelSpec:
    """The spec of the test's model: ``composable_model_spec``'s where the test runs over
    the models, else that of the one model fixture it names (parametrize.py decided it
    from the same fixtures)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or MODEL_SPEC_FIXTURE not in callspec.params:
        name = input_model(request.fixturenames)
        if name is not None:
            return state_of(request.config).known_models(request.node)[name]
    return spec


@pytest.fixture
def composable_reference_model(
    request: pytest.FixtureRequest,
    composable_model_spec: ModelSpec,
    composable_device: torch.device,
) -> nn.Module:
    """A second, separate instance of the test's model, built the same way (spec, device,
    dtype, seed), so it starts equal to it: the unsharded reference of a parity test
    (``pytest_composable.parity``).

    The test's model is ``composable_model``'s (the test runs over every model), or that
    of the one model fixture the test names (``mlp``, ``composite_model``...), as for
    ``composable_input``; a test that names several model fixtures and no
    ``composable_model`` is a collection error. In a world test each rank builds its
    own, equal on every rank.
    """
    __tracebackhide__ = True
    return _build(request, _test_model_spec(request, composable_model_spec), composable_device)


def _builtin_fixture(name: str, doc: str) -> Any:
    def fixture(request: pytest.FixtureRequest, composable_device: torch.device) -> nn.Module:
        __tracebackhide__ = True
        return _build(
            request, state_of(request.config).known_models(request.node)[name], composable_device
        )

    fixture.__name__ = name
    fixture.__doc__ = doc + (
        " A fresh model per test on ``composable_device`` (the test runs once per "
        "selected device), built from the CPU generator seeded with ``composable_seed``; "
        "in ``composable_dtype`` where the test uses it."
    )
    return pytest.fixture(name=name)(fixture)


unit_module = _builtin_fixture(
    "unit_module", "A ``UnitModule`` (l1 -> seq(ReLU, Linear, ReLU) -> l2), input (B, 100)."
)
composite_model = _builtin_fixture(
    "composite_model", "A ``CompositeModel`` (l1 -> u1 -> u2 -> l2), input (B, 100)."
)
unit_param_module = _builtin_fixture(
    "unit_param_module", "A ``UnitParamModule`` (l -> seq, matmul with raw ``p``), input (B, 100)."
)
composite_param_model = _builtin_fixture(
    "composite_param_model",
    "A ``CompositeParamModel`` (l -> u1 -> u2, matmul with raw ``p``, persistent ``buffer``), "
    "input (B, 100).",
)
nested_sequential_model = _builtin_fixture(
    "nested_sequential_model",
    "A ``NestedSequentialModel`` (nested Sequential/FakeSequential for wrap-policy traversal), "
    "input (B, 1), output (B, 4).",
)
mlp = _builtin_fixture(
    "mlp",
    "An ``MLP(16)`` of PyTorch's FSDP2 tests (in_proj 16 -> 64, out_proj 64 -> 16), "
    "input (B, 16). Not among ``composable_model``'s default models; "
    '``composable(models=["mlp"])`` selects it there.',
)
mlp_stack = _builtin_fixture(
    "mlp_stack",
    "An ``MLPStack(16)`` of PyTorch's FSDP2 tests (three MLPs; ``parallelize(tp_mesh, "
    "dp_mesh, ...)``), input (B, 16). Not among ``composable_model``'s default models.",
)
transformer = _builtin_fixture(
    "transformer",
    "A ``Transformer`` of PyTorch's tensor-parallel tests, small: 2 layers, vocabulary 8, "
    "max sequence 16, dim 16, 4 heads, ``dropout_p=0``; input (B, 8) token ids. On CPU, "
    "``Transformer.parallelize`` needs ``local_output_for_attn=True``. Not among "
    "``composable_model``'s default models.",
)

__all__ = [
    "DEVICE_FIXTURE",
    "MODEL_SPEC_FIXTURE",
    "composable_batch_size",
    "composable_device",
    "composable_dtype",
    "composable_input",
    "composable_model",
    "composable_model_spec",
    "composable_reference_model",
    "composable_seed",
    "composite_model",
    "composite_param_model",
    "mlp",
    "mlp_stack",
    "nested_sequential_model",
    "transformer",
    "unit_module",
    "unit_param_module",
]
