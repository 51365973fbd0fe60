"""What this repository's own pytest runs share.

``pytest`` from here runs the test suite (``testpaths`` in ``pyproject.toml``),
``pytest examples`` the examples. Both get the ``pytester`` plugin, which the
suite drives its pytest runs with, and start every test without the variables
that would change what the plugin selects in such a run.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# The device variable, and pytest-xdist's worker variables, which are set in this
# very process when the suite runs under ``-n``.
ISOLATED_ENV = (
    "PYTEST_COMPOSABLE_DEVICE",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_TESTRUNUID",
)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without the device variable and outside any xdist worker."""
    for name in ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)
