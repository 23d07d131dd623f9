"""Carbon, cost and SCI accounting: joules in, grams and money out.

* :mod:`.intensity` — grid intensities read by path from codecarbon's data files (never imported)
* :mod:`.locations` — location specs (``FR``, ``US-CA``, ``CA-QC``, ``CN-GD``, ``SE3``,
  ``gcp:us-central1``, ``aws:us-east-1``, ``420``) resolved to a :class:`Location`
* :mod:`.timeseries` — time-varying intensity (:class:`IntensitySeries`, ``timestamp,gco2_per_kwh``)
* :mod:`.tariff` — electricity prices, time-of-use tariffs, hardware prices per device-hour
* :mod:`.embodied`, :mod:`.sci` — embodied carbon and the Green Software Foundation's SCI
* :mod:`.config` — :class:`AccountingConfig` (``from_env``, ``to_dict``, ``with_overrides``),
  :func:`recorded` (a run's stored settings, rebuilt) and the vectorised :func:`price` that
  reports call on a DataFrame of spans

Names are imported on first use, so importing this package loads neither numpy nor pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AccountingConfig",
    "Embodied",
    "EnergyPrice",
    "HourlyPrice",
    "IntensitySeries",
    "Location",
    "NoLocationWarning",
    "SCIResult",
    "Tariff",
    "describe",
    "parse_embodied",
    "parse_energy_price",
    "parse_hardware_prices",
    "parse_hourly_price",
    "parse_setting",
    "parse_tariff",
    "price",
    "recorded",
    "resolve_location",
    "sci_score",
    "split_hardware_cost",
]

_WHERE = {
    "AccountingConfig": "config",
    "describe": "config",
    "price": "config",
    "parse_setting": "config",
    "recorded": "config",
    "Embodied": "embodied",
    "parse_embodied": "embodied",
    "EnergyPrice": "tariff",
    "HourlyPrice": "tariff",
    "Tariff": "tariff",
    "parse_energy_price": "tariff",
    "parse_hardware_prices": "tariff",
    "parse_hourly_price": "tariff",
    "parse_tariff": "tariff",
    "split_hardware_cost": "tariff",
    "IntensitySeries": "timeseries",
    "Location": "locations",
    "NoLocationWarning": "locations",
    "resolve_location": "locations",
    "SCIResult": "sci",
    "sci_score": "sci",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
