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

Many short spans (a forward call or a step, thousands a second) take a bulk path: a span that
has closed by the time the attributor first sees it, has no children, is not part of a batch and
is not held is a *leaf*, kept in arrays rather than objects (start, end, class, devices, parent)
and attributed with every other span by the same rules, vectorised. Finalised leaves are handed
back in bulk (:class:`Finished`) with their energy per device; the meter records them one by one
or rolls them up (:mod:`greenmaas.aggregate`). Their results stay readable for the most recent
:data:`RESULT_RING` leaves.
"""

from __future__ import annotations

import math
import operator
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..sampling.timeline import Timeline
from ..sources.base import ESTIMATE, METHOD_UNCERTAINTY
from .engine import share_curves
from .shape import DeviceShaper
from .structure import CONTAINER_KINDS, Intervals, Leaves, Node, competing

if TYPE_CHECKING:
    from ..spans import Span

__all__ = ["LiveAttributor", "Accumulator", "WindowTotals", "Finished"]


class Accumulator:
    """Running energy of one span per device, across windows: ``self_j`` and ``child_j`` (J),
    their ± J ``self_u`` and ``child_u`` (shared by the same rules as the energy), and
    ``self_s``, device time (s) shared by the same rules: what a rented device's price is
    charged by (self only; a parent's time is not summed from its children). One per span
    in flight, so a plain class with slots."""

    __slots__ = ("self_j", "child_j", "self_u", "child_u", "self_s")

    def __init__(
        self,
        self_j: dict[str, float] | None = None,
        child_j: dict[str, float] | None = None,
        self_u: dict[str, float] | None = None,
        child_u: dict[str, float] | None = None,
        self_s: dict[str, float] | None = None,
    ) -> None:
        self.self_j = {} if self_j is None else self_j
        self.child_j = {} if child_j is None else child_j
        self.self_u = {} if self_u is None else self_u
        self.child_u = {} if child_u is None else child_u
        self.self_s = {} if self_s is None else self_s

    def __repr__(self) -> str:
        return (f"Accumulator(self_j={self.self_j}, child_j={self.child_j}, self_u={self.self_u}, "
                f"child_u={self.child_u}, self_s={self.self_s})")

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


#: How many finalised leaves keep their figures for ``span.result`` after the meter has taken
#: them (a ring: older ones are answered from nothing and say so).
RESULT_RING = 1 << 16

_NO_PARENT = -1


class _State:
    __slots__ = ("span", "acc", "held", "done")

    def __init__(self, span: "Span", held: bool = False) -> None:
        self.span = span
        self.acc = Accumulator()
        self.held = held
        self.done = False


class _Device:
    __slots__ = ("wm", "shaper")

    def __init__(self, timeline: Timeline) -> None:
        self.wm: float | None = None
        self.shaper = DeviceShaper(samples=timeline.power_field == "instant")


@dataclass
class Finished:
    """What one :meth:`LiveAttributor.advance` finalised.

    ``spans``: spans with an :class:`Accumulator` (:meth:`LiveAttributor.accumulator`), parents
    before their parents' parents. ``leaves``: leaf spans finalised in bulk, with per device
    ``leaf_j`` (energy, inclusive = self), ``leaf_u`` (± J) and ``leaf_s`` (device seconds), arrays
    aligned with ``leaves``."""

    spans: list = field(default_factory=list)
    leaves: list = field(default_factory=list)
    leaf_j: dict[str, np.ndarray] = field(default_factory=dict)
    leaf_u: dict[str, np.ndarray] = field(default_factory=dict)
    leaf_s: dict[str, np.ndarray] = field(default_factory=dict)
    #: Each leaf's class: an index into ``leaf_keys``, the (kind, name, model, phase, status,
    #: request_id, tenant, devices, parent) of the leaves of that class.
    leaf_code: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    leaf_keys: list = field(default_factory=list)
    leaf_start: np.ndarray = field(default_factory=lambda: np.empty(0))
    leaf_end: np.ndarray = field(default_factory=lambda: np.empty(0))

    def leaf_accumulator(self, i: int) -> Accumulator:
        return _leaf_accumulator(self.leaf_j, self.leaf_u, self.leaf_s, i)


def _leaf_accumulator(j: dict[str, np.ndarray], u: dict[str, np.ndarray], s: dict[str, np.ndarray],
                      i: int) -> Accumulator:
    """Leaf ``i`` of per-device arrays as an :class:`Accumulator` (a leaf's energy is all its own)."""
    return Accumulator(
        self_j={d: float(a[i]) for d, a in j.items()},
        self_u={d: float(a[i]) for d, a in u.items()},
        self_s={d: float(a[i]) for d, a in s.items()},
    )


class _LeafPool:
    """Closed leaf spans not yet finalised, as arrays (see the module docstring)."""

    def __init__(self) -> None:
        self.spans: list = []
        self.start = np.empty(0)
        self.end = np.empty(0)
        self.seq = np.empty(0, dtype=np.int64)
        self.seqs: set[int] = set()  # the same, for membership in O(1) (a result read asks)
        self.code = np.empty(0, dtype=np.int64)  # leaf class (index into the attributor's keys)
        self.j: dict[str, np.ndarray] = {}
        self.u: dict[str, np.ndarray] = {}
        self.s: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.spans)

    def extend(self, spans: list, start, end, seq, code) -> None:
        n = len(spans)
        self.spans.extend(spans)
        self.start = np.concatenate((self.start, start))
        self.end = np.concatenate((self.end, end))
        self.seq = np.concatenate((self.seq, seq))
        self.seqs.update(seq.tolist())
        self.code = np.concatenate((self.code, code))
        for acc in (self.j, self.u, self.s):
            for d in acc:
                acc[d] = np.concatenate((acc[d], np.zeros(n)))

    def column(self, acc: dict[str, np.ndarray], device: str) -> np.ndarray:
        col = acc.get(device)
        if col is None:
            col = acc[device] = np.zeros(len(self.spans))
        return col

    def take(self, mask: np.ndarray) -> tuple[list, dict, dict, dict]:
        """Remove the leaves under ``mask``; return them and their figures."""
        idx = np.nonzero(mask)[0]
        spans = [self.spans[i] for i in idx.tolist()]
        self.seqs.difference_update(self.seq[idx].tolist())
        out = ({d: a[idx] for d, a in self.j.items()}, {d: a[idx] for d, a in self.u.items()},
               {d: a[idx] for d, a in self.s.items()})
        keep = ~mask
        kidx = np.nonzero(keep)[0]
        self.spans = [self.spans[i] for i in kidx.tolist()]
        self.start, self.end, self.seq, self.code = self.start[keep], self.end[keep], self.seq[keep], self.code[keep]
        for acc in (self.j, self.u, self.s):
            for d in list(acc):
                acc[d] = acc[d][keep]
        return spans, *out  # type: ignore[return-value]


class _Ring:
    """The figures of the last :data:`RESULT_RING` finalised leaves, by span sequence number."""

    def __init__(self, size: int = RESULT_RING) -> None:
        self.size = size
        self.seq = np.full(size, -1, dtype=np.int64)
        self.j: dict[str, np.ndarray] = {}
        self.u: dict[str, np.ndarray] = {}
        self.s: dict[str, np.ndarray] = {}

    def put(self, seq: np.ndarray, j: dict, u: dict, s: dict) -> None:
        if seq.size > self.size:
            seq = seq[-self.size :]
            j = {d: a[-self.size :] for d, a in j.items()}
            u = {d: a[-self.size :] for d, a in u.items()}
            s = {d: a[-self.size :] for d, a in s.items()}
        pos = seq % self.size
        self.seq[pos] = seq
        for store, new in ((self.j, j), (self.u, u), (self.s, s)):
            for d, a in new.items():
                col = store.get(d)
                if col is None:
                    col = store[d] = np.zeros(self.size)
                col[pos] = a
            for d, col in store.items():  # a device this batch did not touch: zero, not stale
                if d not in new:
                    col[pos] = 0.0

    def get(self, seq: int) -> Accumulator | None:
        pos = seq % self.size
        if self.seq[pos] != seq:
            return None
        return _leaf_accumulator(self.j, self.u, self.s, pos)


class LiveAttributor:
    """Attributes device energy to spans as it settles.

    :meth:`add` is an append, safe from any thread (the span is taken in at the next
    :meth:`advance`); :meth:`advance` must be called by one thread at a time (the meter holds its
    flush lock around it). ``settle_margin_s``: how long after a span's clock read it surely has
    been added (spans are stamped, then added; a window never ends closer to ``now`` than this).
    """

    def __init__(self, policy: str, start: float, *, settle_margin_s: float = 0.0) -> None:
        self.policy = policy
        self.start = start
        self.settle_margin_s = settle_margin_s
        self._new: deque = deque()
        #: :meth:`add` itself, as a bound C method (the meter calls it for every span it opens).
        self.intake_append = self._new.append
        #: Spans added and not taken in yet (its ``len`` is the backlog).
        self.backlog = self._new
        self._held: set[int] = set()
        self._states: dict[int, _State] = {}
        self._leaves = _LeafPool()
        self._ring = _Ring()
        # Leaf classes: every tag that a rollup keeps, the parent by identity.
        self._keys: dict[tuple, int] = {}
        self._key_list: list[tuple] = []
        self._key_cls: list[int] = []  # power-model class of each key
        self._key_dev: list[int] = []  # device set of each key
        self._key_parent: list[int] = []  # id() of each key's parent, or _NO_PARENT
        self._classes: dict[tuple[str, str], int] = {}
        self._class_names: list[str] = []
        self._dev_sets: dict[tuple[str, ...] | None, int] = {}
        self._dev_list: list[tuple[str, ...] | None] = []
        self._devices: dict[str, _Device] = {}
        self._records: "weakref.WeakKeyDictionary[Span, Any]" = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ span state

    def add(self, span: "Span") -> None:
        self._new.append(span)

    def _intake(self) -> None:
        """Take in the spans added since the last advance: closed leaves into the pool, the
        rest as states."""
        new = self._new
        n = len(new)
        if not n:
            return
        popleft = new.popleft
        batch = [popleft() for _ in range(n)]  # others may append meanwhile: they wait a pass
        held = self._held
        if self.policy == "time":
            is_leaf = [
                s.end is not None and not s.has_children and s.share_rate is None and s.kind not in _NOT_LEAF
                for s in batch
            ]
            if held:
                is_leaf = [ok and id(s) not in held for ok, s in zip(is_leaf, batch)]
        else:
            is_leaf = [False] * n
        states = self._states
        leaves = []
        for ok, s in zip(is_leaf, batch):
            if ok:
                leaves.append(s)
            elif s.start is not None:
                states[id(s)] = _State(s, held=id(s) in held)
        if not leaves:
            return
        m = len(leaves)
        if len(self._keys) > _MAX_KEYS:
            self._prune_keys()
        table = self._keys
        keys = list(map(_key_of, leaves))
        codes = [table.get(k) for k in keys]
        if None in codes:
            for i, k in enumerate(keys):
                if codes[i] is None:
                    codes[i] = self._new_key(k)
        self._leaves.extend(
            leaves,
            np.fromiter([s.start for s in leaves], dtype=np.float64, count=m),
            np.fromiter([s.end for s in leaves], dtype=np.float64, count=m),
            np.fromiter([s._seq for s in leaves], dtype=np.int64, count=m),
            np.asarray(codes, dtype=np.int64),
        )

    def _new_key(self, key: tuple) -> int:
        c = self._keys.get(key)
        if c is not None:
            return c
        kind, name, devices, parent = key[0], key[1], key[7], key[8]
        ck = (kind, name)
        cls = self._classes.get(ck)
        if cls is None:
            cls = self._classes[ck] = len(self._class_names)
            self._class_names.append(f"{kind}:{name}")
        dev = self._dev_sets.get(devices)
        if dev is None:
            dev = self._dev_sets[devices] = len(self._dev_list)
            self._dev_list.append(devices)
        c = self._keys[key] = len(self._key_list)
        self._key_list.append(key)
        self._key_cls.append(cls)
        self._key_dev.append(dev)
        self._key_parent.append(_NO_PARENT if parent is None else id(parent))
        return c

    def _prune_keys(self) -> None:
        """Forget the leaf classes no pending leaf uses (a class holds its parent span; a run
        with a parent per step would otherwise keep every one)."""
        pool = self._leaves
        used = np.unique(pool.code).tolist() if len(pool) else []
        old = self._key_list
        self._keys, self._key_list = {}, []
        self._key_cls, self._key_dev, self._key_parent = [], [], []
        remap = np.zeros(len(old), dtype=np.int64)
        for c in used:
            remap[c] = self._new_key(old[c])
        if len(pool):
            pool.code = remap[pool.code]

    def hold(self, span: "Span") -> None:
        """Keep windows before ``span``'s start until :meth:`release` (its true times are being
        resolved, e.g. from CUDA events)."""
        self._held.add(id(span))
        st = self._states.get(id(span))
        if st is not None:
            st.held = True

    def release(self, span: "Span") -> None:
        self._held.discard(id(span))
        st = self._states.get(id(span))
        if st is not None:
            st.held = False

    def is_held(self, span: "Span") -> bool:
        return id(span) in self._held

    def accumulator(self, span: "Span") -> Accumulator | None:
        """The span's energy so far (None once its figures are gone: see :data:`RESULT_RING`)."""
        st = self._states.get(id(span))
        if st is not None:
            return st.acc
        seq = getattr(span, "_seq", None)
        if seq is None:
            return None
        pool = self._leaves
        if seq in pool.seqs:
            hit = np.nonzero(pool.seq == seq)[0]
            if hit.size:
                i = int(hit[0])
                if pool.spans[i] is span:
                    return _leaf_accumulator(pool.j, pool.u, pool.s, i)
        acc = self._ring.get(seq)
        if acc is not None:
            return acc
        if any(s is span for s in list(self._new)):  # not taken in yet (rare: results wait a flush)
            return Accumulator()
        return None

    def set_record(self, span: "Span", record: Any) -> None:
        self._records[span] = record

    def record(self, span: "Span") -> Any:
        return self._records.get(span)

    def is_final(self, span: "Span") -> bool:
        if span in self._records:
            return True
        seq = getattr(span, "_seq", None)
        if seq is None or id(span) in self._states:
            return False
        if seq in self._leaves.seqs:
            return False
        # Finalised leaves are in the ring (a span not taken in yet cannot be): O(1), however
        # long the backlog.
        return self._ring.get(seq) is not None

    @property
    def pending(self) -> int:
        """Spans taken in and not finalised, plus those not taken in yet."""
        return len(self._states) + len(self._leaves) + len(self._new)

    @property
    def watermark(self) -> float:
        """The earliest time not yet attributed on some device."""
        wms = [d.wm for d in self._devices.values() if d.wm is not None]
        return min(wms) if wms else self.start

    def open_spans(self) -> list["Span"]:
        self._intake()
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
    ) -> tuple[Finished, list[WindowTotals]]:
        """Attribute what has settled on every device (limited by :meth:`limit` unless
        ``force``, which ends every device at its last settled energy) and return what was
        finalised and the per-device totals of the windows."""
        self._intake()
        lim = math.inf if force else min(self.limit(), now - self.settle_margin_s)
        states = [st for st in list(self._states.values()) if st.span.start is not None]

        plans: list[tuple[str, Timeline, _Device, float, tuple | None]] = []
        watermarks: list[float] = []
        for dev, tl in timelines.items():
            d = self._devices.get(dev)
            if d is None:
                d = self._devices[dev] = _Device(tl)
            knots = tl.knots() if tl.has_counter else None  # timed once per advance
            settled: float | None
            if knots is not None:
                settled = float(knots[0][-1])
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
            watermarks.append(d.wm)
        if not plans:
            return self._finalise(timelines, force), []
        t_lo = min(watermarks)
        t_hi = max(p[3] for p in plans)
        # Only spans alive in the window compete in it: the others (closed before it, waiting
        # for their figures to settle, or not started yet) would give no interval, and building
        # their nodes each pass cost more than the attribution on a busy server. A child lies
        # within its parent's life or has no interval here, so no parent it cuts is left out.
        states = [st for st in states
                  if st.span.start < t_hi and (st.span.end is None or st.span.end > t_lo)]  # type: ignore[operator]
        leaves = self._leaf_set(states)
        work = competing(_nodes(states), t_lo, max(t_hi, t_lo), self.policy, leaves) if t_hi > t_lo else None

        totals: list[WindowTotals] = []
        for dev, tl, d, target, knots in plans:
            if work is None:
                continue
            on_dev = work.on_device(dev)
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

    def _leaf_set(self, states: list[_State]) -> Leaves | None:
        pool = self._leaves
        if not len(pool):
            return None
        index = {id(st.span): i for i, st in enumerate(states)}
        key_parent = np.asarray([index.get(k, _NO_PARENT) if k != _NO_PARENT else _NO_PARENT for k in self._key_parent],
                                dtype=np.int64)
        codes = pool.code
        return Leaves(
            pool.start,
            pool.end,
            key_parent[codes],
            np.asarray(self._key_cls, dtype=np.int64)[codes],
            list(self._class_names),
            np.asarray(self._key_dev, dtype=np.int64)[codes],
            list(self._dev_list),
        )

    def _window(self, dev, method, states, work: Intervals, ct, ce, cu, t0, t1) -> WindowTotals:
        n = len(states)
        m = len(self._leaves)
        total = n + m
        sh, su, tm = share_curves(
            ct, [ce, cu], work.starts, work.ends, work.rates, work.owners, total, t0, t1, with_time=True
        )
        for i in np.nonzero(sh.by_owner[:n])[0].tolist():
            acc = states[i].acc
            _add(acc.self_j, dev, float(sh.by_owner[i]))
            _add(acc.self_u, dev, float(su.by_owner[i]))
        for i in np.nonzero(tm.by_owner[:n])[0].tolist():
            _add(states[i].acc.self_s, dev, float(tm.by_owner[i]))
        if m:
            pool = self._leaves
            pool.column(pool.j, dev)[:] += sh.by_owner[n:]
            pool.column(pool.u, dev)[:] += su.by_owner[n:]
            pool.column(pool.s, dev)[:] += tm.by_owner[n:]
        return WindowTotals(dev, method, t0, t1, sh.total_j, sh.attributed_j, sh.idle_j, tm.idle_j, su.idle_j)

    def _finalise(self, timelines: dict[str, Timeline], force: bool) -> Finished:
        """Spans every one of whose devices has been attributed past their end."""
        wms = {dev: d.wm for dev, d in self._devices.items()}
        done: list[_State] = []
        # How far every device of a device set has been attributed (-inf: one not yet; +inf:
        # none measured), once per set: a span is final once that reaches its end.
        reach_of: dict[tuple[str, ...] | None, float] = {}
        for st in list(self._states.values()):
            s = st.span
            end = s.end
            if end is None or s.start is None:
                continue
            if not force:
                key = s.devices
                attributed = reach_of.get(key)
                if attributed is None:
                    devs = timelines if key is None else [x for x in key if x in timelines]
                    attributed = reach_of[key] = min((_reach(wms.get(x)) for x in devs), default=math.inf)
                if end > attributed:
                    continue
            done.append(st)
        out = Finished()
        pool = self._leaves
        if len(pool):
            if force:
                ready = np.ones(len(pool), dtype=bool)
            else:
                reach = np.empty(len(self._dev_list))
                for code, ds in enumerate(self._dev_list):
                    devs = timelines if ds is None else [x for x in ds if x in timelines]
                    vals = [wms.get(x) for x in devs]
                    reach[code] = -math.inf if any(v is None for v in vals) else min(vals, default=math.inf)  # type: ignore[type-var]
                ready = pool.end <= reach[np.asarray(self._key_dev, dtype=np.int64)[pool.code]]
            if ready.any():
                starts = pool.start[ready]
                ends = pool.end[ready]
                codes = pool.code[ready]
                keys = np.asarray(self._key_parent, dtype=np.int64)[codes]
                seqs = pool.seq[ready]
                spans, j, u, sec = pool.take(ready)
                # A leaf's energy joins its parent's while that one is not final; a parent
                # finalised in this same pass takes only leaves that ended by its own end
                # (children before parents, as below).
                closing = {id(st.span): st.span.end for st in done}
                for key in np.unique(keys).tolist():
                    if key == _NO_PARENT:
                        continue
                    tst = self._states.get(key)
                    if tst is None or tst.done:
                        continue
                    sel = keys == key
                    p_end = closing.get(key)
                    if p_end is not None:
                        sel &= ends <= p_end
                    if not sel.any():
                        continue
                    for dv, a in j.items():
                        _add(tst.acc.child_j, dv, float(a[sel].sum()))
                    for dv, a in u.items():
                        _add(tst.acc.child_u, dv, float(a[sel].sum()))
                self._ring.put(seqs, j, u, sec)
                out.leaves, out.leaf_j, out.leaf_u, out.leaf_s = spans, j, u, sec
                out.leaf_code, out.leaf_keys = codes, self._key_list
                out.leaf_start, out.leaf_end = starts, ends
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
                    for dv, jj in inc.items():
                        _add(tst.acc.child_j, dv, jj)
                    for dv, uu in inc_u.items():
                        _add(tst.acc.child_u, dv, uu)
        out.spans = [st.span for st in done]
        return out

    def forget(self, spans: list["Span"]) -> None:
        """Drop the state of finalised spans (after the meter has recorded them)."""
        for s in spans:
            self._states.pop(id(s), None)
            self._held.discard(id(s))


#: Kinds that never take the bulk path (a batch's and its shares' energy depend on each other).
_NOT_LEAF = frozenset({"batch", "share"})
#: What makes leaves one class: every tag a rollup keeps, and the parent (by identity).
_key_of = operator.attrgetter("kind", "name", "model", "phase", "status", "request_id", "tenant", "devices", "parent")
#: Leaf classes remembered before unused ones are forgotten.
_MAX_KEYS = 8192


def _reach(wm: float | None) -> float:
    return -math.inf if wm is None else wm


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
