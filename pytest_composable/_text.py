"""Quoting a user's value in an error message (torch-free)."""

from __future__ import annotations

__all__ = ["quote"]

QUOTED_LIMIT = 200


def quote(value: str) -> str:
    """``repr(value)``, cut to about 200 characters: an error message stays readable."""
    if len(value) <= QUOTED_LIMIT:
        return repr(value)
    return f"{value[:QUOTED_LIMIT]!r}... ({len(value)} characters)"
