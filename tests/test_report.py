"""summarize / totals / list_runs: the counting rule, idle, filters and grouping."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenmaas.errors import ConfigError
from greenmaas.ledger import Ledger
from greenmaas.listings import list_runs, totals
from greenmaas.period import to_utc
from greenmaas.records import DeviceEnergy, DeviceTotals, RunRecord, SpanRecord
from greenmaas.report import GROUPS, IDLE, NONE, ExtraColumn, summarize

DAY1 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
DAY2 = datetime(2024, 5, 2, 0, 30, tzinfo=timezone.utc)
#: A stored location with a fixed figure, as AccountingConfig(location=100).to_dict() stores it.
FIXED_100 = {"spec": "100", "label": "fixed 100 g/kWh", "intensity_g_per_kwh": 100.0, "source": "fixed",
             "year": None, "location_source": "configured"}


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
    assert set(rows[0]) == {"group", "spans", "duration_s", "energy_j", "method", "uncertainty_j",
                            "uncertainty_source", "carbon_g", "energy_cost", "hardware_cost", "cost", "currency"}
    energy_only = summarize(led, by="model", accounting=False)
    assert set(energy_only[0]) == {"group", "spans", "duration_s", "energy_j", "method", "uncertainty_j",
                                   "uncertainty_source"}


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
    # Idle energy belongs to no request or name, yet every grouping ends with it: rows add up to
    # what the devices used (spans + idle = total), per request as per model.
    assert requests["req-1"] == (1, 10.0, 200.0) and requests[IDLE] == (0, 0.0, 320.0)
    names = table(summarize(led, by="name"))
    assert names["step"] == (2, 90.0, 900.0) and names["epoch"] == (1, 100.0, 100.0)
    assert names[IDLE] == (0, 0.0, 320.0)
    for grouping in (requests, names):
        assert sum(energy for _, _, energy in grouping.values()) == pytest.approx(1260.0 + 320.0)
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


def test_recorded_figures_are_not_summed_but_recomputed_from_self_energy(tmp_path):
    with Ledger.open(tmp_path / "x.db") as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1, config={"accounting": {"location": FIXED_100}}))
        led.write_spans([
            _span("p", DAY1, 0, 10, 100.0, 50.0, model="m", carbon_g=10.0, cost=1.0, currency="EUR"),
            _span("c", DAY1, 0, 5, 50.0, parent_id="p", model="m", carbon_g=5.0, cost=0.5, currency="EUR"),
        ])
        (row,) = summarize(led)
    # 100 J of own energy at the recorded 100 g/kWh; the recorded (inclusive) 15 g is not summed.
    assert row["carbon_g"] == pytest.approx(100.0 / 3.6e6 * 100.0)
    assert row["cost"] is None and row["currency"] is None  # the run recorded no prices
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
    assert gpu == {"host": "node", "device": "gpu:0", "method": "counter", "total_j": 1580.0, "attributed_j": 1260.0,
                   "idle_j": 320.0, "gap_s": 0.0, "idle_s": 0.0, "uncertainty_j": None, "windows": 2}
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


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=span_trees(), by=st.sampled_from(GROUPS))
def test_carbon_always_adds_up_to_the_self_energy_times_intensity(tree, by):
    spans, own_total = tree
    with Ledger.open("sqlite://") as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1))
        led.write_spans(spans)
        rows = summarize(led, by=by, accounting={"location": "100"})
    assert sum(r["carbon_g"] for r in rows) == pytest.approx(own_total / 3.6e6 * 100.0, rel=1e-9, abs=1e-12)
    assert all(r["carbon_g"] >= 0 for r in rows)


# --------------------------------------------------------------------------- carbon, cost, SCI

from greenmaas.accounting import AccountingConfig  # noqa: E402
from greenmaas.errors import AccountingError  # noqa: E402
from greenmaas.modelcard import model_cards, source_lines, sources_markdown  # noqa: E402
from greenmaas.pricing import priced_spans  # noqa: E402
from greenmaas.report import summary  # noqa: E402

KWH = 3.6e6
GPU = [{"id": "gpu:0", "kind": "gpu", "name": "NVIDIA H100 80GB HBM3", "method": "counter"}]


def _dspan(span_id, start, end, energy, self_j=None, device_s=None, t0=DAY1, **kw):
    """A span on gpu:0 with its own device time (``device_s``, default its duration)."""
    s = _span(span_id, t0, start, end, energy, self_j, **kw)
    s.devices[0].self_device_s = float(end - start) if device_s is None else device_s
    return s


def _accounting(**settings):
    """A run's config as the meter stores it: {"accounting": AccountingConfig(...).to_dict()}."""
    return {"accounting": AccountingConfig(**settings).to_dict()}


