"""How tests that use the composable fixtures are parametrized over models, devices and dtypes.

Only fixtures the plugin itself defines are parametrized: a test that
parametrizes ``composable_device`` or ``composable_model_spec`` directly, or
sees a conftest's override of those fixtures, is left alone (the anyio
pattern), so users keep full control.

``composable_input`` is the input of the test's model. In a test that uses
``composable_model`` (or ``composable_model_spec`` itself) that is the model of
each run, so the test runs over every model. In a test that names one built-in
model fixture (``composite_model``...) and not ``composable_model``, it is that
model's input, and the test is not run over the other models (its ids are the
model fixture's, ``test_x[cpu]``). ``composable_input`` alone runs over every model.

A test that asks for ``composable_dtype`` runs over the dtypes its marker's
``dtypes=`` lists, or else the session's (``--composable-dtype``...): the marker
replaces the session's selection rather than narrowing it, since which dtypes a test
makes sense in (its tolerances, a mixed-precision recipe) is the test's own choice,
not the machine's; a device that cannot run one skips it when the test sets up. The
dtype id part follows the device's (``test_x[cpu-bfloat16]``). Tests that do not ask
for it are not parametrized over dtypes and keep their ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from ._text import shorten
from .distributed._constants import FAKE_FIXTURE, WORLD_FIXTURE
from .distributed._policy import sizes_of
from .marker import MarkerError, MarkerOptions, read_marker
from .state import ComposableState

if TYPE_CHECKING:
    import torch

    from .devices import Selected
    from .spec import ModelSpec

__all__ = [
    "BUILTIN_MODEL_FIXTURES",
    "DEVICE_FIXTURE",
    "DTYPE_FIXTURE",
    "INPUT_FIXTURE",
    "MODEL_FIXTURE",
    "MODEL_SPEC_FIXTURE",
    "REFERENCE_FIXTURE",
    "input_model",
    "parametrize",
]

DEVICE_FIXTURE = "composable_device"
DTYPE_FIXTURE = "composable_dtype"
MODEL_SPEC_FIXTURE = "composable_model_spec"
MODEL_FIXTURE = "composable_model"
INPUT_FIXTURE = "composable_input"
REFERENCE_FIXTURE = "composable_reference_model"
BUILTIN_MODEL_FIXTURES = (
    "unit_module",
    "composite_model",
    "unit_param_module",
    "composite_param_model",
    "nested_sequential_model",
    "mlp",
    "mlp_stack",
    "transformer",
)
"""The fixtures of the built-in models, each named as its model (``registry.BUILTIN_MODELS``
and ``registry.EXTRA_MODELS``)."""
_FOLLOWERS = (INPUT_FIXTURE, REFERENCE_FIXTURE)
"""Fixtures that follow the test's model: the one model fixture it names, if it names no
``composable_model``."""


class InputError(ValueError):
    """``composable_input`` in a test whose models disagree on what it should be."""


def input_model(fixturenames: Sequence[str]) -> str | None:
    """The built-in model whose input ``composable_input`` gives, where the test's fixtures
    (``fixturenames``, the whole closure) decide it: the one built-in model fixture, in
    a test that uses no ``composable_model``. ``None`` where ``composable_model_spec``
    decides (``composable_model``, no model fixture, or more than one).
    """
    if MODEL_FIXTURE in fixturenames:
        return None
    named = [name for name in BUILTIN_MODEL_FIXTURES if name in fixturenames]
    return named[0] if len(named) == 1 else None


def _directly_parametrized(metafunc: pytest.Metafunc, name: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        argnames = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(argnames, str):
            argnames = [a.strip() for a in argnames.split(",")]
        if name in argnames:
            return True
    return False


def _ours(metafunc: pytest.Metafunc, name: str, fixture: Callable[..., Any]) -> bool:
    """True when ``name`` resolves to the plugin's own fixture for this test."""
    if name not in metafunc.fixturenames or _directly_parametrized(metafunc, name):
        return False
    defs = metafunc._arg2fixturedefs.get(name)
    if not defs:
        return False
    func = getattr(defs[-1].func, "__wrapped__", defs[-1].func)
    return func is getattr(fixture, "__wrapped__", fixture)


