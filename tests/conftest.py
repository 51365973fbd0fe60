"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from tests.helpers import ISOLATED_ENV


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without the device variable and outside any xdist worker."""
    for name in ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)
