"""Ranks that stay clean: what a world test changes on a kept rank is undone for the next
test on the same ranks (plain pytest, warm and cold, and torchrun), a compiled graph does
not outlive its test, each rank gets its share of the cores as intra-op threads unless the
user chose, and a pool whose ranks keep too much memory is started again, saying so."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pytest_composable.distributed import _hygiene
from tests.helpers import (
    assert_gone,
    assert_no_pool_directory,
    assert_usage_error,
    launch,
    launch_output,
    output_of,
    verbose_outcomes,
)

# One module per concern; pytest runs them in this order, all on the same pool of ranks.
# Each item is changed by its own test_change[...] (which checks that the change took),
# and checked by its own test_check[...] after every change was made: restoring one item
# less fails exactly that item's check.
STATE = """
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)

ITEMS = ["dtype", "device", "grad", "deterministic", "cudnn", "threads", "cwd", "env"]
HERE = str(Path(__file__).parent)
THREADS = int(os.environ["EXPECT_THREADS"])
EXPECTED = {
    "dtype": torch.float32,
    "device": torch.device("cpu"),
    "grad": True,
    "deterministic": (False, False),
    "cudnn": (True, False, False),
    "threads": THREADS,
    "cwd": HERE,
    "env": (None, "kept", "gone"),
}


def state(item):
    cudnn = torch.backends.cudnn
    return {
        "dtype": torch.get_default_dtype,
        "device": torch.get_default_device,
        "grad": torch.is_grad_enabled,
        "deterministic": lambda: (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        "cudnn": lambda: (cudnn.enabled, cudnn.benchmark, cudnn.deterministic),
        "threads": torch.get_num_threads,
        "cwd": os.getcwd,
        "env": lambda: tuple(os.environ.get(f"HYGIENE_{n}") for n in ("NEW", "KEPT", "GONE")),
    }[item]()


def change(item):
    if item == "dtype":
        torch.set_default_dtype(torch.float64)
    elif item == "device":
        torch.set_default_device("meta")
    elif item == "grad":
        torch.set_grad_enabled(False)
    elif item == "deterministic":
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif item == "cudnn":
        torch.backends.cudnn.enabled = False
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = True
    elif item == "threads":
        torch.set_num_threads(THREADS + 1)
    elif item == "cwd":
        os.chdir("/")
    elif item == "env":
        os.environ["HYGIENE_NEW"] = "new"
        os.environ["HYGIENE_KEPT"] = "changed"
        del os.environ["HYGIENE_GONE"]


@pytest.mark.parametrize("item", ITEMS)
def test_change(composable_world, item):
    assert state(item) == EXPECTED[item]
    change(item)
    assert state(item) != EXPECTED[item]


@pytest.mark.parametrize("item", ITEMS)
def test_check(composable_world, item):
    assert state(item) == EXPECTED[item]
"""

# A fixture wider than a test keeps what its setup set, for every test that uses it, as in
# one process; what its teardown leaves behind is undone.
FIXTURE = """
import os

import pytest
import torch

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)


@pytest.fixture(scope="module")
def float64():
    torch.set_default_dtype(torch.float64)
    os.environ["FROM_FIXTURE"] = "1"
    yield
    torch.set_default_dtype(torch.float32)  # FROM_FIXTURE is left behind


def test_fixture_one(composable_world, float64):
    assert torch.get_default_dtype() == torch.float64
    torch.set_default_dtype(torch.float16)


def test_fixture_two(composable_world, float64):
    assert torch.get_default_dtype() == torch.float64
    assert os.environ["FROM_FIXTURE"] == "1"
"""

# The next module: the fixture was torn down after the last test of its module.
AFTER_FIXTURE = """
import os

import pytest
import torch


@pytest.mark.composable(devices=["cpu"], world_size=2)
def test_after_the_fixture(composable_world):
    assert torch.get_default_dtype() == torch.float32
    assert "FROM_FIXTURE" not in os.environ
"""

# A compiled function kept in a global: if its compiled code outlived the first test, the
# second would not compile it again. aot_eager on a module: compiling works on the ranks.
COMPILE = """
import pytest
import torch
from torch._dynamo.testing import CompileCounter

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)
COUNTER = CompileCounter()


def double(x):
    return x * 2


COMPILED = torch.compile(double, backend=COUNTER)


def test_compiles(composable_world):
    assert COMPILED(torch.ones(2)).sum().item() == 4
    assert COUNTER.frame_count == 1


def test_compiles_again_from_scratch(composable_world):
    from torch._dynamo.utils import counters

    assert not any(counters.values()), dict(counters)
    COMPILED(torch.ones(2))
    assert COUNTER.frame_count == 2


