"""Fast in-process tests of the distributed runtime's pure logic."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from argparse import Namespace
from pathlib import Path

import pytest

from pytest_composable.distributed._launch_env import Launch, detect_launch, launch_environment
from pytest_composable.distributed._options import parse_start, parse_timeout, parse_world_size
from pytest_composable.distributed._policy import pg_timeout_for
from pytest_composable.distributed._pool import sweep_stale
from pytest_composable.distributed._protocol import (
    Channel,
    Check,
    Checked,
    Crash,
    Done,
    Exited,
    Fork,
    Forked,
    Joining,
    Missing,
    ProtocolError,
    RankSpec,
    Ready,
    Run,
    Stop,
    spec_from_env,
)
from pytest_composable.distributed._rank_args import (
    RankOptions,
    rank_arguments,
    rank_environment,
)

MESSAGES = [
    Run("t.py::test_x[cpu]", "t.py::test_y[cpu]", 4.5),
    Run("t.py::test_x[cpu]", None, 1.0),
    Check(2.0),
    Stop(),
    Joining(1),
    Ready(1, 1234),
    Done([{"nodeid": "t.py::test_x", "outcome": "passed"}], intact=False),
    Missing("t.py::test_x"),
    Checked(True),
    Crash("Traceback ...", "test"),
    Forked(1, 4321),
    Exited(4321, -9),
]

SPEC = RankSpec(3, "/tmp/store", 1, 2, "cpu", "gloo", 25.0, 99, "/tmp/stacks")


def test_every_message_crosses_the_channel_unchanged() -> None:
    ours, theirs = socket.socketpair()
    sender, receiver = Channel(ours), Channel(theirs)
    for message in MESSAGES:
        assert sender.send(message)
        assert receiver.recv() == message
    sender.close()
    assert receiver.recv() is None  # the peer has gone
    assert not receiver.send(Stop())  # and sending to it says so instead of raising
    receiver.close()


def test_descriptors_travel_with_a_message() -> None:
    """A :class:`Fork` carries the rank's control socket and log file (``SCM_RIGHTS``); the
    messages around it are read as usual."""
    ours, theirs = socket.socketpair()
    sender, receiver = Channel(ours), Channel(theirs)
    read, write = os.pipe()
    fork = Fork(SPEC, {"RANK": "1"}, ["-q", "t.py"], "/tmp")
    assert sender.send(Stop())
    assert sender.send(fork, [write])
    assert sender.send(Check(1.0))
    assert receiver.recv() == Stop()
    message, fds = receiver.recv_with_fds(2)
    assert message == fork
    assert len(fds) == 1
    os.write(fds[0], b"through the received descriptor")
    assert os.read(read, 100) == b"through the received descriptor"
    assert receiver.recv() == Check(1.0)
    for fd in (read, write, *fds):
        os.close(fd)
    sender.close()
    assert receiver.recv_with_fds(2) == (None, [])
    receiver.close()


@pytest.mark.parametrize(("raw", "value"), [("warm", "warm"), (" Cold ", "cold")])
def test_start_mode_parses(raw: str, value: str) -> None:
    assert parse_start(raw) == value


@pytest.mark.parametrize("raw", ["", "hot", "warm,cold"])
def test_start_mode_refuses(raw: str) -> None:
    with pytest.raises(ValueError, match="is not one of warm, cold"):
        parse_start(raw)


def test_a_value_outside_the_protocol_is_refused() -> None:
    import pickle
    import struct

    ours, theirs = socket.socketpair()
    payload = pickle.dumps(("run", "t.py::test_x", None))
    ours.sendall(struct.pack("!Q", len(payload)) + payload)
    with pytest.raises(ProtocolError, match="not a composable message: tuple"):
        Channel(theirs).recv()
    ours.close()
    theirs.close()


def test_rank_spec_travels_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = RankSpec(7, "/s/store", 1, 2, "cpu", "gloo", 25.0, 99, "/s/stacks")
    monkeypatch.setenv("PYTEST_COMPOSABLE_RANK_WORKER", spec.to_env())
    assert spec_from_env() == spec
    assert "PYTEST_COMPOSABLE_RANK_WORKER" not in os.environ  # the tests' subprocesses
    assert spec_from_env() is None


def _options(
    args: list[str], plugins: set[str], ini_log_file: str = "", **option: object
) -> RankOptions:
    return RankOptions(args, frozenset(plugins), Namespace(**option), ini_log_file)


def test_rank_arguments_keep_the_rank_off_the_main_session_files() -> None:
    options = _options(
        ["-x", "tests"],
        {"cacheprovider", "xdist", "_cov"},
        log_file="main.log",
        report_log="main.jsonl",
        debug="pytestdebug.log",
        xmlpath="main.xml",
        capture="fd",
    )
    args = rank_arguments(options, Path("/pool"), 1)
    assert args == [
        "-x",
        "tests",
        "-q",
        "--basetemp=/pool/rank1/tmp",
        "-o",
        "cache_dir=/pool/rank1/cache",
        "--log-file=/pool/rank1/log.txt",
        "--report-log=/pool/rank1/report-log.jsonl",
        "--debug=/pool/rank1/pytestdebug.log",
        "--junitxml=",
        "--no-cov",
        "-n",
        "0",
        "--capture=tee-sys",
    ]


def test_rank_arguments_add_nothing_that_is_not_in_use() -> None:
    args = rank_arguments(_options(["-s"], set(), capture="no"), Path("/pool"), 0)
    assert args == ["-s", "-q", "--basetemp=/pool/rank0/tmp"]


def test_an_ini_log_file_is_made_per_rank_too() -> None:
    args = rank_arguments(_options([], set(), "from-ini.log", capture="fd"), Path("/p"), 0)
    assert "--log-file=/p/rank0/log.txt" in args


def test_rank_environment_drops_coverage_and_torchrun() -> None:
    env = rank_environment(
        {
            "PATH": "/bin",
            "COVERAGE_FILE": "/main/.coverage",
            "COVERAGE_PROCESS_START": "/main/.coveragerc",
            "COV_CORE_SOURCE": "pkg",
            "TORCHELASTIC_RUN_ID": "x",
        },
        {"RANK": "1"},
        Path("/pool"),
        1,
    )
    assert env == {"PATH": "/bin", "COVERAGE_FILE": "/pool/rank1/coverage", "RANK": "1"}


@pytest.mark.parametrize(("raw", "value"), [("1", 1), (" 8 ", 8), ("1024", 1024)])
def test_world_size_parses(raw: str, value: int) -> None:
    assert parse_world_size(raw) == value


@pytest.mark.parametrize("raw", ["0", "-1", "1025", "", "2.0", "\u0661", "9" * 30])
def test_world_size_refuses(raw: str) -> None:
    with pytest.raises(ValueError, match=r"is not a whole number|is outside 1\.\.1024"):
        parse_world_size(raw)


@pytest.mark.parametrize(("raw", "value"), [("5", 5.0), ("0.5", 0.5), ("1e3", 1000.0)])
def test_timeout_parses(raw: str, value: float) -> None:
    assert parse_timeout(raw) == value


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", "-inf", "x", ""])
def test_timeout_refuses(raw: str) -> None:
    with pytest.raises(ValueError, match="seconds"):
        parse_timeout(raw)


def test_a_long_value_is_quoted_short() -> None:
    with pytest.raises(ValueError, match="is not a number of seconds") as error:
        parse_timeout("x" * 10_000)
    assert len(str(error.value)) < 300


@pytest.mark.parametrize(
    ("deadline", "pg"), [(120.0, 108.0), (60.0, 54.0), (5.0, 4.0), (1.0, 0.5), (0.2, 0.1)]
)
def test_the_group_times_out_before_the_deadline(deadline: float, pg: float) -> None:
    assert pg_timeout_for(deadline) == pytest.approx(pg)
    assert 0 < pg_timeout_for(deadline) < deadline


def _pool_dir(root: Path, name: str, age: float, lock: bool = True) -> Path:
    path = root / f"composable-ranks-{name}"
    path.mkdir()
    if lock:
        (path / "lock").touch()
    old = time.time() - age
    os.utime(path, (old, old))
    return path


def test_the_sweep_removes_only_directories_nobody_holds(tmp_path: Path) -> None:
    live = _pool_dir(tmp_path, "live", age=3600)
    fd = os.open(live / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held, as a live session (any PID namespace) holds it
    dead = _pool_dir(tmp_path, "dead", age=3600)
    half_made = _pool_dir(tmp_path, "half", age=3600, lock=False)
    young = _pool_dir(tmp_path, "young", age=0, lock=False)
    other = tmp_path / "something-else"
    other.mkdir()
    try:
        removed = sweep_stale(tmp_path)
        assert sorted(removed) == sorted([dead, half_made])
        assert live.exists()
        assert young.exists()
        assert other.exists()
    finally:
        os.close(fd)
    os.utime(live, (0, 0))
    assert sweep_stale(tmp_path) == [live]  # once its session has ended


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        (
            {
                "TORCHELASTIC_RUN_ID": "x",
                "RANK": "3",
                "WORLD_SIZE": "4",
                "LOCAL_RANK": "1",
                "LOCAL_WORLD_SIZE": "2",
            },
            Launch("torchrun", 3, 4, 1, 2),
        ),
        ({"TORCHELASTIC_RUN_ID": "x"}, None),
        (
            {
                "SLURM_PROCID": "1",
                "SLURM_NTASKS": "2",
                "SLURM_LOCALID": "0",
                "SLURM_TASKS_PER_NODE": "1(x2)",
                "MASTER_ADDR": "n0",
                "MASTER_PORT": "29500",
            },
            Launch("slurm", 1, 2, 0, 1),
        ),
        (
            {
                "SLURM_PROCID": "0",
                "SLURM_NTASKS": "4",
                "SLURM_LOCALID": "0",
                "SLURM_NTASKS_PER_NODE": "4",
                "MASTER_ADDR": "n0",
                "MASTER_PORT": "29500",
            },
            Launch("slurm", 0, 4, 0, 4),
        ),
        # A batch script inside an allocation, without a rendezvous address: not a launch.
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, None),
        (
            {
                "OMPI_COMM_WORLD_RANK": "1",
                "OMPI_COMM_WORLD_SIZE": "2",
                "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29500",
            },
            Launch("mpi", 1, 2, 1, 2),
        ),
        (
            {
                "OMPI_COMM_WORLD_RANK": "x",
                "OMPI_COMM_WORLD_SIZE": "2",
                "MASTER_ADDR": "a",
                "MASTER_PORT": "1",
            },
            None,
        ),
    ],
)
def test_launches_are_read_from_the_environment(
    environ: dict[str, str], expected: Launch | None
) -> None:
    assert detect_launch(environ) == expected


def test_a_launch_gives_torch_its_env_variables() -> None:
    assert launch_environment(Launch("mpi", 1, 4, 1, 2)) == {
        "RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
    }


def test_a_device_without_a_backend_fails_the_pool_start(pytester: pytest.Pytester) -> None:
    """A device type torch knows no process-group backend for is a failed start (the test
    errors with the reason), not an exception out of the plugin."""
    from pytest_composable.distributed._pool import Launcher, PoolError

    launcher = Launcher(pytester.parseconfig())
    with pytest.raises(PoolError, match="no process-group backend known for 'xyz'"):
        launcher._pool((2, "xyz", ""), 10.0, 9.0)
    assert not launcher.pools
