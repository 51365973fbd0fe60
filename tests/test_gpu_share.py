"""GPUs shared out over pytest-xdist workers, simulated: this machine has none.

``pytest_composable.devices`` is patched so that this torch has CUDA, not yet
initialised, with as many GPUs as ``CUDA_VISIBLE_DEVICES`` lists (4 when it
is unset), as NVML would count them. Everything else is real.
"""

from __future__ import annotations

import pytest

import pytest_composable.devices as devices
from tests.helpers import output_of


@pytest.mark.parametrize(
    ("worker", "workers", "count", "share"),
    [
        (0, 2, 4, [0, 1]),
        (1, 2, 4, [2, 3]),
        (0, 2, 3, [0]),
        (1, 2, 3, [1, 2]),
        (0, 3, 2, [0]),
        (1, 3, 2, [1]),
        (2, 3, 2, [0]),
        (3, 4, 1, [0]),
        (1, 2, 0, []),
    ],
)
def test_each_worker_gets_its_own_gpus_while_there_are_enough(
    worker: int, workers: int, count: int, share: list[int]
) -> None:
    assert devices.gpu_share(worker, workers, count) == share


def _simulate(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    monkeypatch.setattr(devices, "_cuda_ready", lambda: True)
    real = devices._count

    def count(device_type: str) -> int:
        if device_type != "cuda":
            return real(device_type)
        visible = env.get("CUDA_VISIBLE_DEVICES")
        return len(visible.split(",")) if visible else 4

    monkeypatch.setattr(devices, "_count", count)


@pytest.mark.parametrize(
    ("visible", "worker", "expected"),
    [
        (None, "gw1", "2,3"),
        ("GPU-a,GPU-b,GPU-c,GPU-d", "gw0", "GPU-a,GPU-b"),
        ("7,5,3", "gw1", "5,3"),
    ],
)
def test_the_share_narrows_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, worker: str, expected: str
) -> None:
    env = {"PYTEST_XDIST_WORKER": worker, "PYTEST_XDIST_WORKER_COUNT": "2"}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    _simulate(monkeypatch, env)
    share = devices.share_gpus(env)
    assert share is not None
    assert env["CUDA_VISIBLE_DEVICES"] == expected


@pytest.mark.parametrize(
    "env",
    [
        {},  # not a worker
        {"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "1"},
    ],
)
def test_nothing_to_share(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    _simulate(monkeypatch, env)
    assert devices.share_gpus(dict(env)) is None


def test_nothing_is_narrowed_once_cuda_is_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2"}
    _simulate(monkeypatch, env)
    monkeypatch.setattr(devices, "_cuda_ready", lambda: False)
    assert devices.share_gpus(env) is None
    assert "CUDA_VISIBLE_DEVICES" not in env


SIMULATE = """
import os

import pytest_composable.devices as devices

_real = devices._count


def _count(device_type):
    if device_type != "cuda":
        return _real(device_type)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return len(visible.split(",")) if visible else 4


devices._count = _count
devices._cuda_ready = lambda: True
"""

TESTS = """
import os

import pytest


@pytest.mark.parametrize("i", range(4))
def test_device(composable_device, i):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    with open(f"seen-{worker}-{i}.txt", "w") as f:
        f.write(f"{composable_device} {os.environ['CUDA_VISIBLE_DEVICES']}")


@pytest.mark.composable(world_size=3)
def test_world_of_three(composable_world):
    pass
"""


def test_a_real_xdist_run_shares_the_gpus_out(pytester: pytest.Pytester) -> None:
    """4 GPUs, 2 workers: each sees two (its share), and a world of 3 does not fit there."""
    pytester.makeconftest(SIMULATE)
    pytester.makepyfile(test_share=TESTS)
    result = pytester.runpytest_subprocess(
        "-n", "2", "--composable-device=cuda", "-rs", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.OK, output_of(result)
    result.assert_outcomes(passed=4, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*composable: 3 ranks on this pytest-xdist worker's share need 3 cuda devices; "
            "this pytest-xdist worker's share has 2"
        ]
    )
    seen = {p.stem: p.read_text() for p in pytester.path.glob("seen-*.txt")}
    by_worker = {stem.split("-")[1]: text for stem, text in seen.items()}
    assert set(by_worker.values()) <= {"cuda:0 0,1", "cuda:0 2,3"}
    for stem, text in seen.items():
        worker = stem.split("-")[1]
        assert text == ("cuda:0 0,1" if worker == "gw0" else "cuda:0 2,3")
