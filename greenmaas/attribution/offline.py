"""Offline re-attribution: a recorded trace plus a spans file, attributed after the fact.

SPANS.csv has a header and one row per span::

    id,start,end,devices,weight,model,request_id,tenant
    r1,10.00,10.04,gpu:0,120,llama-8b,req-1,acme
    r2,10.01,10.06,gpu:0;gpu:1,80,llama-8b,req-2,

``start``/``end`` are on the trace's clock (seconds), ``devices`` is ``;``-separated, ``weight``
defaults to 1, ``model``/``request_id``/``tenant`` are optional. Optional structure columns, as
``greenmaas export`` writes them: ``parent`` (a span id), ``kind`` (``span``, ``request``,
``batch``, ``share``, …), ``link`` (a batch share's request), ``name``. Without them spans are
flat leaves.

The trace is replayed through the same timelines, counter grid, shaping and division as the
live meter (:class:`~greenmaas.attribution.live.LiveAttributor`), so a run exported from the
ledger is re-attributed to the same figures the live meter recorded. Every device's energy from
its first to its last settled reading is split into span shares plus idle.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from .._parsing import CsvFile, finite_number
from ..errors import InputError
from ..sampling.timeline import Timeline, build_curve
from ..sources.base import COUNTER, POWER, Reading
from ..sources.replay import TraceData, load_trace
from .live import LiveAttributor

__all__ = ["SpanTable", "load_spans", "attribute_trace", "AttributionResult", "curve_from_trace", "timeline_of"]

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
    parent: list[str | None] = field(default_factory=list)
    kind: list[str | None] = field(default_factory=list)
    link: list[str | None] = field(default_factory=list)
    name: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def load_spans(path: str | os.PathLike[str], known_devices: set[str] | None = None) -> SpanTable:
    """Read SPANS.csv. Malformed input raises :class:`InputError` naming the line: a missing
    column, a non-numeric or NaN time or weight, end before start, a negative weight, a
    duplicate id, or a device not in ``known_devices``."""
    path = os.fspath(path)
    ids: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    weights: list[float] = []
    devices: list[tuple[str, ...]] = []
    models: list[str | None] = []
    rids: list[str | None] = []
    tenants: list[str | None] = []
    structure: dict[str, list[str | None]] = {"parent": [], "kind": [], "link": [], "name": []}
    seen: set[str] = set()
    with CsvFile(path, what="spans", expected="id,start,end,devices") as f:
        f.require(_REQUIRED)
        ix = f.columns()

        def opt(row: list[str], col: str) -> str | None:
            i = ix.get(col)
            if i is None or i >= len(row):
                return None
            v = row[i].strip()
            return v or None

        for line, row in f.rows():
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
            for col, values in structure.items():
                values.append(opt(row, col))
    for col in ("parent", "link"):
        for i, ref in enumerate(structure[col]):
            if ref is not None and ref not in seen:
                raise InputError(f"span {ids[i]!r}: {col} {ref!r} is not a span of this file", path=path)
    return SpanTable(
        ids,
        np.asarray(starts),
        np.asarray(ends),
        np.asarray(weights),
        devices,
        models,
        rids,
        tenants,
        structure["parent"],
        structure["kind"],
        structure["link"],
        structure["name"],
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
    """Energy per span (inclusive of its children, total and by device), its ± J, idle and
    measured total per device (J)."""

    spans: SpanTable
    by_device: dict[str, np.ndarray]  # device -> energy per span (0 for spans not on it)
    idle_j: dict[str, float]
    total_j: dict[str, float]
    policy: str
    uncertainty_by_device: dict[str, np.ndarray] = field(default_factory=dict)
    idle_uncertainty_j: dict[str, float] = field(default_factory=dict)
    #: Energy of each span alone, without its children (sums over spans never double count).
    self_by_device: dict[str, np.ndarray] = field(default_factory=dict)
    #: Each span's own share of device time (s), shared by the same rules as energy.
    device_s_by_device: dict[str, np.ndarray] = field(default_factory=dict)
    #: Device time no span used (s).
    idle_s: dict[str, float] = field(default_factory=dict)

    def span_energy_j(self) -> np.ndarray:
        out = np.zeros(len(self.spans))
        for arr in self.by_device.values():
            out += arr
        return out

    def span_uncertainty_j(self) -> np.ndarray:
        out = np.zeros(len(self.spans))
        for arr in self.uncertainty_by_device.values():
            out += arr
        return out

    def to_json(self) -> dict:
        energy = self.span_energy_j()
        unc = self.span_uncertainty_j()
        rows = []
        for i, sid in enumerate(self.spans.ids):
            rows.append(
                {
                    "id": sid,
                    "energy_j": float(energy[i]),
                    "uncertainty_j": float(unc[i]),
                    "by_device": {d: float(a[i]) for d, a in self.by_device.items() if d in self.spans.devices[i]},
                }
            )
        return {
            "policy": self.policy,
            "spans": rows,
            "idle_j": dict(self.idle_j),
            "idle_uncertainty_j": dict(self.idle_uncertainty_j),
            "total_j": dict(self.total_j),
        }


class _OfflineSpan:
    """A span of a spans file, shaped like the live handle for the attributor."""

    __slots__ = (
        "start", "end", "kind", "name", "parent", "link", "weight", "share_rate", "devices", "has_children",
        "_seq", "__weakref__",
    )
    # Tags the attributor groups leaves by; a spans file's spans carry none of them.
    model = phase = request_id = tenant = None
    status = "ok"

    def __init__(
        self, seq: int, start: float, end: float, kind: str, name: str, weight: float, devices: tuple[str, ...]
    ):
        self._seq = seq
        self.start = start
        self.end = end
        self.kind = kind
        self.name = name
        self.weight = weight
        self.devices = devices
        self.parent: _OfflineSpan | None = None
        self.link: _OfflineSpan | None = None
        self.share_rate: float | None = None
        self.has_children = False


def timeline_of(device: str, td: TraceData) -> Timeline:
    """A device's timeline, rebuilt read by read from its trace (failures included)."""
    has_e = bool(np.any(~np.isnan(td.energy_j)))
    method = td.method or (COUNTER if has_e else POWER)
    has_p = bool(np.any(~np.isnan(td.power_w)))
    tl = Timeline(device, method, td.power_field or ("instant" if has_p else None))
    errors = td.errors or {}
    mx = td.max_energy_j
    ts = td.t_start
    for i in range(len(td)):
        t = float(td.t[i])
        t0 = float(ts[i]) if ts is not None and not math.isnan(ts[i]) else None
        if i in errors:
            tl.mark_failed(t, errors[i])
            continue
        e = float(td.energy_j[i])
        p = float(td.power_w[i])
        m = float(mx[i]) if mx is not None else math.nan
        tl.append(
            t,
            Reading(
                energy_j=None if math.isnan(e) else e,
                power_w=None if math.isnan(p) else p,
                max_energy_j=None if math.isnan(m) else m,
            ),
            t0,
        )
    return tl