@pytest.fixture
def served(tmp_path):
    """A recorded run in France with a tariff and a GPU price: two concurrent requests, idle time.

    Window 0-20 s on gpu:0: 3,600,000 J in all (1 kWh), of which q1 and q2 (concurrent, 0-10 s)
    got 900,000 J each and 5 s of device time each; 1,800,000 J and 10 s are idle.
    """
    path = tmp_path / "served.db"
    config = _accounting(location="FR", tariff="0.20EUR/kWh", hardware_prices="gpu=3.60EUR/h")
    with Ledger.open(path) as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1, config=config, devices=GPU))
        led.write_spans([
            _dspan("q1", 0, 10, 900_000.0, device_s=5.0, model="llama", request_id="req-1", tokens_out=30,
                   kind="request"),
            _dspan("q2", 0, 10, 900_000.0, device_s=5.0, model="llama", request_id="req-2", tokens_out=10,
                   kind="request"),
        ])
        led.write_device_totals([DeviceTotals("r1", "gpu:0", "counter", 3_600_000.0, 1_800_000.0, 1_800_000.0,
                                              start=DAY1, end=DAY1 + timedelta(seconds=20), idle_s=10.0)])
        led.end_run("r1", DAY1 + timedelta(seconds=20))
    return path


def test_carbon_is_energy_in_kwh_times_the_recorded_intensity(served):
    fr = AccountingConfig(location="FR").location.intensity_g_per_kwh
    rows = {r["group"]: r for r in summarize(served, by="model")}
    assert rows["llama"]["carbon_g"] == pytest.approx(0.5 * fr)  # 1.8 MJ = 0.5 kWh
    assert rows[IDLE]["carbon_g"] == pytest.approx(0.5 * fr)  # the (idle) row is priced too
    assert rows["llama"]["currency"] == rows[IDLE]["currency"] == "EUR"


def test_hardware_time_is_split_between_concurrent_spans_and_idle_is_the_operators_line(served):
    rows = {r["group"]: r for r in summarize(served, by="request")}
    for req in ("req-1", "req-2"):
        assert rows[req]["hardware_cost"] == pytest.approx(5.0 / 3600 * 3.60)  # 0.005 EUR each
        assert rows[req]["energy_cost"] == pytest.approx(0.25 * 0.20)
        assert rows[req]["cost"] == pytest.approx(0.005 + 0.05)
    by_model = {r["group"]: r for r in summarize(served, by="model")}
    assert by_model[IDLE]["hardware_cost"] == pytest.approx(10.0 / 3600 * 3.60)  # the operator's 0.01 EUR
    # Rows add up to the devices' totals: 1 kWh and 20 s of GPU time.
    assert sum(r["energy_j"] for r in by_model.values()) == pytest.approx(KWH)
    assert sum(r["cost"] for r in by_model.values()) == pytest.approx(1.0 * 0.20 + 20 / 3600 * 3.60)
    fr = AccountingConfig(location="FR").location.intensity_g_per_kwh
    assert sum(r["carbon_g"] for r in by_model.values()) == pytest.approx(1.0 * fr)


def test_overrides_recompute_without_re_running(served):
    fr, va = (AccountingConfig(location=x).location.intensity_g_per_kwh for x in ("FR", "US-VA"))
    (llama, idle) = summarize(served, accounting={"location": "US-VA", "pue": "1.5"})
    assert llama["carbon_g"] == pytest.approx(0.5 * 1.5 * va) and va != fr
    assert llama["energy_cost"] == pytest.approx(0.5 * 1.5 * 0.20)  # the recorded tariff stays
    assert llama["hardware_cost"] == pytest.approx(10 / 3600 * 3.60)  # PUE is not charged on hardware
    repriced = summary(served, accounting={"tariff": "0.10USD/kWh", "hardware_prices": "gpu=1USD/h"})
    assert repriced.rows[0]["currency"] == "USD"
    assert repriced.sources[0]["location_spec"] == "FRA"  # the recorded location stays
    assert repriced.sources[0]["location_source"] == "configured"
    whole = summarize(served, accounting=AccountingConfig(location=200))  # replaces everything
    assert whole[0]["carbon_g"] == pytest.approx(100.0) and whole[0]["cost"] is None


