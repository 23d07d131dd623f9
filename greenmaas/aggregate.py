"""Rollups: many short spans recorded as one row per interval instead of one row each.

A training loop with a span per forward call and per optimizer step closes thousands of spans a
second; a row each would cost more to write than the step itself. Spans that close faster than
``Meter(rollup_above_hz=...)`` (default :data:`ROLLUP_ABOVE_HZ`) per second in one *class* —
the same kind, name, model, phase, status, request, tenant, devices and parent — are recorded as
*rollups* from then on: per class and per ``rollup_interval_s`` of their end times (default 1 s),
one span row whose ``count`` says how many spans it stands for, with their summed energy (total
and self), device time and uncertainty, and their durations' count, sum, min, max and
percentiles in ``attrs["rollup"]``. The meter says so once (a log warning) and lists the classes
it rolled up in the run's config (``config["rollups"]``).

Nothing is lost: a rollup's energy is the sum of its spans' energy, attributed by the same rules
as every other span (its members competed one by one), so spans + idle = device total still
holds, and a parent's energy still includes its rolled-up children. ``Meter(rollup=True)`` rolls
up every eligible span at any rate, ``False`` never (every span a row, whatever it costs).

Only leaf spans are rolled up (no children; not batches or batch shares), never requests (each
is billed on its own), and only
those the attributor takes in bulk (closed when it first sees them). Their ``span.result``
stays readable for the most recent spans (:data:`~greenmaas.attribution.live.RESULT_RING`),
without carbon and cost, which are priced on the rollup row.

Batch shares linked to a request (a serving engine's requests in continuous batching: one share
per forward pass the request took part in, named ``prefill`` or ``decode`` after the work it did)
are recorded per request and share name instead (:class:`ShareRows`): one row when the request's
own row is written, whose ``count`` is the passes it stands for, with their summed energy, ± J,
device time, carbon and cost, the earliest start and latest end, and their summed ``tokens``
(``attrs``). A request in one pass keeps its share row as it was. Each share's ``span.result``
stays its own; ``Meter(rollup=False)`` records every share as a row.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["ROLLUP_ABOVE_HZ", "ROLLUP_INTERVAL_S", "Rollups", "Bucket", "PERCENTILES", "ShareRows"]

#: A class of spans closing faster than this (spans per second, within one second) is rolled up.
ROLLUP_ABOVE_HZ = 200.0
#: Default interval of a rollup row (s of the spans' end times).
ROLLUP_INTERVAL_S = 1.0
#: Kinds always recorded one row each, at any rate.
NEVER_ROLLED = frozenset({"request"})
#: Classes remembered before those not rolled up are forgotten.
_MAX_CLASSES = 4096
#: Duration percentiles kept per rollup row.
PERCENTILES = (50, 90, 99)


@dataclass
class Bucket:
    """One rollup row in the making: spans of one class ending in one interval."""

    first: Any  # one member span (tags, parent)
    start: float = math.inf
    end: float = -math.inf
    count: int = 0
    durations: list = field(default_factory=list)  # arrays
    j: dict[str, float] = field(default_factory=dict)
    u: dict[str, float] = field(default_factory=dict)
    s: dict[str, float] = field(default_factory=dict)
    weight: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    items: int = 0

    def stats(self) -> dict[str, Any]:
        d = np.concatenate(self.durations) if self.durations else np.empty(0)
        out: dict[str, Any] = {"count": self.count}
        if d.size:
            out["duration_s"] = {
                "sum": float(d.sum()),
                "min": float(d.min()),
                "max": float(d.max()),
                "mean": float(d.mean()),
                **{f"p{p}": float(np.percentile(d, p)) for p in PERCENTILES},
            }
        return out


class Rollups:
    """Decides which finalised leaves are rolled up and collects their buckets.

    ``mode``: ``"auto"`` (roll up a class once it closes more than ``above_hz`` spans within
    one second), ``True`` (every class), ``False`` (none). ``on_first``: called once with the
    first class rolled up (the meter logs it). Classes come from the attributor
    (:class:`~greenmaas.attribution.live.Finished`: ``leaf_code`` into ``leaf_keys``)."""

    def __init__(
        self,
        mode: Any = "auto",
        above_hz: float = ROLLUP_ABOVE_HZ,
        interval_s: float = ROLLUP_INTERVAL_S,
        on_first: Callable[[str], None] | None = None,
    ) -> None:
        self.mode = mode
        self.above_hz = above_hz
        self.interval_s = interval_s
        self.on_first = on_first
        # Per class key: [start of its current one-second window, spans in it, rolled up?]
        self._state: dict[tuple, list] = {}
        self._buckets: dict[tuple[tuple, int], Bucket] = {}
        self.rolled_classes: list[str] = []
        self.rolled_spans = 0

    def split(self, done: Any) -> np.ndarray:
        """Which of ``done.leaves`` are rolled up (a bool mask)."""
        n = len(done.leaves)
        if self.mode is False or not n:
            return np.zeros(n, dtype=bool)
        if len(self._state) > _MAX_CLASSES:
            self._state = {k: v for k, v in self._state.items() if v[2]}
        codes = done.leaf_code
        rolled = np.zeros(n, dtype=bool)
        for c in np.unique(codes).tolist():
            key = done.leaf_keys[c]
            st = self._state.get(key)
            if st is None:
                st = self._state[key] = [-math.inf, 0, False]
                if key[0] in NEVER_ROLLED:
                    st[2] = None  # never: each is billed on its own
                elif self.mode is True:
                    self._roll(key, st)
            if st[2] is None:
                continue
            sel = codes == c
            if not st[2]:
                self._count(key, st, np.sort(done.leaf_end[sel]))
            if st[2]:
                rolled |= sel
        return rolled

    def _count(self, key: tuple, st: list, ends: np.ndarray) -> None:
        """Spans per one-second window of end times, carried across calls."""
        w0, k = st[0], st[1]
        for t in ends.tolist():
            if t - w0 >= 1.0:
                w0, k = t, 0
            k += 1
            if k > self.above_hz:
                self._roll(key, st)
                break
        st[0], st[1] = w0, k

    def _roll(self, key: tuple, st: list) -> None:
        st[2] = True
        kind, name, model = key[:3]
        label = f"{kind} {name!r}" + (f" (model {model})" if model else "")
        if label in self.rolled_classes:
            return
        if not self.rolled_classes and self.on_first is not None:
            self.on_first(label)
        self.rolled_classes.append(label)

    def add(self, done: Any, mask: np.ndarray) -> None:
        """Put the leaves under ``mask`` into their buckets."""
        idx = np.nonzero(mask)[0]
        if not idx.size:
            return
        spans = done.leaves
        self.rolled_spans += int(idx.size)
        c = done.leaf_code[idx]
        starts = done.leaf_start[idx]
        e = done.leaf_end[idx]
        bucket = np.floor(e / self.interval_s).astype(np.int64)
        width = int(c.max()) + 1
        groups, inverse = np.unique(bucket * width + c, return_inverse=True)
        inverse = inverse.reshape(-1)
        for g, k in enumerate(groups.tolist()):
            code, b = k % width, k // width
            sel = inverse == g
            members = idx[sel]
            ckey = done.leaf_keys[code]
            key = (ckey, b)
            bk = self._buckets.get(key)
            group = [spans[i] for i in members.tolist()]
            if bk is None:
                bk = self._buckets[key] = Bucket(first=group[0])
            bk.count += len(group)
            bk.start = min(bk.start, float(starts[sel].min()))
            bk.end = max(bk.end, float(e[sel].max()))
            bk.durations.append(e[sel] - starts[sel])
            for store, src in ((bk.j, done.leaf_j), (bk.u, done.leaf_u), (bk.s, done.leaf_s)):
                for dv, a in src.items():
                    store[dv] = store.get(dv, 0.0) + float(a[members].sum())
            amounts = list(map(_amounts, group))
            if amounts.count(_NO_AMOUNTS) == len(amounts):
                bk.weight += len(group)
            else:
                bk.weight += sum(1.0 if a[0] is None else a[0] for a in amounts)
                bk.tokens_in += sum(a[1] or 0 for a in amounts)
                bk.tokens_out += sum(a[2] or 0 for a in amounts)
                bk.items += sum(a[3] or 0 for a in amounts)

    def due(self, upto: float, force: bool = False) -> list[Bucket]:
        """Buckets whose interval has ended by ``upto`` (all of them with ``force``)."""
        out = []
        for key in list(self._buckets):
            if force or (key[1] + 1) * self.interval_s <= upto:
                out.append(self._buckets.pop(key))
        return out


_amounts = operator.attrgetter("weight", "tokens_in", "tokens_out", "items")
_NO_AMOUNTS = (None, None, None, None)


class ShareRows:
    """Batch shares linked to a request, recorded as one row per request and share name (see the
    module doc). :meth:`route` takes a flush's span records (shares held back, merged) and gives
    what to write; held rows go out with their request's row, or all at once with ``force``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        # request span id -> share name -> the merged record so far
        self._held: dict[str, dict[str, Any]] = {}

    def route(self, spans: list, records: list, force: bool = False) -> list:
        if not self.enabled:
            return list(records)
        out: list[Any] = []
        held = self._held
        for s, r in zip(spans, records):
            if s.kind == "share" and r.link_id is not None:
                by_name = held.setdefault(r.link_id, {})
                merged = by_name.get(r.name)
                if merged is None:
                    by_name[r.name] = r  # the share's own record, until a second one joins it
                else:
                    if merged.count == 1 and merged is not r:  # first merge: a row of our own
                        merged = by_name[r.name] = _own_copy(merged)
                    _absorb(merged, r)
                continue
            if s.kind == "request":
                rows = held.pop(r.span_id, None)
                if rows:
                    out.extend(rows.values())
            out.append(r)
        if force:
            for rows in held.values():
                out.extend(rows.values())
            held.clear()
        return out

    @property
    def held(self) -> int:
        """Share rows waiting for their request's."""
        return sum(len(v) for v in self._held.values())


