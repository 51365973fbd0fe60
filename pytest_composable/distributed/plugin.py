"""Distributed worlds for pytest: hooks and fixtures (registered as ``composable.distributed``).

* ``composable_fake_world``: the default process group on torch's fake backend,
  in the test's own process.
* ``composable_world``: the test runs on ``world_size`` real ranks. Under plain
  ``pytest`` the plugin starts the ranks itself and keeps them between tests
  (:mod:`._pool`, :mod:`._rank`); under ``torchrun ... -m pytest``, ``srun`` or
  ``mpirun``, each rank's session joins the launched world (:mod:`._launched`).

Every world test starts with each rank's global generators seeded with
``composable_seed``, so ranks agree and no test depends on what ran before.

The hooks here stay thin; what they decide comes from :mod:`._policy` and
:mod:`._options`. Importing this module imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..marker import MarkerError, read_marker
from ._constants import FAKE_FIXTURE, NOTES_OUTPUT, RANK_ENV, WORLD_FIXTURE
from ._mesh import layout_id
from ._options import SETTINGS_KEY, add_options, read_settings, settings_of
from ._policy import (
    PoolKey,
    device_type_of,
    mesh_of,
    pg_timeout_for,
    pool_key,
    rank_of,
    shape_ids,
    shapes_of,
    timeout_of,
    world_size_of,
)

if TYPE_CHECKING:
    import torch

    from ._launched import LaunchedSession  # noqa: F401 - named in a StashKey string
    from ._pool import Launcher
    from ._protocol import RankSpec  # noqa: F401 - named in a StashKey string
    from .world import RankContext, World

__all__ = ["composable_fake_world", "composable_shared_tmp_path", "composable_world"]

_RANK_SPEC = pytest.StashKey["RankSpec"]()
_LAUNCHER = pytest.StashKey["Launcher"]()
_LAUNCHED = pytest.StashKey["LaunchedSession"]()
_PLAN = pytest.StashKey["_Plan | None"]()
# pytest-xdist: what each pool's ranks keep set up for a test of this process (node ids).
_KEPT = pytest.StashKey["dict[PoolKey, set[str]]"]()
_SKIP = pytest.StashKey[str]()  # why the plugin skips a world test here
_TIMER = pytest.StashKey[float]()  # pytest-timeout's timeout, taken over for a world test
_WORKERS_COLD = pytest.StashKey[dict[str, str]]()  # xdist controller: worker id -> why cold
# Keys in a pytest-xdist worker's workeroutput, and what the controller keeps of them.
_COLD_OUTPUT = "composable_cold_reason"
_PROBLEMS_OUTPUT = "composable_rank_problems"
_WORKER_PROBLEMS = pytest.StashKey[list[str]]()
_PROBLEMS = pytest.StashKey[list[str]]()  # what this session reports of its ranks at the end
# pytest-xdist controller: the workers' pools restarted for memory, and their thread lines.
_WORKER_RECYCLED = pytest.StashKey[list[str]]()
_WORKER_THREADS = pytest.StashKey[dict[str, None]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.stash[SETTINGS_KEY] = read_settings(config)
    # Only a rank process or a torchrun-launched session sets anything up here;
    # a plain session starts its rank pools on the first distributed test.
    if RANK_ENV in os.environ:
        from . import _rank
        from ._protocol import spec_from_env

        spec = spec_from_env()
        assert spec is not None
        config.stash[_RANK_SPEC] = spec
        _rank.watch_parent(spec.parent_pid)
        _rank.install_stack_dump(spec.stack_file)
        config.pluginmanager.register(_rank.RankDevices(_world_context), "composable.rank_devices")
        config.pluginmanager.register(_rank.InterruptFails(), "composable.rank_interrupts")
        config.pluginmanager.register(_rank.FailureNotice(), "composable.rank_failures")
    else:
        from ._launch_env import detect_launch

        launch = detect_launch(os.environ)
        if launch is None:
            if config.stash[SETTINGS_KEY].start == "warm":
                from ._fork_safety import watch_torch_import

                config.add_cleanup(watch_torch_import())
            return
        from ._launched import LaunchedSession
        from ._rank import RankDevices

        backend = config.stash[SETTINGS_KEY].backend
        session = LaunchedSession(config, launch, _uses_world, backend)
        config.stash[_LAUNCHED] = session
        config.pluginmanager.register(session, "composable.launched")
        config.pluginmanager.register(RankDevices(_world_context), "composable.rank_devices")


def _launcher(config: pytest.Config) -> Launcher:
    launcher = config.stash.get(_LAUNCHER, None)
    if launcher is None:
        from ._pool import Launcher

        launcher = config.stash[_LAUNCHER] = Launcher(config)
    return launcher


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    launched = session.config.stash.get(_LAUNCHED, None)
    if launched is not None:
        launched.silence()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    launcher = config.stash.get(_LAUNCHER, None)
    problems: list[str] = []
    if launcher is not None:
        _hand_to_controller(config, _COLD_OUTPUT, launcher.cold_reason)
        problems = launcher.close()
    from_workers: list[str] = config.stash.get(_WORKER_PROBLEMS, [])
    problems += from_workers
    if problems and not _hand_to_controller(config, _PROBLEMS_OUTPUT, problems):
        _report_problems(session, problems)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist's controller: keep what a worker's ranks reported after their last
    test, and why they started cold, for this session's report."""
    output = getattr(node, "workeroutput", None) or {}
    worker = str(getattr(node, "workerinput", {}).get("workerid", "a worker"))
    reason = output.get(_COLD_OUTPUT)
    if isinstance(reason, str):
        node.config.stash.setdefault(_WORKERS_COLD, {})[worker] = reason
    problems = output.get(_PROBLEMS_OUTPUT)
    if isinstance(problems, list):
        found = node.config.stash.setdefault(_WORKER_PROBLEMS, [])
        found += [f"[{worker}] {problem}" for problem in problems]
    notes = output.get(NOTES_OUTPUT)
    if isinstance(notes, dict):
        recycled = node.config.stash.setdefault(_WORKER_RECYCLED, [])
        recycled += [f"[{worker}] {line}" for line in notes.get("recycled") or ()]
        threads = notes.get("threads")
        if isinstance(threads, str):
            # Every worker's ranks follow one rule: its line once, whoever said it.
            node.config.stash.setdefault(_WORKER_THREADS, {})[threads] = None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    problems = config.stash.get(_PROBLEMS, [])
    if problems:
        terminalreporter.write_sep("!", "composable: errors on the ranks after their last test")
        for problem in problems:
            terminalreporter.write_line(problem)
    for line in _cold_start_lines(config):
        terminalreporter.write_line(line)
    for line in config.stash.get(_WORKER_RECYCLED, []):
        terminalreporter.write_line(line)
    if config.get_verbosity() >= 0:
        for line in config.stash.get(_WORKER_THREADS, {}):
            terminalreporter.write_line(line)


