"""Bad distributed settings are usage errors (exit 4, the source and value named, no
traceback); bad markers are collection errors naming the test."""

from __future__ import annotations

import pytest

import pytest_composable.devices  # noqa: F401 - torch, imported once, before in-process runs
from tests.helpers import assert_no_plugin_frames, assert_usage_error, output_of

WORLD_TEST = "def test_x(composable_fake_world):\n    pass\n"
RANGE = "a number of seconds above 0 and at most 604800 (one week)"
DIGITS = "a number of seconds in the digits 0-9 (such as 120, 0.5 or 1e3)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--composable-world-size=0"],
            "*--composable-world-size: world size 0 is outside 1..1024",
        ),
        (
            ["--composable-world-size=-2"],
            "*--composable-world-size: world size '-2' is not a whole*",
        ),
        (["--composable-world-size=1025"], "*world size 1025 is outside 1..1024"),
        (["--composable-world-size=two"], "*world size 'two' is not a whole number"),
        (["--composable-timeout=0"], f"*--composable-timeout: timeout '0' is not {RANGE}*"),
        (["--composable-timeout=-1"], f"*timeout '-1' is not {DIGITS}"),
        (["--composable-timeout=nan"], f"*timeout 'nan' is not {DIGITS}"),
        (["--composable-timeout=inf"], f"*timeout 'inf' is not {DIGITS}"),
        (["--composable-timeout=soon"], f"*timeout 'soon' is not {DIGITS}"),
        (["--composable-timeout=1e10"], f"*timeout '1e10' is not {RANGE}*"),
        (["--composable-backend="], "*--composable-backend: backend '' is not a backend torch*"),
        (["--composable-backend=gl oo"], "*backend 'gl oo' is not a backend torch knows; known*"),
        (
            ["--composable-start=lukewarm"],
            "*--composable-start: start mode 'lukewarm' is not one of warm, cold",
        ),
    ],
)
def test_bad_options(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(WORLD_TEST)
    assert_usage_error(pytester.runpytest(*args), f"ERROR: composable: {message}")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("env-world-size", "*PYTEST_COMPOSABLE_WORLD_SIZE: world size 0 is outside 1..1024"),
        ("ini-world-size", "*composable_world_size ini setting: world size 0 is outside*"),
        ("env-timeout", f"*PYTEST_COMPOSABLE_TIMEOUT: timeout 'nan' is not {DIGITS}"),
        ("ini-timeout", f"*composable_timeout ini setting: timeout 'inf' is not {DIGITS}"),
        ("env-start", "*PYTEST_COMPOSABLE_START: start mode 'hot' is not one of warm, cold"),
        ("ini-start", "*composable_start ini setting: start mode 'tepid' is not one of*"),
    ],
)
def test_bad_env_and_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, message: str
) -> None:
    pytester.makepyfile(WORLD_TEST)
    for name in (
        "PYTEST_COMPOSABLE_WORLD_SIZE",
        "PYTEST_COMPOSABLE_TIMEOUT",
        "PYTEST_COMPOSABLE_START",
    ):
        monkeypatch.delenv(name, raising=False)  # each case tests one source alone
    if source == "env-world-size":
        monkeypatch.setenv("PYTEST_COMPOSABLE_WORLD_SIZE", "0")
    elif source == "env-timeout":
        monkeypatch.setenv("PYTEST_COMPOSABLE_TIMEOUT", "nan")
    elif source == "env-start":
        monkeypatch.setenv("PYTEST_COMPOSABLE_START", "hot")
    elif source == "ini-start":
        pytester.makeini("[pytest]\ncomposable_start = tepid\n")
    elif source == "ini-world-size":
        pytester.makeini("[pytest]\ncomposable_world_size = 0\n")
    else:
        pytester.makeini("[pytest]\ncomposable_timeout = inf\n")
    assert_usage_error(pytester.runpytest(), f"ERROR: composable: {message}")


def test_precedence_cli_env_ini(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Command line > environment > ini > default, for the world size (and so the timeout,
    which is read by the same code)."""
    pytester.makeini("[pytest]\ncomposable_world_size = 3\n")
    # In-process runs, torch-free: the settings the fixtures would use are read directly.
    pytester.makepyfile(
        """
        import os

        from pytest_composable.distributed._options import settings_of

        def test_x(request):
            assert settings_of(request.config).world_size == int(os.environ["EXPECTED"])
        """
    )
    monkeypatch.setenv("EXPECTED", "3")
    pytester.runpytest().assert_outcomes(passed=1)
    monkeypatch.setenv("PYTEST_COMPOSABLE_WORLD_SIZE", "5")
    monkeypatch.setenv("EXPECTED", "5")
    pytester.runpytest().assert_outcomes(passed=1)
    monkeypatch.setenv("EXPECTED", "7")
    pytester.runpytest("--composable-world-size=7").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("world_size=0", "composable(world_size=...) takes integers from 1 to 1024, got 0"),
        ("world_size=-2", "composable(world_size=...) takes integers from 1 to 1024, got -2"),
        ("world_size=[]", "composable(world_size=...) is empty"),
        ("world_size=2000", "composable(world_size=...) takes integers from 1 to 1024, got 2000"),
        ("world_size=[1, 1025]", "composable(world_size=...) takes integers from 1 to 1024*1025"),
        ("timeout=float('nan')", f"composable(timeout=...) takes {RANGE}, got nan"),
        ("timeout=float('inf')", f"composable(timeout=...) takes {RANGE}, got inf"),
        ("timeout=-1", f"composable(timeout=...) takes {RANGE}, got -1"),
        ("timeout=1e300", f"composable(timeout=...) takes {RANGE}, got 1e+300"),
        ("timeout=10**400", f"composable(timeout=...) takes {RANGE}, got 1000*(401 characters)"),
        ("backend='glo'", "composable(backend=...): 'glo' is not a backend torch knows; known*"),
        ("world_size=2, rank=2", "composable(rank=2) is not below world size 2"),
        ("world_size=[4, 2], rank=3", "composable(rank=3) is not below world size 2"),
        ("rank=16", "composable(rank=16) is not below world size 2"),  # the session's
        ("rank=10**400", "composable(rank=1000*... (401 characters)) is not below world size 2"),
        ("backend=''", "composable(backend=...) takes a backend name, got ''"),
        ("backend=3", "composable(backend=...) takes a backend name, got 3"),
    ],
)
@pytest.mark.parametrize("fixture", ["composable_world", "composable_fake_world", ""])
def test_bad_marker_is_a_collection_error(
    pytester: pytest.Pytester, marker: str, message: str, fixture: str
) -> None:
    """On a world test and on a test that uses no world fixture alike (before, the latter
    accepted ``world_size=[1, 1025]``, ``rank=16`` and any backend silently); a value
    thousands of digits long is cut in the message."""
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.composable({marker})
        def test_x({fixture}):
            pass

        def test_innocent():
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED, output_of(result)
    result.stdout.fnmatch_lines([f"*test_bad_marker_is_a_collection_error.py::test_x: {message}"])
    assert_no_plugin_frames(result)
    assert max(len(line) for line in result.outlines) < 600
