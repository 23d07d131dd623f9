"""Prometheus exporter: request counters from the middleware's final figures, device power and
energy from the meter, in a private registry, read back through the text format."""

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from greenmaas.integrations.asgi import GreenmaasMiddleware, RequestFigures
from greenmaas.integrations.prometheus import PrometheusExporter
from greenmaas.meter import Meter
from greenmaas.testing import FakeClock, StaticSource

WATTS = 80.0


def samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def meter():
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: WATTS * t}})
    m = Meter(sources=[src], ledger=False, clock=clock, background=False, accounting=False, period_s=0.01,
              handle_signals=False)
    m.start()
    m.clock_ = clock
    yield m
    m.stop()


def test_request_counters_sum_what_was_observed(meter):
    exp = PrometheusExporter(meter)
    exp.observe(RequestFigures("a", True, 2.5, 0.1, "counter", carbon_g=0.3, cost=0.01, currency="EUR",
                               model="m", tenant="t-1", prefill_j=1.0, decode_j=1.5, output_tokens=7, lag_s=0.12))
    exp.observe(RequestFigures("b", True, 1.5, 0.1, "counter", model="m", tenant="t-1", lag_s=0.2))
    exp.observe(RequestFigures("c", False, 0.5, 0.1, "counter", model="m", tenant="t-2"))
    s = samples(exp.render().decode())
    lab = (("model", "m"), ("tenant", "t-1"))
    assert s[("greenmaas_request_energy_joules_total", lab)] == pytest.approx(4.0)
    assert s[("greenmaas_request_carbon_grams_total", lab)] == pytest.approx(0.3)
    assert s[("greenmaas_request_cost_total", (("currency", "EUR"), *lab))] == pytest.approx(0.01)
    assert s[("greenmaas_request_phase_energy_joules_total", (*lab[:1], ("phase", "decode"), lab[1]))] == 1.5
    assert s[("greenmaas_requests_total", (("final", "true"), *lab))] == 2
    assert s[("greenmaas_requests_total", (("final", "false"), ("model", "m"), ("tenant", "t-2")))] == 1
    assert s[("greenmaas_request_output_tokens_total", lab)] == 7
    assert s[("greenmaas_attribution_lag_seconds_count", ())] == 2
    assert s[("greenmaas_attribution_lag_seconds_bucket", (("le", "0.15"),))] == 1


def test_device_power_and_energy_at_scrape(meter):
    clock = meter.clock_
    with meter.measure("work"):
        for _ in range(100):
            clock.advance(0.01)
            meter.tick()
    for _ in range(100):
        clock.advance(0.01)
        meter.tick()
    exp = PrometheusExporter(meter)
    s = samples(exp.render().decode())
    assert s[("greenmaas_device_power_watts", (("device", "gpu:0"), ("method", "counter")))] == pytest.approx(WATTS)
    att = s[("greenmaas_device_energy_joules_total", (("device", "gpu:0"), ("method", "counter"), ("part", "attributed")))]
    idle = s[("greenmaas_device_energy_joules_total", (("device", "gpu:0"), ("method", "counter"), ("part", "idle")))]
    assert att == pytest.approx(WATTS * 1.0)
    assert att + idle == pytest.approx(meter.totals["gpu:0"]["total_j"])


def test_registries_are_private_and_the_asgi_app_serves_them(meter):
    one, two = PrometheusExporter(meter), PrometheusExporter(meter)  # no clash: separate registries
    one.observe(RequestFigures("a", True, 1.0, 0.1, "counter", model="m", tenant="t"))
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": "GET", "path": "/", "root_path": "", "headers": [], "query_string": b""}
    asyncio.run(one.asgi_app()(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
    assert samples(body)[("greenmaas_requests_total", (("final", "true"), ("model", "m"), ("tenant", "t")))] == 1
    assert ("greenmaas_requests_total", (("final", "true"), ("model", "m"), ("tenant", "t"))) not in samples(
        two.render().decode())


def test_watching_a_middleware_counts_its_requests(meter):
    clock = meter.clock_
    exp = PrometheusExporter(meter)

    async def app(scope, receive, send):
        for _ in range(10):
            clock.advance(0.01)
            meter.tick()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = GreenmaasMiddleware(app, meter=meter, model="m")
    exp.watch(mw)

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(m):
        pass

    for _ in range(3):
        asyncio.run(mw({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send))
    clock.advance(0.02)
    meter.tick()
    mw.close(wait=True)
    s = samples(exp.render().decode())
    assert s[("greenmaas_requests_total", (("final", "true"), ("model", "m"), ("tenant", "")))] == 3
    assert s[("greenmaas_request_energy_joules_total", (("model", "m"), ("tenant", "")))] == pytest.approx(
        3 * WATTS * 0.1)
