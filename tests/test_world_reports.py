"""A world test's merged report: the failing rank's own error, and the rank, on one line.

The merge is tested in-process on real reports of real failures (made by an
in-process run, as a rank makes them); one real two-rank world run checks the
short summary, ``--tb=line`` and the JUnit XML message end to end.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pytest_composable.distributed._reports import failure, merge_phase
from tests.helpers import assert_no_plugin_frames

RANK_TESTS = """
import pytest

def test_passes():
    pass

def test_rank_one_fails():
    rank = 1
    assert rank != 1, "only rank one fails"

def test_other_error():
    raise ValueError("another message")

def test_skips():
    pytest.skip("nothing to do")

def test_fails_without_traceback():
    pytest.fail("a plain failure", pytrace=False)
"""


@pytest.fixture
def rank_reports(pytester: pytest.Pytester) -> dict[str, pytest.TestReport]:
    """The call-phase report of each test in ``RANK_TESTS``, by test name."""
    pytester.makepyfile(test_rank=RANK_TESTS)
    recorded = pytester.inline_run("-p", "no:composable")
    reports = recorded.getreports("pytest_runtest_logreport")
    return {r.nodeid.split("::")[1]: r for r in reports if r.when == "call"}


@pytest.fixture
def item(pytester: pytest.Pytester) -> pytest.Item:
    return pytester.getitem("def test_world():\n    pass\n", funcname="test_world")


def merge_two(
    item: pytest.Item, rank_reports: dict[str, pytest.TestReport], rank0: str, rank1: str
) -> pytest.TestReport:
    """The call phase of ``item`` in a world of two, each rank reporting the named test."""
    return merge_phase(item, "call", {0: rank_reports[rank0], 1: rank_reports[rank1]}, 2)


def crash_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    assert crash is not None, report.longrepr
    message: str = crash.message
    return message


def test_one_failing_rank_gives_its_error_and_the_rank(
    item: pytest.Item, rank_reports: dict[str, pytest.TestReport]
) -> None:
    merged = merge_two(item, rank_reports, "test_passes", "test_rank_one_fails")
    assert merged.failed
    message = crash_message(merged)
    assert message.splitlines()[0] == "AssertionError: only rank one fails (rank 1 of 2)"
    assert "assert 1 != 1" in message
    crash = str(getattr(merged.longrepr, "reprcrash", None))
    assert crash.startswith(f"{item.path.parent / 'test_rank.py'}:8: AssertionError")
    text = merged.longreprtext
    assert text.startswith("composable: call failed on rank(s) 1 of 2\ncomposable: rank 0 passed")
    assert "rank 1 ______" in text
    assert "only rank one fails" in text


@pytest.mark.parametrize(
    ("rank0", "rank1", "first_line"),
    [
        (
            "test_rank_one_fails",
            "test_rank_one_fails",
            "AssertionError: only rank one fails (ranks 0, 1 of 2)",
        ),
        (
            "test_other_error",
            "test_rank_one_fails",
            "ValueError: another message (rank 0 of 2; also failed: 1)",
        ),
        ("test_passes", "test_fails_without_traceback", "Failed: a plain failure (rank 1 of 2)"),
    ],
    ids=["same-error", "other-errors", "no-traceback"],
)
def test_several_failing_ranks(
    item: pytest.Item,
    rank_reports: dict[str, pytest.TestReport],
    rank0: str,
    rank1: str,
    first_line: str,
) -> None:
    merged = merge_two(item, rank_reports, rank0, rank1)
    assert crash_message(merged).splitlines()[0] == first_line


def test_ranks_that_disagree_without_failing(
    item: pytest.Item, rank_reports: dict[str, pytest.TestReport]
) -> None:
    merged = merge_two(item, rank_reports, "test_passes", "test_skips")
    assert merged.failed
    assert crash_message(merged) == (
        "composable: the ranks disagree in call (a test passes only if every rank passes)"
    )
    assert "composable: rank 1 skipped: Skipped: nothing to do" in merged.longreprtext


def test_passing_ranks_merge_into_a_pass(
    item: pytest.Item, rank_reports: dict[str, pytest.TestReport]
) -> None:
    merged = merge_two(item, rank_reports, "test_passes", "test_passes")
    assert merged.passed


def test_a_failure_of_the_world_itself_has_its_first_line_as_crash_line(
    item: pytest.Item,
) -> None:
    report = failure(item, "call", "composable: timed out after 4 s\nrank stacks follow")
    crash = str(getattr(report.longrepr, "reprcrash", None))
    assert crash == f"{item.path}:1: composable: timed out after 4 s"
    assert report.longreprtext == "composable: timed out after 4 s\nrank stacks follow"


def test_tb_line_shows_the_failing_ranks_own_lines_only(
    item: pytest.Item, rank_reports: dict[str, pytest.TestReport]
) -> None:
    item.config.option.tbstyle = "line"
    merged = merge_two(item, rank_reports, "test_passes", "test_rank_one_fails")
    assert "composable:" not in merged.longreprtext
    assert crash_message(merged).startswith("AssertionError: only rank one fails (rank 1 of 2)")


def test_the_crash_line_survives_serialization(
    item: pytest.Item, rank_reports: dict[str, pytest.TestReport]
) -> None:
    """As pytest-xdist sends reports from its workers."""
    merged = merge_two(item, rank_reports, "test_passes", "test_rank_one_fails")
    hook = item.config.hook
    data = hook.pytest_report_to_serializable(config=item.config, report=merged)
    back = hook.pytest_report_from_serializable(config=item.config, data=data)
    assert crash_message(back) == crash_message(merged)
    assert back.longreprtext == merged.longreprtext


WORLD_TEST = """
def test_x(composable_world):
    assert composable_world.rank != 1
"""


def test_failing_world_test_reports_the_error_and_rank(pytester: pytest.Pytester) -> None:
    """Before: ``FAILED test_x.py::test_x[cpu] - composable: call failed on rank(s) 1 of 2``,
    a multi-line block and a cut-off line under ``--tb=line``, and the whole merged text
    as the JUnit message."""
    pytester.makepyfile(test_x=WORLD_TEST)
    result = pytester.runpytest_subprocess(
        "--composable-device=cpu", "-rA", "--tb=line", "--junitxml=junit.xml"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E   AssertionError: assert 1 != 1",
            "*/test_x.py:2: AssertionError: assert 1 != 1 (rank 1 of 2)",
            "*short test summary info*",
            "FAILED test_x.py::test_x[[]cpu[]] - AssertionError: assert 1 != 1 (rank 1 of 2)",
        ]
    )
    result.stdout.no_fnmatch_line("composable: call failed*")
    assert_no_plugin_frames(result)
    failure_element = ET.parse(pytester.path / "junit.xml").find(".//failure")
    assert failure_element is not None
    message = failure_element.get("message", "")
    assert message.splitlines()[0] == "AssertionError: assert 1 != 1 (rank 1 of 2)"
