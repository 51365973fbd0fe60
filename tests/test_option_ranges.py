"""The ranges of the values that options, environment variables, ini settings and markers
take, at their bounds.

- A deadline is a number of seconds above 0 and at most ``MAX_TIMEOUT`` (one week),
  written in the digits 0-9, from every channel; everything derived from the bound
  (the process group's timeout, the start-up allowance) fits the ``timedelta``,
  64-bit nanosecond, ``time_t`` and C ``int`` millisecond limits of torch and gloo.
  Before: ``'\\u0663'`` was read as 3 s, 9e9 s hung both ranks in ``all_reduce``, 1e10 and
  1e14 s failed the pool's start with an ``OverflowError``, and a marker's 10**400 was a
  traceback from ``marker.py``.
- A device index of thousands of digits is a usage error (option, environment, ini) and a
  skip (marker), not ``INTERNALERROR> ValueError: Exceeds the limit (4300 digits)``.
- A backend is one torch knows (``torch.distributed.Backend.backend_list``): anything else
  is a usage error at configure (a collection error in a marker) that lists them. Before,
  ``glo`` was accepted, and the first world test failed with ``Unknown backend type glo``.

In-process runs where nothing but the command line, the environment or an ini file is
involved; subprocess runs for real worlds and for a backend registered in a conftest.
"""

from __future__ import annotations

import datetime
import time

import pytest

import pytest_composable.devices as devices
from pytest_composable._options import ascii_digits, decimal_value, digits_value
from pytest_composable.distributed._constants import MAX_TIMEOUT, MIN_START_TIMEOUT
from pytest_composable.distributed._options import parse_backend, parse_timeout
from pytest_composable.distributed._policy import pg_timeout_for
from tests.helpers import (
    PLAIN_TEST,
    assert_no_plugin_frames,
    assert_usage_error,
    name_devices,
    output_of,
)

RANGE = "a number of seconds above 0 and at most 604800 (one week)"
DIGITS = "a number of seconds in the digits 0-9 (such as 120, 0.5 or 1e3)"
BOUND = "604800"
JUST_BELOW = "604799.999"
JUST_ABOVE = "604800.001"
ARABIC_INDIC_THREE = "\u0663"
LONG_INDEX = "1" * 4301  # int() refuses more than 4,300 digits


# Pure logic.


@pytest.mark.parametrize("text", ["0", "7", "0123", "9" * 5000])
def test_ascii_digits_accepts_the_digits_0_to_9(text: str) -> None:
    assert ascii_digits(text)


@pytest.mark.parametrize(
    "text", ["", ARABIC_INDIC_THREE, "\uff13", "\u00b3", "-1", "+1", "1_0", " 1", "1.0", "0x1"]
)
def test_ascii_digits_refuses_anything_else(text: str) -> None:
    assert not ascii_digits(text)


def test_digits_value_never_converts_a_number_longer_than_its_limit() -> None:
    assert digits_value("1024", 1024) == 1024
    assert digits_value("1025", 1024) is None
    assert digits_value("0" * 5000 + "7", 1024) == 7  # leading zeros are not digits of value
    assert digits_value(LONG_INDEX, 2**64 - 1) is None  # no ValueError from int()


@pytest.mark.parametrize(
    ("text", "value"),
    [("120", 120.0), ("0.5", 0.5), (".5", 0.5), ("5.", 5.0), ("1e3", 1e3), ("2.5E-1", 0.25)],
)
def test_decimal_value_reads_decimal_numbers(text: str, value: float) -> None:
    assert decimal_value(text) == value


@pytest.mark.parametrize(
    "text",
    ["", ".", "e3", "1e", "1e+", "-1", "+1", "1_0", "inf", "nan", "1.2.3", ARABIC_INDIC_THREE],
)
def test_decimal_value_refuses_anything_else(text: str) -> None:
    assert decimal_value(text) is None