def test_aot_eager_module(composable_world):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(3, 4)
    compiled(x).sum().backward()
    torch.testing.assert_close(compiled(x), model(x))
"""

THREADS = """
import os

import pytest
import torch

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)


def test_threads(composable_world):
    assert torch.get_num_threads() == int(os.environ["EXPECT_THREADS"])
    assert os.environ["OMP_NUM_THREADS"] == os.environ["EXPECT_OMP"]
"""

SESSION = {
    "test_1_state": STATE,
    "test_2_fixture": FIXTURE,
    "test_2_fixture_after": AFTER_FIXTURE,
    "test_3_compile": COMPILE,
    "test_4_threads": THREADS,
}


def _share() -> int:
    """The plugin's thread count for each of 2 ranks on this machine."""
    return max(1, _hygiene.usable_cores() // 2)


def _expect(monkeypatch: pytest.MonkeyPatch, threads: int, omp: int) -> None:
    monkeypatch.setenv("EXPECT_THREADS", str(threads))
    monkeypatch.setenv("EXPECT_OMP", str(omp))
    monkeypatch.setenv("HYGIENE_KEPT", "kept")
    monkeypatch.setenv("HYGIENE_GONE", "gone")


@pytest.mark.start_mode
@pytest.mark.parametrize("start", ["warm", "cold"])
def test_the_next_test_on_the_same_ranks_finds_the_state_restored(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    """Every item (default dtype and device, grad mode, deterministic flags, cuDNN flags,
    intra-op threads, working directory, environment), a module fixture's own settings,
    dynamo's compiled code and counters, and the thread rule; warm and cold."""
    pytester.makepyfile(**SESSION)
    monkeypatch.delenv(_hygiene.THREADS_ENV, raising=False)
    _expect(monkeypatch, _share(), _share())
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-v", f"--composable-start={start}"
    )
    outcomes = verbose_outcomes(result)
    assert set(outcomes.values()) == {"PASSED"}, output_of(result)
    assert len(outcomes) == 23
    assert "ranks started cold" not in output_of(result)
    result.stdout.fnmatch_lines(
        [
            f"composable: intra-op threads per rank: {_share()} in worlds of 2 "
            f"(max(1, {_hygiene.usable_cores()} usable cores // ranks on the machine)*"
        ]
    )


def test_the_users_omp_num_threads_wins(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _hygiene.usable_cores() < 2:
        pytest.skip("one core: the user's count cannot differ from the plugin's")
    # Another count than the plugin's, and no more than the cores (torch takes no more).
    mine = 1 if _share() != 1 else 2
    pytester.makepyfile(test_threads=THREADS)
    monkeypatch.setenv(_hygiene.THREADS_ENV, str(mine))
    _expect(monkeypatch, mine, mine)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            f"composable: intra-op threads per rank: {mine} in worlds of 2 "
            f"(OMP_NUM_THREADS={mine} from*"
        ]
    )


