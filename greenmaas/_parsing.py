"""Small parsers shared by the readers of user files (traces, spans)."""

from __future__ import annotations

import math

from .errors import InputError


def finite_number(text: str, column: str, path: str, line: int) -> float:
    """``text`` as a finite float, or an :class:`InputError` naming the file, line and column."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{column} is not a number: {text!r}", path=path, line=line) from None
    if not math.isfinite(value):
        raise InputError(f"{column} is not a finite number: {text!r}", path=path, line=line)
    return value
