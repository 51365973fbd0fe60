"""The outcome table at the end of the terminal summary: per device and per world size.

Shown when the session ran its composable tests on more than one device or
world size, and hidden by ``-q``. Each test's device and world size are read
where the test was collected and travel on its reports (as the attribute
``composable_key``), so the table also adds up under pytest-xdist, whose
controller collects nothing. torch-free.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from .distributed._constants import FAKE_FIXTURE, WORLD_FIXTURE
from .marker import MarkerError
from .parametrize import DEVICE_FIXTURE

__all__ = ["OutcomeSummary", "format_table", "key_of"]

WORLD_FIXTURES = (WORLD_FIXTURE, FAKE_FIXTURE)
_KEY = "composable_key"
# Columns in the order pytest's own summary line uses; any other category follows.
_ORDER = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


def key_of(item: pytest.Item) -> tuple[str | None, int | None]:
    """The device and world size ``item`` runs with, each ``None`` where it has none."""
    callspec = getattr(item, "callspec", None)
    params: dict[str, Any] = callspec.params if callspec is not None else {}
    device = params.get(DEVICE_FIXTURE)
    # A device the marker names but this machine lacks is a string spec, skipped:
    # it did not run, so it gets no row.
    ran = device is not None and not isinstance(device, str)
    return (str(device) if ran else None), _world_size(item, params)


def _world_size(item: pytest.Item, params: dict[str, Any]) -> int | None:
    if not any(name in getattr(item, "fixturenames", ()) for name in WORLD_FIXTURES):
        return None
    from .distributed._policy import world_size_of  # only sessions with world tests need it

    try:
        return world_size_of(item)
    except MarkerError:
        return None  # the distributed plugin reports the bad marker


def format_table(title: str, rows: dict[str, Counter[str]]) -> list[str]:
    """``title`` and one line per row, a column per outcome that occurs, counts aligned."""
    seen = {category for counts in rows.values() for category in counts}
    columns = [c for c in _ORDER if c in seen] + sorted(seen.difference(_ORDER))
    width = max(len(title), *(len(name) for name in rows))
    header = [title.ljust(width), *(c.rjust(max(len(c), 4)) for c in columns)]
    lines = ["  ".join(header).rstrip()]
    for name, counts in rows.items():
        cells = [name.ljust(width)]
        cells += [str(counts[c]).rjust(max(len(c), 4)) for c in columns]
        lines.append("  ".join(cells).rstrip())
    return lines


class OutcomeSummary:
    """Counts the composable tests' outcomes and writes the table (registered at configure)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.keys: dict[str, tuple[str | None, int | None]] = {}
        self.devices: dict[str, Counter[str]] = {}
        self.world_sizes: dict[str, Counter[str]] = {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            key = key_of(item)
            if key != (None, None):
                self.keys[item.nodeid] = key

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        key = getattr(report, _KEY, None)
        if key is None:
            key = self.keys.get(report.nodeid)
            if key is None:
                return
            setattr(report, _KEY, list(key))
        self.record(report, key[0], key[1])

    def record(self, report: pytest.TestReport, device: str | None, world_size: int | None) -> None:
        if report.when != "call" and report.passed:
            return  # a setup or teardown that passed: the call phase counts
        status = self.config.hook.pytest_report_teststatus(report=report, config=self.config)
        category = status[0] if status else ""
        if not category:
            return
        if device is not None:
            self.devices.setdefault(device, Counter())[category] += 1
        if world_size is not None:
            self.world_sizes.setdefault(str(world_size), Counter())[category] += 1

    def lines(self) -> list[str]:
        """The tables that have more than one row."""
        lines: list[str] = []
        for title, rows in (("device", self.devices), ("world size", self.world_sizes)):
            if len(rows) > 1:
                lines += format_table(title, rows)
        return lines

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        lines = self.lines()
        if not lines or self.config.get_verbosity() < 0:
            return
        terminalreporter.write_sep("-", "composable: outcomes per device and world size")
        for line in lines:
            terminalreporter.write_line(line)