def _hand_to_controller(config: pytest.Config, key: str, value: object) -> bool:
    """On a pytest-xdist worker, whose own report nobody sees: ``value`` travels to the
    controller with the worker's output (``pytest_testnodedown``). False elsewhere, or
    for ``None``."""
    workeroutput = getattr(config, "workeroutput", None)
    if value is None or not isinstance(workeroutput, dict):
        return False
    workeroutput[key] = value
    return True


def _cold_start_lines(config: pytest.Config) -> list[str]:
    """One line per reason warm start was refused: this session's, and (on a pytest-xdist
    controller) its workers', each reason once with the workers it applies to."""
    lines: list[str] = []
    launcher = config.stash.get(_LAUNCHER, None)
    if launcher is not None and launcher.cold_reason is not None:
        lines.append(f"composable: ranks started cold: {launcher.cold_reason}")
    by_reason: dict[str, list[str]] = {}
    for worker, reason in sorted(config.stash.get(_WORKERS_COLD, {}).items()):
        by_reason.setdefault(reason, []).append(worker)
    for reason, workers in by_reason.items():
        lines.append(f"composable: ranks started cold on {', '.join(workers)}: {reason}")
    return lines


def _report_problems(session: pytest.Session, problems: list[str]) -> None:
    """Errors the ranks hit after their last test (ending session fixtures): the session
    fails, and the terminal summary shows them."""
    session.config.stash[_PROBLEMS] = problems
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    launched = config.stash.get(_LAUNCHED, None)
    if launched is not None:
        launched.leave()
    launcher = config.stash.get(_LAUNCHER, None)
    if launcher is not None:
        launcher.kill()  # what pytest_sessionfinish did not reach (an aborted session)


