"""Carbon-intensity figures read from the data files that ship inside the ``codecarbon`` package.

The files are read **by path**: ``codecarbon`` is located with ``importlib.util.find_spec`` and
never imported, because importing it (its tracker) initialises NVML, runs ``nvidia-smi`` and
installs a log handler. Each file is parsed once per process (``functools.lru_cache``).

Figures, all in gCO2e/kWh, computed the way codecarbon's own ``Emissions`` class computes them:

* countries — ``data/private_infra/global_energy_mix.json``, keyed by ISO-3 code (Our World in
  Data), with the year each figure describes (a country without a figure gets its generation
  mix weighted by ``carbon_intensity_per_source.json``, as in codecarbon);
* US states — ``data/private_infra/<year>/usa_emissions.json`` (EPA eGRID), published in lbs/MWh
  and converted here (1 lb/MWh = 0.45359237 g/kWh, the same factor codecarbon uses);
* Canadian provinces — ``data/private_infra/<year>/canada_energy_mix.json``, a generation mix in
  per cent, turned into an intensity with codecarbon's fuel factors (coal, petroleum, natural
  gas; every other source counts as 0);
* Nordic bidding zones (SE1-SE4, NO1-NO5, FI) — ``data/private_infra/nordic_emissions.json``;
* Chinese provinces — ``data/private_infra/<year>/china_provincial_emissions.json`` (MEE/NBS
  official factors, CO2 only);
* Google Cloud regions — ``data/cloud/impact.csv`` (Google's published region figures);
* the world average — ``data/private_infra/carbon_intensity_per_source.json``.

Files under a ``<year>`` folder are taken from the newest year present, which is the file the
same codecarbon release reads itself. Releases differ in what they ship (measured on every
release in the supported range, 3.0.0 to 3.3.2): US states come from ``2016/`` up to 3.3.1 and
``2023/`` in 3.3.2; Canadian provinces from ``2016/`` up to 3.0.4 and ``2023/`` from 3.0.5;
Nordic zones exist from 3.2.5 and Chinese provinces from 3.3.2. A data set the installed release
lacks reads as empty; :func:`regional_dataset_missing` says why, for error messages.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import re
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
    "canada_province_intensities",
    "nordic_zone_intensities",
    "china_province_intensities",
    "gcp_region_intensities",
    "world_average",
    "regional_dataset_missing",
    "LBS_PER_MWH_TO_G_PER_KWH",
    "CANADA_FUEL_KG_PER_KWH",
    "china_province_name_key",
    "CANADA_PROVINCE_CODES",
    "NORDIC_ZONE_COUNTRIES",
]

#: 1 lb = 453.59237 g and 1 MWh = 1000 kWh, so 1 lb/MWh = 0.45359237 g/kWh.
LBS_PER_MWH_TO_G_PER_KWH = 0.45359237

#: The emission factors codecarbon applies to a Canadian province's generation shares, in
#: kgCO2e/kWh; they live in codecarbon's code, not its data (from the energy-usage project,
#: https://github.com/responsibleproblemsolving/energy-usage#conversion-to-co2). Sources not
#: listed (hydro, nuclear, wind, solar, biomass, ...) count as 0.
CANADA_FUEL_KG_PER_KWH = {"coal": 0.995725971, "petroleum": 0.8166885263, "naturalGas": 0.7438415916}

#: ISO 3166-2:CA codes of the provinces and territories, by the lowercase names codecarbon uses.
CANADA_PROVINCE_CODES = {
    "alberta": "AB", "british columbia": "BC", "manitoba": "MB", "new brunswick": "NB",
    "newfoundland and labrador": "NL", "nova scotia": "NS", "northwest territories": "NT",
    "nunavut": "NU", "ontario": "ON", "prince edward island": "PE", "quebec": "QC",
    "saskatchewan": "SK", "yukon": "YT",
}

#: The country (ISO-3) of each Nordic bidding-zone prefix.
NORDIC_ZONE_COUNTRIES = {"SE": "SWE", "NO": "NOR", "FI": "FIN"}

# What codecarbon's matching of Chinese province names ignores at the end of a name.
_CHINA_SUFFIX = re.compile(r"\s+(autonomous region|municipality|province|sheng|shi|zizhiqu)$")

_INSTALL_HINT = (
    "codecarbon is not installed, and greenmaas reads carbon intensities from its data files: "
    "pip install 'codecarbon>=3.0,<3.4' (or give a fixed intensity such as GREENMAAS_LOCATION=420)"
)

# Regional data sets, the file each is read from, and the first codecarbon release that has it.
_REGIONAL = {
    "usa": ("usa_emissions.json", "US states", "3.0.0"),
    "can": ("canada_energy_mix.json", "Canadian provinces", "3.0.0"),
    "nordic": ("nordic_emissions.json", "Nordic bidding zones", "3.2.5"),
    "chn": ("china_provincial_emissions.json", "Chinese provinces", "3.3.2"),
}


@dataclass(frozen=True)
class GridFigure:
    """One published grid carbon intensity.

    ``key`` is the file's own key (ISO-3 code, lowercase state or province name, zone, GCP
    region); ``name`` a human label; ``intensity_g_per_kwh`` in gCO2e/kWh; ``year`` the year the
    figure describes (None where the file does not say); ``dataset`` names the file and its
    upstream source; ``country`` the ISO-3 code of the grid's country where known; ``code`` a
    short code where there is one (``VA``, ``QC``, ``CN-GD``, ``SE3``); ``aliases`` other
    lowercase names the file gives (Chinese provinces).
    """

    key: str
    name: str
    intensity_g_per_kwh: float
    year: int | None
    dataset: str
    country: str | None = None
    code: str | None = None
    aliases: tuple[str, ...] = ()


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
    """The version of the codecarbon package whose data is read, or ``"unknown"``.

    Taken from the package's own ``_version.py`` beside its data folder, so that it names the
    copy actually read even when several are on the path; the distribution's metadata otherwise.
    """
    try:
        text = (codecarbon_data_dir().parent / "_version.py").read_text(encoding="utf-8")
        match = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
        if match:
            return match.group(1)
    except (AccountingError, OSError):
        pass
    import importlib.metadata  # only here: importing it costs a command's start ~10 ms

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


def _newest_yearly(name: str) -> tuple[Path, int] | None:
    """``private_infra/<year>/<name>`` for the newest year that has it, and that year."""
    base = codecarbon_data_dir() / "private_infra"
    years = sorted((int(p.name) for p in base.glob("[0-9][0-9][0-9][0-9]") if (p / name).is_file()), reverse=True)
    return (base / str(years[0]) / name, years[0]) if years else None


def _regional_path(kind: str) -> tuple[Path, int | None] | None:
    name = _REGIONAL[kind][0]
    if kind == "nordic":
        path = codecarbon_data_dir() / "private_infra" / name
        return (path, None) if path.is_file() else None
    return _newest_yearly(name)


def regional_dataset_missing(kind: str) -> str | None:
    """Why the installed codecarbon has no ``kind`` data (``usa``, ``can``, ``nordic``, ``chn``), or None."""
    if _regional_path(kind) is not None:
        return None
    _, what, since = _REGIONAL[kind]
    return (
        f"codecarbon {codecarbon_version()} ships no data for {what} (first in codecarbon {since}); "
        f"pip install -U 'codecarbon>={since},<3.4'"
    )


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise AccountingError(f"cannot read codecarbon data file {path}: {exc}") from exc


def _load_json(relative: str) -> Any:
    return _read_json(_data_file(relative))


def _rel(path: Path) -> str:
    return path.relative_to(codecarbon_data_dir()).as_posix()


def _bad_row(path: Path, key: str, exc: Exception) -> AccountingError:
    return AccountingError(f"codecarbon data file {path}: entry {key!r} is malformed ({exc})")


def _version_tuple(version: str) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return tuple(int(part or 0) for part in match.groups()) if match else ()


def _mix_intensity(mix: dict[str, Any], per_source: dict[str, Any]) -> float | None:
    """A country's intensity from its generation mix, as codecarbon computes it, or None.

    Each ``<source>_TWh`` with a factor in ``carbon_intensity_per_source.json`` weighs in by its
    share of ``total_TWh``; when those sources do not add up to the total, codecarbon uses the
    world average, and so this returns None. Same order and arithmetic as codecarbon.
    """
    total = mix["total_TWh"]
    value: float = 0
    covered: float = 0
    for kind, twh in mix.items():
        if "_TWh" in kind:
            factor = per_source.get(kind[: -len("_TWh")])
            if factor:
                value += (twh / total) * factor
                covered += twh
    return value if covered == total else None


@functools.lru_cache(maxsize=None)
def country_intensities() -> dict[str, GridFigure]:
    """Countries by ISO-3 code (upper case), from ``global_energy_mix.json`` (Our World in Data).

    The file's ``carbon_intensity`` where it gives one; where it gives none (or 0, which
    codecarbon before 3.3.2 also reads as none), the intensity of the country's generation mix,
    computed as codecarbon does (see :func:`_mix_intensity`).
    """
    raw = _load_json("private_infra/global_energy_mix.json")
    dataset = f"codecarbon {codecarbon_version()} global_energy_mix.json (Our World in Data)"
    zero_is_missing = _version_tuple(codecarbon_version()) < (3, 3, 2)
    out: dict[str, GridFigure] = {}
    for iso, row in raw.items():
        if not isinstance(row, dict):
            continue
        published = row.get("carbon_intensity")
        source = dataset
        try:
            if published is None or (zero_is_missing and not published):
                mixed = _mix_intensity(row, _load_json("private_infra/carbon_intensity_per_source.json"))
                if mixed is None:
                    mixed = world_average().intensity_g_per_kwh
                    source = f"{dataset}: no usable mix, world average (as codecarbon)"
                else:
                    source = f"{dataset}: generation mix x carbon_intensity_per_source.json (as codecarbon)"
                value = float(mixed)
            else:
                value = float(published)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise AccountingError(f"codecarbon's global_energy_mix.json: entry {iso!r} is malformed ({exc})") from exc
        year = row.get("year")
        out[iso.upper()] = GridFigure(
            key=iso.upper(),
            name=str(row.get("country_name") or iso),
            intensity_g_per_kwh=value,
            year=int(year) if year is not None else None,
            dataset=source,
            country=iso.upper(),
        )
    return out


@functools.lru_cache(maxsize=None)
def us_state_intensities() -> dict[str, GridFigure]:
    """US states (and DC) by lowercase name, from eGRID's lbs/MWh converted to g/kWh.

    Read from the newest ``private_infra/<year>/usa_emissions.json``; the figure's year is the
    file's own ``_source.year`` where it states one, else its folder's year.
    """
    found = _regional_path("usa")
    if found is None:
        return {}
    path, folder_year = found
    raw = _read_json(path)
    source = raw.get("_source", {}) if isinstance(raw.get("_source"), dict) else {}
    year = int(source.get("year") or folder_year or 0) or None
    upstream = "EPA eGRID" + (str(year) if year else "")
    dataset = f"codecarbon {codecarbon_version()} {_rel(path)} ({upstream})"
    out: dict[str, GridFigure] = {}
    for name, row in raw.items():
        # "usa" is eGRID's national figure; the country-level figure comes from the global mix.
        if name.startswith("_") or name == "usa" or not isinstance(row, dict):
            continue
        if row.get("emissions") is None:
            continue
        try:
            value = float(row["emissions"]) * LBS_PER_MWH_TO_G_PER_KWH
        except (TypeError, ValueError) as exc:
            raise _bad_row(path, name, exc) from exc
        out[name.lower()] = GridFigure(
            key=name.lower(),
            name=name.title(),
            intensity_g_per_kwh=value,
            year=year,
            dataset=dataset,
            country="USA",
            code=str(row.get("regionCode", "")).upper() or None,
        )
    return out


@functools.lru_cache(maxsize=None)
def canada_province_intensities() -> dict[str, GridFigure]:
    """Canadian provinces and territories by lowercase name, from their generation mix.

    The intensity is the share of each fossil fuel in the province's generation times
    :data:`CANADA_FUEL_KG_PER_KWH`, summed, exactly as codecarbon computes it. The year is the
    data folder's (the file states none).
    """
    found = _regional_path("can")
    if found is None:
        return {}
    path, year = found
    raw = _read_json(path)
    dataset = f"codecarbon {codecarbon_version()} {_rel(path)} (Canadian generation mix, codecarbon fuel factors)"
    out: dict[str, GridFigure] = {}
    for name, mix in raw.items():
        if name.startswith("_") or not isinstance(mix, dict):
            continue
        try:
            total = float(mix["total"])
            # Same order and arithmetic as codecarbon (shares times kg/kWh, summed), then to g.
            kg = sum(float(mix[fuel]) / total * factor for fuel, factor in CANADA_FUEL_KG_PER_KWH.items())
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise _bad_row(path, name, exc) from exc
        key = " ".join(name.lower().split())
        out[key] = GridFigure(
            key=key,
            name=name.title().replace(" And ", " and "),
            intensity_g_per_kwh=kg * 1000.0,
            year=year,
            dataset=dataset,
            country="CAN",
            code=CANADA_PROVINCE_CODES.get(key),
        )
    return out


def _data_table(path: Path) -> tuple[dict, dict]:
    """A regional codecarbon file's ``data`` table and ``metadata`` (empty when absent)."""
    raw = _read_json(path)
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict):
        raise AccountingError(f"codecarbon data file {path} has no 'data' table")
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    return data, meta


