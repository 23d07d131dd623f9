"""Batches: one forward pass that serves several requests.

A batch is a span (kind ``batch``) whose members are ``share`` spans side by side under it, one
per request, each linked to its request span when there is one. Members split the batch's energy
in proportion to their weights (output tokens by default); the request spans they link to add
their shares to their own energy. See :meth:`greenmaas.Meter.batch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from .errors import ConfigError
from .spans import Span, SpanResult, _current

if TYPE_CHECKING:
    from .meter import Meter

__all__ = ["Batch"]

_NO_INFO: Mapping[str, Any] = {}


class Batch:
    """One forward pass over several requests; see :meth:`Meter.batch`."""

    def __init__(self, meter: Meter, requests: list, *, weights=None, name="batch", model=None, **tags):
        if weights is not None and len(weights) != len(requests):
            raise ConfigError(f"batch of {len(requests)} requests got {len(weights)} weights")
        self.meter = meter
        self.span = Span(name, meter=meter, kind="batch", model=model, phase=tags.pop("phase", "inference"), **tags)
        self.members: list[Span] = []
        links: list[Span | None] = []
        for i, r in enumerate(requests):
            if isinstance(r, Span):  # the usual case: checked first, alone
                link: Span | None = r
                info: Mapping[str, Any] = _NO_INFO
                rid, tokens_out, items = r.request_id, r.tokens_out, r.items
            else:
                link = None
                info = r if isinstance(r, Mapping) else _NO_INFO
                rid = info.get("request_id") if info else str(r)
                tokens_out, items = info.get("tokens_out"), info.get("items")
            if weights is not None:
                w = float(weights[i])
            elif tokens_out:
                w = float(tokens_out)
            elif items:
                w = float(items)
            else:
                w = 1.0
            m = Span(
                f"{name}-share",
                meter=meter,
                kind="share",
                model=model or (link.model if link else info.get("model")),
                request_id=rid,
                tenant=link.tenant if link else info.get("tenant"),
                tokens_out=tokens_out,
                items=items,
                weight=w,
            )
            self.members.append(m)
            links.append(link)
        total = sum(m.weight or 0.0 for m in self.members)
        self._links = links
        self._total = total

    def __enter__(self) -> "Batch":
        # A batch is never inside one of its own requests (a test or a simple server may open
        # it from a request's context): nest it under the nearest span that is not a member.
        links = {id(link) for link in self._links if link is not None}
        outer = _current.get()
        while outer is not None and id(outer) in links:
            outer = outer.parent
        token = _current.set(outer)
        try:
            self.span.__enter__()
        finally:
            self.span._restore_on_exit(token)  # exiting the batch restores the caller's context
        for m, link in zip(self.members, self._links):
            m._as_share(link, (m.weight or 0.0) / self._total if self._total > 0 else 0.0)
            m.__enter__()
            # Members sit side by side under the batch, not inside each other.
            _current.set(self.span)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        now = self.meter._now()
        for m in self.members:
            m._close_at(now, exc_type is not None)
        self.span.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> "Batch":
        return self.__enter__()

    async def __aexit__(self, *exc) -> None:
        self.__exit__(*exc)

    @property
    def result(self) -> SpanResult:
        return self.span.result