@pytest.mark.parametrize(
    ("text", "value"), [(BOUND, MAX_TIMEOUT), (JUST_BELOW, 604799.999), ("6.048e5", MAX_TIMEOUT)]
)
def test_timeout_at_and_below_the_bound(text: str, value: float) -> None:
    assert parse_timeout(text) == value


@pytest.mark.parametrize("text", [JUST_ABOVE, "9e9", "1e10", "1e14", "1e400", "0"])
def test_timeout_out_of_range(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a number of seconds above 0 and at most 604800"):
        parse_timeout(text)


@pytest.mark.parametrize("text", [ARABIC_INDIC_THREE, "\uff13", "nan", "inf", "-1", "1_000"])
def test_timeout_not_in_ascii_digits(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a number of seconds in the digits 0-9"):
        parse_timeout(text)


def test_the_bound_fits_every_deadline_derived_from_it() -> None:
    """The spans torch and gloo are given for a test at the bound: its process group's
    timeout and its pool's start-up allowance (the deadline plus a few seconds)."""
    assert MAX_TIMEOUT == 604800.0
    pg = pg_timeout_for(MAX_TIMEOUT)
    assert 0 < pg <= MAX_TIMEOUT
    for span in (pg, MAX_TIMEOUT, MAX_TIMEOUT + MIN_START_TIMEOUT + 60):
        datetime.timedelta(seconds=span)  # no OverflowError
        assert int(span * 1000) <= 2**31 - 1  # a C int of milliseconds
        assert time.monotonic_ns() + int(span * 1e9) < 2**63  # "now" plus it, in nanoseconds
        datetime.datetime.fromtimestamp(time.time() + span)  # an absolute time (time_t)
    for deadline in (1e-9, 0.5, 1.0, 120.0, MAX_TIMEOUT):
        assert 0 < pg_timeout_for(deadline) < deadline


# The timeout's channels.

SETTINGS_TEST = """
import os

from pytest_composable.distributed._options import settings_of

def test_x(request):
    assert settings_of(request.config).timeout == float(os.environ["EXPECTED"])
"""


def _name_timeout(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, value: str
) -> tuple[list[str], str]:
    """Give ``value`` through ``source``: the arguments to run with, and the source's name
    in the plugin's messages."""
    monkeypatch.delenv("PYTEST_COMPOSABLE_TIMEOUT", raising=False)
    if source == "cli":
        return [f"--composable-timeout={value}"], "--composable-timeout"
    if source == "env":
        monkeypatch.setenv("PYTEST_COMPOSABLE_TIMEOUT", value)
        return [], "PYTEST_COMPOSABLE_TIMEOUT"
    pytester.makeini(f"[pytest]\ncomposable_timeout = {value}\n")
    return [], "composable_timeout ini setting"


@pytest.mark.parametrize("value", [BOUND, JUST_BELOW, "1e-9"])
@pytest.mark.parametrize("source", ["cli", "env", "ini"])
def test_timeout_in_range_from_each_channel(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, value: str
) -> None:
    args, _ = _name_timeout(pytester, monkeypatch, source, value)
    monkeypatch.setenv("EXPECTED", value)
    pytester.makepyfile(test_settings=SETTINGS_TEST)
    pytester.runpytest(*args).assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (JUST_ABOVE, RANGE),
        ("9e9", RANGE),
        ("1e10", RANGE),
        ("1e14", RANGE),
        (ARABIC_INDIC_THREE, DIGITS),
    ],
)
@pytest.mark.parametrize("source", ["cli", "env", "ini"])
def test_timeout_out_of_range_from_each_channel(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, value: str, why: str
) -> None:
    """A usage error naming the channel and the range (or the digits); before,
    ``'\\u0663'`` was 3 s, and the others failed or hung the first world test."""
    args, where = _name_timeout(pytester, monkeypatch, source, value)
    pytester.makepyfile(test_plain=PLAIN_TEST)
    assert_usage_error(
        pytester.runpytest(*args), f"ERROR: composable: {where}: timeout {value!r} is not {why}"
    )


