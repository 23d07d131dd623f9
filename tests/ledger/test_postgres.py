"""The ledger on PostgreSQL: what SQLite does, PostgreSQL does the same.

Each test gets an empty schema of its own (``postgres_url`` in tests/conftest.py) in the database
named by ``$GREENMAAS_TEST_POSTGRES_URL`` (``postgresql+psycopg://user:pass@127.0.0.1/db``;
needs ``pip install greenmaas[postgres]``). Without it these tests skip; under CI they fail.
"""

import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from compare import same

from greenmaas.accounting.config import AccountingConfig
from greenmaas.analysis import TABLES, read_ledger
from greenmaas.errors import LedgerError
from greenmaas.ledger import SCHEMA_VERSION, LedgerWriter
from greenmaas.ledger.store import Ledger
from greenmaas import listings
from greenmaas.meter import Meter
from greenmaas.records import DeviceEnergy, DeviceTotals, ReadRecord, RunRecord, SpanRecord
from greenmaas.report import GROUPS, summary
from greenmaas.testing import FakeClock, StaticSource
from greenmaas_cli.main import cli

pytestmark = pytest.mark.postgres


@pytest.fixture
def url(postgres_url):
    return postgres_url


def test_meter_report_and_read_back(url):
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: 300 * t}})
    meter = Meter(sources=[src], ledger=url, clock=clock, background=False, accounting=False)
    meter.start()
    for i in range(3):
        with meter.request(f"r{i}", tenant="acme", model="llama", tokens_out=10):
            clock.advance(0.5)
            meter.tick()
        clock.advance(0.1)
        meter.tick()
    meter.stop()
    spans = read_ledger(url)
    assert spans["energy_j"].tolist() == [pytest.approx(150.0)] * 3
    assert "acme" not in set(spans["tenant"])
    assert read_ledger(url, table="runs")["status"].tolist() == ["finished"]
    r = CliRunner().invoke(cli, ["report", "--ledger", url, "--by", "model", "--format", "json"])
    assert r.exit_code == 0, r.output


