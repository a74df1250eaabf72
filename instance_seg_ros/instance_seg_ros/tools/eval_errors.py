"""The errors of ``isr eval`` (a bag or ``--frames``), each a ``ValueError`` whose message says what to change."""

from __future__ import annotations

__all__ = ["EvalError", "GroundTruthError"]


class EvalError(ValueError):
    """Bad ``isr eval`` arguments; the message says what to change."""


class GroundTruthError(ValueError):
    """The ground-truth JSON cannot be read or is malformed; the message names the file and what to change."""