def _own_copy(a: Any) -> Any:
    """A share's record as the first of a merged row: copied (the share's own record is its
    result's and must not change), ``passes`` counted, its pass's ``context`` left out."""
    from dataclasses import replace

    attrs = dict(a.attrs)
    attrs.pop("context", None)  # a pass's own figure
    attrs["passes"] = a.count or 1
    return replace(a, devices=[replace(d) for d in a.devices], attrs=attrs)


def _absorb(m: Any, b: Any) -> None:
    """Add share record ``b`` to merged row ``m`` (one request and share name), in place."""
    from dataclasses import replace

    by_device = {d.device: d for d in m.devices}
    for d in b.devices:
        x = by_device.get(d.device)
        if x is None:
            m.devices.append(replace(d))
            continue
        x.energy_j += d.energy_j
        x.self_j += d.self_j
        x.self_device_s += d.self_device_s
        x.gap_s += d.gap_s
        if d.uncertainty_j is not None or x.uncertainty_j is not None:
            x.uncertainty_j = (x.uncertainty_j or 0.0) + (d.uncertainty_j or 0.0)
        if d.method != x.method:
            from .sources.base import weakest_method

            x.method = weakest_method([x.method, d.method])
    attrs = m.attrs
    if "tokens" in attrs or "tokens" in b.attrs:
        attrs["tokens"] = (attrs.get("tokens") or 0) + (b.attrs.get("tokens") or 0)
    n = b.count or 1
    attrs["passes"] += n
    m.count = (m.count or 1) + n
    m.start, m.end = min(m.start, b.start), max(m.end, b.end)
    m.duration_s += b.duration_s
    if m.start_mono is not None and b.start_mono is not None:
        m.start_mono, m.end_mono = min(m.start_mono, b.start_mono), max(m.end_mono, b.end_mono)
    m.weight += b.weight
    for key in ("carbon_g", "carbon_market_g"):
        x, y = getattr(m, key), getattr(b, key)
        setattr(m, key, None if x is None and y is None else (x or 0.0) + (y or 0.0))
    if m.currency == b.currency:
        m.cost = None if m.cost is None and b.cost is None else (m.cost or 0.0) + (b.cost or 0.0)
    else:
        m.cost = m.currency = None
