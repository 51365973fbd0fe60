"""Report header, lazy torch import, ``-p no:composable``, the help listings, and the
outcome table at the end of the terminal summary.

The runs that check whether torch was imported are subprocesses; the others run
in-process (where torch is always loaded already).
"""

from __future__ import annotations

from collections import Counter
from importlib.metadata import version

import pytest

from pytest_composable._summary import OutcomeSummary, format_table, key_of
from pytest_composable.state import state_of
from tests.helpers import BUILTIN_NAMES, DEVICE_TEST, PLAIN_TEST, verbose_outcomes

TORCH_VERSION = version("torch")

# A conftest (torch-free itself) that records, at the very end of the session,
# whether anything imported torch.
RECORD_TORCH = """
import sys

def pytest_unconfigure(config):
    with open("torch_imported.txt", "w") as f:
        f.write(str("torch" in sys.modules))
"""

# A suite that uses pytest features but none of the plugin's.
UNRELATED_TESTS = """
import pytest

@pytest.fixture
def value():
    return 1

@pytest.mark.parametrize("x", [1, 2])
def test_param(x, value, tmp_path):
    assert x >= value

def test_plain():
    pass
"""


def torch_imported(pytester: pytest.Pytester) -> bool:
    recorded = (pytester.path / "torch_imported.txt").read_text()
    assert recorded in ("True", "False")
    return recorded == "True"


def header(devices_and_seed: str) -> str:
    return f"composable: torch {TORCH_VERSION}, *{devices_and_seed}*"


@pytest.mark.parametrize(
    ("tests", "args", "lines", "imported"),
    [
        (UNRELATED_TESTS, [], [header("devices*default*seed: 0")], False),
        (
            PLAIN_TEST,
            ["--composable-device", "meta", "--composable-seed", "3"],
            [header("meta*seed: 3")],
            True,
        ),
        (
            DEVICE_TEST,
            [],
            [
                header("cpu, meta*seed: 0"),
                "collected 2 items",
                "composable: resolved devices: cpu, meta",
            ],
            True,
        ),
    ],
    ids=["no-plugin-use", "device-named", "fixture-used"],
)
def test_header_and_lazy_torch(
    pytester: pytest.Pytester, tests: str, args: list[str], lines: list[str], imported: bool
) -> None:
    pytester.makeconftest(RECORD_TORCH)
    pytester.makepyfile(test_x=tests)
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(lines)
    assert torch_imported(pytester) is imported


def test_no_composable_disables_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(RECORD_TORCH)
    pytester.makepyfile(test_x=DEVICE_TEST + PLAIN_TEST)
    result = pytester.runpytest_subprocess("-v", "-p", "no:composable")
    assert verbose_outcomes(result) == {
        "test_x.py::test_x": "ERROR",
        "test_x.py::test_a": "PASSED",
    }
    result.stdout.fnmatch_lines(["*fixture 'composable_device' not found*"])
    result.stdout.no_fnmatch_line("composable: torch*")
    assert not torch_imported(pytester)


FIXTURES = (
    "composable_device",
    "composable_seed",
    "composable_model_spec",
    "composable_model",
    "composable_input",
    "composable_batch_size",
    *BUILTIN_NAMES,
)


def test_fixtures_listing_has_every_docstring(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(RECORD_TORCH)
    result = pytester.runpytest_subprocess("--fixtures")
    assert result.ret == pytest.ExitCode.OK
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "from pytest_composable.plugin" in line)
    for name in FIXTURES:
        row = next(i for i, line in enumerate(lines) if line.startswith(f"{name} -- "))
        assert row > start
        doc = lines[row + 1]
        assert doc.startswith("    ")
        assert len(doc.strip()) > 20
        assert "no docstring available" not in doc
    result.stdout.fnmatch_lines(
        [
            "composable_device -- *",
            "    The ``torch.device`` this test runs on*",
        ]
    )
    assert not torch_imported(pytester)


