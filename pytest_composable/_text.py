"""Showing a user's value in a message, cut to a readable length (torch-free)."""

from __future__ import annotations

__all__ = ["quote", "shorten"]

LIMIT = 200


def _cut(value: str) -> tuple[str, str]:
    if len(value) <= LIMIT:
        return value, ""
    return value[:LIMIT], f"... ({len(value)} characters)"


def quote(value: str) -> str:
    """``repr(value)``, cut to about 200 characters: an error message stays readable."""
    head, rest = _cut(value)
    return f"{head!r}{rest}"


def shorten(value: str) -> str:
    """``value`` itself, cut as :func:`quote` cuts it."""
    head, rest = _cut(value)
    return head + rest
