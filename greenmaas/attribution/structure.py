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

__all__ = ["CONTAINER_KINDS", "Node", "Intervals", "competing"]

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
class Intervals:
    """Self intervals of the competing spans: one entry per interval. Intervals of rate 0 take
    no energy; they only tell the power model that work of their class runs (a batch's pass)."""

    starts: np.ndarray
    ends: np.ndarray
    rates: np.ndarray
    owners: np.ndarray  # index into the node list
    classes: np.ndarray  # power-model class of the owner (index into ``class_names``)
    class_names: list[str]

    def on_device(self, nodes: Sequence[Node], device: str) -> "Intervals":
        keep = np.array(
            [nodes[o].devices is None or device in nodes[o].devices for o in self.owners.tolist()], dtype=bool
        )
        return Intervals(
            self.starts[keep], self.ends[keep], self.rates[keep], self.owners[keep], self.classes[keep], self.class_names
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


def competing(nodes: Sequence[Node], t0: float, t_open: float, policy: str) -> Intervals:
    """Self intervals of every node inside ``[t0, t_open]`` (open nodes run to ``t_open``)."""
    kids: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        if n.parent is not None:
            kids.setdefault(n.parent, []).append(i)
    starts: list[float] = []
    ends: list[float] = []
    rates: list[float] = []
    owners: list[int] = []
    classes: list[int] = []
    class_ix: dict[str, int] = {}
    for i, n in enumerate(nodes):
        a = max(n.start, t0)
        b = t_open if n.end is None else min(n.end, t_open)
        if b <= a:
            continue
        rate = rate_of(n, policy)
        if rate <= 0:
            if n.kind == "batch" and n.has_children:
                # A batch takes nothing itself (its members share it), but the pass draws a
                # base power of its own beyond its members': a power-model interval, rate 0.
                c = class_ix.setdefault(power_class(n), len(class_ix))
                starts.append(a)
                ends.append(b)
                rates.append(0.0)
                owners.append(i)
                classes.append(c)
            continue
        c = class_ix.setdefault(power_class(n), len(class_ix))
        for ia, ib in _subtract(a, b, [nodes[k] for k in kids.get(i, ())], t_open):
            starts.append(ia)
            ends.append(ib)
            rates.append(rate)
            owners.append(i)
            classes.append(c)
    return Intervals(
        np.asarray(starts, dtype=np.float64),
        np.asarray(ends, dtype=np.float64),
        np.asarray(rates, dtype=np.float64),
        np.asarray(owners, dtype=np.int64),
        np.asarray(classes, dtype=np.int64),
        list(class_ix),
    )


def _subtract(a: float, b: float, children: Sequence[Node], t_open: float) -> list[tuple[float, float]]:
    """[a, b] minus the union of the children's lives (open children run to ``t_open``)."""
    cuts = sorted((max(c.start, a), min(t_open if c.end is None else c.end, b)) for c in children)
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
