"""Where the electricity comes from: location specs resolved to a grid carbon intensity.

A location is given as one string (case-insensitive; extra spaces ignored)::

    FR, FRA              a country: ISO 3166-1 alpha-2 or alpha-3 code (UK is taken as GB)
    US-CA, USA/california, USA/ca
                         a US state or DC: ISO 3166-2 code, or USA/<name or code>
    CA-QC, CAN/quebec    a Canadian province or territory (ISO 3166-2:CA code or name)
    CN-GD, CHN/guangdong a Chinese province (ISO 3166-2:CN code or name; Tibet, which the
                         official table lacks, is not accepted; HK, MO and TW are countries)
    SE3, NO4, SWE/SE3    a Nordic electricity bidding zone (SE1-SE4, NO1-NO5)
    FIN/FI               Finland's bidding zone; plain FI is the country, as for every code
    gcp:us-central1      a Google Cloud region (Google's own figure, from codecarbon)
    aws:ca-central-1     an AWS or Azure region, via the grid it sits in (cloud_regions.csv):
    azure:westeurope     a state, province, zone or country, e.g. aws:ca-central-1 is CA-QC
    420, "420 g/kWh"     a fixed intensity in gCO2e/kWh

``<country>/<region>`` is codecarbon's own pair (country ISO code, region), so every entry of
its data can be named; a country may be written with its alpha-2 or alpha-3 code. Figures are
the ones codecarbon's ``Emissions`` computes for the same place (see :mod:`.intensity`). A data
set the installed codecarbon release lacks (Nordic zones before 3.2.5, Chinese provinces before
3.3.2) makes its specs fail with the release to install; a cloud region whose grid is such a
region uses its country's figure instead and says so in its label. The year a figure describes
also depends on the release (US states: eGRID 2016 before codecarbon 3.3.2, eGRID 2023 from
it); :attr:`Location.year`, ``source`` and ``codecarbon_version`` record which was used.

An unknown spec raises :class:`~greenmaas.errors.AccountingError`, one line naming the spec and
close matches. No location is ever guessed: with none configured, :func:`resolve_location`
(given ``None``) returns the world average, marks it ``location_source="default"`` and warns
once per process.
"""

from __future__ import annotations

import csv
import difflib
import functools
import importlib.resources
import io
import math
import re
import sys
import unicodedata
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from ..errors import AccountingError
from . import intensity as _data

__all__ = [
    "Location",
    "NoLocationWarning",
    "resolve_location",
    "known_locations",
    "cloud_regions",
    "ALPHA2_TO_ALPHA3",
    "LOCATION_SOURCES",
]

#: Where a location came from: passed in code, read from GREENMAAS_LOCATION, or the fallback.
LOCATION_SOURCES = ("configured", "env", "default")

