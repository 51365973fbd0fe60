"""Faults that must stay inside one test: the session goes on, nothing is left behind.

Every session here runs in its own ``TMPDIR``, so a leftover pool directory is seen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_composable.distributed._constants import MIN_START_TIMEOUT, MIN_WARM_START_TIMEOUT
from tests.helpers import (
    assert_gone,
    assert_no_pool_directory,
    interruptible,
    output_of,
    verbose_outcomes,
)


@pytest.fixture
def temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``TMPDIR`` for the pytest subprocesses of one test."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setenv("TMPDIR", str(path))
    return path


BETWEEN_TESTS = """
import os
import threading
import time

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])


def test_leaves_a_dying_thread(composable_world):
    if composable_world.rank == 1:
        def die():
            time.sleep(0.2)
            print("rank 1 dies while idle")
            os._exit(5)

        threading.Thread(target=die, daemon=True).start()


def test_main_process_pause():
    time.sleep(1.5)


def test_after_idle_death(composable_world):
    dist.barrier()


def test_destroys_the_group(composable_world):
    dist.destroy_process_group()


def test_after_destroy(composable_world):
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == 2


@pytest.mark.composable(timeout=60)
def test_collective_waits_for_the_test_deadline(composable_world):
    if composable_world.rank == 1:
        time.sleep(4)  # longer than --composable-timeout=3
    dist.barrier()


@pytest.mark.timeout(2)
def test_pytest_timeout(composable_world):
    if composable_world.rank == 0:
        time.sleep(600)
    dist.barrier()


def test_after_pytest_timeout(composable_world):
    dist.barrier()
"""


def test_faults_between_tests_stay_in_one_test(pytester: pytest.Pytester, temp: Path) -> None:
    """A rank dying while idle, a destroyed default group and pytest-timeout (signal method)
    each fail or error one test; the next test gets a working world; exit code 1."""
    pytester.makepyfile(test_between=BETWEEN_TESTS)
    result = pytester.runpytest_subprocess(
        "-v", "--composable-timeout=3", "--timeout-method=signal", "-p", "timeout"
    )
    assert verbose_outcomes(result) == {
        "test_between.py::test_leaves_a_dying_thread[cpu]": "PASSED",
        "test_between.py::test_main_process_pause": "PASSED",
        "test_between.py::test_after_idle_death[cpu]": "ERROR",
        "test_between.py::test_destroys_the_group[cpu]": "PASSED",
        "test_between.py::test_after_destroy[cpu]": "PASSED",
        "test_between.py::test_collective_waits_for_the_test_deadline[cpu]": "PASSED",
        "test_between.py::test_pytest_timeout[cpu]": "FAILED",
        "test_between.py::test_after_pytest_timeout[cpu]": "PASSED",
    }, output_of(result)
    result.stdout.fnmatch_lines(
        [
            "composable: rank 1 exited with status 5 while its pool was idle "
            "(after test_between.py::test_leaves_a_dying_thread[[]cpu[]])*",
            "*rank 1 output (tail)*",
            "rank 1 dies while idle",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "composable: * rank(s) 0 did not finish*",
            "*_ rank 0 (still running in test_pytest_timeout (test_between.py:*)) _*",
            '*File "*test_between.py", line * in test_pytest_timeout',
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "INTERNALERROR" not in output_of(result)
    assert_no_pool_directory(temp)


PYTEST_TIMEOUT = """
import time

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=1)


def test_hangs(composable_world):
    time.sleep(600)


def test_after(composable_world):
    dist.barrier()
"""


def test_pytest_timeout_thread_method_fails_one_test(pytester: pytest.Pytester, temp: Path) -> None:
    pytester.makepyfile(test_timer=PYTEST_TIMEOUT)
    result = pytester.runpytest_subprocess(
        "-v", "--timeout=3", "--timeout-method=thread", "-p", "timeout"
    )
    assert verbose_outcomes(result) == {
        "test_timer.py::test_hangs[cpu]": "FAILED",
        "test_timer.py::test_after[cpu]": "PASSED",
    }, output_of(result)
    result.stdout.fnmatch_lines(["composable: timed out after 3 s; rank(s) 0 did not finish*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert_no_pool_directory(temp)


STARTUP_HANG = """
import os
import time

