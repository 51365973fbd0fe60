"""What this repository's own pytest runs share.

``pytest`` from here runs the test suite (``testpaths`` in ``pyproject.toml``),
``pytest examples`` the examples. Both get the ``pytester`` plugin, which the
suite drives its pytest runs with, and start every test without the variables
that would change what the plugin selects in such a run.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["pytester"]

# The plugin's settings (a user's PYTEST_COMPOSABLE_WORLD_SIZE would change what every
# pytest run of the suite asks for), and pytest-xdist's worker variables, which are set
# in this very process when the suite runs under ``-n``. PYTEST_COMPOSABLE_START is kept
# on purpose: ``make test-cold`` runs the distributed tests, and every pytest run they
# start, with cold rank start through it.
ISOLATED_ENV = (
    "PYTEST_COMPOSABLE_DEVICE",
    "PYTEST_COMPOSABLE_DTYPE",
    "PYTEST_COMPOSABLE_WORLD_SIZE",
    "PYTEST_COMPOSABLE_TIMEOUT",
    "PYTEST_COMPOSABLE_BACKEND",
    "PYTEST_COMPOSABLE_RANK_MEMORY_LIMIT",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_TESTRUNUID",
)


# The pytest runs a test starts (pytester's, rank processes) use no hypothesis, whose
# plugin would import it for its terminal summary: half a second a run.
NO_HYPOTHESIS = "-p no:hypothesispytest"


@pytest.fixture(autouse=True)
def _isolated_environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without the plugin's setting variables (but the start mode) and
    outside any xdist worker."""
    for name in ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)
    if "pytester" in request.fixturenames:
        # Set up pytester first: it clears PYTEST_ADDOPTS for its runs.
        request.getfixturevalue("pytester")
        addopts = os.environ.get("PYTEST_ADDOPTS", "")
        monkeypatch.setenv("PYTEST_ADDOPTS", f"{addopts} {NO_HYPOTHESIS}".strip())
