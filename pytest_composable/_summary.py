"""The outcome tables at the end of the terminal summary: per device, world size and dtype.

Each table is shown when the session ran its composable tests on more than one
device, world size or dtype, and all are hidden by ``-q``. Each test's device,
world size and dtype (``composable_dtype``'s, where it uses it) are read
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
from .parametrize import DEVICE_FIXTURE, DTYPE_FIXTURE

__all__ = ["KeyTagger", "OutcomeSummary", "format_table", "key_of", "register"]

WORLD_FIXTURES = (WORLD_FIXTURE, FAKE_FIXTURE)
_KEY = "composable_key"
# Columns in the order pytest's own summary line uses; any other category follows.
_ORDER = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
# A report's key: its device, world size and dtype, each None where it has none.
Key = tuple[str | None, int | None, str | None]
_NO_KEY: Key = (None, None, None)


def key_of(item: pytest.Item) -> Key:
    """The device, world size and dtype ``item`` runs with, each ``None`` where it has none."""
    callspec = getattr(item, "callspec", None)
    params: dict[str, Any] = callspec.params if callspec is not None else {}
    device = params.get(DEVICE_FIXTURE)
    # A device the marker names but this machine lacks is a string spec, skipped:
    # it did not run, so it gets no row.
    ran = device is not None and not isinstance(device, str)
    dtype = params.get(DTYPE_FIXTURE)
    return (
        (str(device) if ran else None),
        _world_size(item, params),
        None if dtype is None else str(dtype).removeprefix("torch."),
    )


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
    """Writes the table (registered at configure).

    The counts come from the terminal reporter's own record of every report by
    category (``terminalreporter.stats``), so a test costs nothing here while it
    runs; a report finds its key by node id, or, under pytest-xdist, on itself.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.keys: dict[str, Key] = {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            key = key_of(item)
            if key != _NO_KEY:
                self.keys[item.nodeid] = key

    def key(self, report: object) -> Key | None:
        key = getattr(report, _KEY, None)
        if key is not None:
            return key[0], key[1], key[2]
        return self.keys.get(getattr(report, "nodeid", ""))

    def tables(self, stats: dict[str, list[Any]]) -> dict[str, dict[str, Counter[str]]]:
        """The tables that have more than one row, by title, from reports by category (the
        terminal reporter's ``stats``; the empty category, a passed setup or teardown,
        does not count: the call phase does)."""
        tables: dict[str, dict[str, Counter[str]]] = {"device": {}, "world size": {}, "dtype": {}}
        for category, reports in stats.items():
            if not category:
                continue
            for report in reports:
                key = self.key(report) if isinstance(report, pytest.TestReport) else None
                if key is None:
                    continue
                for rows, value in zip(tables.values(), key, strict=True):
                    if value is not None:
                        rows.setdefault(str(value), Counter())[category] += 1
        return {title: rows for title, rows in tables.items() if len(rows) > 1}

    def lines(self, stats: dict[str, list[Any]]) -> list[str]:
        """Every table of :meth:`tables`, formatted."""
        return _formatted(self.tables(stats))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.config.get_verbosity() < 0:
            return
        tables = self.tables(terminalreporter.stats)
        if not tables:
            return
        # The title of the tables before dtypes existed, unless a dtype table is shown.
        title = "device, world size and dtype" if "dtype" in tables else "device and world size"
        terminalreporter.write_sep("-", f"composable: outcomes per {title}")
        for line in _formatted(tables):
            terminalreporter.write_line(line)


def _formatted(tables: dict[str, dict[str, Counter[str]]]) -> list[str]:
    return [line for title, rows in tables.items() for line in format_table(title, rows)]


class KeyTagger:
    """On a pytest-xdist worker: puts each report's key on the report, which carries it
    to the controller (which collects nothing, so knows no node's device)."""

    def __init__(self, summary: OutcomeSummary) -> None:
        self.summary = summary

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        key = self.summary.keys.get(report.nodeid)
        if key is not None:
            setattr(report, _KEY, list(key))


def register(config: pytest.Config) -> None:
    """Register the table's plugin, and on a pytest-xdist worker the report tagger."""
    summary = OutcomeSummary(config)
    config.pluginmanager.register(summary, "composable.summary")
    if hasattr(config, "workerinput"):
        config.pluginmanager.register(KeyTagger(summary), "composable.summary_keys")
