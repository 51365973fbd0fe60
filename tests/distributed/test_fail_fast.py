"""A rank that fails a world test ends it at once, and its error is the headline.

Every session here runs with ``--composable-timeout=120``, so a test that waited for
its deadline (or for its process group's timeout) could not pass: each failing test
must be reported within a few seconds of the moment its rank failed. The rank that
fails writes the time it failed; a conftest in the main process writes the time the
failed report arrived.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import output_of, verbose_outcomes

# Seconds from a rank's failure to its test's failed report: a grace for the other
# ranks (1 s), their stacks and ending them; the target is 3 s.
BOUND = 3.0

CONFTEST = """
import json
import os
import time
from pathlib import Path


def pytest_runtest_logreport(report):
    if report.failed:
        name = report.nodeid.split("::")[-1]
        Path(os.environ["TIMES"], f"{name}.reported").write_text(json.dumps(time.time()))
"""

FAIL_FAST = """
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"], world_size=2)


def _failed_now(request):
    name = request.node.name
    Path(os.environ["TIMES"], f"{name}.failed").write_text(repr(time.time()))


def _fsdp_model(world):
    from torch.distributed.fsdp import fully_shard

    if not all(hasattr(torch.cpu.Stream, m) for m in ("record_event", "wait_event")):
        pytest.skip("FSDP2 cannot train on CPU with this torch (no CPU stream events)")

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    for layer in model:
        fully_shard(layer, mesh=world.mesh)
    return fully_shard(model, mesh=world.mesh)


def _wait_in(collective, world):
    if collective == "all_reduce":
        dist.all_reduce(torch.ones(1))
    elif collective == "barrier":
        dist.barrier()
    elif collective == "broadcast":
        dist.broadcast(torch.ones(1), src=0)
    elif collective == "all_gather":
        dist.all_gather([torch.zeros(1), torch.zeros(1)], torch.ones(1))


COLLECTIVES = ["all_reduce", "barrier", "broadcast", "all_gather"]


@pytest.mark.parametrize("failing", [0, 1])
@pytest.mark.parametrize("collective", COLLECTIVES)
def test_collective(composable_world, request, collective, failing):
    if composable_world.rank == failing:
        _failed_now(request)
        raise ValueError(f"boom on rank {failing}")
    _wait_in(collective, composable_world)


@pytest.mark.parametrize("failing", [0, 1])
def test_fsdp_forward(composable_world, request, failing):
    model = _fsdp_model(composable_world)
    if composable_world.rank == failing:
        _failed_now(request)
        raise ValueError(f"boom on rank {failing}")
    model(torch.ones(2, 8)).sum().backward()


@pytest.mark.parametrize("failing", [0, 1])
def test_fsdp_backward(composable_world, request, failing):
    model = _fsdp_model(composable_world)
    loss = model(torch.ones(2, 8)).sum()
    if composable_world.rank == failing:
        _failed_now(request)
        raise ValueError(f"boom on rank {failing}")
    loss.backward()


@pytest.mark.parametrize("failing", [0, 1])
@pytest.mark.parametrize("how", ["assert", "exit", "signal"])
def test_way(composable_world, request, how, failing):
    if composable_world.rank == failing:
        _failed_now(request)
        if how == "assert":
            assert composable_world.rank == 99, "wrong rank"
        elif how == "exit":
            os._exit(3)
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(torch.ones(1))