def attribute_trace(
    trace: str | os.PathLike[str] | dict[str, TraceData],
    spans: str | os.PathLike[str] | SpanTable,
    *,
    policy: str = "time",
) -> AttributionResult:
    """Attribute a recorded trace to spans, by the live meter's rules and code."""
    if policy not in ("time", "weighted"):
        raise InputError(f"unknown policy {policy!r}: expected time or weighted")
    data = load_trace(trace) if not isinstance(trace, dict) else trace
    table = load_spans(spans, set(data)) if not isinstance(spans, SpanTable) else spans
    n = len(table)
    nodes = []
    for i in range(n):
        kind = (table.kind[i] if table.kind else None) or "span"
        name = (table.name[i] if table.name else None) or ""
        nodes.append(
            _OfflineSpan(
                i, float(table.start[i]), float(table.end[i]), kind, name, float(table.weight[i]), table.devices[i]
            )
        )
    index = {sid: i for i, sid in enumerate(table.ids)}
    for i in range(n):
        p = table.parent[i] if table.parent else None
        lk = table.link[i] if table.link else None
        if p is not None:
            nodes[i].parent = nodes[index[p]]
            nodes[index[p]].has_children = True
        if lk is not None:
            nodes[i].link = nodes[index[lk]]
            nodes[index[lk]].has_children = True
    # Batch members share their batch by weight (the live Batch gives them the same rates).
    members: dict[int, list[int]] = {}
    for i, nd in enumerate(nodes):
        if nd.kind == "share" and nd.parent is not None:
            members.setdefault(id(nd.parent), []).append(i)
    for group in members.values():
        group_weight = sum(nodes[i].weight for i in group)
        for i in group:
            nodes[i].share_rate = nodes[i].weight / group_weight if group_weight > 0 else 0.0

    timelines = {dev: timeline_of(dev, td) for dev, td in data.items()}
    start = min((float(td.t[0]) for td in data.values() if len(td)), default=0.0)
    attr = LiveAttributor(policy, start)
    for nd in sorted(nodes, key=lambda x: x.start):
        attr.add(nd)  # type: ignore[arg-type]
    finished, totals = attr.advance(math.inf, timelines, force=True)
    by_device = {dev: np.zeros(n) for dev in data}
    unc = {dev: np.zeros(n) for dev in data}
    own = {dev: np.zeros(n) for dev in data}
    dev_s = {dev: np.zeros(n) for dev in data}
    for nd in finished.spans:
        acc = attr.accumulator(nd)
        if acc is None:
            continue
        inc, inc_u = acc.inclusive(), acc.inclusive_u()
        for dev in data:
            by_device[dev][nd._seq] = inc.get(dev, 0.0)
            unc[dev][nd._seq] = inc_u.get(dev, 0.0)
            own[dev][nd._seq] = acc.self_j.get(dev, 0.0)
            dev_s[dev][nd._seq] = acc.self_s.get(dev, 0.0)
    if finished.leaves:
        rows = np.fromiter((nd._seq for nd in finished.leaves), dtype=np.int64, count=len(finished.leaves))
        for dev in data:
            if dev in finished.leaf_j:
                by_device[dev][rows] = finished.leaf_j[dev]
                own[dev][rows] = finished.leaf_j[dev]
                unc[dev][rows] = finished.leaf_u[dev]
                dev_s[dev][rows] = finished.leaf_s[dev]
    idle = {dev: 0.0 for dev in data}
    idle_u = {dev: 0.0 for dev in data}
    idle_s = {dev: 0.0 for dev in data}
    total = {dev: 0.0 for dev in data}
    for w in totals:
        idle[w.device] += w.idle_j
        idle_u[w.device] += w.uncertainty_j
        idle_s[w.device] += w.idle_s
        total[w.device] += w.total_j
    return AttributionResult(table, by_device, idle, total, policy, unc, idle_u, own, dev_s, idle_s)
