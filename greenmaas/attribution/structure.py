"""Who competes for a device's energy at each instant: the span tree turned into intervals.

Pure, shared by the live attributor and offline re-attribution, so both divide energy by the
same rules. The rules (which equal "a parent gets everything on its devices during its life"
whenever one span tree runs alone):

* a span competes when it is active and none of its children is active then (its *self* time);
  a parent's energy is its self energy plus its children's;
* ``request`` and ``batch`` spans with children are containers: their self time takes nothing
  (a request waiting in a queue for its batch consumes nothing; its batch share does);
* with the ``weighted`` policy a parent's self time takes nothing either (its rate, weight per
  second of its life, would not be comparable with its children's);
* batch members (kind ``share``) split their batch by weight: under ``time`` the batch as a whole
  counts as one span (member rate = weight / sum of the batch's weights), under ``weighted`` each
  member's rate is weight / duration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["CONTAINER_KINDS", "Node", "Leaves", "Intervals", "competing", "subtract"]

#: Span kinds whose own time does not compete once they have children.
CONTAINER_KINDS = frozenset({"request", "batch"})


@dataclass
class Node:
    """One span as attribution sees it. ``parent``/``link`` are indices into the node list."""

    start: float
    end: float | None
    kind: str = "span"
    name: str = ""
    parent: int | None = None
    link: int | None = None  # a batch share's request
    weight: float | None = None
    share_rate: float | None = None  # a batch member's rate under ``time``
    devices: tuple[str, ...] | None = None
    has_children: bool = False


@dataclass
class Leaves:
    """Closed leaf spans in bulk (many short spans: forward calls, steps): one entry per span.

    A leaf competes over its whole life at rate 1 (``time`` policy) and takes nothing from its
    own children (it has none); it cuts its parent's self time like any child. ``parents`` index
    the node list (-1: none among the nodes); ``classes`` index ``class_names`` (power-model
    class, ``kind:name``); ``dev_codes`` index ``dev_sets`` (the devices each leaf is limited
    to; ``None``: every device)."""

    starts: np.ndarray
    ends: np.ndarray
    parents: np.ndarray
    classes: np.ndarray
    class_names: list[str]
    dev_codes: np.ndarray
    dev_sets: list[tuple[str, ...] | None]

    def __len__(self) -> int:
        return int(self.starts.size)


@dataclass
class Intervals:
    """Self intervals of the competing spans: one entry per interval. Intervals of rate 0 take
    no energy; they only tell the power model that work of their class runs (a batch's pass).
    Owners ``0..n-1`` are the nodes, ``n..n+m-1`` the leaves (in order)."""

    starts: np.ndarray
    ends: np.ndarray
    rates: np.ndarray
    owners: np.ndarray  # index into the node list, then the leaves
    classes: np.ndarray  # power-model class of the owner (index into ``class_names``)
    class_names: list[str]
    dev_codes: np.ndarray | None = None  # index into ``dev_sets`` per interval
    dev_sets: list[tuple[str, ...] | None] | None = None

    def on_device(self, device: str) -> "Intervals":
        """The intervals of spans that run on ``device`` (spans limited to other devices out)."""
        if self.dev_codes is None or self.dev_sets is None:
            return self
        allowed = [i for i, ds in enumerate(self.dev_sets) if ds is None or device in ds]
        if len(allowed) == len(self.dev_sets):
            return self
        keep = np.isin(self.dev_codes, np.asarray(allowed, dtype=np.int64))
        return Intervals(
            self.starts[keep], self.ends[keep], self.rates[keep], self.owners[keep], self.classes[keep],
            self.class_names, self.dev_codes[keep], self.dev_sets,
        )


def rate_of(node: Node, policy: str) -> float:
    """The rate a span's self time competes with (0: takes nothing)."""
    if node.share_rate is not None and policy == "time":
        return node.share_rate
    if node.has_children and (node.kind in CONTAINER_KINDS or policy == "weighted"):
        return 0.0
    if policy == "time":
        return 1.0
    if node.end is None:
        return 0.0  # a weighted span's rate needs its duration; windows wait for it
    d = node.end - node.start
    w = node.weight if node.weight is not None else 1.0
    return w / d if d > 0 else 0.0


def power_class(node: Node) -> str:
    """What the power model groups spans by: work of one kind and name draws alike."""
    return f"{node.kind}:{node.name}"


def competing(
    nodes: Sequence[Node], t0: float, t_open: float, policy: str, leaves: Leaves | None = None
) -> Intervals:
    """Self intervals of every node (and leaf) inside ``[t0, t_open]`` (open nodes run to
    ``t_open``)."""
    n = len(nodes)
    kids: dict[int, list[int]] = {}
    for i, nd in enumerate(nodes):
        if nd.parent is not None:
            kids.setdefault(nd.parent, []).append(i)
    class_ix: dict[str, int] = {}
    dev_ix: dict[tuple[str, ...] | None, int] = {}
    leaf_cls = leaf_dev = None
    leaf_by_parent: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if leaves is not None and len(leaves):
        # Leaf classes and device sets, mapped into this call's numbering.
        cmap = np.asarray([class_ix.setdefault(c, len(class_ix)) for c in leaves.class_names], dtype=np.int64)
        dmap = np.asarray([dev_ix.setdefault(d, len(dev_ix)) for d in leaves.dev_sets], dtype=np.int64)
        leaf_cls, leaf_dev = cmap[leaves.classes], dmap[leaves.dev_codes]
        has_parent = leaves.parents >= 0
        if has_parent.any():
            idx = np.nonzero(has_parent)[0]
            par = leaves.parents[idx]
            order = np.argsort(par, kind="stable")
            idx, par = idx[order], par[order]
            cuts = np.nonzero(np.diff(par))[0] + 1
            for grp in np.split(idx, cuts):
                leaf_by_parent[int(leaves.parents[grp[0]])] = (leaves.starts[grp], leaves.ends[grp])
    starts: list[float] = []
    ends: list[float] = []
    rates: list[float] = []
    owners: list[int] = []
    classes: list[int] = []
    devs: list[int] = []
    for i, nd in enumerate(nodes):
        a = max(nd.start, t0)
        b = t_open if nd.end is None else min(nd.end, t_open)
        if b <= a:
            continue
        rate = rate_of(nd, policy)
        if rate <= 0:
            if nd.kind == "batch" and nd.has_children:
                # A batch takes nothing itself (its members share it), but the pass draws a
                # base power of its own beyond its members': a power-model interval, rate 0.
                starts.append(a)
                ends.append(b)
                rates.append(0.0)
                owners.append(i)
                classes.append(class_ix.setdefault(power_class(nd), len(class_ix)))
                devs.append(dev_ix.setdefault(nd.devices, len(dev_ix)))
            continue
        c = class_ix.setdefault(power_class(nd), len(class_ix))
        dc = dev_ix.setdefault(nd.devices, len(dev_ix))
        lc = leaf_by_parent.get(i)
        if i not in kids and lc is None:  # no children: its whole life is its own
            starts.append(a)
            ends.append(b)
            rates.append(rate)
            owners.append(i)
            classes.append(c)
            devs.append(dc)
            continue
        cs = [nodes[k].start for k in kids.get(i, ())]
        ce = [t_open if nodes[k].end is None else nodes[k].end for k in kids.get(i, ())]
        if lc is not None:
            cs_a = np.concatenate((np.asarray(cs, dtype=np.float64), lc[0]))
            ce_a = np.concatenate((np.asarray(ce, dtype=np.float64), lc[1]))
        else:
            cs_a = np.asarray(cs, dtype=np.float64)
            ce_a = np.asarray(ce, dtype=np.float64)
        ia, ib = subtract(a, b, cs_a, ce_a)
        starts.extend(ia.tolist())
        ends.extend(ib.tolist())
        k = ia.size
        rates.extend([rate] * k)
        owners.extend([i] * k)
        classes.extend([c] * k)
        devs.extend([dc] * k)
    out_s = np.asarray(starts, dtype=np.float64)
    out_e = np.asarray(ends, dtype=np.float64)
    out_r = np.asarray(rates, dtype=np.float64)
    out_o = np.asarray(owners, dtype=np.int64)
    out_c = np.asarray(classes, dtype=np.int64)
    out_d = np.asarray(devs, dtype=np.int64)
    if leaves is not None and len(leaves):
        la = np.maximum(leaves.starts, t0)
        lb = np.minimum(leaves.ends, t_open)
        live = lb > la
        idx = np.nonzero(live)[0]
        out_s = np.concatenate((out_s, la[idx]))
        out_e = np.concatenate((out_e, lb[idx]))
        out_r = np.concatenate((out_r, np.ones(idx.size)))
        out_o = np.concatenate((out_o, idx + n))
        out_c = np.concatenate((out_c, leaf_cls[idx]))  # type: ignore[index]
        out_d = np.concatenate((out_d, leaf_dev[idx]))  # type: ignore[index]
    return Intervals(out_s, out_e, out_r, out_o, out_c, list(class_ix), out_d, list(dev_ix))


def subtract(a: float, b: float, cs: np.ndarray, ce: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[a, b] minus the union of the intervals [cs, ce] (children's lives): the gaps, in order."""
    cs = np.maximum(cs, a)
    ce = np.minimum(ce, b)
    keep = ce > cs
    if not keep.any():
        return np.asarray([a]), np.asarray([b])
    cs, ce = cs[keep], ce[keep]
    order = np.argsort(cs, kind="stable")
    cs, ce = cs[order], ce[order]
    covered = np.maximum.accumulate(ce)
    before = np.concatenate(([a], covered[:-1]))  # how far the cuts so far reach
    gap = cs > before
    gs, ge = before[gap], cs[gap]
    if covered[-1] < b:
        gs = np.concatenate((gs, [covered[-1]]))
        ge = np.concatenate((ge, [b]))
    return gs, ge