def test_after(composable_world):
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == 2
"""

COLLECTIVES = ("all_reduce", "barrier", "broadcast", "all_gather")
HEADLINES = {
    "assert": "AssertionError: wrong rank*(rank {failing} of 2)",
    "exit": "composable: rank {failing} exited with status 3 while running the test*",
    "signal": "composable: rank {failing} was killed by signal SIGKILL while running the test*",
}


def _literal(name: str) -> str:
    """``name`` as an fnmatch pattern that matches it alone (``[`` starts a set there)."""
    return name.replace("[", "[[]")


def _fsdp_trains_on_cpu() -> bool:
    import torch

    return all(hasattr(torch.cpu.Stream, m) for m in ("record_event", "wait_event"))


def _run(pytester: pytest.Pytester, tmp_path: Path, *args: str) -> pytest.RunResult:
    times = tmp_path / "times"
    times.mkdir()
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_ff=FAIL_FAST)
    os.environ["TIMES"] = str(times)
    try:
        return pytester.runpytest_subprocess(
            "-v", "-rf", "--composable-timeout=120", "-p", "no:cacheprovider", *args
        )
    finally:
        del os.environ["TIMES"]


def _delays(times: Path) -> dict[str, float]:
    return {
        failed.stem: json.loads((times / f"{failed.stem}.reported").read_text())
        - float(failed.read_text())
        for failed in times.glob("*.failed")
    }


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_each_failure_ends_its_test_at_once(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: list[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    result = _run(pytester, tmp_path, *workers)
    outcomes = verbose_outcomes(result) if not workers else {}
    fsdp = _fsdp_trains_on_cpu()
    for failing in (0, 1):
        names = [f"test_collective[cpu-{c}-{failing}]" for c in COLLECTIVES]
        if fsdp:
            names += [f"test_fsdp_forward[cpu-{failing}]", f"test_fsdp_backward[cpu-{failing}]"]
        boom = f"ValueError: boom on rank {failing} (rank {failing} of 2)"
        for name in names:
            result.stdout.fnmatch_lines([f"FAILED test_ff.py::{_literal(name)} - {boom}"])
        for how, headline in HEADLINES.items():
            name = _literal(f"test_way[cpu-{how}-{failing}]")
            result.stdout.fnmatch_lines(
                [f"FAILED test_ff.py::{name} - {headline.format(failing=failing)}"]
            )
    if outcomes:
        assert outcomes["test_ff.py::test_after[cpu]"] == "PASSED", output_of(result)
    else:
        result.stdout.fnmatch_lines(["*PASSED test_ff.py::test_after[[]cpu[]]*"])
    delays = _delays(tmp_path / "times")
    assert len(delays) == (18 if fsdp else 14), delays
    slow = {name: round(d, 2) for name, d in delays.items() if d > BOUND}
    assert not slow, (slow, output_of(result))


ONE = """
import pytest
import torch
import torch.distributed as dist


@pytest.mark.composable(devices=["cpu"], world_size=2)
def test_rank1_raises(composable_world):
    if composable_world.rank == 1:
        raise ValueError("boom on rank 1")
    print("rank 0 reaches the collective")
    dist.all_reduce(torch.ones(1))
"""


def test_root_cause_leads_every_form_of_report(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """The long report shows the failed rank first, then where the other rank waited (its
    own frames, no library source); the JUnit message and ``--tb=line`` give the cause."""
    pytester.makepyfile(test_r1=ONE)
    xml = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "--composable-timeout=120", "-p", "no:cacheprovider", f"--junitxml={xml}"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "composable: call failed on rank 1 of 2",
            "composable: rank(s) 0 still ran the test and were ended*",
            "*_ rank 1 _*",
            "E * ValueError: boom on rank 1",
            "*_ rank 0 (waiting in test_rank1_raises (test_r1.py:11) when rank 1 failed) _*",
            '  File "*test_r1.py", line 11 in test_rank1_raises',
            "  ... in the library:",
            '  File "*distributed_c10d.py", line * in all_reduce',
            "*_ rank 0 output during the test (tail) _*",
            "rank 0 reaches the collective",
        ]
    )
    text = result.stdout.str()
    # No library source or docstrings: torch's all_reduce documents its "Args:".
    assert "Args:" not in text
    failure = ET.parse(xml).getroot().find(".//testcase/failure")
    assert failure is not None
    assert failure.get("message") == "ValueError: boom on rank 1 (rank 1 of 2)"

    line = pytester.runpytest_subprocess(
        "--composable-timeout=120", "-p", "no:cacheprovider", "--tb=line"
    )
    line.stdout.fnmatch_lines(["*test_r1.py:9: ValueError: boom on rank 1 (rank 1 of 2)"])
    assert line.duration < 60


ECHO = """
import time

import pytest
import torch.distributed as dist


@pytest.mark.composable(devices=["cpu"], world_size=2)
def test_prints(composable_world):
    print(f"before the barrier on {composable_world.rank}")
    dist.barrier()
    print("after the barrier")
"""


# The main process starts echoing a second after the ranks got the test: what they
# printed meanwhile is echoed too (it once started from the logs' sizes at that moment).
SLOW_ECHO = """
import time

from pytest_composable.distributed import _lockstep

_init = _lockstep.Echo.__init__


def _late(self, *args, **kwargs):
    time.sleep(1)
    _init(self, *args, **kwargs)


_lockstep.Echo.__init__ = _late
"""


@pytest.mark.parametrize("echo", ["prompt", "late"])
def test_ranks_print_live_under_capture_no(pytester: pytest.Pytester, echo: str) -> None:
    pytester.makepyfile(test_echo=ECHO)
    if echo == "late":
        pytester.makeconftest(SLOW_ECHO)
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK, output_of(result)
    for rank in (0, 1):
        result.stdout.fnmatch_lines(
            [
                f"*[[]rank{rank}[]] before the barrier on {rank}",
                f"[[]rank{rank}[]] after the barrier",
            ]
        )
    captured = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rP")
    assert "[rank0]" not in captured.stdout.str()
    captured.stdout.fnmatch_lines(["*Captured stdout call (rank 1)*", "before the barrier on 1"])
