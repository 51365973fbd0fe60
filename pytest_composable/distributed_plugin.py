"""Distributed worlds for pytest (registered as ``composable.distributed``; torch-free import).

* ``composable_fake_world``: the default process group on torch's fake backend,
  in the test's own process.
* ``composable_world``: the test runs on ``world_size`` real ranks. Under plain
  ``pytest`` the plugin starts the ranks itself and keeps them for the session
  (:mod:`.launcher`, :mod:`.ranks`); under ``torchrun ... -m pytest`` each rank's
  session joins the launched world (:mod:`.torchrun`).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import pytest

from ._options import GROUP, GROUP_DESCRIPTION
from .marker import MarkerError, read_marker
from .state import state_of

if TYPE_CHECKING:
    import torch

    from . import ranks
    from .launcher import Launcher
    from .torchrun import TorchrunSession  # noqa: F401 - named in a StashKey string
    from .world import World

__all__ = ["RANK_ENV", "composable_fake_world", "composable_world"]

RANK_ENV = "PYTEST_COMPOSABLE_RANK_WORKER"
"""Set in a rank process the launcher started; its value describes the rank (:mod:`.ranks`)."""

WORLD_FIXTURE = "composable_world"
FAKE_FIXTURE = "composable_fake_world"
DEFAULT_WORLD_SIZE = 2
DEFAULT_TIMEOUT = 120.0

_RANK_SPEC = pytest.StashKey["ranks.RankSpec | None"]()
_LAUNCHER = pytest.StashKey["Launcher"]()
_TORCHRUN = pytest.StashKey["TorchrunSession"]()
_NEXT = pytest.StashKey["dict[str, str | None]"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, GROUP_DESCRIPTION)
    group.addoption(
        "--composable-world-size",
        type=int,
        default=DEFAULT_WORLD_SIZE,
        metavar="N",
        help=(
            "World size of tests that use composable_world or composable_fake_world without "
            f"a composable(world_size=...) marker (default {DEFAULT_WORLD_SIZE})."
        ),
    )
    group.addoption(
        "--composable-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=(
            "Deadline of each composable_world test (setup, call and teardown on every rank; "
            f"default {DEFAULT_TIMEOUT:g}); composable(timeout=...) overrides it. A test past "
            "it fails with every rank's Python stack and the ranks are restarted. The process "
            "group's own timeout is set below it."
        ),
    )


def _in_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Only a rank process or a torchrun-launched session sets anything up here;
    # a plain session starts its rank pools on the first distributed test.
    if RANK_ENV in os.environ:
        from . import ranks

        spec = ranks.spec_from_env()
        config.stash[_RANK_SPEC] = spec
        if spec is not None:
            ranks.watch_parent(spec.parent_pid)
            ranks.install_stack_dump(spec.stack_file)
            config.pluginmanager.register(_RankDevices(), "composable.rank_devices")
    elif _in_torchrun():
        from .torchrun import TorchrunSession

        config.stash[_TORCHRUN] = TorchrunSession(config)
        config.pluginmanager.register(_RankDevices(), "composable.rank_devices")


def _launcher(config: pytest.Config) -> Launcher:
    launcher = config.stash.get(_LAUNCHER, None)
    if launcher is None:
        from .launcher import Launcher

        launcher = config.stash[_LAUNCHER] = Launcher(config)
    return launcher


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    torchrun = session.config.stash.get(_TORCHRUN, None)
    if torchrun is not None:
        torchrun.silence()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    torchrun = config.stash.get(_TORCHRUN, None)
    if torchrun is not None:
        torchrun.leave()
    launcher = config.stash.get(_LAUNCHER, None)
    if launcher is not None:
        launcher.close()


def _rank_spec(config: pytest.Config) -> ranks.RankSpec | None:
    return config.stash.get(_RANK_SPEC, None)


def _sizes(node: Any, config: pytest.Config) -> tuple[int, ...]:
    options = read_marker(node)
    if options.world_size is not None:
        return options.world_size
    return (int(config.getoption("composable_world_size")),)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wanted = [f for f in (WORLD_FIXTURE, FAKE_FIXTURE) if f in metafunc.fixturenames]
    if not wanted:
        return
    if len(wanted) > 1:
        pytest.fail(
            f"{metafunc.definition.nodeid}: a test uses either {WORLD_FIXTURE} or "
            f"{FAKE_FIXTURE}, not both",
            pytrace=False,
        )
    try:
        sizes = _sizes(metafunc.definition, metafunc.config)
    except MarkerError as error:
        pytest.fail(f"{metafunc.definition.nodeid}: {error}", pytrace=False)
    if len(sizes) > 1:
        unique = list(dict.fromkeys(sizes))
        metafunc.parametrize(wanted[0], unique, ids=[f"ws{n}" for n in unique], indirect=True)


def world_size_of(item: pytest.Item) -> int:
    callspec = getattr(item, "callspec", None)
    for name in (WORLD_FIXTURE, FAKE_FIXTURE):
        if callspec is not None and name in callspec.params:
            return int(callspec.params[name])
    return _sizes(item, item.config)[0]


def device_type_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "composable_device" in callspec.params:
        return str(callspec.params["composable_device"]).split(":")[0]
    return "cpu"


def timeout_of(item: pytest.Item) -> float:
    marker_timeout = read_marker(item).timeout
    if marker_timeout is not None:
        return marker_timeout
    return float(item.config.getoption("composable_timeout"))


def pg_timeout_for(timeout: float) -> float:
    """The process group's timeout: below the test deadline, so a lost collective errors first."""
    return max(timeout - max(1.0, 0.1 * timeout), 0.5 * timeout)


