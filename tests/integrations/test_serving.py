"""Iteration-level attribution of a serving engine (greenmaas.serving) against truths computed
here from the simulated device's power and the rule's weights."""

import contextvars

import pytest

from greenmaas.errors import ConfigError
from greenmaas.meter import Meter
from greenmaas.report import summary
from greenmaas.serving import ServingMeter, TokenRule, calibrate, calibrate_ledger
from greenmaas.testing import FakeClock, StaticSource

WATTS = 200.0


def make_meter(ledger=False, power=None):
    clock = FakeClock()
    fn = power or (lambda t: WATTS * t)
    src = StaticSource(clock, {"gpu:0": {"energy_j": fn}})
    meter = Meter(sources=[src], ledger=ledger, clock=clock, background=False, accounting=False,
                  period_s=0.001, handle_signals=False)
    meter.start()
    return meter, clock


def run_for(meter, clock, seconds, dt=0.001):
    for _ in range(int(round(seconds / dt))):
        clock.advance(dt)
        meter.tick()


def test_iterations_split_by_tokens_with_prefill_cost_and_books_close():
    meter, clock = make_meter()
    serving = ServingMeter(meter, model="m", prefill_cost=0.5)
    a = serving.admit("a", prompt_tokens=8, tenant="acme")
    b = serving.admit("b", prompt_tokens=4, tenant="globex")
    truth = {"a": {"prefill": 0.0, "decode": 0.0}, "b": {"prefill": 0.0, "decode": 0.0}}
    run_for(meter, clock, 0.05)  # queued: consumes nothing, it is idle
    # pass 1: a prefills 8 tokens alone (0.02 s)
    with serving.iteration([serving.prefill(a)]):
        run_for(meter, clock, 0.02)
    truth["a"]["prefill"] += WATTS * 0.02
    # pass 2: a decodes 1, b prefills 4 (weights 1 and 4 x 0.5 = 2), 0.03 s
    with serving.iteration([serving.decode(a), serving.prefill(b)]):
        run_for(meter, clock, 0.03)
    truth["a"]["decode"] += WATTS * 0.03 * 1 / 3
    truth["b"]["prefill"] += WATTS * 0.03 * 2 / 3
    # passes 3-5: both decode, 0.01 s each
    for _ in range(3):
        with serving.iteration([serving.decode(a), serving.decode(b)]):
            run_for(meter, clock, 0.01)
        for r in truth.values():
            r["decode"] += WATTS * 0.01 / 2
    serving.finish(a)
    with serving.iteration([serving.decode(b, 2)]):  # speculative: two tokens
        run_for(meter, clock, 0.01)
    truth["b"]["decode"] += WATTS * 0.01
    serving.finish(b)
    run_for(meter, clock, 0.05)
    ea, eb = a.energy(), b.energy()
    for got, want in ((ea, truth["a"]), (eb, truth["b"])):
        assert got.final
        assert got.prefill_j == pytest.approx(want["prefill"], rel=1e-9)
        assert got.decode_j == pytest.approx(want["decode"], rel=1e-9)
        assert got.energy_j == pytest.approx(want["prefill"] + want["decode"], rel=1e-9)
    assert (a.passes, b.passes) == (5, 5)
    assert not serving._shares  # every share handed to its request: none held any more
    assert (ea.prompt_tokens, ea.output_tokens) == (8, 1 + 1 + 3)
    assert (eb.prompt_tokens, eb.output_tokens) == (4, 1 + 3 + 2)
    assert ea.ttft_s == pytest.approx(0.05 + 0.02)
    assert eb.ttft_s == pytest.approx(0.05 + 0.02 + 0.03)
    assert ea.j_per_output_token == pytest.approx(ea.energy_j / 5)
    meter.stop()
    tot = meter.totals["gpu:0"]
    assert tot["total_j"] == pytest.approx(WATTS * clock.monotonic(), rel=1e-9)
    served = ea.energy_j + eb.energy_j
    assert served + tot["idle_j"] == pytest.approx(tot["total_j"], rel=1e-12)
    assert tot["attributed_j"] == pytest.approx(served, rel=1e-12)


