"""Comparing report figures computed two ways: equal keys, lengths and values, floats to a
relative tolerance (sums taken in another order differ in their last bits)."""

from __future__ import annotations

import math
from typing import Any


def same(a: Any, b: Any, where: str = "", *, abs_tol: float = 1e-9) -> None:
    """Assert ``a`` and ``b`` (dicts, lists, tuples and scalars, nested) are the same, floats
    within 1e-9 relative (or ``abs_tol``); ``where`` names the place in a failure."""
    if isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            same(a[k], b[k], f"{where}.{k}", abs_tol=abs_tol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]", abs_tol=abs_tol)
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=abs_tol), (where, a, b)
    else:
        assert a == b, (where, a, b)
