import asyncio
import contextvars
import threading

import pytest

from greenmaas.errors import ConfigError
from greenmaas.meter import Meter
from greenmaas.spans import current_span
from greenmaas.testing import FakeClock, StaticSource


def make_meter(watts=100.0, policy="time", fail=None, devices=("gpu:0",)):
    clock = FakeClock()

    def energy(t):
        if fail is not None and fail[0] <= t < fail[1]:
            raise RuntimeError("GPU is lost")
        return watts * t

    src = StaticSource(clock, {d: {"energy_j": energy} for d in devices})
    meter = Meter(sources=[src], ledger=False, clock=clock, background=False, accounting=False, policy=policy)
    meter.start()
    return meter, clock


def step(meter, clock, seconds, dt=0.1):
    n = int(round(seconds / dt))
    for _ in range(n):
        clock.advance(dt)
        meter.tick()


def overlapping_pair(meter, clock):
    """Span a runs 0-2 s, b 1-2 s, each in its own context (as two tasks would)."""
    a = meter.measure("a")
    b = meter.measure("b")
    ctx_a, ctx_b = contextvars.copy_context(), contextvars.copy_context()
    ctx_a.run(a.__enter__)
    step(meter, clock, 1.0)
    ctx_b.run(b.__enter__)
    step(meter, clock, 1.0)
    ctx_a.run(a.__exit__, None, None, None)
    ctx_b.run(b.__exit__, None, None, None)
    return a, b


def test_span_result_energy_and_duration():
    meter, clock = make_meter()
    with meter.measure("epoch-1", model="resnet50", phase="training") as span:
        step(meter, clock, 2.0)
    res = span.result
    assert res.duration_s == pytest.approx(2.0)
    assert res.energy_j == pytest.approx(200.0)
    assert res.by_device_j == {"gpu:0": pytest.approx(200.0)}
    assert res.method == "counter"
    assert res.final


def test_result_before_exit_is_an_error():
    meter, clock = make_meter()
    with meter.measure("x") as span:
        with pytest.raises(ConfigError):
            span.result


def test_nesting_parent_gets_everything_children_share():
    meter, clock = make_meter()
    with meter.measure("epoch", model="m", phase="training") as epoch:
        step(meter, clock, 1.0)
        with meter.measure("step") as s1:
            step(meter, clock, 1.0)
        step(meter, clock, 1.0)
    step(meter, clock, 1.0)
    assert epoch.result.energy_j == pytest.approx(300.0)
    assert epoch.result.self_energy_j == pytest.approx(200.0)
    assert s1.result.energy_j == pytest.approx(100.0)
    assert s1.model == "m" and s1.phase == "training"  # tags inherited
    meter.stop()
    tot = meter.totals["gpu:0"]
    assert tot["total_j"] == pytest.approx(400.0)
    assert tot["attributed_j"] + tot["idle_j"] == pytest.approx(tot["total_j"], rel=1e-9)
    assert tot["idle_j"] == pytest.approx(100.0)


def test_concurrent_spans_share_time_policy():
    meter, clock = make_meter()
    a, b = overlapping_pair(meter, clock)
    assert a.parent is None and b.parent is None
    assert a.result.energy_j == pytest.approx(150.0)
    assert b.result.energy_j == pytest.approx(50.0)


def test_batch_shares_by_tokens_and_requests_reconcile():
    meter, clock = make_meter()
    reqs = [meter.request(f"r{i}", tenant="acme", tokens_out=n) for i, n in enumerate([10, 30])]
    ctxs = [contextvars.copy_context() for _ in reqs]
    for c, r in zip(ctxs, reqs):
        c.run(r.__enter__)
    step(meter, clock, 0.5)  # waiting in the queue: consumes nothing
    with meter.batch(reqs) as batch:
        step(meter, clock, 1.0)
    step(meter, clock, 0.5)
    for c, r in zip(ctxs, reqs):
        c.run(r.__exit__, None, None, None)
    step(meter, clock, 0.5)
    assert reqs[0].result.energy_j == pytest.approx(25.0)
    assert reqs[1].result.energy_j == pytest.approx(75.0)
    assert batch.result.energy_j == pytest.approx(100.0)
    meter.stop()
    tot = meter.totals["gpu:0"]
    assert tot["attributed_j"] == pytest.approx(100.0)
    assert tot["attributed_j"] + tot["idle_j"] == pytest.approx(tot["total_j"])


