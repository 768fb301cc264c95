"""Counts in user-facing lines: '1 face' and '2 faces', never '1 faces'."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and the noun, singular for exactly one; `plural` for a noun that does not just take an s."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
