"""Embodied (manufacturing) carbon of hardware, amortised over the time and share a job reserves.

Following the Green Software Foundation's SCI v1.1::

    M = TE × (TiR / EL) × (RR / ToR)

with TE the device's total embodied emissions, TiR the time reserved, EL its expected lifetime,
and RR / ToR the share of the device's resources reserved. A year here is 365.25 days. Example:
1,000 kg over a 4-year life, one hour reserved in full: 1e6 g × 3600 s / 126,230,400 s ≈ 28.5 g.

Per device kind, as a string (:func:`parse_embodied`; ``GREENMAAS_EMBODIED``,
``greenmaas report --embodied``)::

    gpu=150kg/4y                    150 kgCO2e over a 4-year life, per GPU
    gpu=150kgCO2e/4y,cpu=30kg/5y    several kinds, comma-separated
    gpu=1.2t/5y                     tonnes also accepted; years as y, yr or years
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import AccountingError
from ._kinds import kind_items

__all__ = ["Embodied", "SECONDS_PER_YEAR", "parse_embodied", "format_embodied"]

#: Seconds in a Julian year (365.25 days).
SECONDS_PER_YEAR = 365.25 * 86400.0


@dataclass(frozen=True)
class Embodied:
    """Total embodied emissions of one device (``kg_co2e``) and its lifetime in years."""

    kg_co2e: float
    lifetime_years: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.kg_co2e) and self.kg_co2e >= 0):
            raise AccountingError(f"embodied emissions {self.kg_co2e!r} kgCO2e must be a finite number >= 0")
        if not (math.isfinite(self.lifetime_years) and self.lifetime_years > 0):
            raise AccountingError(f"device lifetime {self.lifetime_years!r} years must be a finite number > 0")

    def amortised_g(self, reserved_s: Any, share: Any = 1.0) -> Any:
        """Embodied gCO2e charged to ``reserved_s`` seconds holding ``share`` (0..1) of the device.

        Both may be arrays (one entry per span); returns a float for scalars.
        """
        seconds = np.asarray(reserved_s, dtype=np.float64)
        fraction = np.asarray(share, dtype=np.float64)
        if (seconds < 0).any():
            raise AccountingError("reserved time must not be negative")
        if ((fraction < 0) | (fraction > 1)).any():
            raise AccountingError(f"resource share {share!r} must lie between 0 and 1")
        out = self.kg_co2e * 1000.0 * (seconds / (self.lifetime_years * SECONDS_PER_YEAR)) * fraction
        return float(out) if out.ndim == 0 else out

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | "Embodied") -> "Embodied":
        if isinstance(data, Embodied):
            return data
        try:
            return cls(float(data["kg_co2e"]), float(data["lifetime_years"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AccountingError(
                f"malformed embodied figure {data!r}: expected {{'kg_co2e': ..., 'lifetime_years': ...}}"
            ) from exc


_EMBODIED_RE = re.compile(
    r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(kg|t)(?:\s*co2e?)?\s*/\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*"
    r"(?:y|yr|yrs|year|years)\s*$",
    re.I,
)
_EMBODIED_FORM = "<kind>=<number>kg/<years>y, e.g. gpu=150kg/4y or gpu=150kg/4y,cpu=30kg/5y"


def parse_embodied(spec: "str | Mapping[str, Any] | None") -> dict[str, Embodied]:
    """Embodied carbon per device kind from ``gpu=150kg/4y[,cpu=30kg/5y]`` or a dict.

    A dict maps kinds to :class:`Embodied`, ``{"kg_co2e": ..., "lifetime_years": ...}`` or a
    ``150kg/4y`` string. Kinds are lower-cased. Raises :class:`AccountingError`.
    """
    if spec is None:
        return {}
    items = kind_items(spec, "embodied carbon", _EMBODIED_FORM)
    if not items and not isinstance(spec, Mapping):
        raise AccountingError(f"malformed embodied carbon {spec!r}: expected {_EMBODIED_FORM}")
    out: dict[str, Embodied] = {}
    for kind, value in items:
        if isinstance(value, str):
            match = _EMBODIED_RE.match(value)
            if not match:
                raise AccountingError(
                    f"malformed embodied carbon {str(kind).strip() + '=' + value.strip()!r}: expected {_EMBODIED_FORM}"
                )
            amount, unit, years = match.groups()
            kg = float(amount) * (1000.0 if unit.lower() == "t" else 1.0)
            out[str(kind).strip().lower()] = Embodied(kg, float(years))
        else:
            out[str(kind).strip().lower()] = Embodied.from_dict(value)
    return out


def format_embodied(embodied: "Mapping[str, Embodied]") -> str:
    """The inverse of :func:`parse_embodied`: ``gpu=150kg/4y,cpu=30kg/5y``."""
    return ",".join(f"{k}={e.kg_co2e:g}kg/{e.lifetime_years:g}y" for k, e in embodied.items())