def test_batch_weighted_policy():
    meter, clock = make_meter(policy="weighted")
    with meter.batch([{"request_id": "a", "tokens_out": 1}, {"request_id": "b", "tokens_out": 3}]) as b:
        step(meter, clock, 1.0)
    shares = sorted(m.result.energy_j for m in b.members)
    assert shares == [pytest.approx(25.0), pytest.approx(75.0)]


def test_batch_weights_length_checked():
    meter, clock = make_meter()
    with pytest.raises(ConfigError):
        meter.batch(["a", "b"], weights=[1.0])


def test_decorator_sync_and_async():
    meter, clock = make_meter()
    seen = []

    @meter.measure("work", model="m")
    def work():
        seen.append(current_span())
        step(meter, clock, 1.0)
        return 7

    @meter.measure("awork")
    async def awork():
        seen.append(current_span())
        step(meter, clock, 1.0)
        return 8

    assert work() == 7
    assert asyncio.run(awork()) == 8
    assert work() == 7
    assert len({id(s) for s in seen}) == 3  # a new span per call
    assert all(s.result.energy_j == pytest.approx(100.0) for s in seen)


def test_context_travels_to_asyncio_tasks_and_threads():
    meter, clock = make_meter()
    got = {}

    async def child():
        got["task"] = current_span()

    async def main():
        with meter.measure("outer") as outer:
            await asyncio.gather(asyncio.create_task(child()))
            await asyncio.to_thread(lambda: got.__setitem__("thread", current_span()))
            return outer

    outer = asyncio.run(main())
    assert got["task"] is outer and got["thread"] is outer


def test_exception_marks_span_and_propagates():
    meter, clock = make_meter()
    with pytest.raises(ValueError):
        with meter.measure("boom") as span:
            raise ValueError("x")
    assert span.status == "error"
    assert current_span() is None


def test_failing_device_is_a_gap_not_a_crash():
    meter, clock = make_meter(fail=(1.0, 2.0), devices=("gpu:0",))
    with meter.measure("x") as span:
        step(meter, clock, 3.0)
    assert "gpu:0" in meter.sampler.failures
    res = span.result
    assert res.gap_s > 0
    # the counter spans the gap, so the total is still known
    assert res.energy_j == pytest.approx(300.0, rel=0.05)


def test_devices_restrict_attribution():
    meter, clock = make_meter(devices=("gpu:0", "gpu:1"))
    with meter.measure("on-gpu1", devices=["gpu:1"]) as span:
        step(meter, clock, 1.0)
    assert set(span.result.by_device_j) == {"gpu:1"}
    assert span.result.energy_j == pytest.approx(100.0)


def test_stop_closes_open_spans_as_interrupted():
    def body():  # in a copy of the context: the span left open stays current only there
        meter, clock = make_meter()
        span = meter.measure("left-open")
        span.__enter__()
        step(meter, clock, 1.0)
        meter.stop()
        assert span.status == "interrupted"
        assert span.result.energy_j == pytest.approx(100.0)
        meter.stop()  # safe twice

    contextvars.copy_context().run(body)


def test_bad_phase_and_policy():
    with pytest.raises(ConfigError):
        Meter(sources=[], ledger=False, policy="nope")
    meter, clock = make_meter()
    with pytest.raises(ConfigError):
        meter.measure("x", phase="warmup")


