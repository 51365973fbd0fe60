"""How tests that use the composable fixtures are parametrized over devices and models.

Only fixtures the plugin itself defines are parametrized: a test that
parametrizes ``composable_device`` or ``composable_model_spec`` directly, or
sees a conftest's override of those fixtures, is left alone (the anyio
pattern), so users keep full control.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from .distributed._constants import FAKE_FIXTURE, WORLD_FIXTURE
from .marker import MarkerError, MarkerOptions, read_marker
from .state import ComposableState

if TYPE_CHECKING:
    import torch

    from .devices import Selected
    from .spec import ModelSpec

__all__ = ["DEVICE_FIXTURE", "MODEL_SPEC_FIXTURE", "parametrize"]

DEVICE_FIXTURE = "composable_device"
MODEL_SPEC_FIXTURE = "composable_model_spec"


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
) -> None:
    """Parametrize ``metafunc`` over models (first id part) and devices (second)."""
    wants_models = _ours(metafunc, MODEL_SPEC_FIXTURE, model_spec_fixture)
    wants_devices = _ours(metafunc, DEVICE_FIXTURE, device_fixture)
    try:
        _apply(metafunc, state, wants_models, wants_devices)
    except (MarkerError, pytest.UsageError) as error:
        message = f"{metafunc.definition.nodeid}: {error}"
    else:
        return
    # Outside the except block, so the report shows the message, not a chained traceback.
    pytest.fail(message, pytrace=False)


def _apply(
    metafunc: pytest.Metafunc, state: ComposableState, wants_models: bool, wants_devices: bool
) -> None:
    options = read_marker(metafunc.definition)
    if options.models is not None or wants_models or wants_devices:
        # Resolving the registry here turns a bad hook or an unknown marker model
        # into one clean collection error instead of a traceback per test.
        names = _model_names(options, state.models(metafunc.definition))
    if wants_models:
        metafunc.parametrize(MODEL_SPEC_FIXTURE, names, ids=names, indirect=True)
    if wants_devices:
        params = _device_params(options, state, _world_of(metafunc))
        metafunc.parametrize(DEVICE_FIXTURE, params, indirect=True)


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


def _model_names(options: MarkerOptions, known: dict[str, ModelSpec]) -> list[str]:
    if options.models is None:
        return list(known)
    unknown = [m for m in options.models if m not in known]
    if unknown:
        raise MarkerError(
            f"composable(models=...) names unknown model(s) {', '.join(unknown)}; "
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
            skipped.append(_skip(spec, f"composable: {missing}"))
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
    from ._text import shorten
    from .devices import DeviceSpecError, MissingDeviceError, matcher

    try:
        return matcher(spec, available), None
    except MissingDeviceError as error:
        return (lambda _d: False), f"{shorten(spec)}{error.reason}"
    except DeviceSpecError as error:
        raise MarkerError(f"composable(devices=...): {error}") from None