def parametrize(
    metafunc: pytest.Metafunc,
    state: ComposableState,
    device_fixture: Callable[..., Any],
    model_spec_fixture: Callable[..., Any],
    dtype_fixture: Callable[..., Any],
) -> None:
    """Parametrize ``metafunc`` over models (first id part), devices (second) and dtypes
    (third), each where the test uses the plugin's own fixture for it."""
    wants_models = _ours(metafunc, MODEL_SPEC_FIXTURE, model_spec_fixture)
    wants_devices = _ours(metafunc, DEVICE_FIXTURE, device_fixture)
    wants_dtypes = _ours(metafunc, DTYPE_FIXTURE, dtype_fixture)
    try:
        if wants_models and _input_follows_model_fixture(metafunc):
            wants_models = False
        _apply(metafunc, state, wants_models, wants_devices, wants_dtypes)
    except (MarkerError, InputError, pytest.UsageError) as error:
        message = f"{metafunc.definition.nodeid}: {error}"
    else:
        return
    # Outside the except block, so the report shows the message, not a chained traceback.
    pytest.fail(message, pytrace=False)


def _input_follows_model_fixture(metafunc: pytest.Metafunc) -> bool:
    """Whether the test's ``composable_model_spec`` is there only for ``composable_input``
    or ``composable_reference_model``, which then follow the test's one built-in model
    fixture: the test is not run over the models. :class:`InputError` for two or more
    model fixtures, which they cannot all follow, in a test without ``composable_model``.
    """
    names = metafunc.fixturenames
    followers = [name for name in _FOLLOWERS if name in names]
    if not followers or MODEL_FIXTURE in names:
        return False
    if _spec_wanted_beside_followers(metafunc):
        return False
    named = [name for name in BUILTIN_MODEL_FIXTURES if name in names]
    if len(named) > 1:
        what = {
            INPUT_FIXTURE: f"{INPUT_FIXTURE} is the input of one model",
            REFERENCE_FIXTURE: f"{REFERENCE_FIXTURE} is a second instance of one model",
        }
        raise InputError(
            f"{' and '.join(what[name] for name in followers)}, and this test uses "
            f"{', '.join(named)}; use {MODEL_FIXTURE} (every model in turn), or build "
            "them yourself"
        )
    return input_model(names) is not None


def _spec_wanted_beside_followers(metafunc: pytest.Metafunc) -> bool:
    """Whether the test itself, or a fixture other than ``composable_input`` and
    ``composable_reference_model``, asks for ``composable_model_spec``: then it decides,
    and the test runs over the models."""
    if MODEL_SPEC_FIXTURE in _own_argnames(metafunc):
        return True
    for name in metafunc.fixturenames:
        defs = metafunc._arg2fixturedefs.get(name)
        if name not in _FOLLOWERS and defs and MODEL_SPEC_FIXTURE in defs[-1].argnames:
            return True
    return False


def _own_argnames(metafunc: pytest.Metafunc) -> tuple[str, ...]:
    """The fixtures the test function names itself (not those its fixtures pull in), as
    pytest read them from its signature."""
    return metafunc.definition._fixtureinfo.argnames


def _apply(
    metafunc: pytest.Metafunc,
    state: ComposableState,
    wants_models: bool,
    wants_devices: bool,
    wants_dtypes: bool,
) -> None:
    options = read_marker(metafunc.definition)
    if options.rank is not None or options.world_size is not None:
        # Checked on every test that has them, not only on world tests: a marker
        # that could never run is an error wherever it sits.
        sizes_of(metafunc.definition, metafunc.config)
    if options.models is not None or wants_models or wants_devices:
        # Resolving the registry here turns a bad hook or an unknown marker model
        # into one clean collection error instead of a traceback per test.
        names = _model_names(
            options, state.models(metafunc.definition), state.known_models(metafunc.definition)
        )
    if wants_models:
        metafunc.parametrize(MODEL_SPEC_FIXTURE, names, ids=names, indirect=True)
    if wants_devices:
        params = _device_params(options, state, _world_of(metafunc))
        metafunc.parametrize(DEVICE_FIXTURE, params, indirect=True)
    if wants_dtypes:
        dtypes = list(options.dtypes if options.dtypes is not None else state.dtypes.names)
        metafunc.parametrize(DTYPE_FIXTURE, dtypes, ids=dtypes, indirect=True)


