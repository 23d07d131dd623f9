"""Spans: mark what ran when.

One class, :class:`Span`, serves as a context manager and as a decorator on plain and async
functions. Spans nest through a context variable, so nesting follows asyncio tasks and
``contextvars.copy_context().run`` (``asyncio.to_thread``) into worker threads. Tags not given
(model, phase, request_id, tenant) are inherited from the enclosing span.

Opening and closing a span takes two clock reads, a context-variable set and reset, a counter
and an append to the meter's intake queue: no locks, no I/O, about a microsecond each way.
Everything else (ids, attribution, records, pricing, the ledger) happens on the meter's
background thread; ``span.result`` asks for the energy and waits (briefly) only when read.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .attribution.structure import CONTAINER_KINDS
from .errors import ConfigError

if TYPE_CHECKING:
    from .meter import Meter

__all__ = ["Span", "SpanResult", "current_span", "bind", "CONTAINER_KINDS"]

PHASES = ("training", "inference", "other")

_current: contextvars.ContextVar["Span | None"] = contextvars.ContextVar("greenmaas_span", default=None)



def current_span() -> "Span | None":
    """The innermost open span in this context, or None."""
    return _current.get()


def bind(fn: Callable) -> Callable:
    """``fn`` bound to the current context, so spans it opens nest under the current span.

    ``asyncio`` tasks and ``asyncio.to_thread`` carry the context by themselves; a plain thread
    pool does not: ``pool.submit(greenmaas.bind(work), batch)`` or
    ``loop.run_in_executor(pool, greenmaas.bind(work), batch)``. Each call runs in its own copy,
    so one bound function may run in several workers at once."""
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def bound(*args, **kwargs):
        return ctx.copy().run(fn, *args, **kwargs)

    return bound


@dataclass
class SpanResult:
    """What a span consumed. ``energy_j`` sums devices; ``by_device_j`` per device id.

    ``final`` is False while the result is provisional: the devices' energy up to the span's
    end has not all settled yet (an energy counter reveals energy at its next update, ~100 ms
    later on NVIDIA GPUs), so ``energy_j`` so far is what has been attributed, a lower bound.
    The span's ledger row is written once final. ``method`` is the weakest method among its
    devices; ``uncertainty_j`` is ± J (from the counter grid's timing and the shape fit, or the
    method's stated relative uncertainty for estimates); ``gap_s`` is time when some device
    could not be read.
    """

    duration_s: float
    energy_j: float
    by_device_j: dict[str, float]
    self_energy_j: float
    method: str
    methods: dict[str, str] = field(default_factory=dict)
    gap_s: float = 0.0
    final: bool = True
    carbon_g: float | None = None
    cost: float | None = None
    currency: str | None = None
    uncertainty_j: float | None = None
    #: Seconds of each device's time this span had to itself, shared among concurrent spans by
    #: the same rules as energy: what hardware rental is charged on.
    device_s: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        unc = "" if self.uncertainty_j is None else f" ± {self.uncertainty_j:.4f}"
        return (
            f"SpanResult(duration_s={self.duration_s:.4f}, energy_j={self.energy_j:.4f}{unc}, "
            f"method={self.method!r}, final={self.final})"
        )

    def _repr_html_(self) -> str:
        """The result as a table in Jupyter (:func:`greenmaas.notebook.span_result_html`)."""
        from .notebook import span_result_html

        return span_result_html(self)


class Span:
    """A named interval of work, with tags.

    Use through :func:`greenmaas.measure`, :meth:`Meter.measure`, :meth:`Meter.request` or
    :meth:`Meter.batch`. As a decorator, each call of the function is a new span with the same
    name and tags.
    """

    __slots__ = (
        "_meter",
        "name",
        "kind",
        "model",
        "phase",
        "request_id",
        "tenant",
        "weight",
        "tokens_in",
        "tokens_out",
        "items",
        "attrs",
        "devices",
        "_seq",
        "parent",
        "start",
        "end",
        "status",
        "has_children",
        "link",
        "_token",
        "_result",
        "share_rate",
        "run_id",
        "dropped",
        "__weakref__",
    )

    def __init__(
        self,
        name: str,
        *,
        meter: "Meter | None" = None,
        kind: str = "span",
        model: str | None = None,
        phase: str | None = None,
        request_id: str | None = None,
        tenant: str | None = None,
        weight: float | None = None,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        items: int | None = None,
        devices: Sequence[str] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        if phase is not None and phase not in PHASES:
            raise ConfigError(f"phase must be one of {', '.join(PHASES)}, not {phase!r}")
        if weight is not None and not (weight >= 0):
            raise ConfigError(f"weight must be a non-negative number, not {weight!r}")
        self._meter = meter
        self.name = str(name)
        self.kind = kind
        self.model = model
        self.phase = phase
        self.request_id = None if request_id is None else str(request_id)
        self.tenant = None if tenant is None else str(tenant)
        self.weight = weight
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.items = items
        self.attrs = dict(attrs) if attrs else {}
        self.devices = tuple(devices) if devices is not None else None
        self._seq: int | None = None
        self.parent: Span | None = None
        self.start: float | None = None
        self.end: float | None = None
        self.status = "ok"
        self.has_children = False
        self.link: Span | None = None  # a batch share's request span
        self._token: contextvars.Token[Span | None] | None = None
        self._result: SpanResult | None = None
        self.share_rate: float | None = None  # a batch member's share of its batch (time policy)
        self.run_id: str | None = None
        #: True when the meter could not take this span (its intake was full: spans opened
        #: faster than they could be attributed); counted in the run, never measured.
        self.dropped = False

    # ------------------------------------------------------------------ context manager

    def _copy(self) -> "Span":
        return Span(
            self.name,
            meter=self._meter,
            kind=self.kind,
            model=self.model,
            phase=self.phase,
            request_id=self.request_id,
            tenant=self.tenant,
            weight=self.weight,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            items=self.items,
            devices=self.devices,
            attrs=self.attrs,
        )

    @property
    def span_id(self) -> str | None:
        """The span's id in the ledger (None until it opens)."""
        if self._seq is None or self._meter is None:
            return None
        return f"{self._meter._id_prefix}-{self._seq:x}"

    def __enter__(self) -> "Span":
        if self.start is not None:
            raise ConfigError(f"span {self.name!r} was already entered; use a new span (or the decorator)")
        meter = self._meter
        if meter is None:
            from .meter import get_meter

            meter = self._meter = get_meter()
        if meter._intake is None:
            meter.start()
        parent = _current.get()
        if parent is not None and parent._meter is not meter:
            parent = None
        if parent is not None:
            self.parent = parent
            parent.has_children = True
            if self.model is None:
                self.model = parent.model
            if self.phase is None:
                self.phase = parent.phase
            if self.request_id is None:
                self.request_id = parent.request_id
            if self.tenant is None:
                self.tenant = parent.tenant
        # The meter's part of opening, inlined (this is the hot path): a number, a clock read,
        # an append to the attributor's intake.
        self._seq = next(meter._ids)
        self.run_id = meter.run_id
        self.start = meter._mono()
        if len(meter._backlog) < meter.max_pending:
            meter._intake(self)
        else:
            self.dropped = True
            meter._drop()
        self._token = _current.set(self)  # only once opened: a failed open leaves no trace
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.status = "error"
        token, self._token = self._token, None
        if token is not None:
            try:
                _current.reset(token)
            except ValueError:  # exited in another context (e.g. a generator); restore parent
                _current.set(self.parent)
        self.end = self._meter._mono()  # type: ignore[union-attr]

    # ------------------------------------------------------------------ structure (batches)

    def _as_share(self, link: "Span | None", rate: float) -> None:
        """Make this span a member of a batch: ``rate`` is its share of the batch under the
        ``time`` policy, ``link`` the request it serves (which becomes a container)."""
        self.kind = "share"
        self.link = link
        self.share_rate = rate
        if link is not None:
            link.has_children = True

    def _close_at(self, t: float, error: bool) -> None:
        """End a batch member with its batch."""
        self.end = t
        if error:
            self.status = "error"
        self._token = None

    def _detach(self) -> None:
        """Leave this span's context without closing it (it closes later, elsewhere)."""
        token, self._token = self._token, None
        if token is None:
            return
        try:
            _current.reset(token)
        except ValueError:  # exited in another context; restore the parent as __exit__ does
            _current.set(self.parent)

    def _restore_on_exit(self, token: Any) -> None:
        """Exiting this span restores the context ``token`` was taken from (a batch opened
        from one of its own requests' contexts)."""
        self._token = token

    def _interrupt(self, t: float) -> None:
        """The meter stopped while this span was open."""
        self.end = t
        self.status = "interrupted"

    def _retime(self, start: float | None, end: float | None) -> None:
        """The meter settles a held span's times (see :meth:`Meter.retime`)."""
        if start is not None:
            self.start = start
        if end is not None:
            self.end = end

    @property
    def provisional(self) -> bool:
        """True while the span's true times are being resolved (CUDA events pending): energy is
        not attributed past its start until they are."""
        m = self._meter
        return m is not None and m._is_held(self)

    async def __aenter__(self) -> "Span":
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self.__exit__(exc_type, exc, tb)

    # ------------------------------------------------------------------ decorator

    def __call__(self, fn: Callable) -> Callable:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args, **kwargs):
                with self._copy():
                    return await fn(*args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self._copy():
                return fn(*args, **kwargs)

        return wrapper

    # ------------------------------------------------------------------ results

    @property
    def duration_s(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.end - self.start

    @property
    def result(self) -> SpanResult:
        """The span's energy. Reading it before the span has closed raises. Afterwards, with a
        background meter, it waits (at most the meter's ``result_wait_s``, 0.3 s by default)
        for the devices' energy up to the span's end to settle, and returns the final figure;
        if that takes longer it returns a provisional one (``final`` False) — read it again
        later for the final figure, which the ledger gets in any case."""
        if self._result is not None and self._result.final:
            return self._result
        if self.end is None:
            raise ConfigError(f"span {self.name!r} is still open: its result exists after it exits")
        # Built on first read only: most spans' results (a server's requests) are never read.
        self._result = self._meter._result(self)  # type: ignore[union-attr]
        return self._result

    def __repr__(self) -> str:
        return f"Span({self.name!r}, kind={self.kind!r}, id={self.span_id!r})"