def test_mixing_currencies_in_one_run_is_refused_naming_them(served):
    with pytest.raises(AccountingError, match="mixed currencies: USD .*EUR"):
        summarize(served, accounting={"tariff": "0.10USD/kWh"})  # the recorded GPU price is in EUR


def test_time_varying_intensity_prices_each_hour_with_its_own_figure(tmp_path):
    csv = tmp_path / "grid.csv"
    csv.write_text("timestamp,gco2_per_kwh\n2024-05-01T10:00:00Z,100\n2024-05-01T11:00:00Z,500\n"
                   "2024-05-01T12:00:00Z,300\n")
    with Ledger.open(tmp_path / "x.db") as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1))
        led.write_spans([
            _span("a", DAY1, 0, 600, KWH, request_id="a"),  # 10:00-10:10, 1 kWh
            _span("b", DAY1, 3600, 4200, KWH, request_id="b"),  # 11:00-11:10, same energy
            _span("c", DAY1, 1800, 5400, KWH, request_id="c"),  # 10:30-11:30: half at each figure
        ])
        rows = {r["group"]: r["carbon_g"] for r in summarize(led, by="request", accounting={"series": str(csv)})}
        assert rows == {"a": pytest.approx(100.0), "b": pytest.approx(500.0), "c": pytest.approx(300.0)}
        facts = summary(led, by="request", accounting={"series": str(csv)}).sources[0]
        assert facts["intensity_series"]["points"] == 3 and facts["location_source"] == "configured"


def test_time_of_use_tariff_by_hand(tmp_path):
    day = datetime(2024, 5, 1, 0, 0, tzinfo=timezone.utc)  # a Wednesday
    with Ledger.open(tmp_path / "x.db") as led:
        led.start_run(RunRecord("r1", "node", 1, day))
        led.write_spans([
            _span("peak", day, 10 * 3600, 10 * 3600 + 60, 2 * KWH, request_id="peak"),  # 10:00
            _span("night", day, 22 * 3600, 22 * 3600 + 60, 2 * KWH, request_id="night"),  # 22:00
            _span("edge", day, 19.5 * 3600, 20.5 * 3600, 2 * KWH, request_id="edge"),  # half each
        ])
        rows = {r["group"]: r for r in summarize(led, by="request",
                                                 accounting={"tariff": "0.30EUR/kWh@08-20@mon-fri,0.10EUR/kWh"})}
    assert rows["peak"]["cost"] == pytest.approx(2 * 0.30)
    assert rows["night"]["cost"] == pytest.approx(2 * 0.10)
    assert rows["edge"]["cost"] == pytest.approx(1 * 0.30 + 1 * 0.10)
    assert rows["peak"]["currency"] == "EUR" and rows["peak"]["hardware_cost"] is None


def test_sci_per_request_with_and_without_embodied(served):
    fr = AccountingConfig(location="FR").location.intensity_g_per_kwh
    s = summary(served, by="model", sci="request")
    llama, idle = s.rows
    assert llama["functional_units"] == 2 and llama["sci_unit"] == "request"
    assert llama["sci_energy_kwh"] == pytest.approx(0.5)
    assert llama["sci_embodied_g"] == 0.0
    assert llama["sci_g"] == pytest.approx(0.5 * fr / 2)
    assert idle["functional_units"] == 0 and idle["sci_g"] is None  # R = 0: n/a, not a division error
    assert any("M = 0" in n for n in s.notes)

    # 1,000 kg over 4 years: 1 h reserved is ~28.5 g; here 10 s of GPU time in all.
    with_m = summary(served, by="model", sci="request", accounting={"embodied": "gpu=1000kg/4y", "pue": 1.2})
    llama = with_m.rows[0]
    m = 1e6 * 10 / (4 * 365.25 * 86400)
    assert llama["sci_embodied_g"] == pytest.approx(m)
    assert llama["sci_g"] == pytest.approx((0.5 * 1.2 * fr + m) / 2)
    assert not any("M = 0" in n for n in with_m.notes)


