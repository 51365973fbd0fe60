"""Nothing a rank starts outlives the session: not a subprocess, a fork, a process that
called ``setsid``, nor a daemon orphaned on purpose, whether its test passed, failed or
ended the rank (``os._exit``), in both start modes.

Checked by process id once the pytest run has returned, with the process groups and
pool directories they could hold.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import assert_gone, assert_no_pool_directory, output_of, verbose_outcomes

STARTS = """
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = [
    pytest.mark.composable(devices=["cpu"]),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # fork() with threads
]


def _record(name, value):
    pids = Path(os.environ["PIDS"])
    partial = pids.parent / f"{name}.partial"  # moved in: never read half-written
    partial.write_text(str(value))
    partial.replace(pids / name)


def _sleep_forever():
    try:
        time.sleep(1000)
    finally:
        os._exit(0)


def _start_children(world, test):
    tag = f"{test}-rank{world.rank}"
    _record(f"{tag}-rank", os.getpid())
    _record(f"{tag}-parent", os.getppid())
    _record(f"pgid-{tag}-rank", os.getpgrp())
    _record(f"{tag}-sleep", subprocess.Popen(["sleep", "1000"]).pid)
    setsid = subprocess.Popen(["sleep", "1000"], start_new_session=True).pid
    _record(f"{tag}-setsid", setsid)
    _record(f"pgid-{tag}-setsid", setsid)
    pid = os.fork()
    if pid == 0:
        _sleep_forever()
    _record(f"{tag}-fork", pid)
    # A daemon: a new session, and its parent exits, so it is an orphan.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        daemon = os.fork()
        if daemon == 0:
            _sleep_forever()
        os.write(write, str(daemon).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    _record(f"{tag}-daemon", int(os.read(read, 64)))
    os.close(read)
    dist.barrier()


def test_passes(composable_world):
    _start_children(composable_world, "passes")


@pytest.mark.composable(world_size=1)
def test_fails(composable_world):
    _start_children(composable_world, "fails")
    assert False


def test_exits(composable_world):
    _start_children(composable_world, "exits")
    os._exit(3)


def test_last(composable_world):
    _start_children(composable_world, "last")
"""


def _groups_in_use(pgids: set[int]) -> list[int]:
    """The processes still in one of the process groups ``pgids``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) in pgids:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.start_mode
@pytest.mark.parametrize("mode", ["warm", "cold"])
def test_nothing_a_rank_started_outlives_the_session(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The pool of world size 2 closes after ``test_passes`` (another pool's test comes),
    the one of size 1 after the failing test, a restarted pool of size 2 loses its ranks
    in ``test_exits``, and the last one closes at the end: each way, nothing is left."""
    pids = tmp_path / "pids"
    pids.mkdir()
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("PIDS", str(pids))
    monkeypatch.setenv("TMPDIR", str(temp))
    pytester.makepyfile(test_starts=STARTS)
    result = pytester.runpytest_subprocess(
        "-v", "-p", "no:cacheprovider", f"--composable-start={mode}"
    )
    assert verbose_outcomes(result) == {
        "test_starts.py::test_passes[cpu]": "PASSED",
        "test_starts.py::test_fails[cpu]": "FAILED",
        "test_starts.py::test_exits[cpu]": "FAILED",
        "test_starts.py::test_last[cpu]": "PASSED",
    }, output_of(result)
    if mode == "warm":
        assert "ranks started cold" not in output_of(result)
    recorded = {path.name: int(path.read_text()) for path in pids.iterdir()}
    processes = {name: pid for name, pid in recorded.items() if not name.startswith("pgid-")}
    # Two ranks in three tests and one in one; each started four processes.
    assert len([name for name in processes if name.endswith("-rank")]) == 7, sorted(recorded)
    assert len(processes) == 7 * 6, sorted(recorded)
    # At once: the session waited for all of it to end.
    assert_gone(list(processes.values()), within=0)
    groups = {pid for name, pid in recorded.items() if name.startswith("pgid-")}
    assert not _groups_in_use(groups)
    assert_no_pool_directory(temp, within=0)
