"""Live attribution: turn open and closed spans into per-device energy shares as energy settles.

The meter calls :meth:`LiveAttributor.advance` from one thread. Each device advances on its own:

* a counter device up to its last *settled* update — an update of the counter that has been seen
  and timed on its grid (:mod:`greenmaas.sampling.grid`). Energy after it is not known yet (the
  next update will reveal it), so nothing after it is attributed: no energy is ever attributed
  twice or lost. The delay is one counter period plus one read (about 110 ms for NVML's 100 ms
  counter read every 10 ms). The energy between updates is shaped by
  :class:`~greenmaas.attribution.shape.DeviceShaper`;
* a power-only device up to its last read (less the power field's lag).

Windows are further held back, for every device, before the start of any open span that could
still change who competes (:meth:`limit`). Each window is divided by
:func:`~greenmaas.attribution.engine.share_energy` among the self intervals of the spans
(:mod:`greenmaas.attribution.structure`), so every window keeps the books: attributed + idle =
what the device consumed, and over a run, spans + idle = the counter's delta. An offline
re-attribution of the same reads and spans (:func:`greenmaas.attribution.offline.attribute_run`)
computes the same figures.

This module owns every piece of per-span attribution state (energy so far, records, holds for
spans whose GPU times are still being resolved); a :class:`~greenmaas.spans.Span` is only the
user's handle.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..sampling.timeline import Timeline
from ..sources.base import ESTIMATE, METHOD_UNCERTAINTY
from .engine import share_energy, share_time
from .shape import DeviceShaper
from .structure import CONTAINER_KINDS, Intervals, Node, competing

if TYPE_CHECKING:
    from ..spans import Span

__all__ = ["LiveAttributor", "Accumulator", "WindowTotals"]


@dataclass
class Accumulator:
    """Running energy of one span per device, across windows."""

    self_j: dict[str, float] = field(default_factory=dict)
    child_j: dict[str, float] = field(default_factory=dict)
    # ± J of self_j and child_j, shared by the same rules as the energy.
    self_u: dict[str, float] = field(default_factory=dict)
    child_u: dict[str, float] = field(default_factory=dict)
    # Device time (s) shared by the same rules as energy: what a rented device's price is
    # charged by. Self only; a parent's time is not summed from its children.
    self_s: dict[str, float] = field(default_factory=dict)

    def inclusive(self) -> dict[str, float]:
        return _merged(self.self_j, self.child_j)

    def inclusive_u(self) -> dict[str, float]:
        return _merged(self.self_u, self.child_u)


def _merged(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    out = dict(a)
    for d, j in b.items():
        out[d] = out.get(d, 0.0) + j
    return out


def _add(target: dict[str, float], device: str, value: float) -> None:
    target[device] = target.get(device, 0.0) + value


@dataclass
class WindowTotals:
    device: str
    method: str
    t0: float
    t1: float
    total_j: float
    attributed_j: float
    idle_j: float
    idle_s: float = 0.0  # device time with no span: the operator's own, for hardware cost
    uncertainty_j: float = 0.0  # ± J of idle_j


class _State:
    __slots__ = ("span", "acc", "held", "done")

    def __init__(self, span: "Span") -> None:
        self.span = span
        self.acc = Accumulator()
        self.held = False
        self.done = False


class _Device:
    __slots__ = ("wm", "shaper")

    def __init__(self, timeline: Timeline) -> None:
        self.wm: float | None = None
        self.shaper = DeviceShaper(samples=timeline.power_field == "instant")


class LiveAttributor:
    """Attributes device energy to spans as it settles.

    :meth:`add` is a dict insert, safe from any thread; :meth:`advance` must be called by one
    thread at a time (the meter holds its flush lock around it). ``settle_margin_s``: how long
    after a span's clock read it surely has been added (spans are stamped, then added; a window
    never ends closer to ``now`` than this).
    """

    def __init__(self, policy: str, start: float, *, settle_margin_s: float = 0.0) -> None:
        self.policy = policy
        self.start = start
        self.settle_margin_s = settle_margin_s
        self._states: dict[int, _State] = {}
        self._devices: dict[str, _Device] = {}
        self._records: "weakref.WeakKeyDictionary[Span, Any]" = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ span state

    def add(self, span: "Span") -> None:
        self._states[id(span)] = _State(span)

    def hold(self, span: "Span") -> None:
        """Keep windows before ``span``'s start until :meth:`release` (its true times are being
        resolved, e.g. from CUDA events)."""
        st = self._states.get(id(span))
        if st is not None:
            st.held = True

    def release(self, span: "Span") -> None:
        st = self._states.get(id(span))
        if st is not None:
            st.held = False

    def is_held(self, span: "Span") -> bool:
        st = self._states.get(id(span))
        return st is not None and st.held

    def accumulator(self, span: "Span") -> Accumulator | None:
        st = self._states.get(id(span))
        return st.acc if st is not None else None

    def set_record(self, span: "Span", record: Any) -> None:
        self._records[span] = record

    def record(self, span: "Span") -> Any:
        return self._records.get(span)

    def is_final(self, span: "Span") -> bool:
        return span in self._records

    @property
    def pending(self) -> int:
        return len(self._states)

    @property
    def watermark(self) -> float:
        """The earliest time not yet attributed on some device."""
        wms = [d.wm for d in self._devices.values() if d.wm is not None]
        return min(wms) if wms else self.start

    def open_spans(self) -> list["Span"]:
        return [st.span for st in list(self._states.values()) if st.span.end is None]

    def limit(self) -> float:
        """The latest window end that no open span can still change."""
        lim = math.inf
        for st in list(self._states.values()):
            s = st.span
            if s.end is not None or s.start is None:
                continue
            if st.held:
                lim = min(lim, s.start)
                continue
            if s.has_children:
                continue
            if s.kind in CONTAINER_KINDS or self.policy == "weighted":
                lim = min(lim, s.start)
        return lim

    # ------------------------------------------------------------------ advancing

    def advance(
        self, now: float, timelines: dict[str, Timeline], *, force: bool = False
    ) -> tuple[list["Span"], list[WindowTotals]]:
        """Attribute what has settled on every device (limited by :meth:`limit` unless
        ``force``, which ends every device at its last settled energy) and return the spans
        finalised and the per-device totals of the windows."""
        lim = math.inf if force else min(self.limit(), now - self.settle_margin_s)
        states = [st for st in list(self._states.values()) if st.span.start is not None]
        nodes = _nodes(states)

        plans: list[tuple[str, Timeline, _Device, float, tuple | None]] = []
        for dev, tl in timelines.items():
            d = self._devices.get(dev)
            if d is None:
                d = self._devices[dev] = _Device(tl)
            knots = tl.knots() if tl.has_counter else None  # timed once per advance
            if knots is not None:
                settled: float | None = float(knots[0][-1])
            else:
                settled = tl.settled()
                if settled is None:
                    continue
            if d.wm is None:
                if knots is not None:
                    if not (tl.first_knot_final or force):
                        continue  # the first knot may still move back (a stepping counter)
                    d.wm = float(knots[0][0])
                else:
                    d.wm = float(tl.t_first) - tl.power_lag_s  # type: ignore[arg-type]
            plans.append((dev, tl, d, min(settled, lim), knots))
        if not plans:
            return self._finalise(timelines, force), []
        t_lo = min(p[2].wm for p in plans)  # type: ignore[type-var]
        t_hi = max(p[3] for p in plans)
        work = competing(nodes, t_lo, max(t_hi, t_lo), self.policy) if t_hi > t_lo else None

        totals: list[WindowTotals] = []
        for dev, tl, d, target, knots in plans:
            if work is None:
                continue
            on_dev = work.on_device(nodes, dev)
            if knots is not None:
                kt, kv, kh = knots
                reads = tl.power_reads() if d.shaper.use_samples else None
                d.shaper.extend(kt, kv, kh, target, on_dev, reads)
                ready = d.shaper.t_end
                ct, ce, cu = d.shaper.curve()
                if tl.method == ESTIMATE:
                    cu = ce * (METHOD_UNCERTAINTY.get(ESTIMATE) or 0.0)
            else:
                ready = target
                bps = np.concatenate([on_dev.starts, on_dev.ends])
                ct, ce = tl.curve(bps)
                cu = ce * (METHOD_UNCERTAINTY.get(tl.method) or 0.0)
            t0 = d.wm
            if ready is None or t0 is None or ready <= t0:
                continue
            w = self._window(dev, tl.method, states, on_dev, ct, ce, cu, t0, ready)
            totals.append(w)
            d.wm = ready
            if knots is not None:
                d.shaper.trim(ready)
        return self._finalise(timelines, force), totals

    def _window(self, dev, method, states, work: Intervals, ct, ce, cu, t0, t1) -> WindowTotals:
        n = len(states)
        sh = share_energy(ct, ce, work.starts, work.ends, work.rates, work.owners, n, t0, t1)
        su = share_energy(ct, cu, work.starts, work.ends, work.rates, work.owners, n, t0, t1)
        tm = share_time(work.starts, work.ends, work.rates, work.owners, n, t0, t1)
        for i in np.nonzero(sh.by_owner)[0].tolist():
            acc = states[i].acc
            _add(acc.self_j, dev, float(sh.by_owner[i]))
            _add(acc.self_u, dev, float(su.by_owner[i]))
        for i in np.nonzero(tm.by_owner)[0].tolist():
            _add(states[i].acc.self_s, dev, float(tm.by_owner[i]))
        return WindowTotals(dev, method, t0, t1, sh.total_j, sh.attributed_j, sh.idle_j, tm.idle_j, su.idle_j)

    def _finalise(self, timelines: dict[str, Timeline], force: bool) -> list["Span"]:
        """Spans every one of whose devices has been attributed past their end."""
        wms = {dev: d.wm for dev, d in self._devices.items()}
        done: list[_State] = []
        for st in list(self._states.values()):
            s = st.span
            if s.end is None or s.start is None:
                continue
            if not force:
                devs = timelines if s.devices is None else [x for x in s.devices if x in timelines]
                if any(wms.get(x) is None or wms[x] < s.end for x in devs):  # type: ignore[operator]
                    continue
            done.append(st)
        # Children before parents. A span's energy joins its parent's (and a batch share's its
        # request's) only while that one is not final: a child that outlives its parent (a
        # generator, a thread) keeps its energy to itself, whenever the windows fell.
        done.sort(key=lambda st: (st.span.end, -_depth(st.span)))
        for st in done:
            st.done = True
            s = st.span
            inc = st.acc.inclusive()
            inc_u = st.acc.inclusive_u()
            for target in (s.parent, s.link):
                tst = self._states.get(id(target)) if target is not None else None
                if tst is not None and not tst.done:
                    for dv, j in inc.items():
                        _add(tst.acc.child_j, dv, j)
                    for dv, u in inc_u.items():
                        _add(tst.acc.child_u, dv, u)
        return [st.span for st in done]

    def forget(self, spans: list["Span"]) -> None:
        """Drop the state of finalised spans (after the meter has recorded them)."""
        for s in spans:
            self._states.pop(id(s), None)


def _nodes(states: list[_State]) -> list[Node]:
    index = {id(st.span): i for i, st in enumerate(states)}
    out = []
    for st in states:
        s = st.span
        out.append(
            Node(
                start=s.start,  # type: ignore[arg-type]
                end=s.end,
                kind=s.kind,
                name=s.name,
                parent=index.get(id(s.parent)) if s.parent is not None else None,
                link=index.get(id(s.link)) if s.link is not None else None,
                weight=s.weight,
                share_rate=s.share_rate,
                devices=s.devices,
                has_children=s.has_children,
            )
        )
    return out


def _depth(s: "Span") -> int:
    n = 0
    p = s.parent
    while p is not None:
        n += 1
        p = p.parent
    return n
