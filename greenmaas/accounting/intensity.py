"""Carbon-intensity figures read from the data files that ship inside the ``codecarbon`` package.

The files are read **by path**: ``codecarbon`` is located with ``importlib.util.find_spec`` and
never imported, because importing it (its tracker) initialises NVML, runs ``nvidia-smi`` and
installs a log handler. Each file is parsed once per process (``functools.lru_cache``).

Figures, all in gCO2e/kWh:

* countries — ``data/private_infra/global_energy_mix.json``, keyed by ISO-3 code (Our World in
  Data), with the year each figure describes;
* US states — ``data/private_infra/2023/usa_emissions.json`` (EPA eGRID), published in lbs/MWh and
  converted here (1 lb/MWh = 0.45359237 g/kWh, the same factor codecarbon uses);
* Google Cloud regions — ``data/cloud/impact.csv`` (Google's published region figures);
* the world average — ``data/private_infra/carbon_intensity_per_source.json``.
"""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AccountingError

__all__ = [
    "GridFigure",
    "codecarbon_data_dir",
    "codecarbon_version",
    "country_intensities",
    "us_state_intensities",
    "gcp_region_intensities",
    "world_average",
    "LBS_PER_MWH_TO_G_PER_KWH",
]

#: 1 lb = 453.59237 g and 1 MWh = 1000 kWh, so 1 lb/MWh = 0.45359237 g/kWh.
LBS_PER_MWH_TO_G_PER_KWH = 0.45359237

_INSTALL_HINT = (
    "codecarbon is not installed, and greenmaas reads carbon intensities from its data files: "
    "pip install 'codecarbon>=3.0,<3.4' (or give a fixed intensity such as GREENMAAS_LOCATION=420)"
)


@dataclass(frozen=True)
class GridFigure:
    """One published grid carbon intensity.

    ``key`` is the file's own key (ISO-3 code, lowercase state name, GCP region); ``name`` a
    human label; ``intensity_g_per_kwh`` in gCO2e/kWh; ``year`` the year the figure describes
    (None where the file does not say); ``dataset`` names the file and its upstream source;
    ``country`` the ISO-3 code of the grid's country where known.
    """

    key: str
    name: str
    intensity_g_per_kwh: float
    year: int | None
    dataset: str
    country: str | None = None
    code: str | None = None  # short code where the file has one (US state "VA")


@functools.lru_cache(maxsize=None)
def codecarbon_data_dir() -> Path:
    """The ``data`` folder inside the installed ``codecarbon`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("codecarbon")
    except (ImportError, ValueError) as exc:  # a broken install or a stub in sys.modules
        raise AccountingError(_INSTALL_HINT) from exc
    if spec is None or not spec.submodule_search_locations:
        raise AccountingError(_INSTALL_HINT)
    for base in spec.submodule_search_locations:
        data = Path(base) / "data"
        if data.is_dir():
            return data
    raise AccountingError(f"codecarbon is installed but has no data folder; reinstall it. {_INSTALL_HINT}")


@functools.lru_cache(maxsize=None)
def codecarbon_version() -> str:
    """The installed codecarbon distribution's version, or ``"unknown"``."""
    try:
        return importlib.metadata.version("codecarbon")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _data_file(relative: str) -> Path:
    path = codecarbon_data_dir() / relative
    if not path.is_file():
        raise AccountingError(
            f"codecarbon {codecarbon_version()} has no {relative}; greenmaas supports codecarbon >=3.0,<3.4"
        )
    return path


def _load_json(relative: str) -> Any:
    path = _data_file(relative)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise AccountingError(f"cannot read codecarbon data file {path}: {exc}") from exc


@functools.lru_cache(maxsize=None)
def country_intensities() -> dict[str, GridFigure]:
    """Countries by ISO-3 code (upper case), from ``global_energy_mix.json`` (Our World in Data)."""
    raw = _load_json("private_infra/global_energy_mix.json")
    dataset = f"codecarbon {codecarbon_version()} global_energy_mix.json (Our World in Data)"
    out: dict[str, GridFigure] = {}
    for iso, row in raw.items():
        if not isinstance(row, dict) or row.get("carbon_intensity") is None:
            continue
        year = row.get("year")
        out[iso.upper()] = GridFigure(
            key=iso.upper(),
            name=str(row.get("country_name") or iso),
            intensity_g_per_kwh=float(row["carbon_intensity"]),
            year=int(year) if year is not None else None,
            dataset=dataset,
            country=iso.upper(),
        )
    return out


@functools.lru_cache(maxsize=None)
def us_state_intensities() -> dict[str, GridFigure]:
    """US states (and DC) by lowercase name, from eGRID's lbs/MWh converted to g/kWh."""
    raw = _load_json("private_infra/2023/usa_emissions.json")
    source = raw.get("_source", {}) if isinstance(raw.get("_source"), dict) else {}
    year = source.get("year")
    upstream = "EPA eGRID" + (str(year) if year else "")
    dataset = f"codecarbon {codecarbon_version()} usa_emissions.json ({upstream})"
    out: dict[str, GridFigure] = {}
    for name, row in raw.items():
        # "usa" is eGRID's national figure; the country-level figure comes from the global mix.
        if name.startswith("_") or name == "usa" or not isinstance(row, dict):
            continue
        if row.get("emissions") is None:
            continue
        out[name.lower()] = GridFigure(
            key=name.lower(),
            name=name.title(),
            intensity_g_per_kwh=float(row["emissions"]) * LBS_PER_MWH_TO_G_PER_KWH,
            year=int(year) if year else None,
            dataset=dataset,
            country="USA",
            code=str(row.get("regionCode", "")).upper() or None,
        )
    return out


@functools.lru_cache(maxsize=None)
def gcp_region_intensities() -> dict[str, GridFigure]:
    """Google Cloud regions by region name, from ``cloud/impact.csv`` (the file states no year)."""
    path = _data_file("cloud/impact.csv")
    dataset = f"codecarbon {codecarbon_version()} cloud/impact.csv (Google Cloud region carbon data)"
    out: dict[str, GridFigure] = {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            for row in csv.DictReader(fh):
                if (row.get("provider") or "").strip() != "gcp" or not row.get("impact"):
                    continue
                region = row["region"].strip()
                place = ", ".join(p for p in (row.get("city"), row.get("state"), row.get("country_name")) if p)
                out[region] = GridFigure(
                    key=region,
                    name=place or region,
                    intensity_g_per_kwh=float(row["impact"]),
                    year=None,
                    dataset=dataset,
                    country=(row.get("countryIsoCode") or "").upper() or None,
                )
    except (OSError, ValueError, KeyError) as exc:
        raise AccountingError(f"cannot read codecarbon data file {path}: {exc}") from exc
    return out


@functools.lru_cache(maxsize=None)
def world_average() -> GridFigure:
    """The world-average grid intensity codecarbon falls back to (IEA figure)."""
    raw = _load_json("private_infra/carbon_intensity_per_source.json")
    try:
        value = float(raw["world_average"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AccountingError("codecarbon's carbon_intensity_per_source.json has no world_average") from exc
    return GridFigure(
        key="world",
        name="World average",
        intensity_g_per_kwh=value,
        year=None,
        dataset=f"codecarbon {codecarbon_version()} carbon_intensity_per_source.json world_average (IEA)",
    )
