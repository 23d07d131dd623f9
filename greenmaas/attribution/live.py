"""Live attribution: turn open and closed spans into per-device energy shares, window by window.

The meter calls :meth:`LiveAttributor.advance` with a time ``T`` up to which every healthy device
has been read. The window ``[watermark, T]`` is attributed with :func:`share_energy`, spans that
ended by ``T`` are finalised, and the watermark moves to ``T``. Every window keeps the books:
attributed + idle = what each device consumed.

Who competes at an instant (the rule, which equals "a parent gets everything on its devices
during its life" whenever one span tree runs alone):

* a span competes when it is active and none of its children is active then (its *self* time);
  a parent's energy is its self energy plus its children's;
* ``request`` and ``batch`` spans with children are containers: their self time takes nothing
  (a request waiting in a queue for its batch consumes nothing; its batch share does);
* with the ``weighted`` policy a parent's self time takes nothing either (its rate, weight per
  second of its life, would not be comparable with its children's);
* batch members split their batch by weight: under ``time`` the batch as a whole counts as one
  span (member rate = weight / sum of the batch's weights), under ``weighted`` each member's rate
  is weight / duration.

A window can only end where every span that might still change a share is known: under
``weighted``, before the start of any open span without children (its rate needs its duration);
under both, before the start of an open request without children (it may yet join a batch), and
before the start of a provisional span (its GPU times are still being resolved).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..sampling.timeline import Timeline
from ..spans import CONTAINER_KINDS, Span
from .engine import share_energy, share_time

__all__ = ["LiveAttributor", "Accumulator", "WindowTotals"]


@dataclass
class Accumulator:
    """Running energy of one span per device, across windows."""

    self_j: dict[str, float] = field(default_factory=dict)
    child_j: dict[str, float] = field(default_factory=dict)
    # Device time (s) shared by the same rules as energy: what a rented device's price is
    # charged by. Self only; a parent's time is not summed from its children.
    self_s: dict[str, float] = field(default_factory=dict)

    def add_self_s(self, device: str, s: float) -> None:
        self.self_s[device] = self.self_s.get(device, 0.0) + s

    def add_self(self, device: str, j: float) -> None:
        self.self_j[device] = self.self_j.get(device, 0.0) + j

    def add_child(self, device: str, j: float) -> None:
        self.child_j[device] = self.child_j.get(device, 0.0) + j

    def inclusive(self) -> dict[str, float]:
        out = dict(self.self_j)
        for d, j in self.child_j.items():
            out[d] = out.get(d, 0.0) + j
        return out


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


class LiveAttributor:
    """Attributes device energy to spans as time advances.

    :meth:`add` is a dict insert, safe from any thread; :meth:`advance` must be called by one
    thread at a time (the meter holds its flush lock around it)."""

    def __init__(self, policy: str, start: float) -> None:
        self.policy = policy
        self.watermark = start
        self._spans: dict[int, Span] = {}

    def add(self, span: Span) -> None:
        span.acc = Accumulator()
        self._spans[id(span)] = span

    @property
    def pending(self) -> int:
        return len(self._spans)

    def limit(self, t: float) -> float:
        """The latest window end that no open span can still change."""
        lim = t
        for s in list(self._spans.values()):
            if s.end is not None or s.start is None:
                continue
            if s.provisional:
                lim = min(lim, s.start)
                continue
            if s.has_children:
                continue
            if s.kind in CONTAINER_KINDS or self.policy == "weighted":
                lim = min(lim, s.start)
        return lim

    def advance(
        self,
        t: float,
        timelines: dict[str, Timeline],
        *,
        force: bool = False,
    ) -> tuple[list[Span], list[WindowTotals]]:
        """Attribute ``[watermark, t]`` (limited by :meth:`limit` unless ``force``) and return
        the spans finalised and the per-device totals of the window."""
        t0 = self.watermark
        t1 = max(t0, t if force else self.limit(t))
        spans = [s for s in list(self._spans.values()) if s.start is not None and s.start <= t1]
        kids: dict[int, list[Span]] = {}
        for s in spans:
            if s.parent is not None:
                kids.setdefault(id(s.parent), []).append(s)

        # Self intervals of every span inside the window, and the rate they compete with.
        starts: list[float] = []
        ends: list[float] = []
        rates: list[float] = []
        owner_of: list[int] = []
        owners: list[Span] = []
        for s in spans:
            a = max(s.start, t0)  # type: ignore[type-var]
            b = t1 if s.end is None else min(s.end, t1)
            if b <= a:
                continue
            rate = self._rate(s)
            if rate <= 0:
                continue
            idx = len(owners)
            owners.append(s)
            for ia, ib in _subtract(a, b, kids.get(id(s), ()), t1):
                starts.append(ia)
                ends.append(ib)
                rates.append(rate)
                owner_of.append(idx)

        totals: list[WindowTotals] = []
        st = np.asarray(starts, dtype=np.float64)
        en = np.asarray(ends, dtype=np.float64)
        rt = np.asarray(rates, dtype=np.float64)
        ow = np.asarray(owner_of, dtype=np.int64)
        # Span boundaries (not the window's edges) are where power is expected to change.
        bps = np.asarray(
            [x for s in spans for x in (s.start, s.end) if x is not None and t0 < x < t1], dtype=np.float64
        )
        for dev, tl in timelines.items() if t1 > t0 else ():
            on_dev = np.array(
                [owners[i].devices is None or dev in owners[i].devices for i in range(len(owners))], dtype=bool
            )
            mask = on_dev[ow] if ow.size else np.zeros(0, dtype=bool)
            ct, ce = tl.curve(bps)
            sh = share_energy(ct, ce, st[mask], en[mask], rt[mask], ow[mask], len(owners), t0, t1)
            for i in np.nonzero(sh.by_owner)[0]:
                owners[i].acc.add_self(dev, float(sh.by_owner[i]))
            tm = share_time(st[mask], en[mask], rt[mask], ow[mask], len(owners), t0, t1)
            for i in np.nonzero(tm.by_owner)[0]:
                owners[i].acc.add_self_s(dev, float(tm.by_owner[i]))
            totals.append(
                WindowTotals(dev, tl.method, t0, t1, sh.total_j, sh.attributed_j, sh.idle_j, tm.idle_j)
            )

        # Finalise spans that ended by t1: children before parents.
        done = [s for s in spans if s.end is not None and s.end <= t1]
        done.sort(key=lambda s: (s.end, -_depth(s)))
        for s in done:
            inc = s.acc.inclusive()
            for target in (s.parent, s.link):
                if target is not None and target.acc is not None and not target.finalized:
                    for d, j in inc.items():
                        target.acc.add_child(d, j)
            s.finalized = True
            self._spans.pop(id(s), None)
        self.watermark = t1
        return done, totals

    def _rate(self, s: Span) -> float:
        if s.rate_override is not None and self.policy == "time":
            return s.rate_override
        if s.has_children and (s.kind in CONTAINER_KINDS or self.policy == "weighted"):
            return 0.0
        if self.policy == "time":
            return 1.0
        if s.end is None:
            return 0.0  # unreachable: limit() keeps windows before such spans
        d = s.end - s.start  # type: ignore[operator]
        w = s.weight if s.weight is not None else 1.0
        return w / d if d > 0 else 0.0


def _depth(s: Span) -> int:
    n = 0
    p = s.parent
    while p is not None:
        n += 1
        p = p.parent
    return n


def _subtract(a: float, b: float, children: Iterable[Span], t_open: float) -> list[tuple[float, float]]:
    """[a, b] minus the union of the children's lives (open children run to ``t_open``)."""
    cuts = sorted(
        (max(c.start, a), min(t_open if c.end is None else c.end, b))  # type: ignore[type-var]
        for c in children
        if c.start is not None
    )
    out = []
    cur = a
    for ca, cb in cuts:
        if cb <= ca:
            continue
        if ca > cur:
            out.append((cur, ca))
        cur = max(cur, cb)
        if cur >= b:
            break
    if cur < b:
        out.append((cur, b))
    return out

