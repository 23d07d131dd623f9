"""The ledger on PostgreSQL. Runs when GREENMAAS_TEST_POSTGRES_URL names an empty database, e.g.
``postgresql+psycopg://user:pass@127.0.0.1/db`` (needs ``pip install greenmaas[postgres]``)."""

import os

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from greenmaas.analysis import read_ledger
from greenmaas.errors import LedgerError
from greenmaas.ledger.store import Ledger
from greenmaas.meter import Meter
from greenmaas.records import ReadRecord
from greenmaas.testing import FakeClock, StaticSource
from greenmaas_cli.main import cli

URL = os.environ.get("GREENMAAS_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not URL, reason="GREENMAAS_TEST_POSTGRES_URL not set")


@pytest.fixture
def url():
    engine = sa.create_engine(URL)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()
    return URL


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
    assert "from schema version 1 to 2" in result.stdout and "kept as" not in result.stdout
    assert version() == "2"
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
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
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

    from greenmaas.analysis import TABLES

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