def test_request_span_from_elsewhere_is_used_and_left_open():
    meter, clock = make_meter()
    serving = ServingMeter(meter, model="m")
    span = meter.request("r1", tenant="acme")
    ctx = contextvars.copy_context()
    ctx.run(span.__enter__)
    req = serving.admit(span=span, prompt_tokens=3)
    assert span.tokens_in == 3 and span.model == "m"
    with serving.iteration([serving.prefill(req)]):
        run_for(meter, clock, 0.01)
    serving.finish(req, output_tokens=7)
    assert span.end is None  # the caller's to close
    assert span.tokens_out == 7 and span.attrs["ttft_s"] == pytest.approx(0.01)
    ctx.run(span.__exit__, None, None, None)
    run_for(meter, clock, 0.02)
    assert req.energy().energy_j == pytest.approx(WATTS * 0.01, rel=1e-9)


def test_bad_work_is_refused_with_a_clear_error():
    meter, clock = make_meter()
    serving = ServingMeter(meter)
    r = serving.admit("x", prompt_tokens=2)
    with pytest.raises(ConfigError, match="twice"):
        serving.iteration([serving.prefill(r, 1), serving.decode(r)])
    with pytest.raises(ConfigError, match="non-negative"):
        serving.iteration([serving.decode(r, -1)])
    with pytest.raises(ConfigError, match="prompt_tokens"):
        serving.admit("y", prompt_tokens=-3)
    with pytest.raises(ConfigError, match="not both"):
        ServingMeter(meter, prefill_cost=2.0, rule=TokenRule(2.0))
    with pytest.raises(ConfigError, match="prefill_cost"):
        TokenRule(float("nan"))
    serving.finish(r)
    with pytest.raises(ConfigError, match="finished"):
        serving.iteration([serving.decode(r)])


def test_custom_rule_is_used():
    meter, clock = make_meter()
    serving = ServingMeter(meter, rule=lambda work: [w.context + 1 for w in work])
    a = serving.admit("a", prompt_tokens=0)
    b = serving.admit("b", prompt_tokens=0)
    with serving.iteration([serving.decode(a, context=9), serving.decode(b, context=29)]):
        run_for(meter, clock, 0.02)
    serving.finish(a)
    serving.finish(b)
    run_for(meter, clock, 0.02)
    assert a.energy().decode_j == pytest.approx(WATTS * 0.02 * 10 / 40, rel=1e-9)
    assert b.energy().decode_j == pytest.approx(WATTS * 0.02 * 30 / 40, rel=1e-9)


def test_calibrate_recovers_a_known_ratio():
    rows = []
    # E = 0.5 + 0.002 P + 0.01 D, with a small deterministic wobble
    for i in range(40):
        p = (i * 37) % 200 if i % 3 else 0
        d = (i * 11) % 17 + 1
        rows.append((0.5 + 0.002 * p + 0.01 * d + 1e-4 * ((i % 5) - 2), p, d))
    cal = calibrate(rows)
    assert cal.prefill_cost == pytest.approx(0.2, rel=0.02)
    assert cal.per_iteration_j == pytest.approx(0.5, rel=0.01)
    assert cal.r2 > 0.999 and cal.iterations == 40
    assert cal.prefill_cost_se is not None and cal.prefill_cost_se < 0.01
    with pytest.raises(ConfigError, match="prefill"):
        calibrate([(1.0, 0, 1)] * 5)
    with pytest.raises(ConfigError, match="separate"):
        calibrate([(1.0 * k, 2 * k, k) for k in range(1, 6)])