def _skip_reason(item: pytest.Item, config: pytest.Config) -> str | None:
    world_size = world_size_of(item)
    device_type = device_type_of(item)
    if device_type == "meta":
        return "composable: a real world needs a device with a process-group backend; meta has none"
    if device_type != "cpu":
        count = sum(d.type == device_type for d in state_of(config).available)
        if count < world_size:
            return (
                f"composable: world size {world_size} needs {world_size} {device_type} devices; "
                f"this machine has {count}"
            )
    torchrun = config.stash.get(_TORCHRUN, None)
    if torchrun is not None and world_size != torchrun.world_size:
        return (
            f"composable: needs world size {world_size}; torchrun launched "
            f"{torchrun.world_size} ranks"
        )
    return None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> Iterator[None]:
    collected = list(items)
    yield
    if _rank_spec(config) is not None:
        # A rank runs what the main process names: keep every collected item,
        # whatever -k, -m, --lf and other plugins deselected.
        items[:] = collected
        return
    for item in items:
        if WORLD_FIXTURE in _fixturenames(item):
            try:
                reason = _skip_reason(item, config)
            except MarkerError as error:
                item.add_marker(pytest.mark.skip(reason=str(error)))
                continue
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
        elif config.stash.get(_TORCHRUN, None) is not None:
            torchrun = config.stash[_TORCHRUN]
            reason = torchrun.skip_reason(item, FAKE_FIXTURE in _fixturenames(item))
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


def _fixturenames(item: pytest.Item) -> tuple[str, ...] | list[str]:
    names: list[str] = getattr(item, "fixturenames", [])
    return names


def _skipped_here(item: pytest.Item) -> bool:
    return any(
        str(m.kwargs.get("reason", "")).startswith("composable:") for m in item.iter_markers("skip")
    )