def test_sci_per_token_and_sample_count_the_top_most_carrier(tmp_path):
    with Ledger.open(tmp_path / "x.db") as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1, config={"accounting": {"location": FIXED_100}}))
        led.write_spans([
            _span("r", DAY1, 0, 10, 2 * KWH, KWH, model="gen", request_id="r", tokens_out=100, items=4),
            _span("f", DAY1, 0, 5, KWH, parent_id="r", model="gen", request_id="r", tokens_out=100, items=4),
            _span("e", DAY1, 0, 5, KWH, model="embed", tokens_in=50),  # no output tokens
        ])
        tokens = {r["group"]: r for r in summarize(led, sci="token")}
        samples = {r["group"]: r for r in summarize(led, sci="sample")}
        notes = summary(led, sci="token").notes
    assert tokens["gen"]["functional_units"] == 100  # the child repeats its parent's count
    assert tokens["gen"]["sci_g"] == pytest.approx(200.0 / 100)
    assert tokens["embed"]["functional_units"] == 50 and any("tokens_in + tokens_out" in n for n in notes)
    assert samples["gen"]["functional_units"] == 4 and samples["embed"]["sci_g"] is None


def test_a_run_without_accounting_uses_the_world_average_and_says_so(led):
    s = summary(led)
    (src,) = s.sources
    assert src["location_source"] == "default" and src["intensity_g_per_kwh"] == pytest.approx(475.0)
    assert src["pue"] == 1.0 and src["runs"] == ["r1"]
    assert any("no accounting settings recorded" in n for n in s.notes)
    text = "\n".join(source_lines(s))
    assert "location_source default" in text and "PUE: 1.0" in text and "±5%" in text


def test_a_recorded_intensity_series_that_is_gone_falls_back_to_its_recorded_mean(tmp_path):
    csv = tmp_path / "grid.csv"
    csv.write_text("timestamp,gco2_per_kwh\n2024-05-01T00:00:00Z,100\n2024-05-01T12:00:00Z,300\n"
                   "2024-05-02T00:00:00Z,300\n")
    config = _accounting(series=str(csv))
    with Ledger.open(tmp_path / "x.db") as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1, config=config))
        led.write_spans([_span("a", DAY1, 0, 60, KWH, model="m")])  # 10:00, at 100 g/kWh
        assert summarize(led)[0]["carbon_g"] == pytest.approx(100.0)  # re-read: the hour matters
        csv.unlink()
        s = summary(led)
    assert s.rows[0]["carbon_g"] == pytest.approx(200.0)  # the recorded mean over the series
    assert any("gone or changed" in n for n in s.notes)


def test_market_based_carbon_appears_only_when_given(served):
    assert "carbon_market_g" not in summarize(served)[0]
    row = summarize(served, accounting={"market_intensity_g_per_kwh": "20 g/kWh"})[0]
    assert row["carbon_market_g"] == pytest.approx(0.5 * 20)


def test_runs_in_two_currencies_do_not_add_up_money(served, tmp_path):
    with Ledger.open(served) as led:
        led.start_run(RunRecord("r2", "node", 2, DAY2, config=_accounting(location="FR", tariff="0.1USD/kWh")))
        led.write_spans([_dspan("z", 0, 10, 1000.0, t0=DAY2, model="llama", run_id="r2")])
    rows = {r["group"]: r for r in summarize(served)}
    assert rows["llama"]["cost"] is None and rows["llama"]["currency"] == "mixed"
    assert rows["llama"]["carbon_g"] is not None
    assert len(summary(served).sources) == 2


def test_priced_spans_are_each_spans_own_share(served):
    df = priced_spans(served, accounting={"location": "100"}).set_index("span_id")
    assert df.loc["q1", "carbon_g"] == pytest.approx(0.25 * 100)
    assert df.loc["q1", "hardware_cost"] == pytest.approx(0.005) and df.loc["q1", "currency"] == "EUR"


def test_model_card_states_sources_method_hardware_and_period(served):
    s = summary(served, by="model", accounting={"market_intensity_g_per_kwh": 20})
    card = model_cards(s)
    for text in ("### llama", "kWh", "NVIDIA H100 80GB HBM3 (gpu:0)", "France (FRA)", "location_source configured",
                 "global_energy_mix.json", "data year 2023", "counter", "±5%", "gCO2e location-based",
                 "gCO2e market-based", "EUR", "tariff 0.2EUR/kWh", "2024-05-01 10:00:00", "(idle)"):
        assert text in card, text
    assert "## Sources" in sources_markdown(s)


