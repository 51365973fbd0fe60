"""Merging the reports of every rank into one report per test phase (torch-free).

A phase passes only if every rank passed it; it is skipped only if every rank
skipped it; otherwise it fails, naming the failing ranks and showing each
failing rank's own traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

__all__ = [
    "PHASES",
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


def failure(
    item: pytest.Item, when: str, text: str, duration: float = 0.0, **extra: Any
) -> pytest.TestReport:
    """A failed report for ``item`` whose long representation is ``text``."""
    return _report(item, when, "failed", text, duration=duration, **extra)


def passed(item: pytest.Item, when: str) -> pytest.TestReport:
    """A passed report for ``item`` (stands in for a phase the ranks could not report)."""
    return _report(item, when, "passed", None)


def merge_phase(
    item: pytest.Item, when: str, per_rank: Mapping[int, pytest.TestReport], world_size: int
) -> pytest.TestReport:
    """One report for ``when`` out of each rank's report of it."""
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
    failed = sorted(r for r, o in outcomes.items() if o == "failed")
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
        sections=_sections(per_rank),
        user_properties=properties,
    )


def merge_reports(
    item: pytest.Item, per_rank: Mapping[int, Sequence[pytest.TestReport]], world_size: int
) -> list[pytest.TestReport]:
    """One report per phase that any rank reported, merged with :func:`merge_phase`."""
    merged = []
    for when in PHASES:
        phase = {rank: r for rank, reports in per_rank.items() for r in reports if r.when == when}
        if phase:
            merged.append(merge_phase(item, when, phase, world_size))
    return merged