def test_a_conftest_that_sets_the_threads_wins(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.set_num_threads in a conftest's pytest_configure holds on the ranks, for every
    test (a test that changes it again is undone to the conftest's count)."""
    if _hygiene.usable_cores() < 2:
        pytest.skip("one core: the conftest's count cannot differ from the plugin's")
    theirs = 1 if _share() != 1 else 2
    pytester.makeconftest(
        f"import torch\n\n\ndef pytest_configure(config):\n    torch.set_num_threads({theirs})\n"
    )
    pytester.makepyfile(
        test_threads=THREADS
        + "\n\ndef test_changes(composable_world):\n    torch.set_num_threads(7)\n"
        + "\n\ndef test_threads_again(composable_world):\n    test_threads(composable_world)\n"
    )
    monkeypatch.delenv(_hygiene.THREADS_ENV, raising=False)
    _expect(monkeypatch, theirs, _share())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [f"composable: intra-op threads per rank: {theirs} in worlds of 2 *"]
    )


def test_a_launched_world_restores_the_state_too(pytester: pytest.Pytester) -> None:
    """Under torchrun (which sets OMP_NUM_THREADS=1 for its ranks, as the user's)."""
    pytester.makepyfile(**SESSION)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = {
        "EXPECT_THREADS": "1",
        "EXPECT_OMP": "1",
        "HYGIENE_KEPT": "kept",
        "HYGIENE_GONE": "gone",
    }
    output = launch_output(
        launch(pytester.path, [*command, "-m", "pytest", "-p", "no:cacheprovider", "-v"], env)
    )
    assert "23 passed" in output, output
    assert "intra-op threads per rank: 1 in worlds of 2 (OMP_NUM_THREADS=1 from" in output


# The first test keeps a 256 MiB tensor in a global on every rank: past a 64 MiB limit,
# the pool is started again before the second test (new processes, the global empty);
# the third test runs on the second's ranks (nothing grew).
MEMORY = """
import os

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)
KEPT = []
PIDS = {}


def _pids():
    pids = [None, None]
    dist.all_gather_object(pids, os.getpid())
    return pids


def test_keeps_a_big_tensor(composable_world):
    KEPT.append(torch.ones(64 * 2**20))
    with open("pids-1", "w") as f:
        f.write(repr(_pids()))


def test_runs_on_new_ranks(composable_world):
    now = _pids()
    with open("pids-2", "w") as f:
        f.write(repr(now))
    with open("pids-1") as f:
        before = eval(f.read())
    assert not KEPT
    assert not set(now) & set(before)


def test_runs_on_the_same_ranks(composable_world):
    with open("pids-2") as f:
        assert eval(f.read()) == _pids()
"""


@pytest.mark.parametrize("source", ["option", "env", "ini"])
def test_a_pool_past_the_memory_limit_is_recycled_saying_so(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    pytester.makepyfile(test_memory=MEMORY)
    args = ["-p", "no:cacheprovider"]
    if source == "option":
        args.append("--composable-rank-memory-limit=64MiB")
    elif source == "env":
        monkeypatch.setenv("PYTEST_COMPOSABLE_RANK_MEMORY_LIMIT", "64")
    else:
        pytester.makeini("[pytest]\ncomposable_rank_memory_limit = 64mib\n")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=3)
    lines = [line for line in result.outlines if line.startswith("composable: restarted")]
    assert len(lines) == 1, output_of(result)
    result.stdout.fnmatch_lines(
        [
            "composable: restarted the 2 ranks on cpu before test_memory.py::"
            "test_runs_on_new_ranks[[]cpu[]]: rank ?'s resident set grew by * MiB since the "
            "pool started, past the rank memory limit of 64 MiB (--composable-rank-memory-limit)"
        ]
    )


def test_xdist_controller_shows_the_workers_notes(pytester: pytest.Pytester) -> None:
    """A pytest-xdist worker's summary is not shown: its controller shows each worker's
    restart lines (named by worker) and the thread line once."""
    pytester.makepyfile(test_memory=MEMORY)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "xdist", "-n", "1", "--composable-rank-memory-limit=64"
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["[[]gw0[]] composable: restarted the 2 ranks on cpu before test_memory.py::*"]
    )
    threads = [line for line in result.outlines if "intra-op threads per rank" in line]
    assert len(threads) == 1, output_of(result)


def test_off_keeps_the_pool(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_memory=MEMORY)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--composable-rank-memory-limit=off"
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_memory.py::test_runs_on_new_ranks[[]cpu[]] - *"])
    assert "composable: restarted" not in output_of(result)


@pytest.mark.parametrize(
    "value", ["0", "-5", "1.5", "12M", "64 MiB", "\u0663", "1048577GiB", "", "none"]
)
@pytest.mark.parametrize("source", ["option", "env", "ini"])
def test_a_bad_memory_limit_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, value: str
) -> None:
    args: list[str] = []
    if source == "option":
        args.append(f"--composable-rank-memory-limit={value}")
        named = "--composable-rank-memory-limit"
    elif source == "env":
        monkeypatch.setenv("PYTEST_COMPOSABLE_RANK_MEMORY_LIMIT", value)
        named = "PYTEST_COMPOSABLE_RANK_MEMORY_LIMIT"
    else:
        if not value.strip():
            pytest.skip("an empty ini value means unset")
        pytester.makeini(f"[pytest]\ncomposable_rank_memory_limit = {value}\n")
        named = "composable_rank_memory_limit ini setting"
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    result = pytester.runpytest(*args)
    assert_usage_error(result, f"ERROR: composable: {named}: rank memory limit *")
    assert len([line for line in result.errlines if "composable:" in line]) == 1


@pytest.mark.parametrize(
    ("value", "mib"), [("512", 512), ("512MiB", 512), ("4GiB", 4096), ("2gib", 2048), ("off", None)]
)
def test_memory_limit_values(value: str, mib: int | None) -> None:
    from pytest_composable.distributed._options import parse_memory_limit

    assert parse_memory_limit(value) == mib