def test_background_threads_run_and_stop():
    import time

    from greenmaas.clock import SystemClock

    clock = SystemClock()
    src = StaticSource(clock, {"cpu:0": {"power_w": lambda t: 50.0}})
    meter = Meter(sources=[src], ledger=False, clock=clock, accounting=False, period_s=0.01, flush_interval_s=0.05)
    others = set(threading.enumerate())  # an earlier test's meter left running is not this one's
    with meter:
        with meter.measure("sleep") as span:
            time.sleep(0.2)
        res = span.result
        assert {t.name for t in set(threading.enumerate()) - others} >= {"greenmaas-flush", "greenmaas-sampler"}
    assert res.energy_j == pytest.approx(50.0 * res.duration_s, rel=0.1)
    assert not meter.sampler.running
    left = [t.name for t in set(threading.enumerate()) - others if t.name.startswith("greenmaas")]
    assert not left, left


def test_short_request_between_reads_takes_power_inside_its_boundaries():
    # 50 W idle, 500 W while a 30 ms request runs; the device is read every 10 ms and the
    # request's boundaries fall between reads.
    clock = FakeClock()
    busy = (1.003, 1.033)
    src = StaticSource(clock, {"gpu:0": {"power_w": lambda t: 500.0 if busy[0] <= t < busy[1] else 50.0}})
    meter = Meter(sources=[src], ledger=False, clock=clock, background=False, accounting=False, period_s=0.01)
    meter.start()
    span = meter.measure("req")
    events = [(k * 0.01, "read") for k in range(1, 151)] + [(busy[0], "open"), (busy[1], "close")]
    for t, what in sorted(events):
        clock.set(t)
        if what == "open":
            span.__enter__()
        elif what == "close":
            span.__exit__(None, None, None)
        else:
            meter.tick()
    assert span.result.energy_j == pytest.approx(500.0 * 0.030, rel=0.02)


def test_device_time_is_shared_like_energy():
    meter, clock = make_meter()
    a, b = overlapping_pair(meter, clock)
    step(meter, clock, 1.0)
    assert a.result.device_s["gpu:0"] == pytest.approx(1.5)
    assert b.result.device_s["gpu:0"] == pytest.approx(0.5)
    meter.stop()
    assert meter.totals["gpu:0"]["idle_j"] == pytest.approx(100.0)


def test_bind_carries_the_span_into_a_thread_pool():
    from concurrent.futures import ThreadPoolExecutor

    import greenmaas

    meter, clock = make_meter()

    def work(i):
        with meter.measure(f"part-{i}") as part:
            return part

    with meter.measure("request", model="m") as outer:
        with ThreadPoolExecutor(2) as pool:
            unbound = pool.submit(work, 0).result()
            bound = [f.result() for f in [pool.submit(greenmaas.bind(work), i) for i in range(1, 4)]]
    assert unbound.parent is None  # a plain pool does not carry the context
    assert all(p.parent is outer and p.model == "m" for p in bound)


def test_with_no_span_in_flight_idle_is_attributed_about_once_a_second(tmp_path):
    # The background flush runs every flush_interval_s while spans are in flight; with none, it
    # has only idle to attribute and does so about once a second (each pass times the counter
    # and shapes, at a cost that hardly depends on how many intervals it takes). Nothing is lost.
    import time

    from greenmaas.analysis import read_ledger
    from greenmaas.clock import SystemClock

    clock = SystemClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: 100.0 * t}})
    db = tmp_path / "g.db"
    meter = Meter(sources=[src], ledger=str(db), clock=clock, accounting=False, period_s=0.01,
                  flush_interval_s=0.1, handle_signals=False)
    with meter:
        time.sleep(2.5)
        with meter.measure("work") as span:
            time.sleep(0.05)
        time.sleep(0.6)
    windows = read_ledger(db, table="devices", run=meter.run_id)
    # At the usual pace (every 0.1 s) 3.15 s would have made ~30 windows.
    assert 2 <= len(windows) <= 10, len(windows)
    covered = (windows["end"].max() - windows["start"].min()).total_seconds()
    assert windows["total_j"].sum() == pytest.approx(100.0 * covered, rel=1e-3)
    assert windows["attributed_j"].sum() == pytest.approx(span.result.energy_j, rel=1e-9)
