"""Counts in user-facing lines: '1 face' and '2 faces', never '1 faces'; '1 face is', '2 faces are'."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and the noun, singular for exactly one; `plural` for a noun that does not just take an s."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def verb(n: int, singular: str, plural: str) -> str:
    """The verb that agrees with a count of `n` ("is" for one, "are" otherwise): beside `counted`,
    `f"{counted(n, 'face')} {verb(n, 'is', 'are')} left out"`."""
    return singular if n == 1 else plural
