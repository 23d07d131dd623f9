"""A schema-1 ledger, made as greenmaas 0.1 (schema 1) made it: its tables, its meta rows, a run
with spans, span devices, samples and device totals. Raw DDL and inserts, so that the fixture does
not change when today's models do.

``TABLES`` is the DDL SQLAlchemy emitted for the schema-1 models, with the two types that differ
between dialects left as ``{timestamp}`` and ``{serial}``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
SALT = "ab" * 32

TABLES = [
    """CREATE TABLE meta (
        "key" VARCHAR(64) NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY ("key")
    )""",
    """CREATE TABLE runs (
        run_id VARCHAR(64) NOT NULL,
        host VARCHAR(255) NOT NULL,
        pid INTEGER NOT NULL,
        start {timestamp} NOT NULL,
        "end" {timestamp},
        status VARCHAR(16) NOT NULL,
        config JSON NOT NULL,
        devices JSON NOT NULL,
        greenmaas_version VARCHAR(32),
        PRIMARY KEY (run_id)
    )""",
    """CREATE TABLE spans (
        span_id VARCHAR(64) NOT NULL,
        run_id VARCHAR(64) NOT NULL,
        parent_id VARCHAR(64),
        kind VARCHAR(32) NOT NULL,
        name VARCHAR(255) NOT NULL,
        model VARCHAR(255),
        phase VARCHAR(32),
        request_id VARCHAR(255),
        tenant VARCHAR(64),
        start {timestamp} NOT NULL,
        "end" {timestamp} NOT NULL,
        duration_s FLOAT NOT NULL,
        weight FLOAT NOT NULL,
        tokens_in INTEGER,
        tokens_out INTEGER,
        items INTEGER,
        status VARCHAR(16) NOT NULL,
        attrs JSON NOT NULL,
        energy_j FLOAT,
        self_energy_j FLOAT,
        method VARCHAR(16) NOT NULL,
        carbon_g FLOAT,
        carbon_market_g FLOAT,
        cost FLOAT,
        currency VARCHAR(8),
        PRIMARY KEY (span_id),
        FOREIGN KEY(run_id) REFERENCES runs (run_id)
    )""",
    'CREATE INDEX ix_spans_end ON spans ("end")',
    "CREATE INDEX ix_spans_run_id ON spans (run_id)",
    "CREATE INDEX ix_spans_start ON spans (start)",
    """CREATE TABLE samples (
        id {serial} NOT NULL,
        run_id VARCHAR(64) NOT NULL,
        device VARCHAR(64) NOT NULL,
        t {timestamp} NOT NULL,
        energy_j FLOAT,
        power_w FLOAT,
        method VARCHAR(16) NOT NULL,
        PRIMARY KEY (id),
        FOREIGN KEY(run_id) REFERENCES runs (run_id)
    )""",
    "CREATE INDEX ix_samples_run_device_t ON samples (run_id, device, t)",
    """CREATE TABLE device_totals (
        id {serial} NOT NULL,
        run_id VARCHAR(64) NOT NULL,
        device VARCHAR(64) NOT NULL,
        method VARCHAR(16) NOT NULL,
        start {timestamp},
        "end" {timestamp},
        total_j FLOAT,
        attributed_j FLOAT,
        idle_j FLOAT,
        gap_s FLOAT NOT NULL,
        idle_s FLOAT NOT NULL,
        PRIMARY KEY (id),
        FOREIGN KEY(run_id) REFERENCES runs (run_id)
    )""",
    "CREATE INDEX ix_device_totals_run_id ON device_totals (run_id)",
    """CREATE TABLE span_devices (
        span_id VARCHAR(64) NOT NULL,
        device VARCHAR(64) NOT NULL,
        energy_j FLOAT,
        self_j FLOAT,
        method VARCHAR(16) NOT NULL,
        gap_s FLOAT NOT NULL,
        self_device_s FLOAT NOT NULL,
        PRIMARY KEY (span_id, device),
        FOREIGN KEY(span_id) REFERENCES spans (span_id) ON DELETE CASCADE
    )""",
]
TYPES = {
    "sqlite": {"timestamp": "DATETIME", "serial": "INTEGER"},
    "postgresql": {"timestamp": "TIMESTAMP WITH TIME ZONE", "serial": "SERIAL"},
}

#: The spans stored: (span_id, parent_id, start s, end s, energy_j, self_energy_j, model).
SPANS = [
    ("e", None, 0.0, 100.0, 1000.0, 100.0, "bert"),
    ("s", "e", 0.0, 50.0, 900.0, 900.0, "bert"),
    ("q", None, 110.0, 120.0, 200.0, 200.0, "llama"),
]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def create(conn: sa.Connection) -> None:
    """Make ``conn``'s (empty) database a schema-1 ledger holding one run, in its transaction."""
    dialect = conn.dialect.name
    types = TYPES[dialect]

    def when(dt: datetime):  # as each dialect's DATETIME stored it: SQLite naive UTC text
        return dt.strftime("%Y-%m-%d %H:%M:%S.%f") if dialect == "sqlite" else dt

    for ddl in TABLES:
        conn.execute(sa.text(ddl.format(**types)))
    meta = {"application": "greenmaas", "schema_version": "1", "created_at": T0.isoformat(),
            "greenmaas_version": "0.1.0", "tenant_salt": SALT}
    conn.execute(sa.text("INSERT INTO meta (key, value) VALUES (:k, :v)"),
                 [{"k": k, "v": v} for k, v in meta.items()])
    conn.execute(
        sa.text('INSERT INTO runs (run_id, host, pid, start, "end", status, config, devices, '
                "greenmaas_version) VALUES ('r1', 'node-1', 4242, :start, :end, 'finished', :config, "
                ":devices, '0.1.0')"),
        {"start": when(T0), "end": when(at(200)), "config": json.dumps({"sample_interval_s": 0.1}),
         "devices": json.dumps([{"id": "gpu:0", "kind": "gpu", "method": "counter"}])},
    )
    for span_id, parent, start, end, energy, self_j, model in SPANS:
        conn.execute(
            sa.text('INSERT INTO spans (span_id, run_id, parent_id, kind, name, model, start, "end", '
                    "duration_s, weight, status, attrs, energy_j, self_energy_j, method) VALUES "
                    "(:id, 'r1', :parent, 'span', 'step', :model, :start, :end, :d, 1.0, 'ok', '{}', "
                    ":e, :self_j, 'counter')"),
            {"id": span_id, "parent": parent, "model": model, "start": when(at(start)),
             "end": when(at(end)), "d": end - start, "e": energy, "self_j": self_j},
        )
        conn.execute(
            sa.text("INSERT INTO span_devices (span_id, device, energy_j, self_j, method, gap_s, "
                    "self_device_s) VALUES (:id, 'gpu:0', :e, :self_j, 'counter', 0.0, :d)"),
            {"id": span_id, "e": energy, "self_j": self_j, "d": end - start},
        )
    conn.execute(
        sa.text("INSERT INTO samples (run_id, device, t, energy_j, power_w, method) "
                "VALUES ('r1', 'gpu:0', :t, 30.0, 300.0, 'counter')"),
        {"t": when(at(1))},
    )
    conn.execute(
        sa.text('INSERT INTO device_totals (run_id, device, method, start, "end", total_j, attributed_j, '
                "idle_j, gap_s, idle_s) VALUES ('r1', 'gpu:0', 'counter', :start, :end, 1500.0, 1200.0, "
                "300.0, 0.0, 20.0)"),
        {"start": when(T0), "end": when(at(200))},
    )


def create_sqlite(path) -> None:
    """A schema-1 SQLite ledger file at ``path``, in WAL mode as greenmaas 0.1 left its ledgers."""
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        create(conn)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode = WAL")
    engine.dispose()


def schema(url) -> dict:
    """Every table's columns (name, type, nullable, in order), keys and indexes, as the database
    reports them: an upgraded ledger must look like a new one."""
    engine = sa.create_engine(url)
    try:
        insp = sa.inspect(engine)
        out = {}
        for table in sorted(insp.get_table_names()):
            out[table] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
                "pk": insp.get_pk_constraint(table)["constrained_columns"],
                "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                              for f in insp.get_foreign_keys(table)),
                "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                                  for i in insp.get_indexes(table)),
            }
        return out
    finally:
        engine.dispose()
