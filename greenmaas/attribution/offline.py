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

import gc
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

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
    duplicate id, or a device not in ``known_devices``.

    Rows are read as text, a few fields each; numbers are converted and checked a column at a
    time (a million spans in a few seconds), the line of a bad value found afterwards."""
    path = os.fspath(path)
    ids: list[str] = []
    lines: list[int] = []
    starts_t: list[str] = []
    ends_t: list[str] = []
    devs_t: list[str] = []
    optional = ("weight", "model", "request_id", "tenant", "parent", "kind", "link", "name")
    with CsvFile(path, what="spans", expected="id,start,end,devices") as f:
        ix = f.require(_REQUIRED)
        i_id, i_start, i_end, i_dev = (ix[c] for c in _REQUIRED)
        need = max(ix[c] for c in _REQUIRED)
        present = {c: ix[c] for c in optional if c in ix}
        extra: dict[str, list[str]] = {c: [] for c in present}
        widest = max([need, *present.values()])
        seen: set[str] = set()
        for line, row in f.rows():
            if len(row) <= need:
                raise InputError(f"row has {len(row)} fields, fewer than the header's", path=path, line=line)
            sid = row[i_id].strip()
            if not sid:
                raise InputError("id is blank", path=path, line=line)
            if sid in seen:
                raise InputError(f"duplicate span id {sid!r}", path=path, line=line)
            seen.add(sid)
            ids.append(sid)
            lines.append(line)
            starts_t.append(row[i_start])
            ends_t.append(row[i_end])
            devs_t.append(row[i_dev])
            if len(row) <= widest:  # a short row: the optional fields it lacks are empty
                row = row + [""] * (widest + 1 - len(row))
            for c, i in present.items():
                extra[c].append(row[i])

    def numbers(column: str, values: list[str]) -> np.ndarray:
        try:
            out = np.fromiter(map(float, values), dtype=np.float64, count=len(values))
        except ValueError:  # not all numbers: the loop below names the first that is not
            out = np.full(len(values), np.nan)
        if not np.isfinite(out).all():
            for k, text in enumerate(values):
                finite_number(text, column, path, lines[k])  # raises at the first bad value
        return out

    def first(mask: np.ndarray) -> int:
        return int(np.flatnonzero(mask)[0])

    starts = numbers("start", starts_t)
    ends = numbers("end", ends_t)
    if np.any(ends < starts):
        k = first(ends < starts)
        raise InputError(f"end {ends[k]:g} is before start {starts[k]:g}", path=path, line=lines[k])
    n = len(ids)
    tags: dict[str, list[str | None]] = {c: [v.strip() or None for v in extra[c]] if c in extra else [None] * n
                                         for c in optional}
    if "weight" in extra:
        weight_t = tags["weight"]
        weights = numbers("weight", [w if w is not None else "1" for w in weight_t])
        if np.any(weights < 0):
            k = first(weights < 0)
            raise InputError(f"weight is negative: {weight_t[k]}", path=path, line=lines[k])
    else:
        weights = np.ones(n)
    by_text: dict[str, tuple[str, ...]] = {}
    for k, text in enumerate(devs_t):  # few distinct texts: each split and checked once
        if text in by_text:
            continue
        devs = tuple(d.strip() for d in text.split(";") if d.strip())
        if not devs:
            raise InputError("devices is blank", path=path, line=lines[k])
        if known_devices is not None:
            unknown = [d for d in devs if d not in known_devices]
            if unknown:
                raise InputError(
                    f"unknown device {unknown[0]!r} (the trace has {', '.join(sorted(known_devices))})",
                    path=path,
                    line=lines[k],
                )
        by_text[text] = devs
    devices = [by_text[t] for t in devs_t]
    for col in ("parent", "link"):
        for i, ref in enumerate(tags[col]):
            if ref is not None and ref not in seen:
                raise InputError(f"span {ids[i]!r}: {col} {ref!r} is not a span of this file", path=path)
    return SpanTable(
        ids, starts, ends, weights, devices, tags["model"], tags["request_id"], tags["tenant"], tags["parent"],
        tags["kind"], tags["link"], tags["name"],
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

    def span_rows(self, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
        """Spans ``start`` to ``stop`` as :meth:`to_json` gives them (id, energy, ± J, by device)."""
        return self._rows(start, len(self.spans) if stop is None else stop, self.span_energy_j(),
                          self.span_uncertainty_j())

    def _rows(self, start: int, stop: int, energy: np.ndarray, unc: np.ndarray) -> list[dict[str, Any]]:
        cols = {d: a[start:stop].tolist() for d, a in self.by_device.items()}
        devices = self.spans.devices[start:stop]
        return [
            {"id": sid, "energy_j": e, "uncertainty_j": u,
             "by_device": {d: col[k] for d, col in cols.items() if d in devices[k]}}
            for k, (sid, e, u) in enumerate(zip(self.spans.ids[start:stop], energy[start:stop].tolist(),
                                                unc[start:stop].tolist()))
        ]

    def to_json(self) -> dict:
        return {
            "policy": self.policy,
            "spans": self.span_rows(),
            "idle_j": dict(self.idle_j),
            "idle_uncertainty_j": dict(self.idle_uncertainty_j),
            "total_j": dict(self.total_j),
        }

    def json_text(self, chunk: int = 50_000) -> Iterator[str]:
        """:meth:`to_json` as JSON text, a span per line, given a chunk of spans at a time (a
        million spans need no more memory than a chunk's text)."""
        head = json.dumps({"policy": self.policy})[:-1]
        yield f'{head}, "spans": [\n'
        n = len(self.spans)
        energy, unc = self.span_energy_j(), self.span_uncertainty_j()
        keys = {d: json.dumps(d) for d in self.by_device}
        dumps = json.dumps
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            cols = {d: arr[a:b] for d, arr in self.by_device.items()}
            if not all(np.isfinite(c).all() for c in (energy[a:b], unc[a:b], *cols.values())):
                text = ",\n".join(map(dumps, self._rows(a, b, energy, unc)))  # NaN as JSON writes it
            else:
                lists = {d: c.tolist() for d, c in cols.items()}
                devices = self.spans.devices[a:b]
                text = ",\n".join([
                    f'{{"id": {dumps(sid)}, "energy_j": {e!r}, "uncertainty_j": {u!r}, "by_device": {{'
                    + ", ".join([f"{keys[d]}: {col[k]!r}" for d, col in lists.items() if d in devices[k]]) + "}}"
                    for k, (sid, e, u) in enumerate(zip(self.spans.ids[a:b], energy[a:b].tolist(), unc[a:b].tolist()))
                ])
            yield text + (",\n" if b < n else "\n")
        tail = {"idle_j": dict(self.idle_j), "idle_uncertainty_j": dict(self.idle_uncertainty_j),
                "total_j": dict(self.total_j)}
        yield "], " + json.dumps(tail)[1:] + "\n"


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
    n = len(td)
    ts = td.t.tolist()
    t_start = td.t_start.tolist() if td.t_start is not None else [math.nan] * n
    energy = td.energy_j.tolist()
    power = td.power_w.tolist()
    max_e = td.max_energy_j.tolist() if td.max_energy_j is not None else [math.nan] * n
    nan = math.isnan
    append = tl.append
    for i, (t, t0, e, p, m) in enumerate(zip(ts, t_start, energy, power, max_e)):
        if errors and i in errors:
            tl.mark_failed(t, errors[i])
            continue
        append(
            t,
            Reading(energy_j=None if nan(e) else e, power_w=None if nan(p) else p, max_energy_j=None if nan(m) else m),
            None if nan(t0) else t0,
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
    with _collector_paused():
        return _attribute(data, table, policy)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused: attributing a million spans builds millions of
    small objects, none of them garbage, and collecting them over and over as they are made
    costs about a tenth of the time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _attribute(data: dict[str, TraceData], table: SpanTable, policy: str) -> AttributionResult:
    n = len(table)
    kinds = table.kind or [None] * n
    names = table.name or [None] * n
    nodes = [
        _OfflineSpan(i, s, e, k or "span", nm or "", w, d)
        for i, s, e, k, nm, w, d in zip(
            range(n), np.asarray(table.start, dtype=np.float64).tolist(),
            np.asarray(table.end, dtype=np.float64).tolist(), kinds, names,
            np.asarray(table.weight, dtype=np.float64).tolist(), table.devices,
        )
    ]
    parents = table.parent if table.parent and any(p is not None for p in table.parent) else None
    links = table.link if table.link and any(lk is not None for lk in table.link) else None
    if parents is not None or links is not None:
        index = {sid: i for i, sid in enumerate(table.ids)}
        for i in range(n):
            p = parents[i] if parents is not None else None
            lk = links[i] if links is not None else None
            if p is not None:
                nodes[i].parent = nodes[index[p]]
                nodes[index[p]].has_children = True
            if lk is not None:
                nodes[i].link = nodes[index[lk]]
                nodes[index[lk]].has_children = True
    # Batch members share their batch by weight (the live Batch gives them the same rates).
    members: dict[int, list[int]] = {}
    for i in (i for i, k in enumerate(kinds) if k == "share"):
        nd = nodes[i]
        if nd.parent is not None:
            members.setdefault(id(nd.parent), []).append(i)
    for group in members.values():
        group_weight = sum(nodes[i].weight for i in group)
        for i in group:
            nodes[i].share_rate = nodes[i].weight / group_weight if group_weight > 0 else 0.0

    timelines = {dev: timeline_of(dev, td) for dev, td in data.items()}
    start = min((float(td.t[0]) for td in data.values() if len(td)), default=0.0)
    attr = LiveAttributor(policy, start)
    for i in np.argsort(np.asarray(table.start, dtype=np.float64), kind="stable").tolist():
        attr.add(nodes[i])  # type: ignore[arg-type]
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
