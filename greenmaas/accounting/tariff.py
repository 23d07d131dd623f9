"""Electricity tariffs (flat and time-of-use) and hardware rental prices.

Prices are ``<number><ISO-4217 code>/<unit>``, spaces allowed around the parts::

    0.25EUR/kWh     0.25 EUR/kWh     180USD/MWh      (electricity)
    2.50USD/h                                          (hardware, per device-hour)

A **time-of-use tariff** is a comma-separated list of rules, each a price with optional
``@`` conditions, plus an optional ``tz=<IANA zone>`` item (default UTC) in which hours and
weekdays are read::

    0.30EUR/kWh@08-20@mon-fri,0.18EUR/kWh,tz=Europe/Paris

* hours ``HH-HH`` are whole local hours, start included, end excluded; ``22-06`` wraps midnight,
  ``00-24`` is the whole day;
* days are ``mon``..``sun``, ranges ``mon-fri`` (``fri-mon`` wraps), lists ``sat+sun``, or the
  words ``weekdays`` and ``weekends``;
* the **first matching rule wins**, and the last rule must have no conditions: it is the default.

The same tariff as a dict (or JSON, inline or in a ``.json`` file)::

    {"timezone": "Europe/Paris",
     "rules": [{"price": "0.30EUR/kWh", "hours": "08-20", "days": "mon-fri"},
               {"price": "0.18EUR/kWh"}]}

(``hours`` may also be ``[8, 20]`` and ``days`` a list of names.) Energy spread uniformly over
``[start, end)`` is split across the tariff's periods; costs are in the tariff's currency.
Nothing converts currencies: mixing them in one computation raises :class:`AccountingError`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import AccountingError
from ._kinds import kind_items
from .timeseries import J_PER_KWH, StepFunction, to_epoch_ns

__all__ = [
    "EnergyPrice",
    "HourlyPrice",
    "TariffRule",
    "Tariff",
    "parse_energy_price",
    "parse_hourly_price",
    "parse_tariff",
    "parse_hardware_prices",
    "split_hardware_cost",
    "common_currency",
]

_NUMBER = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([-+]?[0-9]+))?"
_PRICE_RE = re.compile(rf"^\s*{_NUMBER}\s*([A-Za-z]{{3}})\s*/\s*([A-Za-z]+)\s*$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_WORDS = {"weekdays": frozenset(range(5)), "weekends": frozenset({5, 6})}
_EXAMPLE = "'0.30EUR/kWh@08-20@mon-fri,0.18EUR/kWh'"
#: Local hours are evaluated on a 15-minute UTC grid: every zone in use today has an offset that
#: is a multiple of 15 minutes, so each grid slot lies inside one local hour.
_GRID_NS = 15 * 60 * 1_000_000_000


def _parse_amount(text: str, expected: str, units: Mapping[str, float]) -> tuple[float, str]:
    match = _PRICE_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise AccountingError(f"malformed price {text!r}: expected {expected}")
    mantissa, exponent, currency, unit = match.groups()
    factor = units.get(unit.lower())
    if factor is None:
        raise AccountingError(f"malformed price {text!r}: unit /{unit} is not allowed here; expected {expected}")
    value = float(mantissa) * (10.0 ** int(exponent) if exponent else 1.0)
    if not math.isfinite(value):
        raise AccountingError(f"malformed price {text!r}: expected {expected}")
    return value * factor, currency.upper()


def _fmt(value: float) -> str:
    return f"{value:.10g}"


@dataclass(frozen=True)
class EnergyPrice:
    """An electricity price: ``per_kwh`` units of ``currency`` per kWh."""

    per_kwh: float
    currency: str

    def __str__(self) -> str:
        return f"{_fmt(self.per_kwh)}{self.currency}/kWh"


@dataclass(frozen=True)
class HourlyPrice:
    """A rental price: ``per_hour`` units of ``currency`` per device-hour."""

    per_hour: float
    currency: str

    def __str__(self) -> str:
        return f"{_fmt(self.per_hour)}{self.currency}/h"

    def cost(self, device_seconds: Any) -> Any:
        """Cost of ``device_seconds`` of device time (a number or an array), in ``currency``."""
        seconds = np.asarray(device_seconds, dtype=np.float64)
        if (seconds < 0).any():
            raise AccountingError("device time must not be negative")
        out = seconds / 3600.0 * self.per_hour
        return float(out) if out.ndim == 0 else out


def parse_energy_price(text: str | EnergyPrice) -> EnergyPrice:
    """Parse ``0.25EUR/kWh`` or ``250EUR/MWh`` into an :class:`EnergyPrice`."""
    if isinstance(text, EnergyPrice):
        return text
    value, currency = _parse_amount(
        text, "<number><currency>/kWh or /MWh, e.g. 0.25EUR/kWh", {"kwh": 1.0, "mwh": 1e-3}
    )
    return EnergyPrice(value, currency)


def parse_hourly_price(text: str | HourlyPrice) -> HourlyPrice:
    """Parse ``2.50USD/h`` into an :class:`HourlyPrice` (per device-hour)."""
    if isinstance(text, HourlyPrice):
        return text
    value, currency = _parse_amount(text, "<number><currency>/h, e.g. 2.50USD/h", {"h": 1.0})
    return HourlyPrice(value, currency)


def parse_hardware_prices(spec: str | Mapping[str, Any] | None) -> dict[str, HourlyPrice]:
    """Hardware prices per device kind from ``gpu=2.50USD/h,cpu=0.10USD/h`` or a dict."""
    if spec is None:
        return {}
    items = kind_items(spec, "hardware price", "<kind>=<price>, e.g. gpu=2.50USD/h")
    out = {str(kind).strip().lower(): parse_hourly_price(price) for kind, price in items}
    common_currency(*((f"{kind} hardware price", p.currency) for kind, p in out.items()))
    return out


def common_currency(*named: tuple[str, str | None]) -> str | None:
    """The one currency shared by ``(what, currency)`` pairs (None ignored), or AccountingError."""
    seen: dict[str, str] = {}
    for what, currency in named:
        if currency is not None:
            seen.setdefault(currency, what)
    if len(seen) > 1:
        listed = ", ".join(f"{cur} ({what})" for cur, what in seen.items())
        raise AccountingError(f"mixed currencies: {listed}; greenmaas does not convert currencies")
    return next(iter(seen), None)


def split_hardware_cost(
    price: HourlyPrice, reserved_device_s: float, span_device_s: Iterable[float]
) -> tuple[np.ndarray, float]:
    """Charge a reservation's hardware cost to spans by their device time; the rest is idle.

    ``reserved_device_s`` is the device time paid for (devices × seconds reserved);
    ``span_device_s`` each span's device-seconds. Returns ``(span_costs, idle_cost)`` in
    ``price.currency``: each span pays its device time at the hourly rate, and time no span used
    is the operator's own line. Spans using more than was reserved raise.
    """
    spans = np.asarray(list(span_device_s) if not isinstance(span_device_s, np.ndarray) else span_device_s,
                       dtype=np.float64)
    if reserved_device_s < 0 or (spans < 0).any():
        raise AccountingError("device time must not be negative")
    used = float(spans.sum())
    idle_s = reserved_device_s - used
    if idle_s < -1e-9 * max(1.0, reserved_device_s):
        raise AccountingError(
            f"spans use {used:g} device-seconds but only {reserved_device_s:g} were reserved"
        )
    return price.cost(spans), float(price.cost(max(idle_s, 0.0)))


# ---------------------------------------------------------------------------------- time of use


@dataclass(frozen=True)
class TariffRule:
    """A price and the local hours ``[start, end)`` and weekdays (0 = Monday) it applies to.

    ``hours``/``weekdays`` of None mean "any".
    """

    price: EnergyPrice
    hours: tuple[int, int] | None = None
    weekdays: frozenset[int] | None = None

    @property
    def unconditional(self) -> bool:
        return self.hours is None and self.weekdays is None

    def hour_mask(self) -> np.ndarray:
        """24 booleans, one per local hour of day."""
        mask = np.ones(24, dtype=bool)
        if self.hours is not None:
            start, end = self.hours
            h = np.arange(24)
            mask = (h >= start) & (h < end) if start < end else (h >= start) | (h < end)
        return mask

    def to_string(self) -> str:
        parts = [str(self.price)]
        if self.hours is not None:
            parts.append(f"{self.hours[0]:02d}-{self.hours[1]:02d}")
        if self.weekdays is not None:
            parts.append(_days_to_string(self.weekdays))
        return "@".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"price": str(self.price)}
        if self.hours is not None:
            out["hours"] = list(self.hours)
        if self.weekdays is not None:
            out["days"] = [_DAYS[d] for d in sorted(self.weekdays)]
        return out


class Tariff:
    """An electricity tariff: ordered rules, first match wins, the last one unconditional.

    ``timezone`` is the IANA zone in which rule hours and weekdays are read (default UTC).
    Build one with :func:`parse_tariff`, :meth:`flat` or :meth:`from_dict`.
    """

    def __init__(self, rules: Iterable[TariffRule], timezone: str = "UTC", *, spec: str | None = None) -> None:
        self.rules = tuple(rules)
        what = f"tariff {spec!r}" if spec else "tariff"
        if not self.rules:
            raise AccountingError(f"malformed {what}: no price; expected e.g. {_EXAMPLE}")
        for n, rule in enumerate(self.rules[:-1], start=1):
            if rule.unconditional:
                raise AccountingError(
                    f"malformed {what}: rule {n} ({rule.to_string()}) has no conditions, so the rules "
                    "after it never apply; put the default last"
                )
        if not self.rules[-1].unconditional:
            raise AccountingError(
                f"malformed {what}: the last rule must have no conditions (it is the default price); "
                f"expected e.g. {_EXAMPLE}"
            )
        try:
            named = ((f"rule {n}", r.price.currency) for n, r in enumerate(self.rules, start=1))
            currency = common_currency(*named)
        except AccountingError as exc:
            raise AccountingError(f"malformed {what}: {exc}") from None
        self.currency: str = currency  # type: ignore[assignment]
        self.timezone = _check_zone(timezone, what)
        # Price per (weekday, local hour); earlier rules overwrite later ones, so the first wins.
        week = np.empty((7, 24), dtype=np.float64)
        for rule in reversed(self.rules):
            days = np.zeros(7, dtype=bool)
            days[list(rule.weekdays if rule.weekdays is not None else range(7))] = True
            week[np.ix_(days, rule.hour_mask())] = rule.price.per_kwh
        self._week_per_kwh = week

    # ------------------------------------------------------------------ construction

    @classmethod
    def flat(cls, price: str | EnergyPrice) -> "Tariff":
        """One price at all times."""
        return cls([TariffRule(parse_energy_price(price))])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Tariff":
        """Build from ``{"timezone": ..., "rules": [{"price", "hours"?, "days"?}, ...]}``."""
        if not isinstance(data, Mapping) or not isinstance(data.get("rules"), list):
            raise AccountingError(
                f"malformed tariff {_short(data)}: expected a dict with a 'rules' list, e.g. "
                '{"rules": [{"price": "0.30EUR/kWh", "hours": "08-20", "days": "mon-fri"}, '
                '{"price": "0.18EUR/kWh"}]}'
            )
        rules = []
        for n, item in enumerate(data["rules"], start=1):
            if not isinstance(item, Mapping) or "price" not in item:
                raise AccountingError(f"malformed tariff rule {n} {_short(item)}: expected a dict with a 'price'")
            unknown = set(item) - {"price", "hours", "days"}
            if unknown:
                raise AccountingError(
                    f"malformed tariff rule {n}: unknown keys {sorted(unknown)}; expected price, hours, days"
                )
            hours = item.get("hours")
            days = item.get("days")
            rules.append(TariffRule(
                parse_energy_price(item["price"]),
                None if hours is None else _parse_hours(hours, f"rule {n}"),
                None if days is None else _parse_days(days, f"rule {n}"),
            ))
        return cls(rules, data.get("timezone") or "UTC", spec=data.get("spec"))

    def to_dict(self) -> dict[str, Any]:
        """The tariff as a JSON-ready dict; :meth:`from_dict` reads it back."""
        return {
            "spec": self.to_string(),
            "timezone": self.timezone,
            "currency": self.currency,
            "rules": [r.to_dict() for r in self.rules],
        }

    def to_string(self) -> str:
        """The tariff in the string syntax; :func:`parse_tariff` reads it back."""
        text = ",".join(r.to_string() for r in self.rules)
        return text if self.timezone == "UTC" else f"{text},tz={self.timezone}"

    __str__ = to_string

    def __repr__(self) -> str:
        return f"Tariff({self.to_string()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tariff) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_string())

    @property
    def is_flat(self) -> bool:
        return len(self.rules) == 1

    # ------------------------------------------------------------------ pricing

    def price_per_kwh_at(self, t: Any) -> np.ndarray:
        """Price per kWh holding at each timestamp (naive = UTC)."""
        t_ns = to_epoch_ns(t)
        if self.is_flat:
            return np.full(t_ns.shape, self.rules[0].price.per_kwh)
        return self._steps(t_ns, t_ns).value_at(t_ns)

    def mean_price_per_kwh(self, start: Any, end: Any) -> np.ndarray:
        """Effective price per kWh for energy spread uniformly over each ``[start, end)``."""
        s, e = to_epoch_ns(start), to_epoch_ns(end)
        if self.is_flat:
            s, e = np.broadcast_arrays(s, e)
            if (e < s).any():
                raise AccountingError("a span ends before it starts")
            return np.full(s.shape, self.rules[0].price.per_kwh)
        return self._steps(s, e).mean_over(s, e)

    def energy_cost(self, energy_j: Any, start: Any, end: Any) -> Any:
        """Cost, in :attr:`currency`, of ``energy_j`` joules spread uniformly over ``[start, end)``.

        Scalars give a float; arrays an array. Energy straddling a price change is split at it.
        """
        energy = np.asarray(energy_j, dtype=np.float64)
        cost = np.atleast_1d(energy) / J_PER_KWH * self.mean_price_per_kwh(start, end)
        return float(cost[0]) if energy.ndim == 0 and cost.size == 1 else cost

    def _steps(self, s: np.ndarray, e: np.ndarray) -> StepFunction:
        """The tariff as a step function of UTC time covering ``[min(s), max(e)]``."""
        lo = (int(np.min(s)) // _GRID_NS) * _GRID_NS
        hi = (int(np.max(e)) // _GRID_NS + 1) * _GRID_NS
        grid = np.arange(lo, hi + 1, _GRID_NS, dtype=np.int64)
        weekday, hour = _local_week_hours(grid, self.timezone)
        prices = self._week_per_kwh[weekday, hour]
        keep = np.concatenate(([True], prices[1:] != prices[:-1]))
        return StepFunction(grid[keep], prices[keep], name="tariff")


def _local_week_hours(grid_ns: np.ndarray, zone: str) -> tuple[np.ndarray, np.ndarray]:
    """Day of the week (Monday 0) and hour of the UTC instants ``grid_ns`` (epoch ns) on the
    clocks of ``zone`` (the IANA database through :mod:`zoneinfo`)."""
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    seconds = grid_ns // 1_000_000_000
    if zone == "UTC":
        local = seconds
    else:
        tz = ZoneInfo(zone)
        offsets = [
            int(datetime.fromtimestamp(t, tz=timezone.utc).astimezone(tz).utcoffset().total_seconds())  # type: ignore[union-attr]
            for t in seconds.tolist()
        ]
        local = seconds + np.asarray(offsets, dtype=np.int64)
    days = local // 86_400
    # 1970-01-01 was a Thursday (3, Monday being 0).
    return (days + 3) % 7, (local % 86_400) // 3600


def parse_tariff(spec: str | Mapping[str, Any] | Tariff, *, timezone: str | None = None) -> Tariff:
    """A :class:`Tariff` from the string syntax, a dict, inline JSON or a path to a ``.json`` file.

    ``timezone`` overrides the zone the spec names (or UTC).
    """
    if isinstance(spec, Tariff):
        tariff = spec
    elif isinstance(spec, Mapping):
        tariff = Tariff.from_dict(spec)
    elif isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            tariff = Tariff.from_dict(_load_json(text, None))
        elif text.lower().endswith(".json"):
            try:
                raw = Path(text).read_text(encoding="utf-8")
            except OSError as exc:
                raise AccountingError(f"cannot read tariff file {text}: {exc.strerror or exc}") from exc
            except UnicodeDecodeError as exc:
                raise AccountingError(
                    f"malformed tariff file {text}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                    f"at offset {exc.start})"
                ) from None
            tariff = Tariff.from_dict(_load_json(raw, text))
        else:
            tariff = _parse_tariff_string(text)
    else:
        raise AccountingError(f"malformed tariff {spec!r}: expected a string such as {_EXAMPLE} or a dict")
    if timezone is not None and timezone != tariff.timezone:
        tariff = Tariff(tariff.rules, timezone)
    return tariff


def _parse_tariff_string(text: str) -> Tariff:
    rules: list[TariffRule] = []
    zone = "UTC"
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise AccountingError(f"malformed tariff {text!r}: empty rule; expected e.g. {_EXAMPLE}")
        if item.lower().startswith("tz="):
            zone = item[3:].strip()
            continue
        price, *conditions = (c.strip() for c in item.split("@"))
        try:
            energy_price = parse_energy_price(price)
        except AccountingError as exc:
            if price == text:
                raise
            raise AccountingError(f"{exc} (in tariff {text!r})") from None
        hours = days = None
        for cond in conditions:
            where = f"tariff {text!r}"
            if cond[:1].isdigit():
                if hours is not None:
                    raise AccountingError(f"malformed {where}: two hour ranges in {item!r}")
                hours = _parse_hours(cond, where)
            else:
                if days is not None:
                    raise AccountingError(f"malformed {where}: two day sets in {item!r}")
                days = _parse_days(cond, where)
        rules.append(TariffRule(energy_price, hours, days))
    return Tariff(rules, zone, spec=text)


def _parse_hours(value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        start, end = value
    else:
        match = re.fullmatch(r"\s*(\d{1,2})(?::00)?\s*-\s*(\d{1,2})(?::00)?\s*", str(value))
        if not match:
            raise AccountingError(
                f"malformed hours {value!r} in {where}: expected whole local hours HH-HH, e.g. 08-20 or 22-06"
            )
        start, end = int(match.group(1)), int(match.group(2))
    if not (0 <= start <= 23 and 1 <= end <= 24) or start == end:
        raise AccountingError(f"malformed hours {value!r} in {where}: expected 00..23 - 01..24, start != end")
    return start, end


def _parse_days(value: Any, where: str) -> frozenset[int]:
    items = list(value) if isinstance(value, (list, tuple)) else str(value).split("+")
    days: set[int] = set()
    for raw in items:
        token = str(raw).strip().lower()
        if token in _DAY_WORDS:
            days |= _DAY_WORDS[token]
            continue
        first, sep, last = token.partition("-")
        a = _day_index(first)
        b = _day_index(last) if sep else a
        if a is None or b is None:
            raise AccountingError(
                f"malformed days {value!r} in {where}: expected mon..sun, a range like mon-fri, "
                "a list like sat+sun, weekdays or weekends"
            )
        d = a
        days.add(d)
        while d != b:  # a range like fri-mon wraps over the weekend
            d = (d + 1) % 7
            days.add(d)
    return frozenset(days)


_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day_index(token: str) -> int | None:
    token = token.strip()
    for i, (short, full) in enumerate(zip(_DAYS, _FULL_DAYS)):
        if token in (short, full):
            return i
    return None


def _days_to_string(days: frozenset[int]) -> str:
    ordered = sorted(days)
    if len(ordered) > 1 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{_DAYS[ordered[0]]}-{_DAYS[ordered[-1]]}"
    return "+".join(_DAYS[d] for d in ordered)


def _check_zone(zone: str, what: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if zone in ("UTC", "utc", "Z"):
        return "UTC"
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise AccountingError(
            f"malformed {what}: unknown time zone {zone!r}; expected an IANA name such as Europe/Paris"
        ) from None
    return zone


def _load_json(text: str, path: str | None) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        where = f"tariff file {path}" if path else "tariff JSON"
        raise AccountingError(f"malformed {where}: {exc}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