def test_ledger_reports_requests_and_phases_and_calibrates_offline(tmp_path):
    db = tmp_path / "g.db"
    meter, clock = make_meter(ledger=str(db))
    # true per-pass energy: base 2 J + 0.05 J/prefill token + 0.2 J/decode token, at 200 W
    base, per_p, per_d = 2.0, 0.05, 0.2
    serving = ServingMeter(meter, model="tiny")
    reqs = [serving.admit(f"r{i}", prompt_tokens=10 + 7 * i, tenant="acme") for i in range(6)]
    truth = {r.request_id: {"prefill": 0.0, "decode": 0.0} for r in reqs}
    active, steps = [], 0
    pending = list(reqs)
    while pending or active:
        work = []
        if pending and steps % 2 == 0:
            new = pending.pop(0)
            work.append(serving.prefill(new))
        work += [serving.decode(r) for r in active]
        p = sum(w.tokens for w in work if w.phase == "prefill")
        d = sum(w.tokens for w in work if w.phase == "decode")
        energy = base + per_p * p + per_d * d
        seconds = round(energy / WATTS, 3)
        total_w = sum(w.tokens for w in work)
        with serving.iteration(work):
            run_for(meter, clock, seconds)
        for w in work:
            truth[w.request.request_id][w.phase] += WATTS * seconds * w.tokens / total_w
        if work[0].phase == "prefill":
            active.append(work[0].request)
        for r in list(active):
            if r.output_tokens >= 4 + int(r.request_id[1:]):
                serving.finish(r)
                active.remove(r)
        steps += 1
    run_for(meter, clock, 0.05)
    meter.stop()

    out = summary(str(db), by="request", accounting=False)
    rows = {r["group"]: r for r in out.rows}
    for r in reqs:
        row = rows[r.request_id]
        assert row["prompt_tokens"] == r.prompt_tokens
        assert row["output_tokens"] == 4 + int(r.request_id[1:])
        assert row["prefill_j"] == pytest.approx(truth[r.request_id]["prefill"], rel=1e-9)
        assert row["decode_j"] == pytest.approx(truth[r.request_id]["decode"], rel=1e-9)
        assert row["energy_j"] == pytest.approx(row["prefill_j"] + row["decode_j"], rel=1e-9)
        assert row["j_per_output_token"] == pytest.approx(row["energy_j"] / row["output_tokens"])
        assert row["ttft_s"] == pytest.approx(r.ttft_s, abs=1e-6)

    for in_sql in (True, False):
        phases = {r["group"]: r for r in summary(str(db), by="phase", accounting=False, in_sql=in_sql).rows}
        assert phases["prefill"]["energy_j"] == pytest.approx(sum(t["prefill"] for t in truth.values()), rel=1e-9)
        assert phases["decode"]["energy_j"] == pytest.approx(sum(t["decode"] for t in truth.values()), rel=1e-9)
        total = sum(r["energy_j"] or 0.0 for r in phases.values())
        assert total == pytest.approx(WATTS * clock.monotonic(), rel=1e-9)

    cal = calibrate_ledger(str(db), run="latest", model="tiny")
    # durations are rounded to the 1 ms tick: the fit recovers the costs to that resolution
    assert cal.prefill_cost == pytest.approx(per_p / per_d, rel=0.15)
    assert cal.r2 > 0.95


def test_live_calibration_from_recent_iterations_matches_the_truth():
    meter, clock = make_meter()
    serving = ServingMeter(meter, model="m")
    # pass durations (so energies at constant power) linear in tokens: 5 ms + 0.5 ms/prefill + 2 ms/decode
    reqs = [serving.admit(f"r{i}", prompt_tokens=2 + 2 * i) for i in range(8)]
    running = []
    for i, r in enumerate(reqs):
        work = [serving.prefill(r)] + [serving.decode(x) for x in running]
        p = r.prompt_tokens
        d = len(running)
        with serving.iteration(work):
            run_for(meter, clock, 0.005 + 0.0005 * p + 0.002 * d)
        running.append(r)
    for _ in range(3):
        with serving.iteration([serving.decode(x) for x in running[:5]]):
            run_for(meter, clock, 0.005 + 0.002 * 5)
    run_for(meter, clock, 0.01)
    cal = serving.calibrate()
    assert cal.iterations == 11 and serving.iterations == 11
    assert cal.prefill_cost == pytest.approx(0.25, rel=1e-6)
    assert cal.decode_token_j == pytest.approx(WATTS * 0.002, rel=1e-6)
    assert cal.per_iteration_j == pytest.approx(WATTS * 0.005, rel=1e-6)
    assert cal.r2 == pytest.approx(1.0)


