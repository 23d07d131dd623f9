"""ASGI middleware: a request span per HTTP request, and each request's energy where it is known.

Plain ASGI, so it wraps Starlette and FastAPI apps as well as bare ones, and imports neither::

    app = GreenmaasMiddleware(app, meter=meter, tenant_header="x-tenant", model="llama-8b")
    # FastAPI: app.add_middleware(GreenmaasMiddleware, meter=meter, ...)
    # the read-only figures endpoint, mounted where you like:
    #   Starlette/FastAPI: app.mount("/greenmaas/requests", greenmaas_app.endpoint())

Per HTTP request it opens a ``request`` span (its id a fresh ``uuid4`` hex), current while the
app handles the request, so a serving engine links its iterations to it
(:meth:`greenmaas.ServingMeter.admit` with ``span=greenmaas.current_span()``), and closes it when
the app has sent the last part of the response body, streaming included (or with status
``error`` when the app fails). A request no engine served (a 404, a validation error) is an
ordinary span and takes its part of the device while it runs, like any other.

What the response says, honestly
--------------------------------
* ``Greenmaas-Request-Id``: always.
* ``Greenmaas-Energy-J``, ``Greenmaas-Carbon-G``, ``Greenmaas-Cost`` (with
  ``Greenmaas-Currency``): only when the request's figure is **final** before the response
  goes out. An NVIDIA energy counter publishes about every 100 ms, so a request's energy
  settles about 110 ms after it ends: at the moment a response is complete its figure is
  almost never final. By default (``final_wait_s=0``) the middleware never holds a response
  and sends no energy headers; with ``final_wait_s=0.2`` it holds a complete (non-streamed)
  response up to that long for the final figure, off the event loop, and sends the headers
  when it got it (never a provisional figure). Carbon and cost need accounting configured.
* Streamed ``text/event-stream`` responses: the headers went out first, so with
  ``final_wait_s`` > 0 a last event ``event: greenmaas`` carries the figures as JSON (with
  ``"final"``), before the stream ends.
* Otherwise the figures are served later by :meth:`GreenmaasMiddleware.endpoint`, a small
  read-only ASGI app: ``GET <mount>/<request id>`` gives JSON with ``"final": true|false`` (a
  provisional figure is a lower bound) for the last ``keep`` requests.

Tenant: read from ``tenant_header``; it stays in memory on the span only and reaches the ledger,
metrics and the endpoint as a keyed pseudonym (``t-<16 hex>``, see
:meth:`greenmaas.ledger.Ledger.pseudonymise`). Request and response payloads are never read.

Never on the event loop: reading a result may wait (up to the meter's ``result_wait_s``), so it
runs on a small thread pool; the loop only opens and closes spans (microseconds). Listeners
(:meth:`GreenmaasMiddleware.add_listener`; the Prometheus exporter, OpenTelemetry) get each
request's figures once final, from that pool. Measuring never breaks a response: a failure
inside greenmaas is logged and the response goes on without figures.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, MutableMapping

if TYPE_CHECKING:
    from ..meter import Meter
    from ..serving import ServingMeter
    from ..spans import Span

__all__ = ["GreenmaasMiddleware", "RequestFigures", "tenant_pseudonym", "HEADERS"]

log = logging.getLogger("greenmaas")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Response headers, lower case as ASGI sends them.
HEADERS = {
    "request_id": b"greenmaas-request-id",
    "energy_j": b"greenmaas-energy-j",
    "carbon_g": b"greenmaas-carbon-g",
    "cost": b"greenmaas-cost",
    "currency": b"greenmaas-currency",
}
#: How long the pool keeps re-reading a request's figure for listeners before giving up on it.
SETTLE_GIVE_UP_S = 10.0
#: Longest the settler waits on the meter at a time for figures nobody is waiting for.
_WAIT_SLICE_S = 0.05


@dataclass
class RequestFigures:
    """What one HTTP request consumed, as far as known: ``final`` False means a lower bound.
    ``tenant`` is the pseudonym; ``lag_s`` how long after the request ended its figure became
    final (None while not). Serving fields are there when an engine served the request through
    :class:`greenmaas.ServingMeter`."""

    request_id: str
    final: bool
    energy_j: float
    duration_s: float
    method: str | None
    uncertainty_j: float | None = None
    carbon_g: float | None = None
    cost: float | None = None
    currency: str | None = None
    model: str | None = None
    tenant: str | None = None
    status: str = "ok"
    http_status: int | None = None
    lag_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    prefill_j: float | None = None
    decode_j: float | None = None
    ttft_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tenant_pseudonym(meter: "Meter", tenant: str | None) -> str | None:
    """The pseudonym the ledger stores for ``tenant`` (HMAC with the tenant key; see
    :mod:`greenmaas.ledger.keys`), also when the meter has no ledger."""
    if tenant is None:
        return None
    if meter.ledger is not None:
        return meter.ledger.pseudonymise(tenant)
    import hashlib
    import hmac

    from ..ledger.keys import tenant_key

    key, _ = tenant_key()
    return "t-" + hmac.new(key, tenant.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


class _Entry:
    __slots__ = ("span", "http_status", "ended_at", "figures", "pseudonym", "trace_span", "waiters")

    def __init__(self, span: "Span", pseudonym: str | None) -> None:
        self.span = span
        self.pseudonym = pseudonym
        self.http_status: int | None = None
        self.ended_at: float | None = None  # time.monotonic() when the span closed
        self.figures: RequestFigures | None = None  # once final
        self.trace_span: Any = None  # the OpenTelemetry span current during the request
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []


class GreenmaasMiddleware:
    """Measure every HTTP request of ``app`` (see the module doc).

    ``meter``: default the current meter (:func:`greenmaas.get_meter`) at the first request.
    ``tenant_header``: the header naming the tenant (case-insensitive; None: no tenant).
    ``model``: tag for the request spans. ``final_wait_s``: how long a complete response may be
    held for its final figure (0: never). ``serving``: a :class:`~greenmaas.ServingMeter` whose
    per-request prefill/decode figures join the request's. ``exclude``: path prefixes not
    measured (a metrics scrape, the figures endpoint). ``keep``: requests the endpoint
    remembers. ``workers``: threads that read results. ``stream_event``: end event streams
    with a ``greenmaas`` event (with ``final_wait_s``). ``trace``: put the request id, and the
    figures when known while it records, on the OpenTelemetry span current during the request
    (:mod:`greenmaas.integrations.otel`; nothing without OpenTelemetry).
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        meter: "Meter | None" = None,
        tenant_header: str | None = "x-tenant",
        model: str | None = None,
        final_wait_s: float = 0.0,
        serving: "ServingMeter | None" = None,
        exclude: Iterable[str] = (),
        keep: int = 10_000,
        workers: int = 8,
        stream_event: bool = True,
        trace: bool = True,
    ) -> None:
        if not (isinstance(final_wait_s, (int, float)) and math.isfinite(final_wait_s) and final_wait_s >= 0):
            from ..errors import ConfigError

            raise ConfigError(f"final_wait_s must be a non-negative number of seconds, not {final_wait_s!r}")
        self.app = app
        self._meter = meter
        self.tenant_header = tenant_header.lower().encode("latin-1") if tenant_header else None
        self.model = model
        self.final_wait_s = float(final_wait_s)
        self.serving = serving
        self.exclude = tuple(exclude)
        self.keep = keep
        self.stream_event = stream_event
        self.trace = trace
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="greenmaas-asgi")
        # One thread settles ended requests in the order they ended (the order their figures
        # become final in), so a burst of requests costs one waiting reader, not one each.
        self._pending: collections.deque[_Entry] = collections.deque()
        self._cond = threading.Condition()
        self._settler: threading.Thread | None = None
        self._closing = False
        self._recent: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[RequestFigures], None]] = []
        self.requests = 0
        self.lag_s: float | None = None  # the last request's attribution lag

    @property
    def meter(self) -> "Meter":
        if self._meter is None:
            from ..meter import get_meter

            self._meter = get_meter()
        return self._meter

    def add_listener(self, fn: Callable[[RequestFigures], None]) -> None:
        """Call ``fn(figures)`` once per request when its figure is final (or, after
        :data:`SETTLE_GIVE_UP_S`, as it stands), from a worker thread."""
        self._listeners.append(fn)

    def close(self, *, wait: bool = False) -> None:
        """Stop the worker threads; ``wait``: after the requests already ended have been settled
        (listeners called), else pending ones are dropped."""
        with self._cond:
            self._closing = True
            if not wait:
                self._pending.clear()
            self._cond.notify_all()
        if self._settler is not None:
            self._settler.join()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or any(scope.get("path", "").startswith(p) for p in self.exclude):
            await self.app(scope, receive, send)
            return
        entry = self._open(scope)
        if entry is None:  # measuring failed: serve anyway
            await self.app(scope, receive, send)
            return
        span = entry.span
        rid = span.request_id or ""
        held: list[Message] = []
        state = {"started": False, "streaming": False, "event": False, "closed": False}

        def close(error: bool) -> None:
            if state["closed"]:
                return
            state["closed"] = True
            try:
                span.__exit__(RuntimeError if error else None, None, None)
            except Exception as exc:  # the response goes on without figures
                log.warning("greenmaas: request span %s not closed: %s", rid, exc)
            entry.ended_at = time.monotonic()
            self._settle_later(entry)

        async def wrapped_send(message: Message) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                entry.http_status = message.get("status")
                headers = list(message.get("headers") or [])
                headers.append((HEADERS["request_id"], rid.encode("latin-1")))
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                state["event"] = self.stream_event and ctype.split(b";")[0].strip() == b"text/event-stream"
                held.append({**message, "headers": headers})
                return
            if kind == "http.response.body" and not state["started"]:
                more = bool(message.get("more_body", False))
                if not more:  # the whole response in one message: it may carry the figures
                    close(False)
                    figures = await self._wait_final(entry)
                    start = held.pop() if held else None
                    if start is not None:
                        if figures is not None:
                            start["headers"] = start["headers"] + _figure_headers(figures)
                        await send(start)
                    state["started"] = True
                    await send(message)
                    return
                state["started"] = state["streaming"] = True
                if held:
                    await send(held.pop())
                await send(message)
                return
            if kind == "http.response.body" and state["streaming"] and not message.get("more_body", False):
                close(False)
                if state["event"] and self.final_wait_s > 0:
                    figures = await self._wait_final(entry)
                    if figures is not None:
                        if message.get("body"):  # the app's last events first, then ours
                            await send({**message, "more_body": True})
                            message = {"type": "http.response.body", "body": b"", "more_body": False}
                        data = json.dumps(figures.to_dict(), separators=(",", ":"))
                        await send({"type": "http.response.body", "body": f"event: greenmaas\ndata: {data}\n\n".encode(),
                                    "more_body": True})
                await send(message)
                return
            if held and kind != "http.response.body":  # e.g. trailers: the start goes first
                await send(held.pop())
            await send(message)

        try:
            await self.app(scope, receive, wrapped_send)
        except BaseException:
            close(True)
            raise
        else:
            if held:  # a start nobody followed with a body: the server completes it
                await send(held.pop())
        finally:
            # The app returned without a last body part (the client went away, or the body went
            # out another way, e.g. a path-send extension): the request ends with the app.
            close(False)

    # ------------------------------------------------------------------ internals

    def _open(self, scope: Scope) -> _Entry | None:
        try:
            tenant = None
            if self.tenant_header is not None:
                for k, v in scope.get("headers") or ():
                    if k.lower() == self.tenant_header:
                        tenant = v.decode("latin-1").strip() or None
                        break
            meter = self.meter
            rid = uuid.uuid4().hex
            span = meter.request(rid, tenant=tenant, model=self.model)
            span.__enter__()
            entry = _Entry(span, tenant_pseudonym(meter, tenant) if tenant is not None else None)
            if self.trace:
                from .otel import PREFIX, current_trace_span

                entry.trace_span = current_trace_span()
                if entry.trace_span is not None:
                    entry.trace_span.set_attribute(PREFIX + "request_id", rid)
        except Exception as exc:  # measuring must not stop the request
            log.warning("greenmaas: request not measured: %s", exc)
            return None
        with self._lock:
            self.requests += 1
            self._recent[rid] = entry
            while len(self._recent) > self.keep:
                self._recent.popitem(last=False)
        return entry

    def _figures(self, entry: _Entry) -> RequestFigures:
        """The request's figures now (may wait up to the meter's ``result_wait_s``)."""
        if entry.figures is not None:
            return entry.figures
        span = entry.span
        r = span.result
        f = RequestFigures(
            request_id=span.request_id or "",
            final=r.final,
            energy_j=r.energy_j,
            duration_s=r.duration_s,
            method=r.method,
            uncertainty_j=r.uncertainty_j,
            carbon_g=r.carbon_g,
            cost=r.cost,
            currency=r.currency,
            model=span.model,
            tenant=entry.pseudonym,
            status=span.status,
            http_status=entry.http_status,
            prompt_tokens=span.tokens_in,
            output_tokens=span.tokens_out,
        )
        served = self.serving.served_request(span) if self.serving is not None and r.final else None
        if served is not None:  # final request: its shares are final too, reading them is quick
            e = served.energy()
            f.prefill_j, f.decode_j, f.ttft_s = e.prefill_j, e.decode_j, e.ttft_s
            f.final = f.final and e.final
        if f.final:
            if entry.ended_at is not None:
                f.lag_s = max(time.monotonic() - entry.ended_at, 0.0)
            entry.figures = f
            if entry.trace_span is not None:
                from .otel import annotate

                annotate(f, entry.trace_span)  # only while that span still records
                entry.trace_span = None
        return f

    async def _wait_final(self, entry: _Entry) -> RequestFigures | None:
        """The final figures if the settler has them within ``final_wait_s``, else None."""
        if self.final_wait_s <= 0:
            return None
        if entry.figures is not None:
            return entry.figures
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cond:
            if entry.figures is not None:
                return entry.figures
            entry.waiters.append((loop, fut))
            self._cond.notify_all()
        try:
            return await asyncio.wait_for(fut, self.final_wait_s)
        except asyncio.TimeoutError:
            return None
        except Exception as exc:  # the response goes out without figures
            log.warning("greenmaas: figures of request %s not awaited: %s", entry.span.request_id, exc)
            return None

    def _settle_later(self, entry: _Entry) -> None:
        if self.final_wait_s <= 0 and not self._listeners:
            return
        with self._cond:
            if self._closing:
                return
            self._pending.append(entry)
            if self._settler is None:
                self._settler = threading.Thread(target=self._settle_loop, name="greenmaas-asgi-settle", daemon=True)
                self._settler.start()
            self._cond.notify()

    def _settle_loop(self) -> None:
        # Nobody waiting on a response: read a request's figures once the meter's own background
        # flush has made them final, rather than drive the meter (a read of a figure not yet
        # final samples the devices and attributes, every few ms, until it is: on a busy server
        # that was most of what measuring cost).
        meter = self.meter
        lazy_s = getattr(meter, "flush_interval_s", 0.25) + 0.15 if getattr(meter, "background", False) else 0.0
        settled = getattr(meter, "wait_settled", None) if lazy_s > 0 else None
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                entry = self._pending[0]
                if not entry.waiters and not self._closing and lazy_s > 0:
                    delay = (entry.ended_at or 0.0) + lazy_s - time.monotonic()
                    if delay > 0:
                        self._cond.wait(delay)  # a new waiter wakes it
                        continue
            if settled is not None and not entry.waiters and not self._closing and entry.figures is None:
                # Nobody waiting: let the meter's flush make the figures final, in slices so that
                # a response that starts waiting for them is served promptly.
                left = (entry.ended_at or 0.0) + SETTLE_GIVE_UP_S - time.monotonic()
                if left > 0 and not settled(entry.span, min(left, _WAIT_SLICE_S)):
                    continue
            try:
                f = self._figures(entry)  # waits up to the meter's result_wait_s
            except Exception as exc:
                log.warning("greenmaas: figures of request %s not read: %s", entry.span.request_id, exc)
                f = None
            ended = entry.ended_at or 0.0
            if f is not None and not f.final and time.monotonic() - ended < SETTLE_GIVE_UP_S:
                time.sleep(0.01)
                continue
            with self._cond:
                self._pending.popleft()
                waiters, entry.waiters = entry.waiters, []
            if f is None:
                continue
            for loop, fut in waiters:
                loop.call_soon_threadsafe(_resolve, fut, f if f.final else None)
            if f.lag_s is not None:
                self.lag_s = f.lag_s
            for fn in list(self._listeners):
                try:
                    fn(f)
                except Exception as exc:
                    log.warning("greenmaas: request listener %r failed: %s", fn, exc)

    # ------------------------------------------------------------------ endpoint

    def figures(self, request_id: str) -> RequestFigures | None:
        """The figures of one of the last ``keep`` requests (None if unknown or still running);
        may wait up to the meter's ``result_wait_s``: not on the event loop's thread."""
        with self._lock:
            entry = self._recent.get(request_id)
        if entry is None or entry.ended_at is None:
            return None
        return self._figures(entry)

    def endpoint(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """A read-only ASGI app: ``GET <mount>/<request id>`` → the request's figures as JSON
        (``final`` says whether they may still grow), 404 for an unknown or running request,
        405 for anything but GET/HEAD."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope.get("type") != "http":
                return
            if scope.get("method") not in ("GET", "HEAD"):
                await _json(send, 405, {"error": "read-only: use GET"})
                return
            path = scope.get("path", "")
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            rid = path.strip("/").rsplit("/", 1)[-1]
            loop = asyncio.get_running_loop()
            try:
                f = await loop.run_in_executor(self._pool, self.figures, rid) if rid else None
            except Exception as exc:
                await _json(send, 503, {"error": f"figures not available: {exc}"})
                return
            if f is None:
                await _json(send, 404, {"error": f"no finished request {rid!r} among the last {self.keep}"})
                return
            body = f.to_dict()
            if not f.final:
                body["note"] = "provisional: energy up to the request's end has not all settled; read again"
            await _json(send, 200, body)

        return app


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _figure_headers(f: RequestFigures) -> list[tuple[bytes, bytes]]:
    out = [(HEADERS["energy_j"], repr(float(f.energy_j)).encode())]
    if f.carbon_g is not None:
        out.append((HEADERS["carbon_g"], repr(float(f.carbon_g)).encode()))
    if f.cost is not None:
        out.append((HEADERS["cost"], repr(float(f.cost)).encode()))
        if f.currency:
            out.append((HEADERS["currency"], f.currency.encode("latin-1")))
    return out


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
