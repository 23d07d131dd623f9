"""Time-varying grid carbon intensity, and the step functions of time that carbon and prices share.

An intensity CSV has a header ``timestamp,gco2_per_kwh`` (other columns are ignored)::

    timestamp,gco2_per_kwh
    2024-05-01T00:00:00Z,52.1
    2024-05-01T01:00:00+00:00,48.7
    2024-05-01 02:00,47.9

Timestamps are ISO-8601; naive ones are UTC, ones with an offset are converted to UTC. They must
strictly increase. Each value holds from its timestamp until the next one; the last holds onward
(a series downloaded up to "now" naturally lags a live run). Energy **before the first timestamp**
is an error by default, because that would price energy with a figure for a different time; pass
``hold_before_first=True`` to let the first value hold backwards instead.

Energy spread uniformly over a span ``[start, end)`` is priced interval by interval: the carbon is
the sum, over the intervals the span overlaps, of the energy falling in the interval times that
interval's intensity — never total energy times the average of the values. All of it is
vectorised (numpy) so that reports can price thousands of spans at once.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .._parsing import CsvFile
from ..errors import AccountingError, ConfigError, InputError
from ..timeparse import parse_time

__all__ = ["IntensitySeries", "StepFunction", "to_epoch_ns", "parse_timestamp", "J_PER_KWH"]

#: Joules in a kilowatt-hour.
J_PER_KWH = 3.6e6

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NS_PER_S = 1_000_000_000
_COLUMNS = ("timestamp", "gco2_per_kwh")


def parse_timestamp(text: str) -> datetime:
    """An ISO-8601 timestamp as an aware UTC datetime (naive means UTC), by
    :func:`greenmaas.timeparse.parse_time`. Raises ValueError."""
    try:
        return parse_time(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _datetime_ns(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


def to_epoch_ns(values: Any) -> np.ndarray:
    """Nanoseconds since the Unix epoch (int64) for timestamps of any usual kind.

    Accepts a datetime, a pandas Timestamp, np.datetime64, an ISO string, or a sequence, array,
    Series or DatetimeIndex of them. Naive values are UTC. An int64 numpy array is taken to be
    epoch nanoseconds already and returned as is. Always returns a 1-d array.
    """
    if isinstance(values, np.ndarray) and values.dtype == np.int64:
        return np.atleast_1d(values)
    # A plain datetime (a pandas Timestamp, a subclass, keeps its nanoseconds below).
    if type(values) is datetime:
        return np.array([_datetime_ns(values)], dtype=np.int64)
    if isinstance(values, str):  # one time a person wrote: the package's own parser
        try:
            return np.array([_datetime_ns(parse_time(values))], dtype=np.int64)
        except ConfigError as exc:
            raise AccountingError(f"cannot read timestamps {_short(values)}: {exc}") from None
    import pandas as pd

    scalar = isinstance(values, (str, pd.Timestamp, np.datetime64))
    try:
        converted = pd.to_datetime([values] if scalar else values, utc=True)
        index = pd.DatetimeIndex(converted)
    except (TypeError, ValueError, OverflowError) as exc:
        raise AccountingError(f"cannot read timestamps {_short(values)}: {exc}") from exc
    if index.hasnans:
        raise AccountingError(f"missing timestamps (NaT) in {_short(values)}")
    return np.asarray(index.as_unit("ns").asi8, dtype=np.int64)


def _short(values: Any) -> str:
    text = repr(values)
    return text if len(text) <= 60 else text[:57] + "..."


def _iso(ns: int) -> str:
    return (_EPOCH + timedelta(microseconds=int(ns) // 1000)).isoformat().replace("+00:00", "Z")


class StepFunction:
    """A piecewise-constant function of UTC time.

    ``breakpoints_ns`` (int64, strictly increasing) and ``values``: value ``i`` holds on
    ``[breakpoints_ns[i], breakpoints_ns[i+1])``, the last onward. Before the first breakpoint it
    raises unless ``hold_before_first``. ``name`` appears in error messages.
    """

    def __init__(
        self, breakpoints_ns: Iterable[int], values: Iterable[float], *, hold_before_first: bool = False,
        name: str = "series",
    ) -> None:
        b = np.asarray(list(breakpoints_ns) if not isinstance(breakpoints_ns, np.ndarray) else breakpoints_ns,
                       dtype=np.int64)
        v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
        if b.ndim != 1 or b.shape != v.shape or b.size == 0:
            raise AccountingError(f"{name}: needs as many timestamps as values, at least one")
        if b.size > 1 and not np.all(np.diff(b) > 0):
            raise AccountingError(f"{name}: timestamps must strictly increase")
        self.breakpoints_ns = b
        self.values = v
        self.hold_before_first = hold_before_first
        self.name = name
        # Integral of the function from one breakpoint to the next, in value-seconds, cumulated:
        # cum[k] = integral from breakpoint 0 to breakpoint k.
        widths_s = np.diff(b).astype(np.float64) / _NS_PER_S
        self._cum = np.concatenate(([0.0], np.cumsum(v[:-1] * widths_s)))

    def __len__(self) -> int:
        return int(self.values.size)

    def _check_start(self, start_ns: np.ndarray) -> None:
        if self.hold_before_first or start_ns.size == 0:
            return
        early = start_ns < self.breakpoints_ns[0]
        if early.any():
            first = int(start_ns[np.argmax(early)])
            raise AccountingError(
                f"energy at {_iso(first)} is before {self.name} starts ({_iso(int(self.breakpoints_ns[0]))}); "
                "extend the series or allow holding its first value"
            )

    def value_at(self, t_ns: Any) -> np.ndarray:
        """The value holding at each time (``t`` as epoch ns, int64 array-like)."""
        t = np.atleast_1d(np.asarray(t_ns, dtype=np.int64))
        self._check_start(t)
        i = np.clip(np.searchsorted(self.breakpoints_ns, t, side="right") - 1, 0, None)
        return self.values[i]

    def mean_over(self, start_ns: Any, end_ns: Any) -> np.ndarray:
        """Time-weighted mean of the function over each ``[start, end)``; at ``start`` where equal.

        Equal to the sum, interval by interval, of overlap × value, divided by the span's length:
        exactly what energy spread uniformly over the span meets.
        """
        s = np.atleast_1d(np.asarray(start_ns, dtype=np.int64))
        e = np.atleast_1d(np.asarray(end_ns, dtype=np.int64))
        s, e = np.broadcast_arrays(s, e)
        if (e < s).any():
            k = int(np.argmax(e < s))
            raise AccountingError(f"span ends ({_iso(int(e[k]))}) before it starts ({_iso(int(s[k]))})")
        self._check_start(s)
        b, v = self.breakpoints_ns, self.values
        last = b.size - 1
        i = np.clip(np.searchsorted(b, s, side="right") - 1, 0, None)  # segment holding start
        j = np.clip(np.searchsorted(b, e, side="left") - 1, 0, None)  # segment holding end's left limit
        out = v[i].copy()
        cross = j > i
        if cross.any():
            ic, jc, sc, ec = i[cross], j[cross], s[cross], e[cross]
            # head: start to the next breakpoint; middle: whole segments; tail: last breakpoint to end.
            head = v[ic] * ((b[np.minimum(ic + 1, last)] - sc).astype(np.float64) / _NS_PER_S)
            middle = self._cum[jc] - self._cum[ic + 1]
            tail = v[jc] * ((ec - b[jc]).astype(np.float64) / _NS_PER_S)
            out[cross] = (head + middle + tail) / ((ec - sc).astype(np.float64) / _NS_PER_S)
        return out


class IntensitySeries:
    """Grid carbon intensity over time, in gCO2e/kWh, as a step function (see the module doc).

    ``source`` says where the figures come from (the CSV path for :meth:`from_csv`).
    """

    def __init__(
        self, timestamps: Any, values_g_per_kwh: Iterable[float], *, source: str = "in-memory series",
        hold_before_first: bool = False,
    ) -> None:
        values = np.asarray(list(values_g_per_kwh), dtype=np.float64)
        if values.size and (~np.isfinite(values) | (values < 0)).any():
            raise AccountingError(f"intensity series {source}: values must be finite numbers >= 0 g/kWh")
        t = to_epoch_ns(timestamps)
        self.source = source
        self._fn = StepFunction(t, values, hold_before_first=hold_before_first, name=f"intensity series {source}")

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_csv(cls, path: str | Path, *, hold_before_first: bool = False) -> "IntensitySeries":
        """Read a ``timestamp,gco2_per_kwh`` CSV. Raises :class:`InputError` naming path and line."""
        name = str(path)
        with CsvFile(path, what="intensity CSV", expected=",".join(_COLUMNS), verb="read") as f:
            header_line = f.header_line
            columns = [c.lower() for c in f.header]
            for col in _COLUMNS:
                if col not in columns:
                    raise InputError(
                        f"missing column {col!r}; the header must name timestamp,gco2_per_kwh "
                        f"(found {','.join(columns)})",
                        path=name, line=header_line,
                    )
            rows = list(f.rows())
        it, iv = columns.index("timestamp"), columns.index("gco2_per_kwh")
        times: list[int] = []
        values: list[float] = []
        for line, row in rows:
            if len(row) <= max(it, iv):
                raise InputError(f"expected {len(columns)} fields, found {len(row)}", path=name, line=line)
            raw_t, raw_v = row[it].strip(), row[iv].strip()
            t_ns = _datetime_ns(parse_time(raw_t, path=name, line=line, lead="bad timestamp"))
            try:
                value = float(raw_v)
            except ValueError:
                raise InputError(f"gco2_per_kwh {raw_v!r} is not a number", path=name, line=line) from None
            if not math.isfinite(value) or value < 0:
                raise InputError(f"gco2_per_kwh {raw_v!r} must be a finite number >= 0", path=name, line=line)
            if times and t_ns <= times[-1]:
                raise InputError(
                    f"timestamp {raw_t!r} is not after the previous one ({_iso(times[-1])}); "
                    "timestamps must increase",
                    path=name, line=line,
                )
            times.append(t_ns)
            values.append(value)
        if not times:
            raise InputError("no data rows after the header", path=name, line=header_line)
        return cls(np.asarray(times, dtype=np.int64), values, source=name, hold_before_first=hold_before_first)

    # ------------------------------------------------------------------ facts

    def __len__(self) -> int:
        return len(self._fn)

    def __repr__(self) -> str:
        span = f"{self.start.isoformat()}..{self.end.isoformat()}"
        return f"IntensitySeries({self.source!r}, {len(self)} points, {span})"

    @property
    def hold_before_first(self) -> bool:
        return self._fn.hold_before_first

    @property
    def timestamps_ns(self) -> np.ndarray:
        """Breakpoints, epoch nanoseconds (int64)."""
        return self._fn.breakpoints_ns

    @property
    def values_g_per_kwh(self) -> np.ndarray:
        return self._fn.values

    @property
    def start(self) -> datetime:
        """The first timestamp (UTC)."""
        return _EPOCH + timedelta(microseconds=int(self._fn.breakpoints_ns[0]) // 1000)

    @property
    def end(self) -> datetime:
        """The last timestamp (UTC); its value holds onward."""
        return _EPOCH + timedelta(microseconds=int(self._fn.breakpoints_ns[-1]) // 1000)

    def summary(self) -> dict[str, Any]:
        """What a run config stores about the series: source, size, span and mean."""
        b, v = self._fn.breakpoints_ns, self._fn.values
        mean = float(v[0]) if b.size == 1 else float(self._fn.mean_over(b[0], b[-1])[0])
        return {
            "source": self.source,
            "points": int(b.size),
            "first": _iso(int(b[0])),
            "last": _iso(int(b[-1])),
            "mean_g_per_kwh": mean,
            "hold_before_first": self.hold_before_first,
        }

    # ------------------------------------------------------------------ pricing

    def intensity_at(self, t: Any) -> np.ndarray:
        """Intensity in g/kWh holding at each timestamp."""
        return self._fn.value_at(to_epoch_ns(t))

    def mean_intensity_g_per_kwh(self, start: Any, end: Any) -> np.ndarray:
        """Effective intensity (g/kWh) met by energy spread uniformly over each ``[start, end)``."""
        return self._fn.mean_over(to_epoch_ns(start), to_epoch_ns(end))

    def carbon_g(self, energy_j: float, start: Any, end: Any) -> float:
        """Carbon (gCO2e) of ``energy_j`` joules spread uniformly over ``[start, end)``."""
        return float(self.carbon_g_many([energy_j], start, end)[0])

    def carbon_g_many(self, energy_j: Any, start: Any, end: Any) -> np.ndarray:
        """Vectorised :meth:`carbon_g`: arrays of energies (J), starts and ends; returns grams."""
        energy = np.atleast_1d(np.asarray(energy_j, dtype=np.float64))
        return energy / J_PER_KWH * self.mean_intensity_g_per_kwh(start, end)

