"""One test's outcome on a pool of ranks, as the reports pytest shows (torch-free).

The ranks' own reports are merged phase by phase (:mod:`._reports`). When the
main process had to end ranks that were still running the test (the deadline
passed, or another rank failed and left them waiting in a collective), or a
rank died, the test gets one failed report instead, which puts the root cause
first:

* the **root cause** is the first rank that failed on its own: ranks are taken
  in the order their failures reached the main process, and an error of the
  kind another rank's failure causes (a collective's timeout, abort or closed
  connection, as the rank judged from the error's type,
  :func:`~._stacks.is_consequence`) counts only where no rank failed on its own;
* its error is the headline (the short summary, ``--tb=line`` and the JUnit
  ``message``), followed by the rank: ``ValueError: boom (rank 1 of 2)``;
* each rank that was ended shows where it was (``waiting in test_x (test_x.py:9)
  when rank 1 failed``) with its stack cut to the user's frames, and each rank
  that finished shows one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from _pytest._code.code import ReprFileLocation

from ._protocol import Memory
from ._reports import crash_line, failure, merge_reports, passed
from ._stacks import summarize

__all__ = ["RankResult", "compose", "root_first"]


@dataclass
class RankResult:
    """What one rank said about one test: its reports, or how it failed to give them."""

    reports: list[pytest.TestReport] = field(default_factory=list)
    problem: str | None = None  # set when the rank crashed, died or did not collect the test
    # Its first failed phase as it announced it (Failing), before its other reports.
    failing: pytest.TestReport | None = None
    consequence: bool = False  # that failure is of a kind another rank's failure causes
    order: int | None = None  # when its failure (or death) was seen among the ranks' (0: first)
    # Set when the main process ended the rank while it still ran the test: its stack
    # (faulthandler's dump) then, and the deadline in seconds if that was why.
    stack: str | None = None
    timed_out: float | None = None
    output: str = ""  # what an ended rank printed during the test (its log)
    memory: Memory | None = None  # the rank's memory once the test was over (Done)


def _bar(title: str) -> str:
    return f"{'_' * 20} {title} {'_' * 20}"


def _ranks(ranks: Sequence[int]) -> str:
    return ", ".join(str(r) for r in ranks)


def root_first(results: Mapping[int, RankResult]) -> list[int]:
    """The ranks that failed (or died), the root cause first: the rank's own failures
    before consequences, each kind in the order the main process saw them."""
    failed = [rank for rank, result in results.items() if result.order is not None]
    return sorted(failed, key=lambda r: (results[r].consequence, results[r].order))


def compose(
    item: pytest.Item, results: Mapping[int, RankResult], world_size: int, took: float
) -> list[pytest.TestReport]:
    """The reports of ``item`` (setup, call, teardown) from what every rank said."""
    ranked = root_first(results)
    ended = sorted(rank for rank, result in results.items() if result.stack is not None)
    if not ended and not any(result.problem for result in results.values()):
        per_rank = {r: res.reports for r, res in results.items()}
        return merge_reports(item, per_rank, world_size, ranked)
    return _cut_short(item, results, world_size, took, ranked, ended)


def _sections(results: Mapping[int, RankResult]) -> list[tuple[str, str]]:
    """Each rank's captured output (its last report holds every phase's so far)."""
    last = {
        rank: result.reports[-1] if result.reports else result.failing
        for rank, result in results.items()
    }
    return [
        (f"{title} (rank {rank})", content)
        for rank, report in sorted(last.items())
        if report is not None
        for title, content in report.sections
    ]


def _own_text(result: RankResult) -> str:
    if result.problem is not None:
        return result.problem
    assert result.failing is not None
    return result.failing.longreprtext


def _cut_short(
    item: pytest.Item,
    results: Mapping[int, RankResult],
    world_size: int,
    took: float,
    ranked: list[int],
    ended: list[int],
) -> list[pytest.TestReport]:
    """The one failed report of a test the main process ended early, or a rank died in.

    The root cause leads: a rank that failed on its own, else the ranks still running
    (a hang: what the others failed waiting for), with their stacks."""
    finished = [r for r in sorted(results) if r not in ended and r not in ranked]
    root = ranked[0] if ranked else None
    if root is not None and (results[root].consequence and ended):
        root = None  # the failures are what the ranks still running caused
    when = "call"
    if root is not None:
        first = results[root].failing
        lines, crash, brief = _failed_first(item, results, world_size, ranked, ended)
        if first is not None and results[root].problem is None:
            when = first.when or "call"
        lines += _ended(results, ended, f"waiting {{where}} when rank {root} failed")
    else:
        timeout = next((results[r].timed_out for r in ended if results[r].timed_out), None)
        if timeout is not None:
            head = (
                f"composable: timed out after {timeout:g} s; rank(s) {_ranks(ended)} did not finish"
            )
        else:
            head = (
                f"composable: rank(s) {_ranks(ended)} did not finish; rank(s) {_ranks(ranked)} "
                "failed in a collective waiting for them"
            )
        crash, brief = None, head
        lines = [f"{head}; the ranks are restarted for the next test"]
        lines += _ended(results, ended, "still running {where}")
        for rank in ranked:
            lines += ["", _bar(f"rank {rank}, failed waiting"), _own_text(results[rank])]
    if finished:
        lines.append("")
        lines += [f"composable: rank {rank} finished the test" for rank in finished]
    failed = failure(item, when, "\n".join(lines), took, crash, brief, sections=_sections(results))
    if when == "setup":
        return [failed, passed(item, "teardown")]
    if when == "teardown":
        return [passed(item, "setup"), passed(item, "call"), failed]
    return [passed(item, "setup"), failed, passed(item, "teardown")]


def _failed_first(
    item: pytest.Item,
    results: Mapping[int, RankResult],
    world_size: int,
    ranked: list[int],
    ended: list[int],
) -> tuple[list[str], ReprFileLocation | None, str]:
    """The lines, crash line and ``--tb=line`` text of the ranks that failed, ``ranked[0]``
    (a rank that failed on its own) first."""
    root = ranked[0]
    # The headline names the other ranks that failed on their own, not what the root
    # cause made fail (they follow in the report).
    own = [r for r in ranked[1:] if not results[r].consequence]
    also = f"; also failed: {_ranks(own)}" if own else ""
    first = results[root].failing
    crash = None
    if first is not None and results[root].problem is None:
        announced = {r: res.failing for r, res in results.items() if res.failing is not None}
        crash = crash_line(item, announced, [root, *own], world_size)
        lines = [f"composable: {first.when} failed on rank {root} of {world_size}{also}"]
        brief = first.longreprtext
    else:
        head = _own_text(results[root]).partition("\n")[0]
        lines = [f"{head} (rank {root} of {world_size}{also})"]
        brief = lines[0]
    if ended:
        lines.append(
            f"composable: rank(s) {_ranks(ended)} still ran the test and were ended; the "
            "ranks are restarted for the next test"
        )
    for rank in ranked:
        kind = ""
        if rank != root:
            kind = ", also failed"
            if results[rank].consequence:
                kind += " (an error of the kind another rank's failure causes)"
        lines += ["", _bar(f"rank {rank}{kind}"), _own_text(results[rank])]
    return lines, crash, brief


def _ended(results: Mapping[int, RankResult], ended: list[int], state: str) -> list[str]:
    """Each ended rank: where it was (``state`` with ``{where}``), then its stack."""
    lines: list[str] = []
    for rank in ended:
        frame, stack = summarize(results[rank].stack or "")
        where = f"in {frame.where()}" if frame is not None else "outside the test's own code"
        lines += ["", _bar(f"rank {rank} ({state.format(where=where)})"), *stack]
        output = results[rank].output.rstrip("\n")
        if output:
            lines += [_bar(f"rank {rank} output during the test (tail)"), output]
    return lines