def test_bad_accounting_arguments(served):
    with pytest.raises(AccountingError, match="did you mean"):
        summarize(served, accounting={"location": "FRR"})
    with pytest.raises(ConfigError, match="unknown accounting setting"):
        summarize(served, accounting={"colour": "green"})
    with pytest.raises(ConfigError, match="functional unit"):
        summarize(served, sci="watt")


def test_report_reexports_stay_the_same_objects():
    import greenmaas.listings
    import greenmaas.period
    import greenmaas.pricing
    import greenmaas.report

    assert greenmaas.report.priced_spans is greenmaas.pricing.priced_spans
    assert greenmaas.report.totals is greenmaas.listings.totals
    assert greenmaas.report.list_runs is greenmaas.listings.list_runs
    assert greenmaas.report.to_utc is greenmaas.period.to_utc


# --------------------------------------------------------------------------- uncertainty

from greenmaas.modelcard import plus_minus  # noqa: E402


def _uspan(span_id, start, end, energy, self_j, u, **kw):
    """A span on gpu:0 whose recorded ± J (inclusive, like energy) is ``u``."""
    s = _span(span_id, DAY1, start, end, energy, self_j, **kw)
    s.devices[0].uncertainty_j = u
    return s


@pytest.fixture
def measured(tmp_path):
    """A run recorded with ± J: an epoch (10 J inclusive, 4 J its own) over a step (6 J); a batch
    (1 J, 0 its own) whose share (1 J) is linked to a request (3 J, 2 J its own); device windows
    with a recorded ± J of their idle energy (2.5 J and 1.5 J)."""
    path = tmp_path / "m.db"
    with Ledger.open(path) as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1))
        led.write_spans([
            _uspan("e", 0, 100, 1000.0, 400.0, 10.0, model="bert", kind="epoch"),
            _uspan("s", 0, 50, 600.0, 600.0, 6.0, model="bert", parent_id="e"),
            _uspan("b", 110, 111, 100.0, 0.0, 1.0, model="llama", kind="batch"),
            _uspan("sh", 110, 111, 100.0, 100.0, 1.0, model="llama", kind="share", parent_id="b",
                   link_id="q", request_id="req-1"),
            _uspan("q", 109, 112, 300.0, 200.0, 3.0, model="llama", kind="request", request_id="req-1"),
        ])
        led.write_device_totals([
            DeviceTotals("r1", "gpu:0", "counter", 1500.0, 1300.0, 200.0, start=DAY1, uncertainty_j=2.5),
            DeviceTotals("r1", "gpu:0", "counter", 100.0, 0.0, 100.0, start=DAY1 + timedelta(seconds=200),
                         uncertainty_j=1.5),
        ])
    return path


def test_uncertainty_sums_each_spans_own_share_like_energy(measured):
    rows = {r["group"]: r for r in summarize(measured, by="model", accounting=False)}
    # bert: the epoch's own 10 - 6 plus the step's 6; llama: the request's own 3 - 1, the batch's
    # own 1 - 1 and the share's 1. Nothing counted twice.
    assert rows["bert"]["uncertainty_j"] == pytest.approx(10.0)
    assert rows["llama"]["uncertainty_j"] == pytest.approx(3.0)
    assert rows[IDLE]["uncertainty_j"] == pytest.approx(4.0)  # the windows' recorded ± J
    assert {r["uncertainty_source"] for r in rows.values()} == {"recorded"}
    assert rows["bert"]["method"] == rows[IDLE]["method"] == "counter"
    by_kind = {r["group"]: r["uncertainty_j"] for r in summarize(measured, by="name", accounting=False)
               if r["group"] != IDLE}
    assert sum(by_kind.values()) == pytest.approx(13.0)
    assert not any("stated" in n for n in summary(measured, accounting=False).notes)


def test_a_ledger_without_recorded_uncertainty_falls_back_to_the_methods_stated_figure(led):
    s = summary(led, by="model", accounting=False)
    rows = {r["group"]: r for r in s.rows}
    assert rows["bert"]["uncertainty_j"] == pytest.approx(1000.0 * 0.05)  # own energy × counter's 5%
    assert rows[IDLE]["uncertainty_j"] == pytest.approx(320.0 * 0.05)
    assert {r["uncertainty_source"] for r in s.rows} == {"stated"}
    assert any(n.startswith("± J is the measurement method's stated uncertainty") for n in s.notes)
    assert s.methods[0]["uncertainty_j"] == pytest.approx(1260.0 * 0.05)