@functools.lru_cache(maxsize=None)
def nordic_zone_intensities() -> dict[str, GridFigure]:
    """Nordic electricity bidding zones (``SE1``..``SE4``, ``NO1``..``NO5``, ``FI``) by zone code."""
    found = _regional_path("nordic")
    if found is None:
        return {}
    path, _ = found
    data, meta = _data_table(path)
    dataset = f"codecarbon {codecarbon_version()} {_rel(path)} ({'ENTSO-E' if 'ENTSO-E' in str(meta) else 'Nordic zones'})"
    out: dict[str, GridFigure] = {}
    for zone, row in data.items():
        if not isinstance(row, dict):
            continue
        code = zone.upper()
        try:
            value = float(row["emission_factor"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad_row(path, zone, exc) from exc
        year = row.get("year")
        out[code] = GridFigure(
            key=code,
            name=str(row.get("description") or code),
            intensity_g_per_kwh=value,
            year=int(year) if year else None,
            dataset=dataset,
            country=NORDIC_ZONE_COUNTRIES.get(code.rstrip("0123456789")),
            code=code,
        )
    return out


def china_province_name_key(name: str) -> str:
    """A Chinese province name as codecarbon matches it: lower case, single spaces, no suffix."""
    return _CHINA_SUFFIX.sub("", " ".join(name.lower().split()))


@functools.lru_cache(maxsize=None)
def china_province_intensities() -> dict[str, GridFigure]:
    """Chinese provinces by ISO 3166-2 code (``CN-GD``), with the names the file matches as aliases.

    Tibet, Hong Kong, Macao and Taiwan are not in the official table (Hong Kong, Macao and
    Taiwan have country figures of their own: ``HK``, ``MO``, ``TW``).
    """
    found = _regional_path("chn")
    if found is None:
        return {}
    path, folder_year = found
    data, meta = _data_table(path)
    dataset = f"codecarbon {codecarbon_version()} {_rel(path)} (MEE/NBS provincial factors, CO2 only)"
    out: dict[str, GridFigure] = {}
    for code, row in data.items():
        if not isinstance(row, dict):
            continue
        try:
            value = float(row["emission_factor"])
            names = tuple(china_province_name_key(str(n)) for n in row.get("names", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad_row(path, code, exc) from exc
        year = row.get("year") or meta.get("year") or folder_year
        out[code.upper()] = GridFigure(
            key=code.upper(),
            name=str(row.get("description") or code),
            intensity_g_per_kwh=value,
            year=int(year) if year else None,
            dataset=dataset,
            country="CHN",
            code=code.upper(),
            aliases=names,
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