# ISO-3166-1 alpha-2 -> alpha-3 for all 249 assigned codes (generated from pycountry 26.2.16),
# shipped here so that resolving a location never depends on an optional package.
_ALPHA2_TABLE = """
ADAND AEARE AFAFG AGATG AIAIA ALALB AMARM AOAGO AQATA ARARG ASASM ATAUT AUAUS AWABW AXALA AZAZE
BABIH BBBRB BDBGD BEBEL BFBFA BGBGR BHBHR BIBDI BJBEN BLBLM BMBMU BNBRN BOBOL BQBES BRBRA BSBHS
BTBTN BVBVT BWBWA BYBLR BZBLZ CACAN CCCCK CDCOD CFCAF CGCOG CHCHE CICIV CKCOK CLCHL CMCMR CNCHN
COCOL CRCRI CUCUB CVCPV CWCUW CXCXR CYCYP CZCZE DEDEU DJDJI DKDNK DMDMA DODOM DZDZA ECECU EEEST
EGEGY EHESH ERERI ESESP ETETH FIFIN FJFJI FKFLK FMFSM FOFRO FRFRA GAGAB GBGBR GDGRD GEGEO GFGUF
GGGGY GHGHA GIGIB GLGRL GMGMB GNGIN GPGLP GQGNQ GRGRC GSSGS GTGTM GUGUM GWGNB GYGUY HKHKG HMHMD
HNHND HRHRV HTHTI HUHUN IDIDN IEIRL ILISR IMIMN ININD IOIOT IQIRQ IRIRN ISISL ITITA JEJEY JMJAM
JOJOR JPJPN KEKEN KGKGZ KHKHM KIKIR KMCOM KNKNA KPPRK KRKOR KWKWT KYCYM KZKAZ LALAO LBLBN LCLCA
LILIE LKLKA LRLBR LSLSO LTLTU LULUX LVLVA LYLBY MAMAR MCMCO MDMDA MEMNE MFMAF MGMDG MHMHL MKMKD
MLMLI MMMMR MNMNG MOMAC MPMNP MQMTQ MRMRT MSMSR MTMLT MUMUS MVMDV MWMWI MXMEX MYMYS MZMOZ NANAM
NCNCL NENER NFNFK NGNGA NINIC NLNLD NONOR NPNPL NRNRU NUNIU NZNZL OMOMN PAPAN PEPER PFPYF PGPNG
PHPHL PKPAK PLPOL PMSPM PNPCN PRPRI PSPSE PTPRT PWPLW PYPRY QAQAT REREU ROROU RSSRB RURUS RWRWA
SASAU SBSLB SCSYC SDSDN SESWE SGSGP SHSHN SISVN SJSJM SKSVK SLSLE SMSMR SNSEN SOSOM SRSUR SSSSD
STSTP SVSLV SXSXM SYSYR SZSWZ TCTCA TDTCD TFATF TGTGO THTHA TJTJK TKTKL TLTLS TMTKM TNTUN TOTON
TRTUR TTTTO TVTUV TWTWN TZTZA UAUKR UGUGA UMUMI USUSA UYURY UZUZB VAVAT VCVCT VEVEN VGVGB VIVIR
VNVNM VUVUT WFWLF WSWSM YEYEM YTMYT ZAZAF ZMZMB ZWZWE
"""
ALPHA2_TO_ALPHA3: dict[str, str] = {pair[:2]: pair[2:] for pair in _ALPHA2_TABLE.split()}
ALPHA2_TO_ALPHA3["UK"] = "GBR"  # exceptionally reserved, and what people type

# codecarbon 3.3.2's impact.csv spells this region "me-cenrtal1".
_GCP_ALIASES = {"me-central1": "me-cenrtal1"}

_PROVIDERS = ("gcp", "aws", "azure")
_FIXED_RE = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:g(?:co2e?)?\s*/\s*kwh)?\s*$", re.I)
_FORMS = (
    "use an ISO country code (FR, FRA), a state or province (US-CA, USA/california, CA-QC, CN-GD), "
    "a Nordic zone (SE3, NO4), gcp:<region>, aws:<region>, azure:<region> or a number in g/kWh"
)
# Places the official Chinese provincial table leaves out, and what to use instead.
_CHINA_ELSEWHERE = {
    "tibet": "CHN", "xizang": "CHN", "xz": "CHN", "hong kong": "HKG", "hk": "HKG", "macao": "MAC",
    "macau": "MAC", "mo": "MAC", "taiwan": "TWN", "tw": "TWN",
}
# Countries with regional data in codecarbon, and which data set holds their regions.
_REGIONAL_KIND = {"USA": "usa", "CAN": "can", "CHN": "chn", "SWE": "nordic", "NOR": "nordic", "FIN": "nordic"}


class NoLocationWarning(UserWarning):
    """No location was configured, so carbon figures use the world average."""


@dataclass(frozen=True)
class Location:
    """A resolved location and the grid carbon intensity that goes with it.

    ``spec`` is the canonical spec (``FRA``, ``US-VA``, ``gcp:us-central1``, ``aws:us-east-1``,
    ``420``; None for the default); ``intensity_g_per_kwh`` in gCO2e/kWh, location-based;
    ``source`` names the data set (with the codecarbon version it came from); ``year`` the year
    the figure describes where the data say; ``location_source`` one of ``configured``, ``env``,
    ``default``; ``country`` the ISO-3 code of the grid's country where known.
    """

    spec: str | None
    label: str
    intensity_g_per_kwh: float
    source: str
    year: int | None
    location_source: str = "configured"
    country: str | None = None
    codecarbon_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The location as used, for storing beside figures computed with it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Location":
        """Rebuild a stored location as it was (no lookup: the stored figure is kept)."""
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        try:
            return cls(**known)
        except TypeError as exc:
            raise AccountingError(f"stored location {data!r} lacks {exc}") from exc