def test_a_prefix_cache_hit_counts_toward_the_first_token():
    meter, clock = make_meter()
    serving = ServingMeter(meter)
    r = serving.admit("cached", prompt_tokens=100)
    with serving.iteration([serving.prefill(r, 20, context=80)]):  # 80 tokens came from the cache
        run_for(meter, clock, 0.01)
    assert r.prefilled == 100 and r.output_tokens == 1 and r.ttft_s == pytest.approx(0.01)
    serving.finish(r)


@pytest.mark.parametrize("rollup", ["auto", False])
def test_a_requests_shares_are_one_row_per_phase_and_report_the_same(tmp_path, rollup):
    """Shares of one request are written as one row per phase (count = the passes), with their
    request's row; ``rollup=False`` keeps a row per pass. The reports are the same either way and
    equal what each request's live figures say."""
    from greenmaas.analysis import read_ledger

    path = tmp_path / "s.db"
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: 300 * t}})
    meter = Meter(sources=[src], ledger=path, clock=clock, background=False, accounting=False, rollup=rollup)
    meter.start()
    serving = ServingMeter(meter, model="m")
    reqs = [serving.admit(f"r{i}", prompt_tokens=16 + i) for i in range(6)]
    with serving.iteration([serving.prefill(q) for q in reqs[:3]]):
        clock.advance(0.01)
    for it in range(12):
        work = [serving.decode(q) for q in reqs[:3]] + ([serving.prefill(q) for q in reqs[3:]] if it == 4 else [])
        work += [serving.decode(q) for q in reqs[3:]] if it > 4 else []
        with serving.iteration(work):
            clock.advance(0.01)
        meter.tick()
    for q in reqs:
        serving.finish(q)
    clock.advance(0.3)
    meter.tick()
    live = {q.request_id: q.energy() for q in reqs}
    meter.stop()
    shares = read_ledger(path).query("kind == 'share'")
    passes = 3 + 12 * 3 + 3 + 7 * 3
    assert shares["count"].sum() == passes
    if rollup is False:
        assert len(shares) == passes
    else:
        assert sorted(shares.groupby("request_id").size().tolist()) == [2] * 6  # prefill and decode
        assert set(shares["attrs"].map(lambda a: a.get("passes", 1))) >= {12, 7}
    rows = {r["group"]: r for r in summary(path, by="request", accounting=False).rows}
    for rid, e in live.items():
        for key in ("energy_j", "prefill_j", "decode_j", "ttft_s"):
            assert rows[rid][key] == pytest.approx(getattr(e, key), rel=1e-9), (rid, key)


def test_served_requests_keep_no_pass_spans_once_final():
    """A server keeps its recent requests (``keep_requests``); each must not keep a span and a
    record per forward pass it took part in, or the interpreter's full collections (which stop
    every thread) grow with them. Shares are freed once final; their energy stays, by phase."""
    import gc
    import weakref

    meter, clock = make_meter()
    serving = ServingMeter(meter, model="m")
    reqs = [serving.admit(f"r{i}", prompt_tokens=4) for i in range(3)]
    shares = []
    for step in range(6):
        work = [serving.prefill(r) if step == 0 else serving.decode(r) for r in reqs]
        it = serving.iteration(work)
        with it:
            run_for(meter, clock, 0.01)
        shares += [weakref.ref(m) for m in it.batch.members]
        del it
    for r in reqs:
        serving.finish(r)
    run_for(meter, clock, 0.3)
    got = [r.energy() for r in reqs]
    gc.collect()
    assert all(e.final for e in got)
    assert sum(ref() is not None for ref in shares) == 0
    for e in got:
        assert e.prefill_j > 0 and e.decode_j > 0
        assert e.energy_j == pytest.approx(e.prefill_j + e.decode_j, rel=1e-9)
    assert [r.passes for r in reqs] == [6, 6, 6]
    meter.stop()
