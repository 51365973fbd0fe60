"""Device selection: ``--composable-device`` > ``PYTEST_COMPOSABLE_DEVICE`` > ini > default.

The precedence matrix only collects (``--collect-only``), so it runs in-process:
each run gets a fresh ``pytest.Config``, and the environment variable is set
with ``monkeypatch`` in this process, where the run reads it. The last test
checks the same through a real subprocess and pytest-xdist.
"""

from __future__ import annotations

import pytest

# Imported here, before any in-process run: pytester drops the modules a run
# imported when it ends, and torch cannot be imported twice in one process.
import pytest_composable.devices  # noqa: F401
from tests.helpers import DEVICE_ENV, DEVICE_TEST, collected_ids


@pytest.mark.parametrize(
    ("args", "env", "ini", "devices"),
    [
        ([], None, None, ["cpu", "meta"]),
        (["--composable-device", "meta"], None, None, ["meta"]),
        (
            ["--composable-device", "meta", "--composable-device", "cpu"],
            None,
            None,
            ["meta", "cpu"],
        ),
        (["--composable-device=meta,cpu"], None, None, ["meta", "cpu"]),
        (
            ["--composable-device=cpu, meta,cpu", "--composable-device=META"],
            None,
            None,
            ["cpu", "meta"],
        ),
        (["--composable-device=all"], None, None, ["cpu", "meta"]),
        ([], "meta", None, ["meta"]),
        ([], "meta, cpu", None, ["meta", "cpu"]),
        ([], None, "meta", ["meta"]),
        ([], None, "meta cpu", ["meta", "cpu"]),
        ([], None, "meta,cpu", ["meta", "cpu"]),
        ([], None, "all", ["cpu", "meta"]),
        (["--composable-device=meta"], "cpu", "cpu", ["meta"]),
        (["--composable-device=meta"], None, "cpu", ["meta"]),
        ([], "meta", "cpu", ["meta"]),
    ],
    ids=[
        "default",
        "cli",
        "cli-repeated",
        "cli-comma-list",
        "cli-duplicates-and-case",
        "cli-all",
        "env",
        "env-comma-list",
        "ini",
        "ini-space-list",
        "ini-comma-list",
        "ini-all",
        "cli-over-env-and-ini",
        "cli-over-ini",
        "env-over-ini",
    ],
)
def test_selection_precedence(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: str | None,
    ini: str | None,
    devices: list[str],
) -> None:
    if env is not None:
        monkeypatch.setenv(DEVICE_ENV, env)
    if ini is not None:
        pytester.makeini(f"[pytest]\ncomposable_devices = {ini}\n")
    pytester.makepyfile(test_x=DEVICE_TEST)
    result = pytester.runpytest("--collect-only", "-q", *args)
    assert result.ret == pytest.ExitCode.OK
    assert collected_ids(result) == [f"test_x.py::test_x[{d}]" for d in devices]


def test_env_reaches_a_subprocess_and_xdist_runs_on_cpu(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ``-n 2`` run: both workers see the same cpu-only selection."""
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    pytester.makepyfile(
        test_models="""
import torch

def test_model(composable_model, composable_input, composable_device):
    assert composable_device == torch.device("cpu")
    assert composable_model(composable_input).shape[0] == 4
"""
    )
    result = pytester.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*2 workers*"])
