"""Bad device selections and seeds: pytest usage errors (exit code 4) before collection.

Every run here has a suite that uses no fixture at all (one plain test), so the
error must come from ``pytest_configure`` and never from a test. The runs are
in-process: each gets a fresh ``pytest.Config``, and the environment variable
is set with ``monkeypatch`` in this process, where the run reads it.
"""

from __future__ import annotations

import pytest

from tests.helpers import PLAIN_TEST, assert_usage_error, name_devices


def run_plain(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_plain=PLAIN_TEST)
    return pytester.runpytest(*args)


NOT_A_TYPE = "'cdua' is not a device type torch knows; this machine has: cpu, meta"
MISSING = "'cuda' is not available on this machine; this machine has: cpu, meta"
NO_DEVICE = "no device given; this machine has: cpu, meta"


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        ("cli", "cdua", NOT_A_TYPE),
        ("cli", "cuda", MISSING),
        ("cli", "cpu,bogus:x", "'bogus:x' is not a device spec*; this machine has: cpu, meta"),
        ("cli", "cpu:0", "'cpu:0': cpu takes no device index*this machine has: cpu, meta"),
        ("env", "cdua", NOT_A_TYPE),
        ("composable_device", "cpu cuda", MISSING),
        ("composable_devices", "cdua", NOT_A_TYPE),  # the old name still works
        ("cli", "", NO_DEVICE),
        ("env", " , ", NO_DEVICE),
        ("composable_device", "", NO_DEVICE),
        ("composable_devices", "", NO_DEVICE),  # before: ini alone fell back to the default
    ],
    ids=[
        "cli-not-a-type",
        "cli-missing",
        "cli-not-a-spec",
        "cli-cpu-index",
        "env-not-a-type",
        "ini-missing",
        "ini-alias-not-a-type",
        "cli-empty",
        "env-commas",
        "ini-empty",
        "ini-alias-empty",
    ],
)
def test_bad_device_is_a_usage_error(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    spec: str,
    message: str,
) -> None:
    args, where = name_devices(pytester, monkeypatch, source, spec)
    result = run_plain(pytester, *args)
    assert_usage_error(result, f"ERROR: composable: {where}: {message}")


def test_a_long_value_is_quoted_in_part(pytester: pytest.Pytester) -> None:
    result = run_plain(pytester, "--composable-device=" + "x" * 100_000)
    assert_usage_error(
        result, "ERROR: composable: --composable-device: 'xxx*... (100000 characters)*"
    )
    assert max(len(line) for line in result.errlines) < 400


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        ([], "three", "composable_seed ini value 'three' is not an integer from 0 to 2**64 - 1"),
        ([], str(2**64), f"composable_seed ini value '{2**64}' is out of range*"),
        (["--composable-seed=three"], None, "--composable-seed value 'three' is not an integer*"),
        (["--composable-seed=-1"], None, "--composable-seed value '-1' is not an integer*"),
        ([f"--composable-seed={2**64}"], None, f"--composable-seed value '{2**64}' is out of*"),
        # More digits than int() converts: before, its own "Exceeds the limit" text.
        (
            ["--composable-seed=" + "9" * 5000],
            None,
            "--composable-seed value '999*... (5000 characters) is out of*",
        ),
        (["--composable-seed=\u0663"], None, "--composable-seed value '\u0663' is not an int*"),
    ],
    ids=[
        "ini-word",
        "ini-too-big",
        "cli-word",
        "cli-negative",
        "cli-too-big",
        "cli-5000-digits",
        "cli-arabic-indic",
    ],
)
def test_bad_seed_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], ini: str | None, message: str
) -> None:
    """Before: a seed outside [0, 2**64) was a ValueError traceback at fixture setup."""
    if ini is not None:
        pytester.makeini(f"[pytest]\ncomposable_seed = {ini}\n")
    result = run_plain(pytester, *args)
    assert_usage_error(result, f"ERROR: composable: {message}")
    assert max(len(line) for line in result.errlines) < 400


def test_a_5000_digit_world_size_is_out_of_range(pytester: pytest.Pytester) -> None:
    """Before: the message was int()'s own, "Exceeds the limit (4300 digits) ..."."""
    result = run_plain(pytester, "--composable-world-size=" + "9" * 5000)
    assert_usage_error(
        result,
        "ERROR: composable: --composable-world-size: world size 999*... (5000 characters) is "
        "outside 1..1024",
    )
    assert max(len(line) for line in result.errlines) < 400
