"""Recorded energy traces: load them from CSV, and replay them as a source against a clock.

A trace CSV has a header row and one row per read::

    t,device,energy_j,power_w
    0.00,gpu:0,1000.0,250.0
    0.02,gpu:0,,251.5

``t`` is seconds (any origin), ``device`` a device id, ``energy_j`` a cumulative counter in J and
``power_w`` power in W; either value may be blank, not both. Optional columns (as
``greenmaas export`` writes them): ``max_energy_j`` (where the counter wraps), ``error`` (a read
that failed: both values blank, the device failing from then to its next good read),
``t_start`` (when the read began; ``t`` is when it returned), ``method`` and ``power_field``
(constant per device: what the figures are, see
:class:`~greenmaas.sources.base.Device`; power is taken as ``instant`` when not given). Other
columns are ignored, and a trace may leave out one of the two value columns altogether. Times must increase
strictly within each device. Every malformed row raises :class:`~greenmaas.errors.InputError`
naming the file, the line and the problem.
"""

from __future__ import annotations

import math
import os
from array import array
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..clock import Clock
from .._parsing import CsvFile, finite_number
from ..errors import DeviceReadError, InputError
from .base import REPLAY, Device, Reading, Source

__all__ = ["TraceData", "load_trace", "ReplaySource"]

_REQUIRED = ("t", "device")
_VALUES = ("energy_j", "power_w")


@dataclass(frozen=True)
class TraceData:
    """One device's trace: times ``t`` (s, strictly increasing), cumulative ``energy_j`` (J) and
    ``power_w`` (W), NaN where a row left the value blank. Arrays of equal length.
    ``max_energy_j`` (NaN where not given) and ``errors`` (row index -> reason of a failed read)
    are optional, as are the device's ``method`` and ``power_field``."""

    t: np.ndarray
    energy_j: np.ndarray
    power_w: np.ndarray
    max_energy_j: np.ndarray | None = None
    errors: Mapping[int, str] | None = None
    method: str | None = None
    power_field: str | None = None
    t_start: np.ndarray | None = None  # when each read began (NaN: not recorded)

    def __len__(self) -> int:
        return int(self.t.size)


def load_trace(path: str | os.PathLike[str]) -> dict[str, TraceData]:
    """Read a trace CSV into ``{device id: TraceData}``, streaming row by row.

    Raises :class:`InputError` (with ``line``, 1-based, where it applies) for an empty file, a
    missing ``t`` or ``device`` column or no value column (line 1), a row with too few fields, a
    blank device, a non-numeric, NaN or infinite value, a row with both values blank, negative
    power or energy, and a time that does not increase within a device.
    """
    path = os.fspath(path)
    columns: dict[str, tuple[array, array, array]] = {}
    last_t: dict[str, float] = {}
    with CsvFile(path, what="trace", expected="t,device,energy_j,power_w") as f:
        names = f.header
        f.require(_REQUIRED)
        if not any(c in names for c in _VALUES):
            raise InputError("missing column: a trace needs energy_j or power_w", path=path, line=f.header_line)
        i_t, i_dev = names.index("t"), names.index("device")
        i_e = names.index("energy_j") if "energy_j" in names else None
        i_p = names.index("power_w") if "power_w" in names else None
        opt: dict[str, int] = {c: names.index(c) for c in ("max_energy_j", "error", "method", "power_field", "t_start") if c in names}
        width = max(i for i in (i_t, i_dev, i_e, i_p) if i is not None) + 1
        extra: dict[str, dict] = {}

        def cell(row: list[str], col: str) -> str:
            i = opt.get(col)
            return row[i].strip() if i is not None and i < len(row) else ""
        nan = math.nan
        rows = 0
        for line, row in f.rows():
            if len(row) < width:
                raise InputError(f"row has {len(row)} fields, the header needs {width}", path=path, line=line)
            device = row[i_dev].strip()
            if not device:
                raise InputError("device is blank", path=path, line=line)
            t = finite_number(row[i_t], "t", path, line)
            e_text = row[i_e].strip() if i_e is not None else ""
            p_text = row[i_p].strip() if i_p is not None else ""
            error = cell(row, "error")
            if not e_text and not p_text and not error:
                raise InputError("energy_j and power_w are both blank", path=path, line=line)
            e = finite_number(e_text, "energy_j", path, line) if e_text else nan
            p = finite_number(p_text, "power_w", path, line) if p_text else nan
            if p < 0:
                raise InputError(f"power_w is negative: {p_text}", path=path, line=line)
            if e < 0:
                raise InputError(f"energy_j is negative: {e_text}", path=path, line=line)
            prev = last_t.get(device)
            if prev is not None and t <= prev:
                what = "repeats" if t == prev else "goes backwards from"
                raise InputError(f"time {t:g} {what} {prev:g} for device {device}", path=path, line=line)
            last_t[device] = t
            cols = columns.get(device)
            if cols is None:
                cols = columns[device] = (array("d"), array("d"), array("d"))
            x = extra.setdefault(
                device, {"max": array("d"), "errors": {}, "method": None, "field": None, "start": array("d")}
            )
            s_text = cell(row, "t_start")
            x["start"].append(finite_number(s_text, "t_start", path, line) if s_text else nan)
            m_text = cell(row, "max_energy_j")
            x["max"].append(finite_number(m_text, "max_energy_j", path, line) if m_text else nan)
            if error:
                x["errors"][len(cols[0])] = error
            x["method"] = x["method"] or cell(row, "method") or None
            x["field"] = x["field"] or cell(row, "power_field") or None
            cols[0].append(t)
            cols[1].append(e)
            cols[2].append(p)
            rows += 1
    if rows == 0:
        raise InputError("no data rows after the header", path=path, line=2)
    out = {}
    for dev, (ts, es, ps) in columns.items():
        x = extra[dev]
        out[dev] = TraceData(
            _f64(ts), _f64(es), _f64(ps), _f64(x["max"]), x["errors"] or None, x["method"], x["field"], _f64(x["start"])
        )
    return out