# ---------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class CloudRegion:
    """One row of ``cloud_regions.csv``: a provider's region and the grid it draws from."""

    provider: str
    region: str
    location: str  # the grid, as a spec resolve_location accepts: USA/<state>, CA-QC, SE3, FRA...
    place: str
    source: str


@functools.lru_cache(maxsize=None)
def cloud_regions() -> dict[tuple[str, str], CloudRegion]:
    """AWS and Azure regions by ``(provider, region)``, from the packaged ``cloud_regions.csv``."""
    text = importlib.resources.files(__package__).joinpath("cloud_regions.csv").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    out: dict[tuple[str, str], CloudRegion] = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        provider, region = row["provider"].strip().lower(), row["region"].strip().lower()
        out[(provider, region)] = CloudRegion(
            provider, region, row["location"].strip(), row["place"].strip(), row["source"].strip()
        )
    return out


def _fold(name: str) -> str:
    """A place name as looked up: lower case, single spaces, accents dropped (Québec = quebec)."""
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(plain.lower().replace("_", " ").split())


@dataclass(frozen=True)
class _Region:
    """A region of a country with regional data, found in one of codecarbon's regional files."""

    spec: str  # canonical: US-VA, CA-QC, CN-GD, SE3, FIN/FI
    label: str
    fig: _data.GridFigure


def _regions(kind: str) -> dict[str, _Region]:
    """Every way of naming the regions of one data set (lower case) -> the region."""
    return _region_index()[kind]


@functools.lru_cache(maxsize=None)
def _region_index() -> dict[str, dict[str, _Region]]:
    index: dict[str, dict[str, _Region]] = {"usa": {}, "can": {}, "chn": {}, "nordic": {}}
    for name, fig in _data.us_state_intensities().items():
        code = fig.code or name.upper()
        region = _Region(f"US-{code}", f"{fig.name}, USA (US-{code})", fig)
        index["usa"].update({name: region, code.lower(): region})
    for name, fig in _data.canada_province_intensities().items():
        spec = f"CA-{fig.code}" if fig.code else f"CAN/{name}"
        region = _Region(spec, f"{fig.name}, Canada ({spec})", fig)
        index["can"][name] = region
        if fig.code:
            index["can"][fig.code.lower()] = region
    for code, fig in _data.china_province_intensities().items():
        region = _Region(code, f"{fig.name}, China ({code})", fig)
        index["chn"].update({alias: region for alias in fig.aliases})
        index["chn"].update({code.lower(): region, code.lower()[3:]: region})
    for zone, fig in _data.nordic_zone_intensities().items():
        spec = zone if re.fullmatch(r"[A-Z]{2}[0-9]", zone) else f"{fig.country}/{zone}"
        index["nordic"][zone.lower()] = _Region(spec, f"{fig.name} ({spec})", fig)
    return index


def _spec_country(spec: str) -> str:
    """The ISO-3 country of a grid spec from ``cloud_regions.csv`` (``USA/ohio``, ``CA-QC``, ``SE3``, ``FRA``)."""
    lower = spec.strip().lower()
    head = re.split(r"[/-]", lower, maxsplit=1)[0] if ("/" in lower or "-" in lower) else lower
    if re.fullmatch(r"[a-z]{2}[0-9]", head):
        return _data.NORDIC_ZONE_COUNTRIES.get(head[:2].upper(), head.upper())
    return _iso3(head) or spec


def _iso3(code: str) -> str | None:
    """ISO-3 for a country written as alpha-2 or alpha-3 (any case), or None."""
    upper = code.strip().upper()
    if len(upper) == 2:
        return ALPHA2_TO_ALPHA3.get(upper)
    if len(upper) == 3 and upper.isalpha():
        return upper
    return None