def _world_of(metafunc: pytest.Metafunc) -> str | None:
    """``"real"`` for a ``composable_world`` test, ``"fake"`` for a fake world's, else None."""
    if WORLD_FIXTURE in metafunc.fixturenames:
        return "real"
    if FAKE_FIXTURE in metafunc.fixturenames:
        return "fake"
    return None


def _for_worlds(
    selected: list[Selected], world: str | None, keep_meta: bool = False
) -> list[Selected]:
    """What a world test runs on, of the session's devices: one device per type (a world's
    ranks each take their own device of that type), and for a real world only the types
    with a process-group backend, not meta (unless a marker names it, which then gets the
    reason it is skipped)."""
    if world is None:
        return selected
    kept: dict[str, Selected] = {}
    for choice in selected:
        if world == "real" and choice.device.type == "meta" and not keep_meta:
            continue
        kept.setdefault(choice.device.type, choice)
    return list(kept.values())


def _model_names(
    options: MarkerOptions, default: dict[str, ModelSpec], known: dict[str, ModelSpec]
) -> list[str]:
    """The models a test runs over: the marker's (any known model), else the default set."""
    if options.models is None:
        return list(default)
    unknown = [m for m in options.models if m not in known]
    if unknown:
        raise MarkerError(
            f"composable(models=...) names unknown model(s) {shorten(', '.join(unknown))}; "
            f"known models: {', '.join(known)}"
        )
    return list(dict.fromkeys(options.models))


def _device_params(options: MarkerOptions, state: ComposableState, world: str | None) -> list[Any]:
    selected = state.selection_ids
    if options.devices is None:
        runs_on = _for_worlds(selected, world)
        if not runs_on:
            reason = (
                "composable: a real world needs a device with a process-group backend; "
                f"selected: {', '.join(s.id for s in selected)}"
            )
            return [_skip("-".join(s.id for s in selected), reason)]
        return [pytest.param(s.device, id=s.id) for s in runs_on]
    matchers: list[Callable[[torch.device], bool]] = []
    skipped: list[Any] = []
    for spec in options.devices:
        matcher, missing = _marker_device(spec, state.available)
        if missing:
            # Cut as the reason is: a 4,000-digit index makes no readable test id.
            skipped.append(_skip(shorten(spec), f"composable: {missing}"))
        else:
            matchers.append(matcher)
    chosen = [
        pytest.param(s.device, id=s.id)
        for s in _for_worlds(selected, world, keep_meta=True)
        if any(m(s.device) for m in matchers)
    ]
    if not chosen and not skipped:
        names = ", ".join(options.devices)
        reason = (
            f"composable: none of the marker's devices ({names}) is selected; "
            f"selected: {', '.join(s.id for s in selected)}"
        )
        return [_skip("-".join(options.devices), reason)]
    return chosen + skipped


def _skip(id_: str, reason: str) -> Any:
    return pytest.param(id_, id=id_, marks=pytest.mark.skip(reason=reason))


def _marker_device(
    spec: str, available: Sequence[torch.device]
) -> tuple[Callable[[torch.device], bool], str | None]:
    """A matcher for a marker's device spec, or why the spec names no device of this machine.

    A spec that is not a device at all raises :class:`MarkerError`; a device
    this machine lacks (``cuda``, ``cuda:256``, ``cuda:\u0661``) skips, as a
    missing accelerator does.
    """
    from .devices import DeviceSpecError, MissingDeviceError, matcher

    try:
        return matcher(spec, available), None
    except MissingDeviceError as error:
        return (lambda _d: False), f"{shorten(spec)}{error.reason}"
    except DeviceSpecError as error:
        raise MarkerError(f"composable(devices=...): {error}") from None
