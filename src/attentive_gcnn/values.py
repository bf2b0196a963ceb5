"""Type checks of plain values read from configs and JSON files (no torch import, so that the table scripts
stay light). Python's ``bool`` is an ``int``, but ``true``/``false`` are never accepted as numbers here."""

from __future__ import annotations


def is_int(value) -> bool:
    """Whether ``value`` is an integer (and not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """Whether ``value`` is an integer or a float (and not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