def help_sections(lines: list[str]) -> dict[str, list[str]]:
    """``pytest --help`` split at its unindented ``title:`` lines."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines:
        if line.endswith(":") and not line.startswith(" "):
            current = sections.setdefault(line, [])
        else:
            current.append(line)
    return sections


def test_help_lists_the_options_in_their_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK
    groups = [
        body
        for title, body in help_sections(result.outlines).items()
        if title.startswith("composable")  # titled by whichever module adds to it first
    ]
    assert len(groups) == 1
    group = "\n".join(groups[0])
    for option, text in [
        ("--composable-device=SPEC", "Device(s) the composable fixtures run on"),
        ("--composable-seed=N", "Seed the composable models and inputs"),
    ]:
        assert f"  {option}" in group
        assert text in group
    result.stdout.fnmatch_lines(
        [
            "  composable_device (args):",
            "*Devices the composable fixtures run on*",
            "  composable_devices (args):",
            "*Old name of composable_device*",
            "  composable_seed (string):",
            "*Seed for the composable models*",
        ]
    )


def test_markers_lists_composable(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers", "--strict-markers")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["@pytest.mark.composable(devices=[[]...[]], models=[[]...[]]*"])


def test_header_names_the_devices_once_torch_is_loaded(pytester: pytest.Pytester) -> None:
    """In this process torch is loaded, as where a conftest imports it: the header
    names the devices, and no line after collection repeats them."""
    pytester.makepyfile(test_x=DEVICE_TEST)
    result = pytester.runpytest()
    result.stdout.fnmatch_lines([header("devices (default): cpu, meta, seed: 0")])
    result.stdout.no_fnmatch_line("*resolved devices*")


def test_resolved_devices_line_is_hidden_by_quiet(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure()
    state = state_of(config)
    assert state.collected(0) == []  # nothing resolved yet
    assert [d.type for d in state.selected] == ["cpu", "meta"]
    assert state.collected(0) == ["composable: resolved devices: cpu, meta"]
    assert state.collected(-1) == []


OUTCOMES = """
import pytest

def test_device(composable_device):
    assert composable_device.type == "meta"

@pytest.mark.composable(world_size=[2, 4])
def test_fake(composable_fake_world):
    pass

def test_plain():
    pass
"""


def test_outcome_table_per_device_and_world_size(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x=OUTCOMES)
    result = pytester.runpytest("-k", "test_device or test_plain")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- composable: outcomes per device and world size -*",
            "device  passed  failed",
            "cpu          0       1",
            "meta         1       0",
            "*short test summary info*",
        ]
    )
    quiet = pytester.runpytest("-q", "-k", "test_device")
    quiet.stdout.no_fnmatch_line("*outcomes per device*")
    one_device = pytester.runpytest("--composable-device=meta", "-k", "test_device")
    one_device.stdout.no_fnmatch_line("*outcomes per device*")


def test_outcome_table_adds_up_under_xdist(pytester: pytest.Pytester) -> None:
    """The controller collects nothing: each report carries its key from the worker."""
    pytest.importorskip("xdist")
    pytester.makepyfile(test_x=OUTCOMES)
    result = pytester.runpytest_subprocess(
        "-n", "2", "-p", "xdist", "-k", "test_device or test_fake"
    )
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- composable: outcomes per device and world size -*",
            "device  passed  failed",
            "cpu          2       1",
            "meta         3       0",
            "world size  passed",
            "2                2",
            "4                2",
        ]
    )


def test_outcome_keys_and_counts_of_world_tests(pytester: pytest.Pytester) -> None:
    """Fake world tests collected, not run: their keys, and the rows their reports make."""
    items = pytester.getitems(OUTCOMES)
    keys = {item.name: key_of(item) for item in items}
    assert keys == {
        "test_device[cpu]": ("cpu", None, None),
        "test_device[meta]": ("meta", None, None),
        "test_fake[cpu-ws2]": ("cpu", 2, None),
        "test_fake[cpu-ws4]": ("cpu", 4, None),
        "test_fake[meta-ws2]": ("meta", 2, None),
        "test_fake[meta-ws4]": ("meta", 4, None),
        "test_plain": (None, None, None),
    }
    summary = OutcomeSummary(items[0].config)
    summary.keys = {
        item.nodeid: key for item in items if (key := keys[item.name]) != (None, None, None)
    }
    stats: dict[str, list[object]] = {"passed": [], "failed": [], "": [], "deselected": [object()]}
    for item in items:
        outcome = "failed" if item.name == "test_fake[cpu-ws4]" else "passed"
        stats[outcome].append(
            pytest.TestReport(item.nodeid, item.location, {}, outcome, None, "call")
        )
        # A passed setup has no category: only the call phase counts.
        stats[""].append(pytest.TestReport(item.nodeid, item.location, {}, "passed", None, "setup"))
    assert summary.lines(stats) == [
        "device  passed  failed",
        "cpu          2       1",
        "meta         3       0",
        "world size  passed  failed",
        "2                2       0",
        "4                1       1",
    ]


def test_format_table_aligns_counts_and_orders_outcomes_like_pytest() -> None:
    rows = {"cuda:0": Counter(skipped=2, passed=10), "cpu": Counter(error=1, xfailed=3)}
    assert format_table("device", rows) == [
        "device  passed  error  skipped  xfailed",
        "cuda:0      10      0        2        0",
        "cpu          0      1        0        3",
    ]