if os.environ.get("RANK") == "1" and "PYTEST_COMPOSABLE_RANK_WORKER" in os.environ:
    time.sleep(600)  # rank 1 of every pool never finishes starting
"""

STARTUP_TESTS = """
import pytest

pytestmark = pytest.mark.composable(devices=["cpu"])


def test_two_ranks(composable_world):
    pass


@pytest.mark.composable(world_size=1)
def test_one_rank(composable_world):
    pass
"""


def test_a_rank_that_hangs_at_start_is_named(pytester: pytest.Pytester, temp: Path) -> None:
    # The start mode this suite runs in (``make test-cold`` sets cold): it sets the deadline.
    cold = os.environ.get("PYTEST_COMPOSABLE_START") == "cold"
    deadline = MIN_START_TIMEOUT if cold else MIN_WARM_START_TIMEOUT
    pytester.makeconftest(STARTUP_HANG)
    pytester.makepyfile(test_start=STARTUP_TESTS)
    result = pytester.runpytest_subprocess("-v", "--composable-timeout=2")
    assert verbose_outcomes(result) == {
        "test_start.py::test_two_ranks[cpu]": "ERROR",
        "test_start.py::test_one_rank[cpu]": "PASSED",
    }, output_of(result)
    result.stdout.fnmatch_lines(
        [
            f"composable: could not start 2 ranks on cpu: "
            f"rank(s) 1 not ready after {deadline:g} s*",
            "*_ rank 1 output _*",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert_no_pool_directory(temp)


ONE_WORLD_TEST = """
import pytest
import torch
import torch.distributed as dist


@pytest.mark.composable(devices=["cpu"])
def test_all_reduce(composable_world):
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == 2
"""


def test_a_long_tmpdir_works(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control channel has no path, so no ``AF_UNIX`` path limit (108 bytes) applies."""
    temp = tmp_path / ("t" * 60) / ("m" * 60) / ("p" * 60)
    temp.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(temp))
    pytester.makepyfile(test_one=ONE_WORLD_TEST)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    assert_no_pool_directory(temp)


SLOW_START = """
import os
import time
from pathlib import Path

if "PYTEST_COMPOSABLE_RANK_WORKER" in os.environ:
    # Written beside the folder, then moved in: the test never reads a half-written file.
    pids = Path(os.environ["PIDS"])
    partial = pids.parent / f"pid-{os.environ['RANK']}.partial"
    partial.write_text(str(os.getpid()))
    partial.replace(pids / os.environ["RANK"])
    time.sleep(600)  # the pool is still starting when Ctrl-C comes
"""

LONG_LIVED = """
import os
import sys
import time
from pathlib import Path

import pytest

code = pytest.main(["-p", "no:cacheprovider", "-q"])
done = Path(os.environ["DONE"])
partial = done.with_name("done.partial")  # moved into place: never read half-written
partial.write_text(str(int(code)))
partial.replace(done)
time.sleep(600)  # a long-lived process: what pytest.main left must already be gone
"""


def test_ctrl_c_while_a_pool_starts_inside_pytest_main(
    pytester: pytest.Pytester, tmp_path: Path, temp: Path
) -> None:
    pytester.makeconftest(SLOW_START)
    pytester.makepyfile(test_one=ONE_WORLD_TEST)
    script = pytester.path / "long_lived.py"
    script.write_text(LONG_LIVED)
    pids = tmp_path / "pids"
    pids.mkdir()
    done = tmp_path / "done"
    host = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=pytester.path,
        env={**os.environ, "PIDS": str(pids), "DONE": str(done)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=interruptible,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(pids.iterdir())) < 2:
            assert time.monotonic() < deadline, "the ranks did not start"
            assert host.poll() is None, host.communicate()[0].decode()
            time.sleep(0.1)
        host.send_signal(signal.SIGINT)
        while not done.exists():
            assert time.monotonic() < deadline + 30, "pytest.main did not return"
            time.sleep(0.1)
        assert done.read_text() == str(int(pytest.ExitCode.INTERRUPTED))
        assert host.poll() is None  # still alive: nothing was left for its exit to clean
        assert_gone([int(p.read_text()) for p in pids.iterdir()])
        assert_no_pool_directory(temp, within=0)
    finally:
        host.kill()
        host.wait()