def _is_rank(config: pytest.Config) -> bool:
    return _RANK_SPEC in config.stash


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
        shapes = shapes_of(metafunc.definition, metafunc.config)
    except MarkerError as error:
        pytest.fail(f"{metafunc.definition.nodeid}: {error}", pytrace=False)
    if len(shapes) > 1:
        ids = shape_ids(metafunc.definition, shapes)
        metafunc.parametrize(wanted[0], shapes, ids=ids, indirect=True)


def _skip_reason(item: pytest.Item, config: pytest.Config) -> str | None:
    from ..state import state_of

    world_size = world_size_of(item)
    device_type = device_type_of(item)
    launched = config.stash.get(_LAUNCHED, None)
    if device_type == "meta":
        return "composable: a real world needs a device with a process-group backend; meta has none"
    if launched is not None and world_size != launched.world_size:
        mesh = mesh_of(item)
        needs = "needs" if mesh is None else f"mesh {layout_id(mesh)} needs"
        return (
            f"composable: {needs} world size {world_size}; {launched.launch.launcher} "
            f"launched {launched.world_size} ranks"
        )
    wanted = read_marker(item).backend
    if launched is not None and wanted is not None:
        has = launched.backend_for(device_type)
        if wanted != has:
            return (
                f"composable: needs backend {wanted}; this {launched.launch.launcher} "
                f"session's {device_type} worlds use {has} (--composable-backend)"
            )
    if device_type != "cpu":
        # Each node's ranks use that node's devices: under a launcher, this node's
        # share of the world, not the whole world, must find a device each.
        local = world_size if launched is None else launched.launch.local_world_size
        state = state_of(config)
        count = sum(d.type == device_type for d in state.available)
        if count < local:
            where = "this machine" if launched is None else "this node"
            if state.gpu_share is not None and device_type == "cuda":
                where = "this pytest-xdist worker's share"
            return (
                f"composable: {local} ranks on {where} need {local} {device_type} devices; "
                f"{where} has {count}"
            )
    return None


def _skip(item: pytest.Item, reason: str) -> None:
    item.stash[_SKIP] = reason
    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> Iterator[None]:
    collected = list(items)
    yield
    if _is_rank(config):
        # A rank runs what the main process names: keep every collected item,
        # whatever -k, -m, --lf and other plugins deselected.
        items[:] = collected
        return
    launched = config.stash.get(_LAUNCHED, None)
    for item in items:
        if _uses_world(item):
            reason = _skip_reason(item, config)
            if reason is not None:
                _skip(item, reason)
        elif launched is not None:
            reason = launched.skip_reason(item)
            if reason is not None:
                _skip(item, reason)


def _fixturenames(item: pytest.Item) -> list[str]:
    names: list[str] = getattr(item, "fixturenames", [])
    return names


def _uses_world(item: pytest.Item) -> bool:
    return WORLD_FIXTURE in _fixturenames(item)


def _runs_on_ranks(item: pytest.Item) -> bool:
    """A world test the plugin runs on its ranks (not skipped here)."""
    return _uses_world(item) and _SKIP not in item.stash


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    spec = session.config.stash.get(_RANK_SPEC, None)
    if spec is not None:
        from ._rank import serve

        serve(session, spec, spec.control_fd)
        return True
    plan = session.config.stash[_PLAN] = _plan(session)
    if (
        settings_of(session.config).start == "warm"
        and _LAUNCHED not in session.config.stash
        and not session.config.option.collectonly
        and (
            plan.left > 0
            if plan is not None
            else any(_runs_on_ranks(item) for item in session.items)
        )
    ):
        # Before the first test: the template forked now holds the collected modules
        # and no test's state.
        _launcher(session.config).warm_up()
    result: object = yield
    return result


class _Plan:
    """The session's world tests in order, read before the first runs: for each, the next
    test of its pool (``None`` where the pool closes after it), and how many are left.

    Only one pool lives at a time, so a pool closes after each of its tests that another
    pool's test follows, and its ranks are told so (next test ``None``): they end every
    fixture then, where one process would end the fixtures that test does not share with
    the next; the pool starts again (warm: cheaply) when it is needed again. Otherwise
    the ranks are told the pool's next test, never one they will not run: a rank told
    another pool's test, or a test of this process, would keep fixtures its own next
    test does not share, and pytest fails that test's setup for them.
    """

    def __init__(self, items: list[pytest.Item]) -> None:
        world = [item for item in items if _runs_on_ranks(item)]
        keys = [pool_key(item) for item in world]
        self.after: dict[str, str | None] = {}
        for i, item in enumerate(world):
            same = i + 1 < len(world) and keys[i + 1] == keys[i]
            self.after[item.nodeid] = world[i + 1].nodeid if same else None
        self.left = len(world)