@functools.lru_cache(maxsize=None)
def known_locations() -> dict[str, str]:
    """Every accepted spec (lower case) mapped to its canonical form; used for suggestions."""
    out: dict[str, str] = {}
    countries = _data.country_intensities()
    for iso3 in countries:
        out[iso3.lower()] = iso3
    for a2, a3 in ALPHA2_TO_ALPHA3.items():
        if a3 in countries:
            out[a2.lower()] = a2
    prefixes = {"usa": "USA", "can": "CAN", "chn": "CHN"}
    for kind, regions in _region_index().items():
        for key, entry in regions.items():
            if kind == "nordic":
                country = entry.fig.country or ""
                out[f"{country.lower()}/{key}"] = f"{country}/{key.upper()}"
                if "/" not in entry.spec:
                    out[key] = entry.spec
                continue
            if len(key) > 3 and not key.startswith("cn-"):  # names, not codes
                out[f"{kind}/{key}"] = f"{prefixes[kind]}/{key}"
            out[entry.spec.lower()] = entry.spec
    for region in _data.gcp_region_intensities():
        out[f"gcp:{region.lower()}"] = f"gcp:{region}"
    for provider, region in cloud_regions():
        out[f"{provider}:{region}"] = f"{provider}:{region}"
    return out


# ---------------------------------------------------------------------------------- resolving


def resolve_location(spec: Any = None, *, source: str = "configured") -> Location:
    """Resolve a location spec (see the module docstring) to a :class:`Location`.

    ``source`` records where the spec came from (``configured`` or ``env``). ``None`` or an empty
    string gives the world average with ``location_source="default"`` and a
    :class:`NoLocationWarning` (once per process). A :class:`Location` is returned unchanged.
    Raises :class:`AccountingError` for an unknown spec, naming close matches.
    """
    if isinstance(spec, Location):
        return spec
    if source not in LOCATION_SOURCES:
        raise AccountingError(f"location source {source!r} is not one of {', '.join(LOCATION_SOURCES)}")
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return _default_location()
    if isinstance(spec, bool) or not isinstance(spec, (str, int, float)):
        raise AccountingError(f"location {spec!r} is not a string or a number; {_FORMS}")
    if isinstance(spec, (int, float)):
        return _fixed(float(spec), source)

    text = " ".join(spec.split())
    match = _FIXED_RE.match(text)
    if match:
        return _fixed(float(match.group(1)), source)
    lower = text.lower()
    if ":" in lower:
        return _cloud(text, source)
    if "/" in lower:
        country, _, region = (part.strip() for part in lower.partition("/"))
        return _subnational(text, _iso3(country), region, source)
    subdivision = re.fullmatch(r"([a-z]{2})-([a-z0-9]{1,3})", lower)
    if subdivision:
        return _subnational(text, _iso3(subdivision.group(1)), subdivision.group(2), source, iso_code=True)
    if re.fullmatch(r"[a-z]{2}[0-9]", lower):
        iso3 = _data.NORDIC_ZONE_COUNTRIES.get(lower[:2].upper())
        if iso3 is None:
            raise _unknown(text)
        return _subnational(text, iso3, lower, source)
    if re.fullmatch(r"[a-z]{2}", lower):
        iso3 = ALPHA2_TO_ALPHA3.get(lower.upper())
        if iso3 is None:
            raise _unknown(text)
        return _country(text, iso3, source)
    if re.fullmatch(r"[a-z]{3}", lower):
        return _country(text, lower.upper(), source)
    raise _unknown(text)


def _location(spec: str, label: str, fig: _data.GridFigure, source: str) -> Location:
    return Location(
        spec=spec,
        label=label,
        intensity_g_per_kwh=fig.intensity_g_per_kwh,
        source=fig.dataset,
        year=fig.year,
        location_source=source,
        country=fig.country,
        codecarbon_version=_data.codecarbon_version(),
    )


