"""Small text helpers for log lines and error messages (pure Python)."""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(exc: BaseException, *, with_type: bool = False) -> str:
    """An exception's message with all whitespace runs (newlines included) collapsed to single spaces, for a
    one-line log entry; ``with_type`` prefixes the exception's class name (alone when the message is empty)."""
    text = " ".join(str(exc).split())
    if not with_type:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
