"""The ASGI middleware on plain ASGI apps driven by hand, with a simulated device whose energy is
known: request spans, headers only when final, the streamed final event, the figures endpoint,
tenants as pseudonyms, failures."""

import asyncio
import json

import pytest

from greenmaas.analysis import read_ledger
from greenmaas.integrations.asgi import GreenmaasMiddleware, tenant_pseudonym
from greenmaas.ledger import Ledger
from greenmaas.meter import Meter
from greenmaas.spans import current_span
from greenmaas.testing import FakeClock, StaticSource

WATTS = 50.0


@pytest.fixture
def rig(tmp_path):
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: WATTS * t}})
    db = tmp_path / "g.db"
    meter = Meter(sources=[src], ledger=str(db), clock=clock, background=False, accounting=False,
                  period_s=0.001, handle_signals=False)
    meter.start()
    yield meter, clock, db
    meter.stop()


def work(meter, clock, seconds):
    for _ in range(int(round(seconds / 0.001))):
        clock.advance(0.001)
        meter.tick()


def make_app(meter, clock, seen, *, stream=False, fail=False):
    async def app(scope, receive, send):
        span = current_span()
        seen.append(span)
        work(meter, clock, 0.02)
        if fail:
            raise RuntimeError("handler broke")
        ctype = b"text/event-stream" if stream else b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype)]})
        if stream:
            for i in range(3):
                await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
                work(meter, clock, 0.01)
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b'{"ok": true}'})

    return app


def call(app, path="/v1/x", headers=(), method="POST"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    return sent


def headers_of(sent):
    start = next(m for m in sent if m["type"] == "http.response.start")
    return {k.decode(): v.decode() for k, v in start["headers"]}, start["status"]


def test_final_figures_in_headers_when_waited_for_and_tenant_pseudonymised(rig):
    meter, clock, db = rig
    seen = []
    mw = GreenmaasMiddleware(make_app(meter, clock, seen), meter=meter, model="m", final_wait_s=5.0)
    sent = call(mw, headers=[(b"X-Tenant", b"acme")])
    h, status = headers_of(sent)
    span = seen[0]
    assert status == 200 and span.kind == "request" and span.end is not None
    assert h["greenmaas-request-id"] == span.request_id
    assert float(h["greenmaas-energy-j"]) == pytest.approx(WATTS * 0.02, rel=1e-9)
    assert "greenmaas-carbon-g" not in h  # no accounting configured: no figure, no header
    f = mw.figures(span.request_id)
    assert f.final and f.energy_j == float(h["greenmaas-energy-j"])
    assert f.tenant == meter.ledger.pseudonymise("acme") and f.tenant != "acme"
    meter.flush()
    rows = read_ledger(str(db))
    assert list(rows.loc[rows["request_id"] == span.request_id, "tenant"]) == [f.tenant]
    assert not rows.astype(str).isin(["acme"]).any().any()
    mw.close()


def test_no_wait_sends_the_id_only_and_the_endpoint_serves_the_figures(rig):
    meter, clock, _ = rig
    seen = []
    mw = GreenmaasMiddleware(make_app(meter, clock, seen), meter=meter)
    h, _ = headers_of(call(mw))
    rid = seen[0].request_id
    assert h["greenmaas-request-id"] == rid
    assert not any(k.startswith("greenmaas-energy") for k in h)
    work(meter, clock, 0.01)
    endpoint = mw.endpoint()
    sent = call(endpoint, path=f"/greenmaas/requests/{rid}", method="GET")
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert headers_of(sent)[1] == 200
    assert body["final"] is True and body["energy_j"] == pytest.approx(WATTS * 0.02, rel=1e-9)
    assert headers_of(call(endpoint, path="/greenmaas/requests/nope", method="GET"))[1] == 404
    assert headers_of(call(endpoint, path=f"/greenmaas/requests/{rid}", method="DELETE"))[1] == 405
    mw.close()


def test_streamed_response_ends_with_a_greenmaas_event(rig):
    meter, clock, _ = rig
    seen = []
    mw = GreenmaasMiddleware(make_app(meter, clock, seen, stream=True), meter=meter, final_wait_s=5.0)
    sent = call(mw)
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert bodies[-1]["more_body"] is False and bodies[-1]["body"] == b""
    assert [b["body"] for b in bodies[:4]] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]
    event = bodies[-2]["body"].decode()
    assert event.startswith("event: greenmaas\ndata: ")
    data = json.loads(event.split("data: ", 1)[1])
    # the span closed when the app sent its last body part: handler 0.02 s + 3 chunks x 0.01 s
    assert data["final"] is True and data["energy_j"] == pytest.approx(WATTS * 0.05, rel=1e-9)
    assert data["request_id"] == seen[0].request_id
    mw.close()