def _plan(session: pytest.Session) -> _Plan | None:
    """``None`` under pytest-xdist: a worker is handed its tests one by one, so only
    pytest's ``nextitem`` (``None`` at the worker's last test) tells what comes next."""
    if hasattr(session.config, "workerinput"):
        return None
    return _Plan(session.items)


def _pool_next(item: pytest.Item, nextitem: pytest.Item | None, key: PoolKey) -> str | None:
    """The test the ranks of ``item``'s pool run next (``None``: the pool closes after
    ``item``); under pytest-xdist, as far as ``nextitem`` tells: the test of this process
    it names, if it is one, until a later test shows whether the pool runs again."""
    plan = item.config.stash.get(_PLAN, None)
    if plan is not None and item.nodeid in plan.after:
        return plan.after[item.nodeid]
    if nextitem is None:
        return None
    if not _runs_on_ranks(nextitem) or pool_key(nextitem) == key:
        return nextitem.nodeid
    return None


def _seed(config: pytest.Config) -> int:
    from ..state import state_of

    return state_of(config).seed


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    config = item.config
    if not _runs_on_ranks(item):
        return None
    launched = config.stash.get(_LAUNCHED, None)
    if launched is not None:
        return launched.run_item(item, nextitem, _seed(config))
    if _is_rank(config):
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for report in _run_on_ranks(item, nextitem):
        item.ihook.pytest_runtest_logreport(report=report)
    _tear_down_towards(item, nextitem)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _run_on_ranks(item: pytest.Item, nextitem: pytest.Item | None) -> list[pytest.TestReport]:
    """Run ``item`` on its pool; close the pool unless the pool's next test is known to
    come before any other pool's (see :class:`_Plan`)."""
    config = item.config
    launcher = _launcher(config)
    key = pool_key(item)
    next_id = _pool_next(item, nextitem, key)
    timeout = timeout_of(item)
    timer = item.stash.get(_TIMER, None)
    if timer is not None:
        timeout = min(timeout, timer)
    kept = config.stash.setdefault(_KEPT, {})
    stale = kept.pop(key, None)
    if stale is not None and not stale <= {node.nodeid for node in item.listchain()}:
        # pytest-xdist: the ranks kept fixtures for a test of this process that this
        # test does not share; they end them all (new ranks serve this test).
        problem = launcher.finish(key)
        if problem is not None:
            launcher.problems.append(problem)
    reports = launcher.run_item(item, key, next_id, timeout, pg_timeout_for(timeout))
    if next_id is None:
        problem = launcher.finish(key)
        if problem is not None:
            from ._reports import failure

            reports.append(failure(item, "teardown", problem))
    elif nextitem is not None and next_id == nextitem.nodeid and not _runs_on_ranks(nextitem):
        shared = {node.nodeid for node in nextitem.listchain()}
        kept[key] = {node.nodeid for node in item.listchain()} & shared
    plan = config.stash.get(_PLAN, None)
    if plan is not None:
        plan.left -= 1
    if (plan.left <= 0) if plan is not None else nextitem is None:
        launcher.retire_template()  # no test needs ranks any more
    return reports


