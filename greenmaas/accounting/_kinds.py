"""Per-device-kind settings written ``gpu=...,cpu=...`` (hardware prices, embodied carbon)."""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import AccountingError


def kind_items(spec: "str | Mapping[str, Any]", what: str, expected: str) -> list[tuple[str, Any]]:
    """``(kind, value)`` pairs from a mapping or a ``kind=value,kind=value`` string.

    A part without ``=`` or without a kind raises :class:`AccountingError` naming the part,
    ``what`` it was meant to be and the ``expected`` form. Blank parts are skipped."""
    if isinstance(spec, Mapping):
        return list(spec.items())
    items = []
    for part in str(spec).split(","):
        if not part.strip():
            continue
        kind, sep, value = part.partition("=")
        if not sep or not kind.strip():
            raise AccountingError(f"malformed {what} {part.strip()!r} in {spec!r}: expected {expected}")
        items.append((kind, value))
    return items