def _fixed(value: float, source: str) -> Location:
    if not math.isfinite(value) or value < 0:
        raise AccountingError(f"fixed carbon intensity {value!r} g/kWh must be a finite number >= 0")
    shown = f"{value:g}"
    return Location(
        spec=shown, label=f"fixed {shown} g/kWh", intensity_g_per_kwh=value, source="fixed", year=None,
        location_source=source,
    )


def _country(text: str, iso3: str, source: str) -> Location:
    fig = _data.country_intensities().get(iso3)
    if fig is None:
        if iso3 in ALPHA2_TO_ALPHA3.values():
            raise AccountingError(
                f"codecarbon's global_energy_mix.json has no carbon intensity for {text!r} ({iso3})"
            )
        raise _unknown(text)
    return _location(iso3, f"{fig.name} ({iso3})", fig, source)


class _RegionalDataMissing(AccountingError):
    """The installed codecarbon release ships no data for this kind of region."""


def _subnational(text: str, iso3: str | None, region: str, source: str, *, iso_code: bool = False) -> Location:
    """A state, province or zone: ``region`` is a name or code within the country ``iso3``."""
    kind = _REGIONAL_KIND.get(iso3 or "")
    if iso_code and kind == "nordic":
        raise AccountingError(
            f"unknown location {text!r}: Nordic bidding zones are written SE1-SE4, NO1-NO5 or FIN/FI"
        )
    if kind is None:
        if iso3 is None or iso3 not in _data.country_intensities():
            raise _unknown(text)
        raise AccountingError(
            f"codecarbon has no regional data for {text!r}: use the country ({iso3}); regions exist for "
            "US states, Canadian and Chinese provinces and Nordic zones"
        )
    missing = _data.regional_dataset_missing(kind)
    if missing:
        raise _RegionalDataMissing(f"location {text!r}: {missing}")
    key = _fold(region)
    if kind == "chn":
        key = _data.china_province_name_key(key)
    found = _regions(kind).get(key)
    if found is None and kind == "chn" and key in _CHINA_ELSEWHERE:
        instead = _CHINA_ELSEWHERE[key]
        raise AccountingError(
            f"codecarbon's Chinese provincial data (MEE/NBS) has no figure for {text!r}: use "
            + ("the national figure, CHN" if instead == "CHN" else f"its own country code, {instead}")
        )
    if found is None or found.fig.country != iso3:
        raise _unknown(text)
    return _location(found.spec, found.label, found.fig, source)


def _cloud(text: str, source: str) -> Location:
    provider, _, region = (part.strip() for part in text.partition(":"))
    provider, region = provider.lower(), region.lower()
    if provider not in _PROVIDERS:
        raise AccountingError(
            f"unknown cloud provider {provider!r} in location {text!r}: "
            "use gcp:<region>, aws:<region> or azure:<region>"
        )
    if provider == "gcp":
        regions = _data.gcp_region_intensities()
        fig = regions.get(region) or regions.get(_GCP_ALIASES.get(region, ""))
        if fig is None:
            raise _unknown(text)
        return _location(f"gcp:{region}", f"gcp:{region} ({fig.name})", fig, source)
    row = cloud_regions().get((provider, region))
    if row is None:
        raise _unknown(text)
    spec = f"{provider}:{region}"
    try:
        grid = resolve_location(row.location, source=source)
        label = f"{spec} ({row.place}; grid {grid.label})"
    except _RegionalDataMissing:
        # An older codecarbon without this region's data: the country's figure, said so.
        grid = resolve_location(_spec_country(row.location), source=source)
        label = (
            f"{spec} ({row.place}; grid {row.location} not in codecarbon {_data.codecarbon_version()}, "
            f"national figure {grid.label} used)"
        )
    return Location(
        spec=spec,
        label=label,
        intensity_g_per_kwh=grid.intensity_g_per_kwh,
        source=f"{grid.source}; region to grid: greenmaas cloud_regions.csv",
        year=grid.year,
        location_source=source,
        country=grid.country,
        codecarbon_version=grid.codecarbon_version,
    )