def test_newer_schema_refused_and_unchanged(url):
    Ledger.open(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE meta SET value = '999' WHERE key = 'schema_version'"))
    with pytest.raises(LedgerError):
        Ledger.open(url)
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar() == "999"
    engine.dispose()


def test_a_schema1_database_is_upgraded_only_by_greenmaas_migrate(url):
    import schema1

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        schema1.create(conn)

    def version():
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()

    for kwargs in ({}, {"readonly": True}):
        with pytest.raises(LedgerError) as info:
            Ledger.open(url, **kwargs)
        message = str(info.value)
        assert "\n" not in message and "greenmaas migrate --ledger URL" in message and "older" in message
    assert version() == "1" and "reads" not in sa.inspect(engine).get_table_names()

    result = CliRunner().invoke(cli, ["migrate", "--ledger", url])
    assert result.exit_code == 0, result.output
    assert f"from schema version 1 to {SCHEMA_VERSION}" in result.stdout and "kept as" not in result.stdout
    assert version() == str(SCHEMA_VERSION)
    again = CliRunner().invoke(cli, ["migrate", "--ledger", url])
    assert again.exit_code == 0 and "up to date" in again.stdout

    spans = read_ledger(url).set_index("span_id")
    assert spans.loc["e", "self_energy_j"] == 100.0 and spans.loc["q", "start"] == schema1.at(110)
    assert spans[["start_mono", "end_mono", "link_id", "uncertainty_j"]].isna().all().all()
    assert read_ledger(url, "devices")["uncertainty_j"].isna().all()
    with Ledger.open(url) as led:
        assert led.upgraded is None
        led.write([ReadRecord("r1", "gpu:0", 81234.56789012345, 1.5)])
    assert read_ledger(url, "reads")["t_mono"].tolist() == [81234.56789012345]
    upgraded = schema1.schema(url)
    engine.dispose()
    _reset(url)
    Ledger.open(url).close()
    assert upgraded == schema1.schema(url)


def _reset(url):
    """Empty the test's schema (the one its URL's search_path names)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        schema = conn.execute(sa.select(sa.func.current_schema())).scalar_one()
        conn.execute(sa.schema.DropSchema(schema, cascade=True))
        conn.execute(sa.schema.CreateSchema(schema))
    engine.dispose()


def _dump(url) -> dict[str, list[str]]:
    """Every table as PostgreSQL holds it, each row as its JSON text (JSON columns verbatim)."""
    order = {"runs": "run_id", "spans": "span_id", "span_devices": "span_id, device",
             "reads": "id", "samples": "id", "device_totals": "id"}
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        out = {t: conn.execute(sa.text(f"SELECT row_to_json(x)::text FROM {t} x ORDER BY {o}"))
               .scalars().all() for t, o in order.items()}
    engine.dispose()
    return out


def test_fast_path_stores_what_the_typed_path_stored(url, monkeypatch):
    from fast_insert_cases import reads, run, samples, spans, totals, typed_write

    monkeypatch.setenv("GREENMAAS_TENANT_KEY", "test-key")
    records = spans(sqlite=False) + reads(sqlite=False) + samples() + totals()
    stored = []
    for fast in (False, True):
        _reset(url)
        with Ledger.open(url) as led:
            led.start_run(run())
            if fast:
                led.write(records)
            else:
                typed_write(led, records)
        frames = {t: read_ledger(url, t) for t in TABLES}
        for df in frames.values():
            for col in ("attrs", "config", "devices"):
                if col in df:
                    df[col] = df[col].map(repr)
        stored.append((_dump(url), frames))
    (typed_rows, typed_frames), (fast_rows, fast_frames) = stored
    assert len(fast_rows["spans"]) == 260 and len(fast_rows["samples"]) == 400
    assert len(fast_rows["reads"]) == 500
    assert fast_rows == typed_rows
    for table in TABLES:
        pd.testing.assert_frame_equal(fast_frames[table], typed_frames[table])


# ------------------------------------------------------------------ the same ledger on both backends

T1 = datetime(2024, 5, 1, 22, 40, tzinfo=timezone.utc)  # spans cross hours and the UTC midnight
DEVICES = [{"id": "gpu:0", "kind": "gpu", "name": "H100"}, {"id": "cpu:0", "kind": "cpu", "name": "Xeon"}]


def _records(pseudonymise) -> list:
    """Two runs on two hosts (EUR with a time-of-use tariff, PUE, GPU price and embodied carbon;
    USD flat) with nested spans, batch shares, unmeasured spans, tenants, requests and idle."""
    eur = AccountingConfig(location="DE", tariff="0.30EUR/kWh@08-20@mon-fri,0.10EUR/kWh", pue=1.3,
                           hardware_prices="gpu=3.60EUR/h", embodied="gpu=150kg/4y",
                           market_intensity_g_per_kwh=50.0).to_dict()
    usd = AccountingConfig(location="FR", tariff="0.2USD/kWh", hardware_prices="gpu=2USD/h,cpu=0.1USD/h").to_dict()
    out: list = [RunRecord("r1", "node-a", 11, T1, config={"accounting": eur}, devices=DEVICES),
                 RunRecord("r2", "node-b", 22, T1, config={"accounting": usd}, devices=DEVICES)]

    def span(span_id, run, start_s, dur_s, devices, **kw):
        start = T1 + timedelta(seconds=start_s)
        return SpanRecord(span_id=span_id, run_id=run, name=kw.pop("name", "step"), start=start,
                          end=start + timedelta(seconds=dur_s), duration_s=float(dur_s), devices=devices, **kw)

    for i in range(120):
        run, t = ("r1", "r2")[i % 2], i * 61.0
        model = ("llama", "bert", "", None)[i % 4]
        u = None if i % 7 == 0 else 0.5 + i % 3
        out.append(span(f"p{i}", run, t, 30 + i % 50, [
            DeviceEnergy("gpu:0", 100.0 + i, "counter", 40.0 + i, 3.0, 0.0, u),
            DeviceEnergy("cpu:0", 10.0, ("power", "estimate")[i % 2], 5.0 + i % 4, 1.5, 0.0, 0.2),
        ], model=model, phase=("training", "inference", None)[i % 3], kind="request",
            tenant=pseudonymise(f"t{i % 5}") if i % 6 else None, request_id=f"req-{i // 2}",
            name=("step", "generate")[i % 2], tokens_in=i % 11, tokens_out=i % 9, attrs={"i": i}))
        out.append(span(f"c{i}", run, t + 1, 10, [DeviceEnergy("gpu:0", 60.0, "counter", 60.0, 1.0)],
                        parent_id=f"p{i}", model=model if i % 2 else "child-model", phase="inference",
                        request_id=f"req-{i // 2}"))
        if i % 10 == 0:
            out.append(span(f"b{i}", run, t + 2, 5, [DeviceEnergy("gpu:0", 20.0, "power", 0.0, 0.5)],
                            kind="batch", model=model))
            out.append(span(f"s{i}", run, t + 2, 5, [DeviceEnergy("gpu:0", 20.0, "power", 20.0, 0.5, 0.0, 0.4)],
                            kind="share", name=("prefill", "decode")[i % 20 // 10], parent_id=f"b{i}",
                            link_id=f"p{i}", model=model, request_id=f"req-{i // 2}"))
        if i % 25 == 0:
            out.append(span(f"u{i}", run, t + 3, 2, [DeviceEnergy("gpu:0", 0.0, "unmeasurable")], model="ghost"))
    out += [DeviceTotals(run, dev, "counter", 9e4, 8e4, 1e4 + h, start=T1 + timedelta(hours=h / 2),
                         end=T1 + timedelta(hours=(h + 1) / 2), idle_s=600.0,
                         uncertainty_j=None if h % 2 else 50.0)
            for h in range(5) for run in ("r1", "r2") for dev in ("gpu:0", "cpu:0")]
    out += [lambda led: led.end_run("r1", T1 + timedelta(hours=3)),
            lambda led: led.end_run("r2", T1 + timedelta(hours=3), "interrupted")]
    return out


def _in_zone(url: str, zone: str) -> str:
    """``url`` with its sessions' time zone set to ``zone`` (as a server or user default might)."""
    u = sa.engine.make_url(url)
    options = f"{u.query.get('options', '')} -ctimezone={zone}".strip()
    return u.update_query_dict({"options": options}).render_as_string(hide_password=False)


@pytest.fixture
def both(postgres_url, tmp_path, monkeypatch):
    """The same records in a SQLite file and in PostgreSQL, whose sessions run in a time zone
    45 minutes off the hour and 13 hours off UTC: (sqlite path, postgres url)."""
    monkeypatch.setenv("GREENMAAS_TENANT_KEY", "team-key")
    pg = _in_zone(postgres_url, "Pacific/Chatham")
    lite = str(tmp_path / "ledger.db")
    for target in (lite, pg):
        with Ledger.open(target) as led:
            led.write(_records(led.pseudonymise))
    with Ledger.open(pg) as led, led.read() as conn:
        assert conn.execute(sa.text("SHOW TimeZone")).scalar() == "Pacific/Chatham"
    return lite, pg


def _summaries(target, **kw):
    s = summary(target, **kw)
    return {name: getattr(s, name) for name in ("rows", "sources", "methods", "period", "groups", "notes", "priced")}


@pytest.mark.parametrize("accounting", [None, False])
def test_every_report_is_the_same_on_both_backends(both, accounting):
    lite, pg = both
    for by in GROUPS:
        reference = _summaries(lite, by=by, accounting=accounting)
        assert reference["rows"], by
        same(_summaries(pg, by=by, accounting=accounting), reference, f"{by}")
        same(_summaries(pg, by=by, accounting=accounting, in_sql=False), reference, f"{by}, span by span")
    since, until = T1 + timedelta(minutes=50), T1 + timedelta(hours=1, minutes=10)
    same(_summaries(pg, by="day", since=since, until=until, model="llama", accounting=accounting),
          _summaries(lite, by="day", since=since, until=until, model="llama", accounting=accounting), "filtered")
    days = [r["group"] for r in summary(pg, by="day", accounting=accounting).rows]
    assert days[:2] == ["2024-05-01", "2024-05-02"]  # UTC dates, not the session's


def test_cli_listings_and_frames_are_the_same_on_both_backends(both):
    lite, pg = both
    runner = CliRunner()
    for args in (["report", "--by", "model"], ["report", "--by", "tenant", "--location", "SE"],
                 ["report", "--by", "day", "--location", "FR"], ["runs"]):
        out = []
        for target in (lite, pg):
            result = runner.invoke(cli, [*args, "--ledger", target, "--format", "json"])
            assert result.exit_code == 0, result.output
            out.append(json.loads(result.stdout))
        same(out[1], out[0], " ".join(args))
    same(listings.totals(pg), listings.totals(lite), "totals")
    same(listings.list_runs(pg), listings.list_runs(lite), "runs")
    for table in TABLES:
        frames = [read_ledger(target, table) for target in (lite, pg)]
        for df in frames:
            for col in ("attrs", "config", "devices"):
                if col in df:
                    df[col] = df[col].map(repr)
        keys = {"spans": ["span_id"], "span_devices": ["span_id", "device"], "runs": ["run_id"]}.get(table)
        if keys:  # rows with equal sort keys come back in either order
            frames = [df.sort_values(keys, kind="stable").reset_index(drop=True) for df in frames]
        pd.testing.assert_frame_equal(frames[1], frames[0], check_exact=False, rtol=1e-12, obj=table)
    assert str(read_ledger(pg)["start"].dt.tz) == "UTC"


def test_non_finite_json_is_stored_as_null_not_refused(url):
    """PostgreSQL takes strict JSON only: a NaN loss in a span's attributes (or a run's config)
    is stored as null rather than the span, or the whole run, being refused."""
    nan, inf = float("nan"), float("inf")
    with Ledger.open(url) as led:
        led.start_run(RunRecord("r1", "node", 1, T1, config={"lr": nan, "ok": 1.5}))
        led.write_spans([
            SpanRecord("s1", "r1", "step", T1, T1 + timedelta(seconds=1), 1.0, attrs={"loss": nan, "hist": [1.0, inf]},
                       devices=[DeviceEnergy("gpu:0", 3.0, "counter", 3.0)]),
            SpanRecord("s2", "r1", "step", T1, T1 + timedelta(seconds=1), 1.0, attrs={"loss": -inf, "n": (1, 2)},
                       devices=[DeviceEnergy("gpu:0", 3.0, "counter", 3.0)]),
        ])
    spans = read_ledger(url).set_index("span_id")
    assert spans.loc["s1", "attrs"] == {"loss": None, "hist": [1.0, None]}
    assert spans.loc["s2", "attrs"] == {"loss": None, "n": [1, 2]}
    assert read_ledger(url, "runs")["config"].tolist() == [{"lr": None, "ok": 1.5}]


# ------------------------------------------------------------------------------------- the writer


def _spans(*ids, run_id="r1"):
    return [SpanRecord(i, run_id, "step", T1, T1 + timedelta(seconds=1), 1.0,
                       devices=[DeviceEnergy("gpu:0", 2.0, "counter", 2.0)]) for i in ids]


def test_the_writer_loses_only_the_records_postgresql_refuses(url):
    """A refused record aborts PostgreSQL's whole transaction; the writer writes that batch again
    record by record, so only the refused ones are lost (a duplicate id, a span of an unknown run)."""
    with Ledger.open(url) as led:
        led.start_run(RunRecord("r1", "node", 1, T1))
        led.write_spans(_spans("dup"))
        with LedgerWriter(led, flush_interval_s=60, retry_delay_s=0.001) as w:
            for r in [*_spans("a", "dup", "b"), *_spans("orphan", run_id="nope"), *_spans("c")]:
                w.submit(r)
            assert w.flush(timeout=30)
        assert w.stats["written"] == 3 and w.stats["dropped"] == 2
        messages = " ".join(m for _, m in w.errors)
        assert "duplicate key" in messages and "foreign key" in messages
    assert sorted(read_ledger(url)["span_id"]) == ["a", "b", "c", "dup"]


def test_the_writer_reconnects_when_the_server_drops_its_connection(url):
    """A connection the server ends (a restart, an idle timeout, an administrator) is replaced
    and the batch written again: nothing is lost and nothing is reported."""
    u = sa.engine.make_url(url)
    name = u.query["options"].split("=")[-1]  # the test's schema: unique, so its connections are ours
    url = u.update_query_dict({"application_name": name}).render_as_string(hide_password=False)
    with Ledger.open(url) as led:
        with LedgerWriter(led, flush_interval_s=0.01, retry_delay_s=0.05) as w:
            w.submit(RunRecord("r1", "node", 1, T1))
            for r in _spans(*(f"a{i}" for i in range(50))):
                w.submit(r)
            assert w.flush(timeout=30)
            admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
            with admin.begin() as conn:
                query = sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE application_name = :name AND pid <> pg_backend_pid()")
                assert conn.execute(query, {"name": name}).scalar() >= 1
            admin.dispose()
            for r in _spans(*(f"b{i}" for i in range(50))):
                w.submit(r)
            assert w.flush(timeout=30)
        assert w.errors == [] and w.stats["written"] == 101
    assert len(read_ledger(url)) == 100


def test_long_names_models_and_request_ids_are_stored(url):
    """PostgreSQL enforces column lengths: names users give are text there, stored whole."""
    long = "x" * 1000
    with Ledger.open(url) as led:
        led.start_run(RunRecord("r1", "node", 1, datetime(2024, 5, 1, tzinfo=timezone.utc)))
        start = datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
        led.write_spans([SpanRecord("s1", "r1", "n" + long, start, start + timedelta(seconds=1), 1.0,
                                    model="m" + long, request_id="r" + long,
                                    devices=[DeviceEnergy("gpu:0", 5.0, "counter", 5.0)])])
    spans = read_ledger(url)
    assert spans["name"].tolist() == ["n" + long] and spans["model"].tolist() == ["m" + long]
    assert spans["request_id"].tolist() == ["r" + long]
    rows = {r["group"]: r for r in summary(url, by="model", accounting=False).rows}
    assert rows["m" + long]["energy_j"] == pytest.approx(5.0)
