"""summarize / totals / list_runs: the counting rule, idle, filters and grouping."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenmaas.errors import ConfigError
from greenmaas.ledger import Ledger
from greenmaas.records import DeviceEnergy, DeviceTotals, RunRecord, SpanRecord
from greenmaas.report import GROUPS, IDLE, NONE, ExtraColumn, list_runs, summarize, to_utc, totals

DAY1 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
DAY2 = datetime(2024, 5, 2, 0, 30, tzinfo=timezone.utc)


def _span(span_id, t0, start, end, energy, self_j=None, **kw):
    return SpanRecord(
        span_id=span_id, run_id=kw.pop("run_id", "r1"), name=kw.pop("name", "step"),
        start=t0 + timedelta(seconds=start), end=t0 + timedelta(seconds=end),
        duration_s=float(end - start),
        devices=[DeviceEnergy("gpu:0", energy, "counter", energy if self_j is None else self_j)], **kw,
    )


def build(led: Ledger) -> None:
    """An epoch of bert with two steps, two llama requests (one the next day), one untagged span.

    Device totals: window 1 (day 1) 1500 J, of which 290 idle; window 2 (day 2) 80 J, 30 idle.
    """
    led.start_run(RunRecord("r1", "node", 1, DAY1))
    train = dict(model="bert", phase="training")
    led.write_spans([
        _span("e1", DAY1, 0, 100, 1000.0, 100.0, kind="epoch", name="epoch", **train),
        _span("s1", DAY1, 0, 40, 450.0, parent_id="e1", **train),
        _span("s2", DAY1, 50, 100, 450.0, parent_id="e1", **train),
        _span("q1", DAY1, 110, 120, 200.0, kind="request", name="generate", model="llama",
              phase="inference", tenant=led.pseudonymise("acme"), request_id="req-1"),
        _span("q2", DAY2, 0, 5, 50.0, kind="request", name="generate", model="llama",
              phase="inference", tenant=led.pseudonymise("globex"), request_id="req-2"),
        _span("m1", DAY1, 130, 131, 10.0, name="misc"),
    ])
    led.write_device_totals([
        DeviceTotals("r1", "gpu:0", "counter", 1500.0, 1210.0, 290.0, start=DAY1, end=DAY1 + timedelta(seconds=200)),
        DeviceTotals("r1", "gpu:0", "counter", 80.0, 50.0, 30.0, start=DAY2, end=DAY2 + timedelta(seconds=10)),
    ])
    led.end_run("r1", DAY2 + timedelta(seconds=10))


@pytest.fixture
def led(tmp_path):
    with Ledger.open(tmp_path / "r.db") as ledger:
        build(ledger)
        yield ledger


def table(rows):
    return {r["group"]: (r["spans"], r["duration_s"], r["energy_j"]) for r in rows}


def test_by_model_counts_nested_energy_once_and_adds_idle(led):
    rows = summarize(led, by="model")
    assert [r["group"] for r in rows] == ["bert", "llama", NONE, IDLE]
    assert table(rows) == {
        "bert": (3, 100.0, 1000.0),  # epoch self 100 + steps 900; time of the epoch only
        "llama": (2, 15.0, 250.0),
        NONE: (1, 1.0, 10.0),
        IDLE: (0, 0.0, 320.0),
    }
    assert sum(r["energy_j"] for r in rows) == 1500.0 + 80.0  # what the devices consumed
    assert set(rows[0]) == {"group", "spans", "duration_s", "energy_j"}


def test_by_day_uses_the_utc_date_of_span_start(led):
    assert table(summarize(led, by="day")) == {
        "2024-05-01": (5, 100.0 + 10.0 + 1.0, 1210.0),
        "2024-05-02": (1, 5.0, 50.0),
        IDLE: (0, 0.0, 320.0),
    }


def test_by_phase_tenant_request_name_and_run(led):
    assert table(summarize(led, by="phase"))["training"] == (3, 100.0, 1000.0)
    tenants = table(summarize(led, by="tenant"))
    assert tenants[led.pseudonymise("acme")] == (1, 10.0, 200.0)
    assert tenants[NONE] == (4, 101.0, 1010.0) and IDLE in tenants
    requests = table(summarize(led, by="request"))
    assert requests["req-1"] == (1, 10.0, 200.0) and IDLE not in requests  # idle has no request
    names = table(summarize(led, by="name"))
    assert names["step"] == (2, 90.0, 900.0) and names["epoch"] == (1, 100.0, 100.0)
    assert IDLE not in names
    assert table(summarize(led, by="run")) == {"r1": (6, 116.0, 1260.0), IDLE: (0, 0.0, 320.0)}


def test_since_and_until_filter_on_span_start(led):
    assert table(summarize(led, since=date(2024, 5, 2))) == {"llama": (1, 5.0, 50.0), IDLE: (0, 0.0, 30.0)}
    until_day1 = table(summarize(led, until=date(2024, 5, 1)))  # a date includes its whole day
    assert until_day1["llama"] == (1, 10.0, 200.0) and until_day1[IDLE][2] == 290.0
    exact = summarize(led, since="2024-05-01T10:01:00Z", until=DAY1 + timedelta(seconds=125))
    assert table(exact) == {"llama": (1, 10.0, 200.0)}  # no idle window starts in that range
    assert summarize(led, since="2030-01-01") == []


def test_model_filter_drops_the_idle_row(led):
    assert table(summarize(led, model="bert")) == {"bert": (3, 100.0, 1000.0)}


def test_children_in_another_group_keep_their_own_time(tmp_path):
    with Ledger.open(tmp_path / "x.db") as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1))
        led.write_spans([
            _span("b", DAY1, 0, 10, 100.0, 60.0, model="pipeline"),
            _span("r", DAY1, 2, 6, 40.0, parent_id="b", model="encoder"),
        ])
        assert table(summarize(led)) == {"pipeline": (1, 10.0, 60.0), "encoder": (1, 4.0, 40.0)}


def test_unmeasurable_groups_have_no_energy_rather_than_zero(tmp_path):
    with Ledger.open(tmp_path / "x.db") as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1))
        s = _span("u", DAY1, 0, 1, 0.0, model="cpu-only")
        s.devices = [DeviceEnergy("cpu:0", 0.0, "unmeasurable")]
        led.write_spans([s, _span("g", DAY1, 0, 1, 5.0, model="gpu")])
        rows = summarize(led)
    assert [r["group"] for r in rows] == ["gpu", "cpu-only"] and rows[1]["energy_j"] is None


def test_recorded_carbon_and_cost_appear_when_present(tmp_path):
    with Ledger.open(tmp_path / "x.db") as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1))
        led.write_spans([
            _span("p", DAY1, 0, 10, 100.0, 50.0, model="m", carbon_g=10.0, cost=1.0, currency="EUR"),
            _span("c", DAY1, 0, 5, 50.0, parent_id="p", model="m", carbon_g=5.0, cost=0.5, currency="EUR"),
        ])
        (row,) = summarize(led)
        assert row["carbon_g"] == pytest.approx(10.0)  # 5 (parent's own half) + 5, not 15
        assert row["cost"] == pytest.approx(1.0) and row["currency"] == "EUR"
        assert "carbon_market_g" not in row


def test_extra_columns_plug_in(led):
    grams = ExtraColumn(
        "carbon_g", "Carbon (gCO2e)",
        per_span=lambda spans: spans["self_energy_j"] * 0.1,
        idle=lambda windows: float(windows["idle_j"].sum()) * 0.1,
    )
    rows = {r["group"]: r for r in summarize(led, extra_columns=[grams])}
    assert rows["bert"]["carbon_g"] == pytest.approx(100.0)
    assert rows[IDLE]["carbon_g"] == pytest.approx(32.0)


def test_bad_arguments_are_config_errors(led):
    with pytest.raises(ConfigError, match="cannot group by 'colour'.*model, phase"):
        summarize(led, by="colour")
    with pytest.raises(ConfigError, match="invalid date 'yesterday'"):
        summarize(led, since="yesterday")


def test_to_utc():
    assert to_utc(date(2024, 1, 2), upper=True) == datetime(2024, 1, 3, tzinfo=timezone.utc)
    assert to_utc("2024-01-02T03:00+02:00") == datetime(2024, 1, 2, 1, tzinfo=timezone.utc)
    assert to_utc(datetime(2024, 1, 2)) == datetime(2024, 1, 2, tzinfo=timezone.utc)


def test_totals_and_runs(led):
    (gpu,) = totals(led)
    assert gpu == {"device": "gpu:0", "method": "counter", "total_j": 1580.0, "attributed_j": 1260.0,
                   "idle_j": 320.0, "gap_s": 0.0, "windows": 2}
    assert totals(led, since=date(2024, 5, 2))[0]["total_j"] == 80.0
    (r,) = list_runs(led)
    assert (r["run_id"], r["spans"], r["energy_j"], r["status"]) == ("r1", 6, 1580.0, "finished")
    assert r["end"].tzinfo is not None


def test_empty_ledger(tmp_path):
    with Ledger.open(tmp_path / "e.db") as led:
        for by in GROUPS:
            assert summarize(led, by=by) == []
        assert totals(led) == [] and list_runs(led) == []


# --------------------------------------------------------------------------- invariants

_tags = st.sampled_from([None, "a", "b", "c"])


@st.composite
def span_trees(draw):
    """Random forests of spans; each span's inclusive energy is its own plus its children's."""
    n = draw(st.integers(1, 12))
    parents = [None] + [draw(st.one_of(st.none(), st.integers(0, i - 1))) for i in range(1, n)]
    own = [draw(st.floats(0, 1000, allow_nan=False)) for _ in range(n)]
    tags = [(draw(_tags), draw(_tags), draw(st.integers(0, 3))) for _ in range(n)]
    inclusive = list(own)
    for i in reversed(range(n)):
        if parents[i] is not None:
            inclusive[parents[i]] += inclusive[i]
    spans = []
    for i in range(n):
        model, phase, day = tags[i]
        t0 = DAY1 + timedelta(days=day)
        spans.append(_span(f"s{i}", t0, i, i + 1 + n, inclusive[i], own[i], model=model, phase=phase,
                           parent_id=None if parents[i] is None else f"s{parents[i]}", name=f"n{i % 3}"))
    return spans, sum(own)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=span_trees(), by=st.sampled_from(GROUPS))
def test_groups_always_add_up_to_the_self_energy(tree, by):
    spans, own_total = tree
    with Ledger.open("sqlite://") as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1))
        led.write_spans(spans)
        rows = summarize(led, by=by)
    assert sum(r["spans"] for r in rows) == len(spans)
    assert sum(r["energy_j"] for r in rows) == pytest.approx(own_total, rel=1e-9, abs=1e-6)
    assert all(r["energy_j"] >= 0 and r["duration_s"] >= 0 for r in rows)
    energies = [r["energy_j"] for r in rows]
    assert energies == sorted(energies, reverse=True)