def _default_location(*, warn: bool = True) -> Location:
    """The world average, ``location_source="default"``; warns (once per process) when ``warn``.

    Reports that state the default in their sources pass ``warn=False``.
    """
    fig = _data.world_average()
    if warn:
        _warn_no_location(fig.intensity_g_per_kwh)
    return Location(
        spec=None,
        label="World average (no location configured)",
        intensity_g_per_kwh=fig.intensity_g_per_kwh,
        source=fig.dataset,
        year=fig.year,
        location_source="default",
        codecarbon_version=_data.codecarbon_version(),
    )


@functools.lru_cache(maxsize=1)
def _warn_no_location(value: float) -> None:
    # lru_cache makes this warn once per process; tests call _warn_no_location.cache_clear().
    warnings.warn(
        f"no location configured: carbon uses the world average ({value:g} g/kWh, 'default'); "
        "set GREENMAAS_LOCATION (e.g. FR, US-CA, gcp:europe-west1, aws:us-east-1 or a number in g/kWh) "
        "or pass location=",
        NoLocationWarning,
        stacklevel=_outside_greenmaas(),
    )


def _outside_greenmaas() -> int:
    """The stacklevel of the first caller outside greenmaas, so the warning points at user code."""
    package_dir = str(Path(__file__).resolve().parents[1])
    frame: FrameType | None = sys._getframe(1)  # the frame calling warnings.warn is stacklevel 1
    level = 1
    while frame is not None:
        filename = frame.f_code.co_filename
        # "<string>" frames are dataclass-generated __init__ methods.
        if not (filename.startswith(package_dir) or filename == "<string>"):
            return level
        frame = frame.f_back
        level += 1
    return 1


# ---------------------------------------------------------------------------------- suggestions


def _candidates_for(lower: str) -> dict[str, str]:
    """The known specs of the same form as ``lower``: codes for codes, regions for regions."""
    known = known_locations()
    if ":" in lower:
        prefix = lower.partition(":")[0] + ":"
        same = {k: v for k, v in known.items() if k.startswith(prefix)}
        return same or {k: v for k, v in known.items() if ":" in k}
    if "/" in lower:
        head = lower.partition("/")[0].strip()
        prefix = (_iso3(head) or head).lower() + "/"
        same = {k: v for k, v in known.items() if k.startswith(prefix)}
        return same or {k: v for k, v in known.items() if "/" in k}
    subdivision = re.fullmatch(r"([a-z]{2})-[a-z0-9]{0,3}", lower)
    if subdivision:
        prefix = subdivision.group(1) + "-"
        same = {k: v for k, v in known.items() if k.startswith(prefix) and ":" not in k}
        return same or {k: v for k, v in known.items() if re.fullmatch(r"[a-z]{2}-[a-z0-9]+", k)}
    if re.fullmatch(r"[a-z]{2}[0-9]", lower):
        return {k: v for k, v in known.items() if re.fullmatch(r"[a-z]{2}[0-9]", k)}
    if re.fullmatch(r"[a-z]{2,3}", lower):
        return {k: v for k, v in known.items() if len(k) == len(lower) and k.isalpha()}
    # Anything else (a country, state or province name, a bare cloud region): offer every form,
    # matched by name as well as by code.
    out = dict(known)
    for iso3, fig in _data.country_intensities().items():
        out.setdefault(fig.name.lower(), iso3)
    for key, value in known.items():
        if ":" in key or "/" in key:
            out.setdefault(key.split(":", 1)[-1].split("/", 1)[-1], value)
    return out


def _suggest(text: str, n: int = 3) -> list[str]:
    lower = text.strip().lower()
    candidates = _candidates_for(lower)
    scored = []
    for key, canonical in candidates.items():
        ratio = difflib.SequenceMatcher(None, lower, key).ratio()
        if ratio >= 0.6:
            scored.append((-ratio, canonical))
    out: list[str] = []
    for _, canonical in sorted(scored):
        if canonical not in out:
            out.append(canonical)
        if len(out) == n:
            break
    return out


def _unknown(text: str) -> AccountingError:
    close = _suggest(text)
    if close:
        return AccountingError(f"unknown location {text!r}: did you mean {', '.join(close)}?")
    return AccountingError(f"unknown location {text!r}: {_FORMS}")
