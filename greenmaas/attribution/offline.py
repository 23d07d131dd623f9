"""Offline re-attribution: a recorded trace plus a spans file, attributed after the fact.

SPANS.csv has a header and one row per span::

    id,start,end,devices,weight,model,request_id,tenant
    r1,10.00,10.04,gpu:0,120,llama-8b,req-1,acme
    r2,10.01,10.06,gpu:0;gpu:1,80,llama-8b,req-2,

``start``/``end`` are on the trace's clock (seconds), ``devices`` is ``;``-separated, ``weight``
defaults to 1, ``model``/``request_id``/``tenant`` are optional. Spans are attributed as flat
leaves. Every device's energy over its trace is split into span shares plus idle.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

from .._parsing import finite_number
from ..errors import InputError
from ..sampling.timeline import build_curve
from ..sources.replay import TraceData, load_trace
from .engine import rates_for, share_energy

__all__ = ["SpanTable", "load_spans", "attribute_trace", "AttributionResult", "curve_from_trace"]

_REQUIRED = ("id", "start", "end", "devices")


@dataclass
class SpanTable:
    """Spans as columns: ids, start/end (s), weights, per-span device tuples and tags."""

    ids: list[str]
    start: np.ndarray
    end: np.ndarray
    weight: np.ndarray
    devices: list[tuple[str, ...]]
    model: list[str | None] = field(default_factory=list)
    request_id: list[str | None] = field(default_factory=list)
    tenant: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def load_spans(path: str | os.PathLike[str], known_devices: set[str] | None = None) -> SpanTable:
    """Read SPANS.csv. Malformed input raises :class:`InputError` naming the line: a missing
    column, a non-numeric or NaN time or weight, end before start, a negative weight, a
    duplicate id, or a device not in ``known_devices``."""
    path = os.fspath(path)
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot open spans: {exc.strerror or exc}", path=path) from exc
    ids: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    weights: list[float] = []
    devices: list[tuple[str, ...]] = []
    models: list[str | None] = []
    rids: list[str | None] = []
    tenants: list[str | None] = []
    seen: set[str] = set()
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError("empty file: expected a header row id,start,end,devices", path=path, line=1) from None
        names = [h.strip().lstrip("\ufeff") for h in header]
        missing = [c for c in _REQUIRED if c not in names]
        if missing:
            raise InputError(f"missing column {', '.join(missing)} (header: {','.join(names)})", path=path, line=1)
        ix = {n: i for i, n in enumerate(names)}

        def opt(row: list[str], col: str) -> str | None:
            i = ix.get(col)
            if i is None or i >= len(row):
                return None
            v = row[i].strip()
            return v or None

        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) <= max(ix[c] for c in _REQUIRED):
                    raise InputError(f"row has {len(row)} fields, fewer than the header's", path=path, line=line)
                sid = row[ix["id"]].strip()
                if not sid:
                    raise InputError("id is blank", path=path, line=line)
                if sid in seen:
                    raise InputError(f"duplicate span id {sid!r}", path=path, line=line)
                seen.add(sid)
                s = finite_number(row[ix["start"]], "start", path, line)
                e = finite_number(row[ix["end"]], "end", path, line)
                if e < s:
                    raise InputError(f"end {e:g} is before start {s:g}", path=path, line=line)
                w_text = opt(row, "weight")
                w = finite_number(w_text, "weight", path, line) if w_text is not None else 1.0
                if w < 0:
                    raise InputError(f"weight is negative: {w_text}", path=path, line=line)
                devs = tuple(d.strip() for d in row[ix["devices"]].split(";") if d.strip())
                if not devs:
                    raise InputError("devices is blank", path=path, line=line)
                if known_devices is not None:
                    unknown = [d for d in devs if d not in known_devices]
                    if unknown:
                        raise InputError(
                            f"unknown device {unknown[0]!r} (the trace has {', '.join(sorted(known_devices))})",
                            path=path,
                            line=line,
                        )
                ids.append(sid)
                starts.append(s)
                ends.append(e)
                weights.append(w)
                devices.append(devs)
                models.append(opt(row, "model"))
                rids.append(opt(row, "request_id"))
                tenants.append(opt(row, "tenant"))
        except csv.Error as exc:
            raise InputError(f"malformed CSV: {exc}", path=path, line=reader.line_num) from exc
    return SpanTable(
        ids, np.asarray(starts), np.asarray(ends), np.asarray(weights), devices, models, rids, tenants
    )


def curve_from_trace(td: TraceData, breakpoints: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A device's cumulative-energy curve from its trace (counter resets handled); power shapes
    respect ``breakpoints`` (span boundaries)."""
    counter = td.energy_j.copy()
    ok = ~np.isnan(counter)
    raw = counter[ok]
    if raw.size:
        d = np.diff(raw)
        # A counter that goes backwards restarted (driver reload): the new value is the energy
        # since the restart, never a negative delta.
        inc = np.where(d < 0, raw[1:], d)
        counter[ok] = np.concatenate(([0.0], np.cumsum(inc)))
    return build_curve(td.t, counter, td.power_w, breakpoints=breakpoints)


@dataclass
class AttributionResult:
    """Energy per span (total and by device), idle and measured total per device (J)."""

    spans: SpanTable
    by_device: dict[str, np.ndarray]  # device -> energy per span (0 for spans not on it)
    idle_j: dict[str, float]
    total_j: dict[str, float]
    policy: str

    def span_energy_j(self) -> np.ndarray:
        out = np.zeros(len(self.spans))
        for arr in self.by_device.values():
            out += arr
        return out

    def to_json(self) -> dict:
        energy = self.span_energy_j()
        rows = []
        for i, sid in enumerate(self.spans.ids):
            rows.append(
                {
                    "id": sid,
                    "energy_j": float(energy[i]),
                    "by_device": {d: float(a[i]) for d, a in self.by_device.items() if d in self.spans.devices[i]},
                }
            )
        return {"policy": self.policy, "spans": rows, "idle_j": dict(self.idle_j), "total_j": dict(self.total_j)}


def attribute_trace(
    trace: str | os.PathLike[str] | dict[str, TraceData],
    spans: str | os.PathLike[str] | SpanTable,
    *,
    policy: str = "time",
) -> AttributionResult:
    """Attribute a recorded trace to spans. Each device's window is its whole trace."""
    data = load_trace(trace) if not isinstance(trace, dict) else trace
    table = load_spans(spans, set(data)) if not isinstance(spans, SpanTable) else spans
    n = len(table)
    rates = rates_for(policy, table.weight, table.end - table.start)
    by_device: dict[str, np.ndarray] = {}
    idle: dict[str, float] = {}
    total: dict[str, float] = {}
    # Intervals per device: a span on k devices contributes one interval to each.
    owners_by_dev: dict[str, list[int]] = {d: [] for d in data}
    for i, devs in enumerate(table.devices):
        for d in devs:
            owners_by_dev.setdefault(d, []).append(i)
    for dev, td in data.items():
        idx = np.asarray(owners_by_dev.get(dev, []), dtype=np.int64)
        ct, ce = curve_from_trace(td, np.concatenate([table.start[idx], table.end[idx]]))
        t0, t1 = float(td.t[0]), float(td.t[-1])
        sh = share_energy(ct, ce, table.start[idx], table.end[idx], rates[idx], idx, n, t0, t1)
        by_device[dev] = sh.by_owner
        idle[dev] = sh.idle_j
        total[dev] = sh.total_j
    return AttributionResult(table, by_device, idle, total, policy)