def test_groups_mixing_recorded_and_stated_say_so(measured):
    with Ledger.open(measured) as led:
        led.write_spans([_span("old", DAY1, 120, 121, 40.0, model="llama")])  # nothing recorded
        estimate = _span("cpu", DAY1, 120, 121, 10.0, model="gpt")
        estimate.devices[0].method = "estimate"
        led.write_spans([estimate])
    s = summary(measured, by="model", accounting=False)
    rows = {r["group"]: r for r in s.rows}
    assert rows["llama"]["uncertainty_j"] == pytest.approx(3.0 + 40.0 * 0.05)
    assert rows["llama"]["uncertainty_source"] == "mixed"
    assert (rows["gpt"]["method"], rows["gpt"]["uncertainty_source"]) == ("estimate", "stated")
    assert rows["gpt"]["uncertainty_j"] == pytest.approx(10.0 * 0.5)
    (note,) = [n for n in s.notes if "stated uncertainty" in n]
    assert "llama" in note and "gpt" in note and "bert" not in note


def test_an_idle_window_without_a_recorded_figure_gets_the_stated_one(measured):
    with Ledger.open(measured) as led:
        led.write_device_totals([DeviceTotals("r1", "gpu:0", "power", 20.0, 0.0, 20.0,
                                              start=DAY1 + timedelta(seconds=300))])
    idle = {r["group"]: r for r in summarize(measured, accounting=False)}[IDLE]
    assert idle["uncertainty_j"] == pytest.approx(4.0 + 20.0 * 0.10)
    assert (idle["uncertainty_source"], idle["method"]) == ("mixed", "power")
    (gpu,) = totals(measured)
    assert gpu["uncertainty_j"] == pytest.approx(4.0)  # recorded only


def test_a_group_none_of_whose_spans_can_state_one_has_none(tmp_path):
    with Ledger.open(tmp_path / "x.db") as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1))
        replay = _span("r", DAY1, 0, 1, 5.0, model="replayed")
        replay.devices[0].method = "replay"  # no stated figure for a replay
        led.write_spans([replay])
        (row,) = summarize(led, accounting=False)
    assert row["uncertainty_j"] is None and row["uncertainty_source"] is None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=span_trees(), by=st.sampled_from(GROUPS))
def test_recorded_uncertainty_always_adds_up_to_the_spans_own(tree, by):
    spans, own_total = tree
    for s in spans:  # inclusive ± J, 1% of inclusive energy: each span's own is 1% of its own
        s.devices[0].uncertainty_j = 0.01 * s.devices[0].energy_j
    with Ledger.open("sqlite://") as led:
        led.start_run(RunRecord("r1", "node", 1, DAY1))
        led.write_spans(spans)
        rows = summarize(led, by=by, accounting=False)
    assert sum(r["uncertainty_j"] for r in rows) == pytest.approx(0.01 * own_total, rel=1e-9, abs=1e-6)
    assert all(r["uncertainty_j"] >= 0 for r in rows)


def test_model_card_states_the_uncertainty_beside_the_energy(measured, led):
    card = model_cards(summary(measured, by="model", accounting=False))
    bert = card[card.index("### bert"):card.index("### llama")]
    assert "kWh (1,000.0 J) ± 10.0 J of IT energy" in bert and "none recorded" not in bert
    assert "(the `(idle)` row: " in card and "(300.0 J) ± 4.0 J" in card
    old = model_cards(summary(led, by="model", accounting=False))
    assert "(1,000.0 J) ± 50.0 J (the method's stated uncertainty: none recorded) of IT energy" in old
    lines = "\n".join(source_lines(summary(measured, accounting=False)))
    assert "Method: counter" in lines and "(5 spans; ± 13.0 J)" in lines
    assert "(5 spans; ± 13.0 J)" in sources_markdown(summary(measured, accounting=False))


def test_plus_minus_text():
    assert plus_minus({"uncertainty_j": 1234.5, "uncertainty_source": "recorded"}) == " ± 1,234.5 J"
    assert plus_minus({"uncertainty_j": None}) == "" and plus_minus({}) == ""
    assert "partly" in plus_minus({"uncertainty_j": 1.0, "uncertainty_source": "mixed"})
