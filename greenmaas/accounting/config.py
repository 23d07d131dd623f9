"""Accounting settings, and pricing spans in carbon and money with them.

:class:`AccountingConfig` gathers what turns joules into grams and money: the location (and so
the location-based grid intensity), an optional time-varying intensity series, an optional
market-based intensity (reported beside the location-based figure, never instead of it), a
tariff, the PUE, hardware rental prices and embodied carbon per device kind, and the currency.

Environment variables read by :meth:`AccountingConfig.from_env`::

    GREENMAAS_LOCATION          FR, US-CA, USA/virginia, CA-QC, CAN/quebec, CN-GD, SE3,
                                gcp:europe-west1, aws:us-east-1, 420
    GREENMAAS_INTENSITY_CSV     path to a timestamp,gco2_per_kwh CSV (time-varying intensity)
    GREENMAAS_MARKET_INTENSITY  market-based intensity in g/kWh (contracts, certificates)
    GREENMAAS_PRICE             tariff: 0.25EUR/kWh, or 0.30EUR/kWh@08-20@mon-fri,0.18EUR/kWh
    GREENMAAS_PUE               power usage effectiveness, >= 1.0 (default 1.0)
    GREENMAAS_HARDWARE_PRICE    gpu=2.50USD/h[,cpu=0.10USD/h]
    GREENMAAS_EMBODIED          gpu=150kg/4y[,cpu=30kg/5y] (embodied kgCO2e per device, lifetime)

:func:`price` is the vectorised function reports call on a DataFrame of spans; :func:`describe`
gives the facts a report prints beside its figures; :meth:`AccountingConfig.to_dict` is what a
ledger stores as the configuration used at the time, and :func:`recorded` rebuilds it for reports;
:meth:`AccountingConfig.with_overrides` replaces some settings to price the same energy again.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..errors import AccountingError, ConfigError, GreenmaasError, InputError
from .embodied import Embodied, parse_embodied
from .locations import Location, resolve_location
from .sci import SCIResult, sci_score
from .tariff import HourlyPrice, Tariff, common_currency, parse_hardware_prices, parse_tariff
from .timeseries import J_PER_KWH, IntensitySeries, to_epoch_ns

if TYPE_CHECKING:
    import pandas as pd

    from ..records import SpanRecord

__all__ = [
    "AccountingConfig",
    "price",
    "price_records",
    "describe",
    "parse_setting",
    "recorded",
    "ENV_VARS",
    "PRICE_COLUMNS",
]

#: Field name -> environment variable read by ``from_env``.
ENV_VARS = {
    "location": "GREENMAAS_LOCATION",
    "series": "GREENMAAS_INTENSITY_CSV",
    "market_intensity_g_per_kwh": "GREENMAAS_MARKET_INTENSITY",
    "tariff": "GREENMAAS_PRICE",
    "pue": "GREENMAAS_PUE",
    "hardware_prices": "GREENMAAS_HARDWARE_PRICE",
    "embodied": "GREENMAAS_EMBODIED",
}

#: Columns :func:`price` adds.
PRICE_COLUMNS = (
    "carbon_g",
    "carbon_market_g",
    "energy_cost",
    "hardware_cost",
    "cost",
    "currency",
    "intensity_g_per_kwh",
    "intensity_source",
)


#: No facility uses ten times its IT energy: a larger PUE is a typo (or 1e308), not a site.
_MAX_PUE = 10.0


def _check_pue(value: Any) -> float:
    try:
        pue = float(value)
    except (TypeError, ValueError):
        raise AccountingError(f"PUE {value!r} is not a number; expected a number >= 1.0 such as 1.2") from None
    if not math.isfinite(pue) or not 1.0 <= pue <= _MAX_PUE:
        raise AccountingError(
            f"PUE {value!r} must be a number from 1.0 to {_MAX_PUE:g} (facility energy / IT energy; "
            "data centres report 1.1-2)"
        )
    return pue


def _check_intensity(value: Any, what: str) -> float:
    if isinstance(value, str):
        value = value.strip().removesuffix("g/kWh").strip()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AccountingError(f"{what} {value!r} is not a number of g/kWh") from None
    if not math.isfinite(number) or number < 0:
        raise AccountingError(f"{what} {value!r} must be a finite number >= 0 g/kWh")
    return number


@dataclass(frozen=True)
class AccountingConfig:
    """How energy is turned into carbon and cost. Strings are parsed on construction.

    ``location``: a :class:`Location` or any spec :func:`resolve_location` accepts; left out
    (with no ``series``) it is the world average, with a warning. ``series``: an
    :class:`IntensitySeries` or a CSV path; when given it prices carbon instead of the location's
    single figure. ``market_intensity_g_per_kwh``: market-based g/kWh, reported beside.
    ``tariff``: a :class:`Tariff` or tariff spec. ``pue``: >= 1.0, multiplies energy before both
    carbon and cost. ``hardware_prices``: per device kind (``{"gpu": "2.50USD/h"}`` or
    ``"gpu=2.50USD/h"``). ``embodied``: :class:`Embodied` per device kind (or ``"gpu=150kg/4y"``,
    see :func:`~greenmaas.accounting.embodied.parse_embodied`). ``currency``: the
    currency of every price (derived from them when left out; a mismatch raises).
    """

    location: Location | None = None
    series: IntensitySeries | None = None
    market_intensity_g_per_kwh: float | None = None
    tariff: Tariff | None = None
    pue: float = 1.0
    hardware_prices: Mapping[str, HourlyPrice] = field(default_factory=dict)
    embodied: Mapping[str, Embodied] = field(default_factory=dict)
    currency: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.series is not None and not isinstance(self.series, IntensitySeries):
            set_(self, "series", IntensitySeries.from_csv(self.series))
        if self.location is not None or self.series is None:
            set_(self, "location", resolve_location(self.location))
        if self.market_intensity_g_per_kwh is not None:
            set_(self, "market_intensity_g_per_kwh",
                 _check_intensity(self.market_intensity_g_per_kwh, "market-based intensity"))
        if self.tariff is not None:
            set_(self, "tariff", parse_tariff(self.tariff))
        set_(self, "pue", _check_pue(self.pue))
        set_(self, "hardware_prices", parse_hardware_prices(self.hardware_prices))
        set_(self, "embodied", parse_embodied(self.embodied or {}))
        explicit = (self.currency.strip().upper() or None) if isinstance(self.currency, str) else self.currency
        if explicit is not None and not (isinstance(explicit, str) and len(explicit) == 3 and explicit.isalpha()):
            raise AccountingError(f"currency {self.currency!r} is not an ISO-4217 code such as EUR or USD")
        currency = common_currency(
            ("currency setting", explicit),
            ("tariff", self.tariff.currency if self.tariff else None),
            *((f"{kind} hardware price", p.currency) for kind, p in self.hardware_prices.items()),
        )
        set_(self, "currency", currency)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_env(cls, *, environ: Mapping[str, str] | None = None, **overrides: Any) -> "AccountingConfig":
        """Settings from ``GREENMAAS_*`` variables (see the module doc), overridden by keywords.

        Keywords are the field names; one given (not None) wins over its variable. A location
        from a keyword is marked ``configured``, from the variable ``env``, neither ``default``.
        ``environ`` replaces ``os.environ`` (for tests). Bad variables raise :class:`ConfigError`
        naming the variable.
        """
        unknown = set(overrides) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"unknown accounting setting(s) {', '.join(sorted(unknown))}; "
                f"expected {', '.join(cls.__dataclass_fields__)}"
            )
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        for name, var in ENV_VARS.items():
            if name in values:
                continue
            raw = (env.get(var) or "").strip()
            if not raw:
                continue
            try:
                values[name] = parse_setting(name, raw, source="env")
            except (AccountingError, InputError) as exc:
                raise ConfigError(f"{var}: {exc}") from exc
        return cls(**values)

    def with_overrides(self, **settings: Any) -> "AccountingConfig":
        """This configuration with some settings replaced, to price the same energy again.

        Keywords are field names with values as the constructor takes them (None: keep). A new
        ``location`` drops a time-varying ``series`` unless one is given too; a new ``series``
        drops a location that was only the default; a new ``tariff`` or ``hardware_prices``
        re-derives the currency (a mix of currencies still raises :class:`AccountingError`).
        """
        unknown = set(settings) - set(self.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown accounting setting(s) {', '.join(sorted(unknown))}")
        given = {k: v for k, v in settings.items() if v is not None}
        if not given:
            return self
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if "location" in given and "series" not in given:
            values["series"] = None
        if "series" in given and "location" not in given and self.location is not None \
                and self.location.location_source == "default":
            values["location"] = None
        if given.keys() & {"tariff", "hardware_prices"} and "currency" not in given:
            values["currency"] = None
        values.update(given)
        return type(self)(**values)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as used, JSON-ready, for a ledger's run config."""
        from .intensity import codecarbon_version

        loc = self.location
        return {
            "location": loc.to_dict() if loc else None,
            "intensity_series": self.series.summary() if self.series else None,
            "market_intensity_g_per_kwh": self.market_intensity_g_per_kwh,
            "price": self.tariff.to_string() if self.tariff else None,
            "tariff": self.tariff.to_dict() if self.tariff else None,
            "currency": self.currency,
            "pue": self.pue,
            "hardware_prices": {k: str(v) for k, v in self.hardware_prices.items()},
            "embodied": {k: e.to_dict() for k, e in self.embodied.items()},
            "codecarbon_version": (loc.codecarbon_version if loc and loc.codecarbon_version
                                   else _safe(codecarbon_version)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, load_series: bool = True) -> "AccountingConfig":
        """Rebuild a stored configuration without looking anything up again.

        The stored location keeps its stored figure. A stored intensity series is re-read from
        its path when ``load_series`` (AccountingError if the file is gone); otherwise it is left
        out and the stored location (if any) is used.
        """
        if not isinstance(data, Mapping):
            raise AccountingError(f"stored accounting config {data!r} is not a dict")
        loc = data.get("location")
        series = None
        summary = data.get("intensity_series")
        if summary and load_series:
            path = Path(summary["source"])
            if not path.is_file():
                raise AccountingError(
                    f"stored config uses intensity series {path}, which no longer exists; pass load_series=False"
                )
            series = IntensitySeries.from_csv(path, hold_before_first=bool(summary.get("hold_before_first")))
        tariff = data.get("tariff") or data.get("price")
        return cls(
            location=Location.from_dict(loc) if loc else None,
            series=series,
            market_intensity_g_per_kwh=data.get("market_intensity_g_per_kwh"),
            tariff=tariff,
            pue=data.get("pue", 1.0),
            hardware_prices=data.get("hardware_prices") or {},
            embodied=data.get("embodied") or {},
            currency=data.get("currency"),
        )

    # ------------------------------------------------------------------ facts and SCI

    @property
    def intensity_source(self) -> str:
        """The data behind carbon figures: the series' file, or the location's data set."""
        if self.series is not None:
            return f"intensity series {self.series.source}"
        assert self.location is not None
        return self.location.source

    def embodied_g(self, device_kind: str, reserved_s: Any, share: Any = 1.0) -> Any:
        """Embodied gCO2e of ``reserved_s`` seconds holding ``share`` of a ``device_kind`` device."""
        emb = self.embodied.get(device_kind.lower())
        if emb is None:
            raise AccountingError(
                f"no embodied carbon configured for device kind {device_kind!r} "
                f"(configured: {', '.join(self.embodied) or 'none'})"
            )
        return emb.amortised_g(reserved_s, share)

    def sci(
        self,
        *,
        energy_j: float,
        functional_units: float,
        unit: str = "request",
        start: Any = None,
        end: Any = None,
        embodied_g: float = 0.0,
    ) -> SCIResult:
        """SCI v1.1 for energy measured over ``[start, end)`` with this config's PUE and intensity.

        With a series, ``start`` and ``end`` are needed (I is the series' mean over the span);
        otherwise I is the location's figure. ``embodied_g`` is M (see :meth:`embodied_g`).
        """
        if self.series is not None:
            if start is None or end is None:
                raise AccountingError("SCI with a time-varying intensity needs the span's start and end")
            intensity = float(self.series.mean_intensity_g_per_kwh(start, end)[0])
        else:
            assert self.location is not None
            intensity = self.location.intensity_g_per_kwh
        return sci_score(energy_j=energy_j, intensity_g_per_kwh=intensity, functional_units=functional_units,
                         embodied_g=embodied_g, pue=self.pue, unit=unit)


def parse_setting(name: str, raw: Any, *, source: str = "configured") -> Any:
    """One setting (a field name of :class:`AccountingConfig`) from the text a user typed.

    The forms are those of the ``GREENMAAS_*`` variables (see the module doc); ``embodied`` is
    ``gpu=150kg/4y[,cpu=30kg/5y]``. ``source`` marks a location ``configured`` or ``env``.
    Raises :class:`AccountingError` (an :class:`~greenmaas.errors.InputError` for a bad CSV).
    """
    if name == "location":
        return resolve_location(raw, source=source)
    if name == "series":
        return IntensitySeries.from_csv(str(raw).strip())
    if name == "market_intensity_g_per_kwh":
        return _check_intensity(raw, "market-based intensity")
    if name == "tariff":
        return parse_tariff(raw)
    if name == "pue":
        return _check_pue(raw.strip() if isinstance(raw, str) else raw)
    if name == "hardware_prices":
        return parse_hardware_prices(raw)
    if name == "embodied":
        return parse_embodied(raw)
    if name == "currency":
        return str(raw).strip().upper()
    raise ConfigError(f"unknown accounting setting {name!r}; expected one of {', '.join(ENV_VARS)}")


def recorded(data: Mapping[str, Any] | None) -> tuple[AccountingConfig, list[str]]:
    """Rebuild a run's stored ``config["accounting"]`` as used at the time, for a report.

    Returns the configuration and notes for the reader. Nothing is looked up again: the stored
    location keeps its stored figure. A stored intensity series is re-read only if its file is
    still there and unchanged (same points and first and last times); otherwise its stored mean
    stands in, as a fixed figure, with a note. No settings (or unreadable ones) give the world
    average, ``location_source="default"``, with a note and without a warning (the report says).
    """
    from .locations import _default_location

    if not data:
        return (AccountingConfig(location=_default_location(warn=False)),
                ["no accounting settings recorded: world-average intensity (location_source default)"])
    notes: list[str] = []
    summary = data.get("intensity_series")
    series = location = None
    if summary:
        source = str(summary.get("source", ""))
        try:
            candidate = IntensitySeries.from_csv(source, hold_before_first=bool(summary.get("hold_before_first")))
            fresh = candidate.summary()
            if all(fresh.get(k) == summary.get(k) for k in ("points", "first", "last")):
                series = candidate
        except GreenmaasError:
            pass
        if series is None:
            mean = float(summary.get("mean_g_per_kwh") or 0.0)
            location = Location(
                spec=f"{mean:g}", label=f"mean of intensity series {source}", intensity_g_per_kwh=mean,
                source=f"recorded mean of intensity series {source} ({summary.get('first')}..{summary.get('last')})",
                year=None, location_source=(data.get("location") or {}).get("location_source", "configured"),
            )
            notes.append(f"intensity series {source} is gone or changed: its recorded mean {mean:g} g/kWh is used")
    try:
        if location is None and data.get("location"):
            location = Location.from_dict(data["location"])
        if location is None and series is None:
            location = _default_location(warn=False)
        config = AccountingConfig(
            location=location,
            series=series,
            market_intensity_g_per_kwh=data.get("market_intensity_g_per_kwh"),
            tariff=data.get("tariff") or data.get("price"),
            pue=data.get("pue", 1.0),
            hardware_prices=data.get("hardware_prices") or {},
            embodied=data.get("embodied") or {},
            currency=data.get("currency"),
        )
    except (AccountingError, TypeError, ValueError, AttributeError) as exc:
        return (AccountingConfig(location=_default_location(warn=False)),
                [f"recorded accounting settings unusable ({exc}): world-average intensity (location_source default)"])
    return config, notes


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except AccountingError:
        return None


def describe(config: AccountingConfig) -> dict[str, Any]:
    """Human-readable facts for a report: where, how intense, from what data, at what price."""
    loc = config.location
    series = config.series.summary() if config.series else None
    if series is not None:
        label = f"time-varying intensity from {config.series.source}"  # type: ignore[union-attr]
        intensity = series["mean_g_per_kwh"]
    else:
        assert loc is not None
        label, intensity = loc.label, loc.intensity_g_per_kwh
    return {
        "location": label,
        "location_spec": loc.spec if loc else None,
        "location_source": loc.location_source if loc else "configured",
        "intensity_g_per_kwh": intensity,
        "intensity_source": config.intensity_source,
        "intensity_year": loc.year if (loc and series is None) else None,
        "intensity_series": series,
        "market_intensity_g_per_kwh": config.market_intensity_g_per_kwh,
        "pue": config.pue,
        "price": config.tariff.to_string() if config.tariff else None,
        "tariff_timezone": config.tariff.timezone if config.tariff else None,
        "currency": config.currency,
        "hardware_prices": {k: str(v) for k, v in config.hardware_prices.items()},
        "embodied": {k: e.to_dict() for k, e in config.embodied.items()},
        "codecarbon_version": loc.codecarbon_version if loc else None,
    }


def price(df: "pd.DataFrame", config: AccountingConfig) -> "pd.DataFrame":
    """Carbon and cost of each span; returns a copy of ``df`` with :data:`PRICE_COLUMNS` added.

    ``df`` needs ``energy_j`` (IT energy, J), ``start`` and ``end`` (UTC timestamps; naive means
    UTC); optionally ``device_kind`` and ``device_seconds`` (device time, for the hardware share).
    Energy is multiplied by the PUE, spread uniformly over ``[start, end)`` and priced interval by
    interval (intensity series, tariff periods). Added columns: ``carbon_g`` (location-based),
    ``carbon_market_g`` (NaN unless a market intensity is set), ``energy_cost`` (NaN without a
    tariff), ``hardware_cost`` (NaN without a price for the row's device kind), ``cost`` (their
    sum, NaN when both are), ``currency``, ``intensity_g_per_kwh`` (effective over the span) and
    ``intensity_source``. NaN energy gives NaN figures.
    """
    import pandas as pd

    missing = [c for c in ("energy_j", "start", "end") if c not in df.columns]
    if missing:
        raise AccountingError(f"cannot price spans: missing column(s) {', '.join(missing)}")
    out = df.copy()
    n = len(out)
    energy = pd.to_numeric(out["energy_j"], errors="coerce").to_numpy(dtype=np.float64)
    if (energy < 0).any():
        row = out.index[int(np.argmax(energy < 0))]
        raise AccountingError(f"cannot price spans: row {row!r} has negative energy_j {energy[energy < 0][0]!r}")
    if n:
        start_ns, end_ns = to_epoch_ns(out["start"]), to_epoch_ns(out["end"])
        bad = end_ns < start_ns
        if bad.any():
            row = out.index[int(np.argmax(bad))]
            raise AccountingError(f"cannot price spans: row {row!r} ends before it starts")
    else:
        start_ns = end_ns = np.empty(0, dtype=np.int64)
    carbon, market, energy_cost, intensity = energy_prices(energy, start_ns, end_ns, config)

    hardware_cost = np.full(n, np.nan)
    if config.hardware_prices and n and "device_seconds" in out.columns and "device_kind" in out.columns:
        seconds = pd.to_numeric(out["device_seconds"], errors="coerce").to_numpy(dtype=np.float64)
        if (seconds < 0).any():
            row = out.index[int(np.argmax(seconds < 0))]
            raise AccountingError(f"cannot price spans: row {row!r} has negative device_seconds")
        rates = {k: p.per_hour for k, p in config.hardware_prices.items()}
        per_hour = out["device_kind"].map(lambda k: rates.get(k.lower(), np.nan) if isinstance(k, str) else np.nan)
        hardware_cost = seconds / 3600.0 * per_hour.to_numpy(dtype=np.float64)

    cost = np.where(np.isnan(energy_cost) & np.isnan(hardware_cost), np.nan,
                    np.nan_to_num(energy_cost) + np.nan_to_num(hardware_cost))
    if n:
        # Unknown energy means unknown energy cost, not a cost of zero.
        cost = np.where(np.isnan(energy) & (config.tariff is not None), np.nan, cost)

    out["carbon_g"] = carbon
    out["carbon_market_g"] = market
    out["energy_cost"] = energy_cost
    out["hardware_cost"] = hardware_cost
    out["cost"] = cost
    out["currency"] = pd.Series([config.currency] * n, index=out.index, dtype=object)
    out["intensity_g_per_kwh"] = intensity
    out["intensity_source"] = pd.Series([config.intensity_source] * n, index=out.index, dtype=object)
    return out


def energy_prices(energy_j: np.ndarray, start_ns: np.ndarray, end_ns: np.ndarray,
                  config: AccountingConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Carbon (location- and market-based, g) and electricity cost of IT energy ``energy_j`` (J,
    NaN: unknown) spread over ``[start_ns, end_ns)`` (epoch ns), after the PUE; and the
    effective intensity (g/kWh). NaN where there is no such figure (no market intensity, no
    tariff). Arrays, no DataFrame: :func:`price` and the reports' sums use it. Raises
    AccountingError for negative energy or an interval ending before it starts (callers that
    can name the row check first)."""
    if (energy_j < 0).any() or (end_ns < start_ns).any():
        raise AccountingError("cannot price spans: negative energy or a span ending before it starts")
    n = energy_j.size
    kwh = energy_j * config.pue / J_PER_KWH
    if config.series is not None:
        intensity = config.series.mean_intensity_g_per_kwh(start_ns, end_ns) if n else np.empty(0)
    else:
        assert config.location is not None
        intensity = np.full(n, config.location.intensity_g_per_kwh)
    nan = np.full(n, np.nan)
    market = kwh * config.market_intensity_g_per_kwh if config.market_intensity_g_per_kwh is not None else nan
    energy_cost = kwh * config.tariff.mean_price_per_kwh(start_ns, end_ns) if (config.tariff and n) else nan
    return kwh * intensity, market, energy_cost, intensity


def price_records(records: "list[SpanRecord]", config: AccountingConfig) -> None:
    """Set ``carbon_g``, ``carbon_market_g``, ``cost`` and ``currency`` on span records in place.

    For the meter, at record time. Figures cover each record's inclusive ``energy_j`` (as its
    ``energy_j`` does; reports keep the ``self_energy_j`` share). ``cost`` here is electricity
    only: a span's hardware share needs device time across concurrent spans, which reports
    compute from the ledger. Records with no measured device get None.
    """
    from ..sources.base import UNMEASURABLE
    from .timeseries import _datetime_ns

    if not records:
        return
    # Arrays straight from the records (no DataFrame: this runs at every flush of the meter).
    n = len(records)
    energy = np.fromiter((r.energy_j for r in records), dtype=np.float64, count=n)
    start_ns = np.fromiter((_datetime_ns(r.start) for r in records), dtype=np.int64, count=n)
    end_ns = np.fromiter((_datetime_ns(r.end) for r in records), dtype=np.int64, count=n)
    carbon_a, market_a, cost_a, _ = energy_prices(energy, start_ns, end_ns, config)
    carbon, market, cost = carbon_a.tolist(), market_a.tolist(), cost_a.tolist()
    for i, record in enumerate(records):
        if all(d.method == UNMEASURABLE for d in record.devices):  # also true with no devices
            record.carbon_g = record.carbon_market_g = record.cost = None
            record.currency = None
            continue
        record.carbon_g = _maybe(carbon[i])
        record.carbon_market_g = _maybe(market[i])
        record.cost = _maybe(cost[i])
        record.currency = config.currency if record.cost is not None else None


def _maybe(value: Any) -> float | None:
    number = float(value)
    return None if math.isnan(number) else number
