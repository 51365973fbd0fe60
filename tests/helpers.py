"""Helpers for reading the pytest runs that the tests drive with ``pytester``.

Most tests run pytest in a temporary directory (``pytester``, which the root
``conftest.py`` loads) and check its exit code and output.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from subprocess import PIPE, STDOUT, Popen, TimeoutExpired

# Imported before any in-process run, which pytester ends by dropping the modules
# the run imported: torch cannot be imported twice in one process.
import pytest
import torch

import pytest_composable.devices
import pytest_composable.registry  # noqa: F401

# torch 2.6's FSDP imports torch's fake process-group module, which registers the
# "fake" backend as it is imported and refuses a second registration. Imported here,
# before any in-process run, neither is dropped after a run and imported again.
if torch.distributed.is_available():
    import torch.distributed.fsdp

# The first forward on meta loads torch._dynamo and torch._inductor, which register
# operator libraries that cannot be registered twice: load them before any run too.
torch.nn.Linear(1, 1, device="meta")(torch.empty(1, 1, device="meta"))
# Every in-process run ends with pytest's full garbage collection, which walks all
# of torch's objects (a third of a second); they live as long as the process, so
# leave them out of every collection.
gc.freeze()

DEVICE_ENV = "PYTEST_COMPOSABLE_DEVICE"

# The built-in models: fixture name, class name in ``models``, input features.
BUILTIN_MODELS = (
    ("unit_module", "UnitModule", 100),
    ("composite_model", "CompositeModel", 100),
    ("unit_param_module", "UnitParamModule", 100),
    ("composite_param_model", "CompositeParamModel", 100),
    ("nested_sequential_model", "NestedSequentialModel", 1),
)
BUILTIN_NAMES = tuple(name for name, _, _ in BUILTIN_MODELS)

PLAIN_TEST = "def test_a():\n    pass\n"
DEVICE_TEST = "def test_x(composable_device):\n    pass\n"

# A line of ``pytest -v`` output: ``test_a.py::test_x[cpu] PASSED  [ 50%]``.
_VERBOSE_LINE = re.compile(r"^(?P<nodeid>\S+::\S+) (?P<outcome>[A-Z]+)\b")
# A frame (or path) inside the installed plugin package.
_PLUGIN_FRAME = re.compile(r"pytest_composable[/\\]\w+\.py")


def collected_ids(result: pytest.RunResult) -> list[str]:
    """The node ids a ``--collect-only -q`` run listed, in order."""
    return [line.strip() for line in result.outlines if "::" in line and " " not in line.strip()]


def verbose_outcomes(result: pytest.RunResult) -> dict[str, str]:
    """``{node id: outcome}`` from the lines of a ``-v`` run."""
    outcomes: dict[str, str] = {}
    for line in result.outlines:
        match = _VERBOSE_LINE.match(line)
        if match:
            outcomes[match["nodeid"]] = match["outcome"]
    return outcomes


def output_of(result: pytest.RunResult) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def assert_no_plugin_frames(result: pytest.RunResult) -> None:
    """No traceback, and no frame or path from inside ``pytest_composable``, in the output."""
    text = output_of(result)
    assert "Traceback" not in text, text
    assert not _PLUGIN_FRAME.search(text), text


def assert_usage_error(result: pytest.RunResult, *stderr_patterns: str) -> None:
    """Exit code 4, ``stderr_patterns`` on stderr, no plugin frames, no test collected or run."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output_of(result)
    result.stderr.fnmatch_lines(list(stderr_patterns))
    assert_no_plugin_frames(result)
    assert "collected" not in result.stdout.str()
    assert "passed" not in result.stdout.str()


def assert_clear_error(result: pytest.RunResult, *stdout_patterns: str) -> None:
    """A failed run that ran no test, shows ``stdout_patterns`` and no plugin frames."""
    assert result.ret not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    result.stdout.fnmatch_lines(list(stdout_patterns))
    assert result.parseoutcomes().get("passed", 0) == 0
    assert_no_plugin_frames(result)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its parent counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def assert_gone(pids: list[int], within: float = 10.0) -> None:
    """Every process of ``pids`` ends within ``within`` seconds."""
    deadline = time.monotonic() + within
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _running(pid)], "processes left running"


def assert_no_pool_directory(temp: Path, within: float = 10.0) -> None:
    """No rank-pool directory is left in ``temp`` (after ``within`` seconds at most)."""
    deadline = time.monotonic() + within
    while list(temp.glob("composable-ranks-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(temp.glob("composable-ranks-*"))


def name_setting(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    value: str,
    setting: str = "device",
) -> tuple[list[str], str]:
    """Name ``value`` for the ``composable_<setting>`` setting through ``source`` (``cli``,
    ``env``, ``ini`` or an ini setting's own name): the arguments to run pytest with, and
    how the plugin's messages name the source."""
    if source == "cli":
        return [f"--composable-{setting}={value}"], f"--composable-{setting}"
    if source == "env":
        env = f"PYTEST_COMPOSABLE_{setting.upper()}"
        monkeypatch.setenv(env, value)
        return [], env
    ini = f"composable_{setting}" if source == "ini" else source
    pytester.makeini(f"[pytest]\n{ini} = {value}\n")
    return [], f"{ini} ini"


def name_devices(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, spec: str
) -> tuple[list[str], str]:
    """:func:`name_setting` for the devices (``source`` may be ``composable_devices``, the
    alias ini setting)."""
    return name_setting(pytester, monkeypatch, source, spec)


def interruptible() -> None:
    """A ``preexec_fn`` for a child that a test interrupts with SIGINT: ctrl-c's default
    action there, whatever this process inherited. A shell that runs a job in the
    background without job control (``cmd &`` in a script) starts it with SIGINT
    ignored, its children inherit that, and a Python started so never raises
    ``KeyboardInterrupt``."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch(path: Path, command: list[str], env: Mapping[str, str] | None = None) -> Popen[str]:
    """Start a launcher (torchrun, a hand-made SLURM or MPI world) in ``path``: one thread
    per rank, as torchrun sets, and a session of its own, so a stuck launch can be
    killed with its workers."""
    return Popen(
        command,
        cwd=path,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=PIPE,
        stderr=STDOUT,
        text=True,
        start_new_session=True,
    )


def launch_output(launched: Popen[str], timeout: float = 120) -> str:
    """The launch's output; a launch still running after ``timeout`` s is killed and fails
    the test. Then no process of the launch (the launcher, a rank, what a rank started)
    may be left: the test fails if one still runs 10 s after the launch ended."""
    try:
        return launched.communicate(timeout=timeout)[0]
    except TimeoutExpired:
        os.killpg(launched.pid, signal.SIGKILL)
        pytest.fail(f"still running after {timeout} s:\n{launched.communicate()[0]}")
    finally:
        if launched.poll() is None:
            os.killpg(launched.pid, signal.SIGKILL)
            launched.communicate()
        _no_process_left(launched.pid)


def _no_process_left(group: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(group, signal.SIGKILL)
            pytest.fail("a process of the launch was still running 10 s after it ended")
        time.sleep(0.1)
