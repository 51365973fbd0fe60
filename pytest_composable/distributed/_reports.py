"""Merging the reports of every rank into one report per test phase (torch-free).

A phase passes only if every rank passed it; it is skipped only if every rank
skipped it; otherwise it fails, naming the failing ranks and showing each
failing rank's own traceback.

A failed report's long representation is pytest's own exception
representation holding the text as a native traceback, with a crash line: the
first failing rank's error and the rank (``AssertionError: ... (rank 1 of 2)``).
The short summary, ``--tb=line`` and the JUnit XML ``message`` read that line,
and pytest-xdist carries it from its workers, which it would not for a plain
string or an object of another class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from _pytest._code.code import ReprExceptionInfo, ReprFileLocation, ReprTracebackNative

__all__ = [
    "PHASES",
    "crash_line",
    "failure",
    "merge_phase",
    "merge_reports",
    "passed",
    "serialize",
    "unserialize",
]

PHASES = ("setup", "call", "teardown")


def serialize(config: pytest.Config, report: pytest.TestReport) -> dict[str, Any]:
    data: dict[str, Any] = config.hook.pytest_report_to_serializable(config=config, report=report)
    return data


def unserialize(config: pytest.Config, data: dict[str, Any]) -> pytest.TestReport:
    report: pytest.TestReport = config.hook.pytest_report_from_serializable(
        config=config, data=data
    )
    return report


def _ranks(ranks: Sequence[int]) -> str:
    return ", ".join(str(r) for r in ranks)


def _sections(per_rank: Mapping[int, pytest.TestReport]) -> list[tuple[str, str]]:
    return [
        (f"{title} (rank {rank})", content)
        for rank, report in sorted(per_rank.items())
        for title, content in report.sections
    ]


def _report(
    item: pytest.Item, when: str, outcome: str, longrepr: Any, **extra: Any
) -> pytest.TestReport:
    return pytest.TestReport(
        item.nodeid,
        item.location,
        {k: 1 for k in item.keywords},
        outcome,  # type: ignore[arg-type]
        longrepr,
        when,  # type: ignore[arg-type]
        **extra,
    )


def _location(item: pytest.Item) -> tuple[str, int]:
    return str(item.path), (item.location[1] or 0) + 1


def _longrepr(text: str, crash: ReprFileLocation) -> ReprExceptionInfo:
    lines = [text if not text or text.endswith("\n") else text + "\n"]
    return ReprExceptionInfo(reprtraceback=ReprTracebackNative(lines), reprcrash=crash)


def failure(
    item: pytest.Item,
    when: str,
    text: str,
    duration: float = 0.0,
    crash: ReprFileLocation | None = None,
    brief: str = "",
    **extra: Any,
) -> pytest.TestReport:
    """A failed report for ``item`` showing ``text``; its crash line is ``crash``, or
    else the first line of ``text`` at the test's location.

    Under ``--tb=line`` it shows ``brief`` instead (the failing ranks' own
    line-style reports), before the crash line, as pytest does for a test of its own.
    """
    if crash is None:
        path, lineno = _location(item)
        crash = ReprFileLocation(path, lineno, text.strip().partition("\n")[0])
    if getattr(item.config.option, "tbstyle", "auto") == "line":
        text = brief
    return _report(item, when, "failed", _longrepr(text, crash), duration=duration, **extra)


def _crash(report: pytest.TestReport) -> ReprFileLocation | None:
    crash = getattr(report.longrepr, "reprcrash", None)
    return crash if isinstance(crash, ReprFileLocation) else None


def crash_line(
    item: pytest.Item,
    per_rank: Mapping[int, pytest.TestReport],
    failed: Sequence[int],
    world_size: int,
) -> ReprFileLocation:
    """The crash line of ``failed[0]`` (the root cause), its first line ending with the rank:
    ``AssertionError: boom (rank 1 of 2)``, or ``(ranks 0, 1 of 2)`` when more failed
    with the same message, or ``(rank 0 of 2; also failed: 1)`` with another one."""
    first = per_rank[failed[0]]
    crash = _crash(first)
    if crash is not None:
        path, lineno, message = crash.path, crash.lineno, crash.message
    else:
        path, lineno = _location(item)
        message = next((line for line in first.longreprtext.splitlines() if line.strip()), "")
    head, newline, rest = message.partition("\n")
    same = all(
        (c.message if r in per_rank and (c := _crash(per_rank[r])) is not None else None) == message
        for r in failed[1:]
    )
    if len(failed) == 1:
        where = f"rank {failed[0]} of {world_size}"
    elif same:
        where = f"ranks {_ranks(failed)} of {world_size}"
    else:
        where = f"rank {failed[0]} of {world_size}; also failed: {_ranks(failed[1:])}"
    return ReprFileLocation(path, lineno, f"{head} ({where}){newline}{rest}")


def passed(item: pytest.Item, when: str) -> pytest.TestReport:
    """A passed report for ``item`` (stands in for a phase the ranks could not report)."""
    return _report(item, when, "passed", None)


def merge_phase(
    item: pytest.Item,
    when: str,
    per_rank: Mapping[int, pytest.TestReport],
    world_size: int,
    order: Sequence[int] = (),
) -> pytest.TestReport:
    """One report for ``when`` out of each rank's report of it. The failing ranks of
    ``order`` (the root cause first) lead the report and give its crash line; the
    others follow in rank order."""
    outcomes = {rank: report.outcome for rank, report in per_rank.items()}
    first = per_rank[min(per_rank)]
    duration = max(report.duration for report in per_rank.values())
    properties = [p for _, report in sorted(per_rank.items()) for p in report.user_properties]
    missing = [r for r in range(world_size) if r not in per_rank]
    if len(set(outcomes.values())) == 1 and first.outcome != "failed" and not missing:
        merged = _report(
            item,
            when,
            first.outcome,
            first.longrepr,
            sections=_sections(per_rank),
            duration=duration,
            start=first.start,
            stop=first.stop,
            user_properties=properties,
        )
        if hasattr(first, "wasxfail"):
            merged.wasxfail = first.wasxfail
        return merged
    failed = sorted(
        (r for r, o in outcomes.items() if o == "failed"),
        key=lambda r: (order.index(r) if r in order else len(order), r),
    )
    lines = []
    if failed:
        lines.append(f"composable: {when} failed on rank(s) {_ranks(failed)} of {world_size}")
    else:
        lines.append(
            f"composable: the ranks disagree in {when} (a test passes only if every rank passes)"
        )
    others = sorted(r for r, o in outcomes.items() if o != "failed")
    for rank in others:
        report = per_rank[rank]
        detail = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            detail = f": {report.longrepr[2]}"
        lines.append(f"composable: rank {rank} {report.outcome}{detail}")
    if missing:
        lines.append(f"composable: rank(s) {_ranks(missing)} did not run {when}")
    for rank in failed:
        lines.append("")
        lines.append(f"{'_' * 30} rank {rank} {'_' * 30}")
        lines.append(per_rank[rank].longreprtext)
    return failure(
        item,
        when,
        "\n".join(lines),
        duration,
        crash_line(item, per_rank, failed, world_size) if failed else None,
        "\n".join(per_rank[rank].longreprtext for rank in failed),
        sections=_sections(per_rank),
        user_properties=properties,
    )


def merge_reports(
    item: pytest.Item,
    per_rank: Mapping[int, Sequence[pytest.TestReport]],
    world_size: int,
    order: Sequence[int] = (),
) -> list[pytest.TestReport]:
    """One report per phase that any rank reported, merged with :func:`merge_phase`."""
    merged = []
    for when in PHASES:
        phase = {rank: r for rank, reports in per_rank.items() for r in reports if r.when == when}
        if phase:
            merged.append(merge_phase(item, when, phase, world_size, order))
    return merged