def _tear_down_towards(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """What this process set up for earlier tests and ``nextitem`` does not share is torn
    down now, as pytest's own protocol does at the end of every test."""
    try:
        item.session._setupstate.teardown_exact(nextitem)
    except Exception as error:
        from ._reports import failure

        report = failure(
            item, "teardown", f"composable: tearing down towards the next test: {error!r}"
        )
        item.ihook.pytest_runtest_logreport(report=report)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout: a world test's timer is this plugin's deadline instead.

    In the main process the test's deadline becomes the smaller of the two, and
    when it passes the ranks' stacks are shown and only this test fails (a
    pytest-timeout timer would interrupt, or with its thread method end, the
    whole session). On a rank, the main process's deadline covers the test.
    """
    if not _uses_world(item) or item.config.stash.get(_LAUNCHED, None) is not None:
        return None
    if not _is_rank(item.config):
        item.stash[_TIMER] = float(settings.timeout)
    return True


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    if not _uses_world(item) or item.config.stash.get(_LAUNCHED, None) is not None:
        return None
    return True


def _world_context(config: pytest.Config) -> RankContext | None:
    if _is_rank(config):
        from ._rank import context

        return context()
    launched = config.stash.get(_LAUNCHED, None)
    return None if launched is None else launched.context


@pytest.fixture
def composable_world(request: pytest.FixtureRequest, composable_device: torch.device) -> World:
    """This rank's :class:`~pytest_composable.World` (rank, world size, local rank,
    device, backend, ``mesh``); the test body runs on every rank.

    World size: ``@pytest.mark.composable(world_size=N)`` (a list parametrizes,
    ids ``ws2``, ``ws4``) > the sizes of ``mesh=`` > ``--composable-world-size`` >
    ``PYTEST_COMPOSABLE_WORLD_SIZE`` > ini ``composable_world_size`` > 2; under
    torchrun, srun or mpirun a test whose world size differs from the launched one
    is skipped. Mesh: ``composable(mesh={"dp": 2, "tp": 2})`` gives ``world.mesh`` as
    that named N-D ``DeviceMesh`` (outermost first; one size may be ``-1``, the
    rest of the world; a list of mappings parametrizes, ids ``dp2xtp2``); its
    sub-groups are made once per pool and kept for later tests of that layout.
    Without ``mesh=``, a 1-D mesh over every rank.
    Every rank's global generators (torch, ``random``, numpy if importable) are
    seeded with ``composable_seed`` as the test starts, so ranks agree;
    ``World.seed_per_rank()`` gives each rank its own reproducible seed.
    Backend: gloo on cpu, nccl on cuda (``cuda:<local rank>``). Deadline:
    ``composable(timeout=...)`` > ``--composable-timeout`` >
    ``PYTEST_COMPOSABLE_TIMEOUT`` > ini ``composable_timeout`` > 120 s (and
    pytest-timeout's, if smaller); the process group's timeout follows it.
    """
    from .world import make_world

    context = _world_context(request.config)
    if context is None and WORLD_FIXTURE not in _fixturenames(request.node):
        # Asked for while the test already runs in this process (getfixturevalue): only
        # what a test names before it starts can send it to the ranks.
        pytest.fail(
            f"composable: {request.node.nodeid} must name composable_world as an argument "
            "(of the test or of a fixture it uses) to run on the ranks; "
            'request.getfixturevalue("composable_world") cannot move a running test there',
            pytrace=False,
        )
    if context is None:
        pytest.fail(
            "composable: composable_world runs on the ranks the plugin launches; this "
            "process is not one (is the plugin's runtest protocol disabled?)",
            pytrace=False,
        )
    return make_world(context, composable_device, _seed(request.config), mesh_of(request.node))


@pytest.fixture
def composable_fake_world(
    request: pytest.FixtureRequest, composable_device: torch.device
) -> Iterator[World]:
    """A fake world in this process: the default process group on torch's ``fake`` backend,
    as rank 0 (or the marker's ``rank=``) of ``world_size`` (as for ``composable_world``),
    with the marker's ``mesh=`` (else a 1-D ``DeviceMesh``) on the test's device type;
    destroyed after the test.
    Collectives move no data. The process's global generators are seeded with
    ``composable_seed`` first."""
    from ._fake import fake_world
    from ._seed import seed_everything
    from .world import WorldError

    world_size = world_size_of(request.node)
    seed = _seed(request.config)
    seed_everything(seed)
    context = fake_world(
        world_size, rank_of(request.node), composable_device, seed, mesh_of(request.node)
    )
    try:
        world = context.__enter__()
    except WorldError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield world
    finally:
        context.__exit__(None, None, None)


@pytest.fixture
def composable_shared_tmp_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """One directory every rank of the test's world sees: rank 0's ``tmp_path``, for
    ``torch.distributed.checkpoint`` and other files the ranks share.

    In a ``composable_world`` test rank 0 sends its path to the others (a small
    exchange through the world's CPU backend, as the test starts); ranks on other
    nodes of a launched world see it only where the directory is on a shared
    filesystem. Elsewhere (a fake world, a test without a world) it is the test's own
    ``tmp_path``. Kept as pytest keeps ``tmp_path`` directories, by rank 0's session.
    """
    if _world_context(request.config) is None or not _uses_world(request.node):
        return tmp_path
    import torch.distributed as dist

    from ._launched_groups import all_gather_bytes

    # Bytes, not broadcast_object_list: torch's object collectives need numpy.
    path = str(tmp_path).encode() if dist.get_rank() == 0 else b""
    return Path(all_gather_bytes(path, dist.get_world_size(), None)[0].decode())
