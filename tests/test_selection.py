"""Device selection: ``--composable-device`` > ``PYTEST_COMPOSABLE_DEVICE`` > ini > default.

The precedence matrix only collects (``--collect-only``), so it runs in-process:
each run gets a fresh ``pytest.Config``, and the environment variable is set
with ``monkeypatch`` in this process, where the run reads it. The variable's
way into a real subprocess and pytest-xdist workers is checked in
``tests/test_simulated_accelerators.py``.
"""

from __future__ import annotations

import pytest

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
        ([], None, "composable_device = meta", ["meta"]),
        ([], None, "composable_device = meta cpu", ["meta", "cpu"]),
        ([], None, "composable_device = meta,cpu", ["meta", "cpu"]),
        ([], None, "composable_device = all", ["cpu", "meta"]),
        ([], None, "composable_devices = meta", ["meta"]),
        ([], None, "composable_devices = meta\ncomposable_device = cpu", ["cpu"]),
        (["--composable-device=meta"], "cpu", "composable_device = cpu", ["meta"]),
        (["--composable-device=meta"], None, "composable_device = cpu", ["meta"]),
        ([], "meta", "composable_device = cpu", ["meta"]),
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
        "ini-old-name",
        "ini-new-name-over-old",
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
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_x=DEVICE_TEST)
    result = pytester.runpytest("--collect-only", "-q", *args)
    assert result.ret == pytest.ExitCode.OK
    assert collected_ids(result) == [f"test_x.py::test_x[{d}]" for d in devices]
