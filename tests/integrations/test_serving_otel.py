"""OpenTelemetry: the trace span current during a request gets its id and, when known while it
records, its energy (an SDK tracer provider of the test's own; no global state)."""

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from greenmaas.integrations.asgi import GreenmaasMiddleware, RequestFigures
from greenmaas.integrations.otel import annotate, current_trace_span
from greenmaas.meter import Meter
from greenmaas.testing import FakeClock, StaticSource

WATTS = 40.0


def tracer():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def test_annotate_sets_attributes_only_on_a_recording_span():
    t, exporter = tracer()
    f = RequestFigures("r1", True, 1.25, 0.1, "counter", carbon_g=0.5, tenant="t-abc", prefill_j=1.0, decode_j=0.25)
    assert current_trace_span() is None
    assert annotate(f) is False
    with t.start_as_current_span("handler") as span:
        assert current_trace_span() is span
        assert annotate(f) is True
    assert annotate(f, span) is False  # ended: no longer recording
    (done,) = exporter.get_finished_spans()
    a = done.attributes
    assert a["greenmaas.request_id"] == "r1" and a["greenmaas.final"] is True
    assert a["greenmaas.energy_j"] == 1.25 and a["greenmaas.decode_j"] == 0.25 and a["greenmaas.tenant"] == "t-abc"


def test_middleware_annotates_the_server_span_with_final_figures():
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: WATTS * t}})
    meter = Meter(sources=[src], ledger=False, clock=clock, background=False, accounting=False, period_s=0.001,
                  handle_signals=False)
    meter.start()
    t, exporter = tracer()

    async def app(scope, receive, send):
        for _ in range(30):
            clock.advance(0.001)
            meter.tick()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = GreenmaasMiddleware(app, meter=meter, final_wait_s=5.0)

    async def receive():
        return {"type": "http.request", "body": b""}

    sent = []

    async def send(m):
        sent.append(m)

    async def traced():  # as an OpenTelemetry ASGI instrumentation outside the middleware would
        with t.start_as_current_span("POST /v1/completions"):
            await mw({"type": "http", "method": "POST", "path": "/", "headers": []}, receive, send)

    asyncio.run(traced())
    mw.close(wait=True)
    meter.stop()
    (done,) = exporter.get_finished_spans()
    rid = dict(sent[0]["headers"])[b"greenmaas-request-id"].decode()
    assert done.attributes["greenmaas.request_id"] == rid
    assert done.attributes["greenmaas.final"] is True
    assert done.attributes["greenmaas.energy_j"] == pytest.approx(WATTS * 0.03, rel=1e-9)