def test_the_help_names_the_default_and_precedence(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    text = " ".join(result.stdout.str().split())
    assert "--composable-rank-memory-limit=SIZE" in text
    assert (
        "Precedence: this option > PYTEST_COMPOSABLE_RANK_MEMORY_LIMIT > the "
        "composable_rank_memory_limit ini setting > 4096MiB" in text
    )


@pytest.mark.parametrize(
    ("cores", "ranks", "threads"), [(2, 2, 1), (16, 2, 8), (3, 4, 1), (8, 3, 2)]
)
def test_the_thread_rule(
    monkeypatch: pytest.MonkeyPatch, cores: int, ranks: int, threads: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert _hygiene.rank_threads({}, ranks) == threads
    assert _hygiene.rank_threads({"OMP_NUM_THREADS": "5"}, ranks) is None


@pytest.mark.parametrize(
    ("workers", "ranks"), [(None, 2), ("1", 2), ("4", 8), ("x", 2), ("1234567", 2)]
)
def test_pytest_xdist_workers_share_the_cores(workers: str | None, ranks: int) -> None:
    environ = {} if workers is None else {"PYTEST_XDIST_WORKER_COUNT": workers}
    assert _hygiene.machine_ranks(environ, 2) == ranks


def test_the_cores_follow_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5, 7}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert _hygiene.usable_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert _hygiene.usable_cores() == 64


def test_restore_puts_back_only_what_changed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch

    monkeypatch.setenv("HYGIENE_A", "a")
    before = _hygiene.capture()
    monkeypatch.chdir(tmp_path)
    os.environ["HYGIENE_A"] = "b"
    os.environ["HYGIENE_B"] = "new"
    try:
        with torch.no_grad():
            changed = _hygiene.restore(before)
            assert torch.is_grad_enabled()
        assert sorted(changed) == [
            "env:HYGIENE_A",
            "env:HYGIENE_B",
            "grad mode",
            "working directory",
        ]
        assert os.environ["HYGIENE_A"] == "a"
        assert "HYGIENE_B" not in os.environ
        assert _hygiene.restore(before) == []
    finally:
        os.environ.pop("HYGIENE_B", None)


# Rank 1's cleaning after test_breaks_the_cleaning fails (as a restore that raises would):
# the test's reports are sent by then. FAILS makes the test fail too.
BROKEN_CLEAN = """
import os

import pytest

from pytest_composable.distributed import _hygiene

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)
FAILS = {fails}


def _broken(*args, **kwargs):
    raise RuntimeError("cannot put the state back on this rank")


def test_breaks_the_cleaning(composable_world):
    with open(f"pid-{{composable_world.rank}}-{{os.getpid()}}", "w"):
        pass
    if composable_world.rank == 1:
        _hygiene.restore = _broken
    assert not FAILS, "the test fails too"


def test_next(composable_world):
    pass


def test_on_new_ranks(composable_world):
    assert _hygiene.restore is not _broken
"""


@pytest.mark.parametrize("then", ["next test", "end of the pool", "failed test"])
def test_a_rank_that_fails_to_clean_is_reported_and_replaced(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """A rank cleans after it has sent its reports. Where that fails, the rank says so in
    answer to the main process's next message: the next test fails with it (the ranks are
    started again), or the test's own teardown does where the test failed (the ranks are
    checked then), or, after the pool's last test, that test's teardown. No rank is left
    running."""
    temp = pytester.path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    pytester.makepyfile(test_clean=BROKEN_CLEAN.format(fails=then == "failed test"))
    args = ["-p", "no:cacheprovider", "-v"]
    if then == "end of the pool":
        args += ["-k", "breaks"]
    result = pytester.runpytest_subprocess(*args)
    first = "test_clean.py::test_breaks_the_cleaning[cpu]"
    after = {
        "next test": "its previous test",
        "failed test": "this test",
        "end of the pool": "its last test",
    }[then]
    expected = {
        "next test": ({first: "PASSED", "test_clean.py::test_next[cpu]": "FAILED"}, 2, 1, 0),
        # The test passed or failed, then its teardown failed: its last verbose line says ERROR.
        "failed test": ({first: "ERROR", "test_clean.py::test_next[cpu]": "PASSED"}, 2, 1, 1),
        "end of the pool": ({first: "ERROR"}, 1, 0, 1),
    }[then]
    outcomes, passed, failed, errors = expected
    if then != "end of the pool":
        outcomes["test_clean.py::test_on_new_ranks[cpu]"] = "PASSED"
    assert verbose_outcomes(result) == outcomes, output_of(result)
    result.assert_outcomes(passed=passed, failed=failed, errors=errors)
    result.stdout.fnmatch_lines(
        [
            f"composable: rank 1 crashed putting back the process state after {after} "
            "(exited with status 3):",
            "*RuntimeError: cannot put the state back on this rank",
        ]
    )
    assert "INTERNALERROR" not in output_of(result)
    assert_gone([int(p.name.split("-")[2]) for p in pytester.path.glob("pid-*")])
    assert_no_pool_directory(temp)