def _f64(values: array) -> np.ndarray:
    return np.frombuffer(values, dtype=np.float64)  # shares the array's memory: no copy


@dataclass(frozen=True)
class _Series:
    """Non-blank samples of one value of one device, ready for np.interp."""

    t: np.ndarray
    v: np.ndarray

    @classmethod
    def of(cls, t: np.ndarray, v: np.ndarray) -> "_Series | None":
        ok = ~np.isnan(v)
        return cls(t[ok], v[ok]) if ok.any() else None

    def at(self, t: float) -> float:
        return float(np.interp(t, self.t, self.v))  # held at the ends


class ReplaySource(Source):
    """A source that answers with a recorded trace, in step with a clock.

    ``trace`` is a CSV path or :func:`load_trace`'s result. At clock time ``c`` the source reads
    the trace at ``t0 + (c - c_start)``, where ``c_start`` is the clock at construction and ``t0``
    the trace's first time (over all devices) unless given. Values are linearly interpolated
    between rows and held past either end. Devices keep their trace ids; their method is
    ``replay``.
    """

    name = "replay"
    #: 100 ms: a replayed trace has whatever resolution it was recorded with.
    default_period_s = 0.1

    def __init__(self, trace: str | os.PathLike[str] | Mapping[str, TraceData], clock: Clock, t0: float | None = None):
        data = load_trace(trace) if isinstance(trace, (str, os.PathLike)) else dict(trace)
        if not data:
            raise ValueError("a replay needs at least one device")
        self._clock = clock
        self._c_start = clock.monotonic()
        starts = [float(d.t[0]) for d in data.values() if len(d)]
        self.t0 = float(t0) if t0 is not None else (min(starts) if starts else 0.0)
        ends = [float(d.t[-1]) for d in data.values() if len(d)]
        #: Seconds of trace after ``t0``: past this every value is held.
        self.duration_s = max(0.0, max(ends, default=self.t0) - self.t0)
        self._energy = {k: _Series.of(np.asarray(d.t, float), np.asarray(d.energy_j, float)) for k, d in data.items()}
        self._power = {k: _Series.of(np.asarray(d.t, float), np.asarray(d.power_w, float)) for k, d in data.items()}
        self._devices = [
            Device(id=k, kind=k.split(":", 1)[0], name=f"replay of {k}", method=REPLAY) for k in data
        ]

    def trace_time(self) -> float:
        """The trace time (s) the clock is at now."""
        return self.t0 + (self._clock.monotonic() - self._c_start)

    def devices(self) -> list[Device]:
        return list(self._devices)

    def read(self, device_id: str) -> Reading:
        """Interpolated cumulative energy (J) and/or power (W) of ``device_id`` now."""
        if device_id not in self._energy:
            raise DeviceReadError(f"{device_id}: no such device in the replayed trace")
        t = self.trace_time()
        e = self._energy[device_id]
        p = self._power[device_id]
        if e is None and p is None:
            raise DeviceReadError(f"{device_id}: the trace holds no values for this device")
        return Reading(energy_j=e.at(t) if e else None, power_w=p.at(t) if p else None)
