"""Selection on a machine with GPUs, simulated: this machine has none.

``pytest_composable.devices._count`` is patched so that ``cuda`` reports N
devices: with ``monkeypatch`` in this process for the in-process runs, and by a
``conftest.py`` in the one real ``-n 2`` run, whose workers are processes of
their own. Everything else is real. Tests in these runs use only
``composable_device`` (a ``torch.device`` object, which needs no CUDA), never a
model on cuda. (``tests/test_hooks.py`` likewise adds ``xpu`` devices through
the ``pytest_composable_devices`` hook.)

Behaviours checked here only with simulated accelerators:

- the default selection adds the first device of an accelerator type (``cuda:0``);
- ``all`` lists every device of every type (``cpu, meta, cuda:0, cuda:1``);
- ``--composable-device cuda:1`` selects that exact device, and ids read ``test_x[cuda:1]``;
- a missing index (``cuda:3`` with 2 GPUs) is a usage error listing ``cuda:0, cuda:1``,
  and so are ``cuda:256``, ``cuda:\u0661`` and a 20-digit index, which torch would
  have wrapped, read or overflowed, from the option, the environment and the ini;
  the marker skips them;
- under pytest-xdist a bare ``cuda`` (and the default) picks the worker index modulo
  the GPU count (``PYTEST_XDIST_WORKER=gw3`` with 2 GPUs -> ``cuda:1``), checked
  with the worker variable set by hand and in a real ``-n 2`` run;
- the marker's ``devices=["cuda"]`` / ``["cuda:1"]`` matching against a cuda selection;
- devices added by ``pytest_composable_devices`` (``xpu:0``, ``xpu:1``) joining the
  default and validation (``tests/test_hooks.py``).

Not covered anywhere on this machine: building or materializing a model on a real
accelerator, ``CUDA_VISIBLE_DEVICES``, and the fixtures' state restore on an
accelerator.
"""

from __future__ import annotations

import pytest

import pytest_composable.devices as devices
from tests.helpers import (
    DEVICE_ENV,
    DEVICE_TEST,
    PLAIN_TEST,
    assert_usage_error,
    collected_ids,
    name_devices,
    verbose_outcomes,
)

# Each test records the device it was given, so the value (not only the id) is checked.
RECORDING_TEST = """
import os
import torch

def test_x(composable_device, request):
    assert isinstance(composable_device, torch.device)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "none")
    with open(f"seen-{request.node.callspec.id.replace(':', '_')}-{worker}.txt", "w") as f:
        f.write(str(composable_device))
"""


SIMULATE_CUDA = """
import pytest_composable.devices as devices

_real_count = devices._count

def _simulated_count(device_type):
    return {count} if device_type == "cuda" else _real_count(device_type)

devices._count = _simulated_count
# As if CUDA were already initialised in the workers: the worker-modulo rule, whatever
# this torch build is (tests/test_gpu_share.py simulates the share of a fresh worker).
devices._cuda_ready = lambda: False
"""


def simulate_cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """``count`` cuda devices for the in-process runs of this test."""
    real_count = devices._count

    def simulated_count(device_type: str) -> int:
        return count if device_type == "cuda" else real_count(device_type)

    monkeypatch.setattr(devices, "_count", simulated_count)
    monkeypatch.setattr(devices, "_cuda_ready", lambda: False)  # the worker-modulo rule


def seen_devices(pytester: pytest.Pytester) -> dict[str, str]:
    """``{file stem: device}`` written by ``RECORDING_TEST``."""
    return {p.stem: p.read_text() for p in pytester.path.glob("seen-*.txt")}


@pytest.mark.parametrize(
    ("args", "ids"),
    [
        ([], ["cpu", "meta", "cuda:0"]),
        (["--composable-device=all"], ["cpu", "meta", "cuda:0", "cuda:1"]),
        (["--composable-device", "cuda:1"], ["cuda:1"]),
    ],
    ids=["default", "all", "cuda:1"],
)
def test_selection_with_two_gpus(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str], ids: list[str]
) -> None:
    simulate_cuda(monkeypatch, 2)
    pytester.makepyfile(test_x=DEVICE_TEST)
    result = pytester.runpytest("--collect-only", "-q", *args)
    assert collected_ids(result) == [f"test_x.py::test_x[{d}]" for d in ids]