def _key(item: pytest.Item) -> tuple[int, str]:
    return world_size_of(item), device_type_of(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    spec = _rank_spec(session.config)
    if spec is not None:
        from . import ranks

        ranks.serve(session, spec)
        return True
    # The next item of the same rank pool, so the ranks tear fixtures down in step.
    following: dict[str, str | None] = {}
    last: dict[tuple[int, str], str] = {}
    for item in session.items:
        if WORLD_FIXTURE in _fixturenames(item) and not _skipped_here(item):
            key = _key(item)
            if key in last:
                following[last[key]] = item.nodeid
            last[key] = item.nodeid
            following[item.nodeid] = None
    session.config.stash[_NEXT] = following
    result: object = yield
    return result


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    config = item.config
    if WORLD_FIXTURE not in _fixturenames(item) or _skipped_here(item):
        return None
    torchrun = config.stash.get(_TORCHRUN, None)
    if torchrun is not None:
        return bool(torchrun.run_item(item, nextitem))
    if _rank_spec(config) is not None:
        return None
    launcher = _launcher(config)
    following = config.stash.get(_NEXT, {})
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    timeout = timeout_of(item)
    pg_timeout = pg_timeout_for(float(config.getoption("composable_timeout")))
    for report in launcher.run_item(
        item, _key(item), following.get(item.nodeid), timeout, pg_timeout
    ):
        item.ihook.pytest_runtest_logreport(report=report)
    _tear_down_towards(item, nextitem)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _tear_down_towards(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """What this process set up for earlier tests and ``nextitem`` does not share is torn
    down now, as pytest's own protocol does at the end of every test."""
    try:
        item.session._setupstate.teardown_exact(nextitem)
    except Exception as error:
        from .reports import failure

        report = failure(
            item, "teardown", f"composable: tearing down towards the next test: {error!r}"
        )
        item.ihook.pytest_runtest_logreport(report=report)


class _RankDevices:
    """On a rank, the test's accelerator is the rank's own: ``cuda:<local rank>``.

    Registered only in rank and torchrun-launched processes, so no other session
    pays for a wrapper around every fixture setup.
    """

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Any:
        result = yield
        context = _world_context(request.config)
        if (
            context is not None
            and fixturedef.argname == "composable_device"
            and WORLD_FIXTURE in request.fixturenames
            and getattr(result, "type", "cpu") not in ("cpu", "meta")
        ):
            import torch

            result = torch.device(result.type, context.local_rank)
            if fixturedef.cached_result is not None:
                fixturedef.cached_result = (result, fixturedef.cached_result[1], None)
        return result


def _world_context(config: pytest.Config) -> Any:
    if _rank_spec(config) is not None:
        from . import ranks

        return ranks.context()
    torchrun = config.stash.get(_TORCHRUN, None)
    return None if torchrun is None else torchrun.context


@pytest.fixture
def composable_world(request: pytest.FixtureRequest, composable_device: torch.device) -> World:
    """This rank's :class:`~pytest_composable.world.World` (rank, world size, local rank,
    device, backend, a 1-D ``DeviceMesh``); the test body runs on every rank.

    World size: ``@pytest.mark.composable(world_size=N)`` (a list parametrizes,
    ids ``ws2``, ``ws4``), else ``--composable-world-size`` (2). Backend: gloo on
    cpu, nccl on cuda (``cuda:<local rank>``). Deadline: ``--composable-timeout``
    or ``composable(timeout=...)``.
    """
    from .world import make_world

    context = _world_context(request.config)
    if context is None:
        pytest.fail(
            "composable: composable_world runs on the ranks the plugin launches; this "
            "process is not one (is the plugin's runtest protocol disabled?)",
            pytrace=False,
        )
    return make_world(context, composable_device)


@pytest.fixture
def composable_fake_world(
    request: pytest.FixtureRequest, composable_device: torch.device
) -> Iterator[World]:
    """A fake world in this process: the default process group on torch's ``fake`` backend,
    as rank 0 (or the marker's ``rank=``) of ``world_size``, with a 1-D ``DeviceMesh`` on
    the test's device type; destroyed after the test. Collectives move no data."""
    from .fake_world import fake_world

    world_size = int(getattr(request, "param", 0)) or _sizes(request.node, request.config)[0]
    rank = read_marker(request.node).rank or 0
    with ExitStack() as stack:
        try:
            world = stack.enter_context(fake_world(world_size, rank, composable_device))
        except (RuntimeError, ValueError) as error:
            if not str(error).startswith("composable:"):
                raise
            pytest.fail(str(error), pytrace=False)
        yield world