def test_a_failing_app_closes_its_span_as_error_and_the_error_propagates(rig):
    meter, clock, _ = rig
    seen = []
    mw = GreenmaasMiddleware(make_app(meter, clock, seen, fail=True), meter=meter)
    with pytest.raises(RuntimeError, match="handler broke"):
        call(mw)
    assert seen[0].end is not None and seen[0].status == "error"
    mw.close()


def test_excluded_paths_and_other_scopes_are_not_measured(rig):
    meter, clock, _ = rig
    seen = []
    mw = GreenmaasMiddleware(make_app(meter, clock, seen), meter=meter, exclude=("/metrics",))
    h, _ = headers_of(call(mw, path="/metrics"))
    assert seen == [None] and "greenmaas-request-id" not in h
    assert mw.requests == 0
    mw.close()


def test_listeners_get_final_figures_and_pseudonym_without_a_ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("GREENMAAS_TENANT_KEY", "k1")
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: WATTS * t}})
    meter = Meter(sources=[src], ledger=False, clock=clock, background=False, accounting=False,
                  period_s=0.001, handle_signals=False)
    meter.start()
    got = []
    seen = []
    mw = GreenmaasMiddleware(make_app(meter, clock, seen), meter=meter, tenant_header="x-team")
    mw.add_listener(got.append)
    call(mw, headers=[(b"x-team", b"blue")])
    work(meter, clock, 0.01)
    mw.close(wait=True)
    assert len(got) == 1 and got[0].final
    assert got[0].energy_j == pytest.approx(WATTS * 0.02, rel=1e-9)
    other = Ledger.open(str(tmp_path / "other.db"))
    try:
        assert got[0].tenant == other.pseudonymise("blue") == tenant_pseudonym(meter, "blue")
    finally:
        other.close()
    meter.stop()


def test_listeners_wait_for_the_meters_flush_instead_of_driving_it():
    # A server with an exporter listening: every request's figures are read once final. With an
    # energy counter that publishes every 0.5 s they settle only after its next update; the
    # settler must wait for the meter's own flush, not read the device and attribute every few
    # ms until then (on a busy server that was most of what measuring cost).
    import math
    import time

    from greenmaas.clock import SystemClock

    reads = []
    clock = SystemClock()

    def energy(t):
        reads.append(t)
        return WATTS * 0.5 * math.floor(t / 0.5)  # published every 0.5 s

    src = StaticSource(clock, {"gpu:0": {"energy_j": energy}})
    meter = Meter(sources=[src], ledger=False, clock=clock, accounting=False, period_s=0.1, handle_signals=False)
    meter.start()

    async def app(scope, receive, send):
        time.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    got = []
    mw = GreenmaasMiddleware(app, meter=meter)
    mw.add_listener(got.append)
    try:
        t0, n0 = time.monotonic(), len(reads)
        for _ in range(5):
            call(mw)
            time.sleep(0.1)
        while len(got) < 5 and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        elapsed, n = time.monotonic() - t0, len(reads) - n0
    finally:
        mw.close(wait=True)
        meter.stop()
    assert len(got) == 5 and all(f.final for f in got)
    # The sampler's own reads, every 0.1 s, and a few more (a span's open and close read).
    assert n <= elapsed / 0.1 + 12, f"{n} reads in {elapsed:.2f} s at a 0.1 s period"
