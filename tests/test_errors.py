"""Bad device selections and seeds: pytest usage errors (exit code 4) before collection.

Every run here has a suite that uses no fixture at all (one plain test), so the
error must come from ``pytest_configure`` and never from a test.
"""

from __future__ import annotations

import pytest

from tests.helpers import DEVICE_ENV, PLAIN_TEST, assert_usage_error


def run_plain(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_plain=PLAIN_TEST)
    return pytester.runpytest_subprocess(*args)


NOT_A_TYPE = "'cdua' is not a device type torch knows; this machine has: cpu, meta"
MISSING = "'cuda' is not available on this machine; this machine has: cpu, meta"


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        ("cli", "cdua", NOT_A_TYPE),
        ("cli", "cuda", MISSING),
        ("cli", "cpu,bogus:x", "'bogus:x' is not a device spec*; this machine has: cpu, meta"),
        ("cli", "cpu:0", "'cpu:0'*this machine has: cpu, meta"),
        ("env", "cdua", NOT_A_TYPE),
        ("ini", "cpu cuda", MISSING),
    ],
)
def test_bad_device_is_a_usage_error(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    spec: str,
    message: str,
) -> None:
    args: list[str] = []
    if source == "cli":
        args = [f"--composable-device={spec}"]
        where = "--composable-device"
    elif source == "env":
        monkeypatch.setenv(DEVICE_ENV, spec)
        where = DEVICE_ENV
    else:
        pytester.makeini(f"[pytest]\ncomposable_devices = {spec}\n")
        where = "composable_devices*"
    result = run_plain(pytester, *args)
    assert_usage_error(result, f"ERROR: composable: {where}: {message}*")


def test_cpu_index_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run_plain(pytester, "--composable-device", "cpu:0")
    assert_usage_error(result, "ERROR: composable: *'cpu:0'*cpu takes no device index*")


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--composable-device="], None), ([], " , ")],
    ids=["cli-empty", "env-commas"],
)
def test_empty_selection_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str], env: str | None
) -> None:
    if env is not None:
        monkeypatch.setenv(DEVICE_ENV, env)
    result = run_plain(pytester, *args)
    assert_usage_error(result, "ERROR: composable: *no device given; this machine has: cpu, meta")


def test_bad_ini_seed_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ncomposable_seed = three\n")
    result = run_plain(pytester)
    assert_usage_error(result, "ERROR: composable: composable_seed ini value 'three'*integer*")


def test_bad_cli_seed_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run_plain(pytester, "--composable-seed=three")
    assert_usage_error(result, "*--composable-seed*'three'*")
