"""Software Carbon Intensity (Green Software Foundation, SCI v1.1)::

    SCI = (E × I + M) / R

E: energy in kWh **including PUE** (facility energy); I: location-based grid intensity in
gCO2e/kWh (market-based instruments are excluded by the specification, so a configured market
intensity never enters here); M: embodied emissions amortised to the work (see
:mod:`greenmaas.accounting.embodied`); R: the functional unit count (requests, tokens, samples).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import AccountingError
from .timeseries import J_PER_KWH

__all__ = ["SCIResult", "sci_score"]


@dataclass(frozen=True)
class SCIResult:
    """An SCI score and its parts. Grams are gCO2e; ``sci_g`` is grams per ``unit``."""

    energy_kwh: float  # E, including PUE
    intensity_g_per_kwh: float  # I, location-based
    operational_g: float  # E × I
    embodied_g: float  # M
    functional_units: float  # R
    unit: str
    sci_g: float  # (E × I + M) / R

    @property
    def total_g(self) -> float:
        return self.operational_g + self.embodied_g

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["total_g"] = self.total_g
        return out


def sci_score(
    *,
    energy_j: float,
    intensity_g_per_kwh: float,
    functional_units: float,
    embodied_g: float = 0.0,
    pue: float = 1.0,
    unit: str = "request",
) -> SCIResult:
    """SCI per functional unit.

    ``energy_j`` is IT energy in joules (what greenmaas measures); it is multiplied by ``pue``
    (>= 1) to give E. ``intensity_g_per_kwh`` must be location-based. ``embodied_g`` is M, already
    amortised (``Embodied.amortised_g``). ``functional_units`` is R (> 0), counted in ``unit``.
    """
    named = (("energy_j", energy_j), ("intensity_g_per_kwh", intensity_g_per_kwh), ("embodied_g", embodied_g))
    for name, value in named:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise AccountingError(f"SCI needs {name} as a finite number >= 0, got {value!r}")
    if not (isinstance(pue, (int, float)) and math.isfinite(pue) and pue >= 1.0):
        raise AccountingError(f"PUE {pue!r} must be a number >= 1.0")
    r = functional_units
    if not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0):
        raise AccountingError(f"SCI needs a functional unit count R > 0, got {functional_units!r}")
    energy_kwh = energy_j * pue / J_PER_KWH
    operational = energy_kwh * intensity_g_per_kwh
    return SCIResult(
        energy_kwh=energy_kwh,
        intensity_g_per_kwh=float(intensity_g_per_kwh),
        operational_g=operational,
        embodied_g=float(embodied_g),
        functional_units=float(functional_units),
        unit=unit,
        sci_g=(operational + embodied_g) / functional_units,
    )