@pytest.mark.parametrize("value", ["604800", "604800.0", "604799.999", "1e-9"])
def test_marker_timeout_in_range(pytester: pytest.Pytester, value: str) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        from pytest_composable.marker import read_marker

        @pytest.mark.composable(timeout={value})
        def test_x(request):
            assert read_marker(request.node).timeout == {value}
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("604800.001", "604800.001"),
        ("604801", "604801"),
        ("1e300", "1e+300"),
        ("10**400", "1000*... (401 characters)"),
        ("True", "True"),
        ("0", "0"),
    ],
)
def test_marker_timeout_out_of_range(pytester: pytest.Pytester, value: str, shown: str) -> None:
    """A collection error naming the test; before, 1e300 failed the pool's start with
    ``OverflowError`` and 10**400 was an ``OverflowError`` traceback from ``marker.py``."""
    pytester.makepyfile(
        test_marker=f"""
import pytest

@pytest.mark.composable(timeout={value})
def test_x(composable_world):
    pass
"""
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED, output_of(result)
    result.stdout.fnmatch_lines(
        [f"*test_marker.py::test_x: composable(timeout=...) takes {RANGE}, got {shown}"]
    )
    assert_no_plugin_frames(result)
    assert max(len(line) for line in result.outlines) < 600


WORLD_AT_THE_BOUND = """
import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.composable(devices=["cpu"])


def _all_reduce():
    value = torch.ones(1)
    dist.all_reduce(value)
    assert value.item() == 2


@pytest.mark.composable(timeout=604800)
def test_marker_bound(composable_world):
    _all_reduce()


def test_option_bound(composable_world):
    _all_reduce()
"""


def test_worlds_run_at_the_bound(pytester: pytest.Pytester) -> None:
    """A real world at the bound, from the marker and from the option, with pytest-timeout's
    timer far above it (taken over: the smaller deadline wins, so it is bounded too):
    the collectives work and nothing overflows. Before, 9e9 s hung the ``all_reduce``."""
    pytester.makepyfile(test_bound=WORLD_AT_THE_BOUND)
    result = pytester.runpytest_subprocess(
        f"--composable-timeout={BOUND}", "-p", "timeout", "--timeout=1e300"
    )
    result.assert_outcomes(passed=2)
    assert "Error" not in output_of(result)


# Device indices of any length.


def _simulate_two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    real_count = devices._count
    monkeypatch.setattr(devices, "_count", lambda t: 2 if t == "cuda" else real_count(t))
    monkeypatch.setattr(devices, "_cuda_ready", lambda: False)


@pytest.mark.parametrize("source", ["cli", "env", "composable_device"])
def test_a_4301_digit_device_index_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """Before: ``INTERNALERROR> ValueError: Exceeds the limit (4300 digits)``."""
    _simulate_two_gpus(monkeypatch)
    args, where = name_devices(pytester, monkeypatch, source, f"cuda:{LONG_INDEX}")
    pytester.makepyfile(test_plain=PLAIN_TEST)
    result = pytester.runpytest(*args)
    assert_usage_error(
        result,
        f"ERROR: composable: {where}: 'cuda:111*'... (4306 characters) is not available on "
        "this machine; this machine has: cpu, meta, cuda:0, cuda:1",
    )
    assert max(len(line) for line in result.errlines) < 400


def test_a_4301_digit_device_index_in_a_marker_skips(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marker's promise for a device this machine lacks: a skip with the reason, cut
    like the options' messages (test id included). Before: a traceback."""
    _simulate_two_gpus(monkeypatch)
    pytester.makepyfile(
        test_marker=f"""
import pytest

@pytest.mark.composable(devices=["cuda:{LONG_INDEX}", "cuda:1"])
def test_x(composable_device):
    assert str(composable_device) == "cuda:1"
"""
    )
    result = pytester.runpytest("-rs", "--composable-device=all")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED * composable: cuda:111*... (4306 characters) is not available on this "
            "machine; this machine has: cpu, meta, cuda:0, cuda:1"
        ]
    )
    assert_no_plugin_frames(result)
    assert max(len(line) for line in result.outlines) < 600