@pytest.mark.parametrize(
    ("worker", "gpus", "args", "expected"),
    [
        # Under xdist a worker-picked device is named by its type, so that every
        # worker collects the same ids; the fixture value is the worker's device.
        ("gw3", 2, [], {"cpu": "cpu", "meta": "meta", "cuda": "cuda:1"}),
        ("gw2", 4, ["--composable-device=cuda"], {"cuda": "cuda:2"}),
    ],
    ids=["default-gw3-of-2", "cuda-gw2-of-4"],
)
def test_xdist_worker_picks_its_gpu(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    worker: str,
    gpus: int,
    args: list[str],
    expected: dict[str, str],
) -> None:
    """The worker variable set by hand, as pytest-xdist sets it in its workers."""
    simulate_cuda(monkeypatch, gpus)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    pytester.makepyfile(test_x=RECORDING_TEST)
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=len(expected))
    assert seen_devices(pytester) == {
        f"seen-{test_id.replace(':', '_')}-{worker}": device for test_id, device in expected.items()
    }


def test_real_xdist_run_spreads_workers_over_gpus(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ``-n 2`` run, with the device variable: it reaches both workers, which
    build the models on cpu and spread over the GPUs (``cuda`` is this worker's)."""
    pytester.makeconftest(SIMULATE_CUDA.format(count=2))
    monkeypatch.setenv(DEVICE_ENV, "cpu,cuda")
    pytester.makepyfile(
        test_x=RECORDING_TEST
        + """
import pytest

@pytest.mark.composable(devices=["cpu"])
def test_model(composable_model, composable_input, composable_device):
    assert composable_device == torch.device("cpu")
    assert composable_model(composable_input).shape[0] == 4
""",
        test_y=RECORDING_TEST,
        test_z=RECORDING_TEST,
        test_w=RECORDING_TEST,
    )
    # loadfile: each worker gets at least one of the four files, so both see a cuda test.
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadfile")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.assert_outcomes(passed=4 * 2 + 5)
    result.stdout.fnmatch_lines(["*2 workers*"])
    cuda = {stem: device for stem, device in seen_devices(pytester).items() if "cuda" in device}
    workers = {stem.rsplit("-", 1)[1] for stem in cuda}
    assert workers == {"gw0", "gw1"}
    for stem, device in cuda.items():
        assert device == f"cuda:{int(stem.rsplit('-gw', 1)[1]) % 2}"


ARABIC_INDIC_ONE = "\u0661"


@pytest.mark.parametrize("source", ["cli", "env", "composable_device"])
@pytest.mark.parametrize(
    ("spec", "note"),
    [
        ("cuda:3", ""),
        ("cuda:256", ""),  # before: torch.device wrapped it to cuda:0
        (f"cuda:{ARABIC_INDIC_ONE}", " (a device index is written in the digits 0-9)"),
        ("cuda:99999999999999999999", ""),  # before: an INTERNALERROR
    ],
    ids=["3", "256", "arabic-indic-1", "20-digits"],
)
def test_missing_gpu_index_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, spec: str, note: str
) -> None:
    simulate_cuda(monkeypatch, 2)
    pytester.makepyfile(test_plain=PLAIN_TEST)
    args, where = name_devices(pytester, monkeypatch, source, spec)
    result = pytester.runpytest(*args)
    assert_usage_error(
        result,
        f"ERROR: composable: {where}: {spec!r} is not available on this machine{note}; "
        "this machine has: cpu, meta, cuda:0, cuda:1",
    )


def test_marker_naming_a_missing_gpu_skips(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulate_cuda(monkeypatch, 2)
    pytester.makepyfile(
        test_marker=f"""
import pytest

@pytest.mark.composable(
    devices=["cuda:256", "cuda:{ARABIC_INDIC_ONE}", "cuda:99999999999999999999"]
)
def test_missing(composable_device):
    raise AssertionError("must be skipped")
"""
    )
    result = pytester.runpytest("-rs", "--composable-device=all")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines_random(
        [
            "SKIPPED * composable: cuda:256 is not available on this machine; *",
            f"SKIPPED * composable: cuda:{ARABIC_INDIC_ONE} is not available on this machine (*",
            "SKIPPED * composable: cuda:99999999999999999999 is not available on *",
        ]
    )


def test_marker_matches_gpus(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    simulate_cuda(monkeypatch, 2)
    pytester.makepyfile(
        test_marker="""
import pytest

@pytest.mark.composable(devices=["cuda"])
def test_any_gpu(composable_device):
    assert composable_device.type == "cuda"

@pytest.mark.composable(devices=["cuda:1", "cpu"])
def test_second_gpu(composable_device):
    assert str(composable_device) in ("cuda:1", "cpu")
"""
    )
    result = pytester.runpytest("-v", "--composable-device=all")
    assert verbose_outcomes(result) == {
        "test_marker.py::test_any_gpu[cuda:0]": "PASSED",
        "test_marker.py::test_any_gpu[cuda:1]": "PASSED",
        "test_marker.py::test_second_gpu[cpu]": "PASSED",
        "test_marker.py::test_second_gpu[cuda:1]": "PASSED",
    }


WORLD_TESTS = """
def test_real(composable_world):
    pass


def test_fake(composable_fake_world):
    pass
"""


@pytest.mark.parametrize(
    ("args", "real", "fake"),
    [
        ([], ["cpu", "cuda:0"], ["cpu", "meta", "cuda:0"]),
        (["--composable-device=all"], ["cpu", "cuda:0"], ["cpu", "meta", "cuda:0"]),
        (["--composable-device=meta"], ["meta"], ["meta"]),
    ],
    ids=["default", "all", "meta"],
)
def test_world_tests_run_once_per_device_type(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    real: list[str],
    fake: list[str],
) -> None:
    """A world's ranks each take a device of the test's type, so a world test runs once
    per type (not once per GPU); a real world leaves out meta, which has no backend."""
    simulate_cuda(monkeypatch, 2)
    pytester.makepyfile(test_w=WORLD_TESTS)
    result = pytester.runpytest("--collect-only", "-q", *args)
    assert collected_ids(result) == [f"test_w.py::test_real[{d}]" for d in real] + [
        f"test_w.py::test_fake[{d}]" for d in fake
    ]
    if real == ["meta"]:
        result = pytester.runpytest("-rs", *args)
        result.stdout.fnmatch_lines(["*a real world needs a device with a process-group backend*"])


NODE_CHECK = """
def pytest_collection_finish(session):
    for item in session.items:
        reasons = [m.kwargs.get("reason", "") for m in item.iter_markers("skip")]
        print("ITEM", item.nodeid, "|", *reasons)
"""

CUDA_WORLD = """
import pytest

@pytest.mark.composable(devices=["cuda"], world_size=2)
def test_on_gpus(composable_world):
    pass
"""


@pytest.mark.parametrize(
    ("local_world_size", "reason"),
    [
        ("1", ""),  # 2 nodes of 1 rank, 1 GPU each: runs
        ("2", "composable: 2 ranks on this node need 2 cuda devices; this node has 1"),
    ],
    ids=["two-nodes-of-one", "one-node-of-two"],
)
def test_a_launched_world_is_judged_per_node(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    local_world_size: str,
    reason: str,
) -> None:
    """Under torchrun, a cuda world test runs when each node has a GPU per local rank, not
    when this node has a GPU per rank of the whole world (collected only: nothing joins)."""
    simulate_cuda(monkeypatch, 1)
    launch = {
        "TORCHELASTIC_RUN_ID": "x",
        "RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": local_world_size,
    }
    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    pytester.makeconftest(NODE_CHECK)
    pytester.makepyfile(test_gpus=CUDA_WORLD)
    result = pytester.runpytest("--collect-only", "-q", "-s")
    result.stdout.fnmatch_lines(
        [f"ITEM test_gpus.py::test_on_gpus[[]cuda:0[]] | {reason}".rstrip()]
    )