# Backends.


def test_parse_backend_reads_as_torch_does() -> None:
    assert parse_backend(" GLOO ") == "gloo"
    assert parse_backend("cpu:gloo,cuda:NCCL") == "cpu:gloo,cuda:nccl"
    for bad in ("glo", "", "undefined", "gl oo", "cpu:", ":gloo", "cpu:glo,cuda:nccl"):
        with pytest.raises(ValueError, match="is not a backend torch knows; known backends: gloo"):
            parse_backend(bad)


BACKEND_TEST = """
import os

from pytest_composable.distributed._options import settings_of

def test_x(request):
    assert settings_of(request.config).backend == os.environ["EXPECTED"]
"""


def _name_backend(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, value: str
) -> tuple[list[str], str]:
    monkeypatch.delenv("PYTEST_COMPOSABLE_BACKEND", raising=False)
    if source == "cli":
        return [f"--composable-backend={value}"], "--composable-backend"
    if source == "env":
        monkeypatch.setenv("PYTEST_COMPOSABLE_BACKEND", value)
        return [], "PYTEST_COMPOSABLE_BACKEND"
    pytester.makeini(f"[pytest]\ncomposable_backend = {value}\n")
    return [], "composable_backend ini setting"


@pytest.mark.parametrize("source", ["cli", "env", "ini"])
def test_unknown_backend_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """At configure, before collection, listing the backends torch knows; before, ``glo``
    was accepted and the first world test failed with ``Unknown backend type glo``."""
    args, where = _name_backend(pytester, monkeypatch, source, "glo")
    pytester.makepyfile(test_plain=PLAIN_TEST)
    assert_usage_error(
        pytester.runpytest(*args),
        f"ERROR: composable: {where}: backend 'glo' is not a backend torch knows; known "
        "backends: gloo, nccl*",
    )


@pytest.mark.parametrize("source", ["cli", "env", "ini"])
def test_known_backend_from_each_channel(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    args, _ = _name_backend(pytester, monkeypatch, source, "Gloo")
    monkeypatch.setenv("EXPECTED", "gloo")  # as torch reads it
    pytester.makepyfile(test_settings=BACKEND_TEST)
    pytester.runpytest(*args).assert_outcomes(passed=1)


REGISTERS_A_BACKEND = """
import torch.distributed as dist

def _create(*args):
    raise AssertionError("never made: no world test uses it")

dist.Backend.register_backend("composabletest", _create, devices=["cpu"])
"""


def test_a_registered_backend_is_known(pytester: pytest.Pytester) -> None:
    """A backend registered with ``dist.Backend.register_backend`` (in a conftest pytest
    loads at start-up) is accepted by the option and the marker, and listed where an
    unknown one is refused. A subprocess: registering changes torch for good."""
    pytester.makeconftest(REGISTERS_A_BACKEND)
    pytester.makepyfile(
        test_marker="""
import pytest

from pytest_composable.marker import read_marker

@pytest.mark.composable(backend="composabletest")
def test_x(request):
    assert read_marker(request.node).backend == "composabletest"
"""
    )
    result = pytester.runpytest_subprocess("--composable-backend=composabletest")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess("--composable-backend=composabletes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output_of(result)
    result.stderr.fnmatch_lines(["*known backends: gloo, nccl*, composabletest"])


def test_unknown_backend_in_a_marker_is_a_collection_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marker="""
import pytest

@pytest.mark.composable(backend="glo")
def test_x():
    pass

def test_innocent():
    pass
"""
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED, output_of(result)
    result.stdout.fnmatch_lines(
        [
            "*test_marker.py::test_x: composable(backend=...): 'glo' is not a backend torch "
            "knows; known backends: gloo, nccl*"
        ]
    )
    assert_no_plugin_frames(result)
