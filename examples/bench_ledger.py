"""Ledger benchmark: report time and memory at 100,000 and 1,000,000 spans, ingest rate, bytes/span.

Writes ``reports/ledger.md``. Regenerate with::

    make ledger-bench     # or: .venv/bin/python examples/bench_ledger.py

1. Builds SQLite ledgers of realistic spans through :meth:`Ledger.write` (the meter's own bulk
   path): requests of three models by eight tenants (pseudonymised by the ledger), a fifth of them
   with a child decode span, training epochs with steps, one device each, spread over three days,
   with one device-totals window per device and hour (the ``(idle)`` row). A time-of-use tariff
   and an hourly intensity series are recorded as the run's accounting, so pricing is not trivial.
2. Times ``greenmaas report --by model|phase|day|tenant`` and ``--by request --format json`` as a
   user runs them (a subprocess: interpreter start and imports included), best of ``--repeat``,
   with the peak RSS of that process (``/usr/bin/time -v``, else ``getrusage`` of children).
3. Ingest: spans per second through the background :class:`LedgerWriter` (records made
   beforehand; from the first ``submit`` to ``flush`` returning), and bytes per span (file size
   over spans, device totals included).
4. PostgreSQL, when ``--postgres URL`` or ``$GREENMAAS_BENCH_POSTGRES_URL`` names a database
   (``postgresql+psycopg://user:pass@127.0.0.1/db``; the user needs CREATE on it): the same
   ingest, build and reports (``--postgres-sizes``, default 1,000,000 spans) in a schema of the
   benchmark's own, dropped afterwards (kept with ``--keep``), with the table sizes per span.

Everything but the ledger location is the same for both backends, so their rows compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from greenmaas.ledger import Ledger
from greenmaas.ledger.writer import LedgerWriter
from greenmaas.records import DeviceEnergy, DeviceTotals, RunRecord, SpanRecord

ROOT = Path(__file__).resolve().parent.parent
ENV_POSTGRES = "GREENMAAS_BENCH_POSTGRES_URL"
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
DAYS = 3
MODELS = ("llama-3-8b", "mistral-7b", "qwen-2-7b")
TENANTS = tuple(f"customer-{i}" for i in range(8))
DEVICES = ("gpu:0", "gpu:1", "gpu:2", "gpu:3")
GROUPINGS = ("model", "phase", "day", "tenant")
# Recorded accounting: hourly intensity series and a time-of-use tariff (as the meter stores them).
ACCOUNTING_OVERRIDES = {"tariff": "0.30EUR/kWh@08-20@mon-fri,0.15EUR/kWh", "pue": "1.2", "hardware_prices": "gpu=2.5EUR/h"}


def run_record(run_id: str) -> RunRecord:
    devices = [{"id": d, "kind": "gpu", "name": "NVIDIA H100", "method": "counter"} for d in DEVICES]
    return RunRecord(run_id, "bench-node", 1, T0, None, "finished", config={}, devices=devices)


def spans(n: int, run_id: str, seed: int = 1):
    """``n`` span records, yielded in chunks; about 4/5 requests (a fifth with a decode child)
    and 1/5 training steps under epochs, one device each."""
    rng = random.Random(seed)
    period_s = DAYS * 86400.0
    step = period_s / n
    chunk: list[SpanRecord] = []
    i = 0
    epoch = None
    while i < n:
        t = i * step
        start = T0 + timedelta(seconds=t)
        device = DEVICES[i % len(DEVICES)]
        u = rng.random()
        if u < 0.8:
            dur = rng.uniform(0.05, 2.0)
            energy = dur * rng.uniform(150, 450)
            model = MODELS[rng.randrange(len(MODELS))]
            rid = f"req-{i}"
            child = rng.random() < 0.2 and i + 1 < n
            child_self = energy * 0.6 if child else 0.0
            chunk.append(SpanRecord(
                span_id=f"s{i}", run_id=run_id, name="generate", start=start, end=start + timedelta(seconds=dur),
                duration_s=dur, kind="request", model=model, phase="inference", request_id=rid,
                tenant=TENANTS[rng.randrange(len(TENANTS))], tokens_in=rng.randrange(10, 500),
                tokens_out=rng.randrange(10, 800), start_mono=t, end_mono=t + dur,
                devices=[DeviceEnergy(device, energy, "counter", energy - child_self, dur * 0.5, 0.0, energy * 0.02)],
            ))
            i += 1
            if child:
                chunk.append(SpanRecord(
                    span_id=f"s{i}", run_id=run_id, name="decode", start=start + timedelta(seconds=dur * 0.3),
                    end=start + timedelta(seconds=dur), duration_s=dur * 0.7, kind="forward", model=model,
                    phase="inference", request_id=rid, parent_id=f"s{i - 1}", start_mono=t + dur * 0.3,
                    end_mono=t + dur,
                    devices=[DeviceEnergy(device, child_self, "counter", child_self, dur * 0.35, 0.0,
                                          child_self * 0.02)],
                ))
                i += 1
        else:
            if epoch is None or rng.random() < 0.01:
                epoch = f"s{i}"
                chunk.append(SpanRecord(
                    span_id=epoch, run_id=run_id, name="epoch", start=start, end=start + timedelta(seconds=step),
                    duration_s=step, kind="epoch", model="bert-large", phase="training",
                    devices=[DeviceEnergy(device, 50.0, "power", 5.0, 1.0, 0.0, 5.0)],
                ))
                i += 1
                continue
            dur = rng.uniform(0.1, 1.0)
            energy = dur * 300.0
            chunk.append(SpanRecord(
                span_id=f"s{i}", run_id=run_id, name="step", start=start, end=start + timedelta(seconds=dur),
                duration_s=dur, kind="step", model="bert-large", phase="training", parent_id=epoch, items=32,
                devices=[DeviceEnergy(device, energy, "power", energy, dur, 0.0, energy * 0.1)],
            ))
            i += 1
        if len(chunk) >= 20_000:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def device_totals(run_id: str) -> list[DeviceTotals]:
    out = []
    for h in range(DAYS * 24):
        start = T0 + timedelta(hours=h)
        for d in DEVICES:
            out.append(DeviceTotals(run_id, d, "counter", 200_000.0, 150_000.0, 50_000.0, start=start,
                                    end=start + timedelta(hours=1), idle_s=900.0, uncertainty_j=500.0))
    return out


def accounting_config(tmp: Path) -> dict:
    """The run's recorded accounting: hourly intensity CSV, a time-of-use tariff, PUE, GPU price."""
    from greenmaas.accounting.config import AccountingConfig, parse_setting

    csv = tmp / "intensity.csv"
    lines = ["timestamp,gco2_per_kwh"]
    for h in range(DAYS * 24 + 2):
        t = T0 + timedelta(hours=h)
        lines.append(f"{t.strftime('%Y-%m-%dT%H:%MZ')},{200 + 100 * ((h % 24) in range(8, 20))}")
    csv.write_text("\n".join(lines) + "\n")
    settings = {k: parse_setting(k, v) for k, v in ACCOUNTING_OVERRIDES.items()}
    settings["series"] = parse_setting("series", str(csv))
    return AccountingConfig(**settings).to_dict()


def build(target: Path | str, n: int, tmp: Path) -> float:
    """A ledger of ``n`` spans at ``target`` (a SQLite path, or the URL of an empty PostgreSQL
    schema); returns seconds taken."""
    if isinstance(target, Path) and target.exists():
        target.unlink()
    t = time.perf_counter()
    run = run_record("bench")
    run.config = {"accounting": accounting_config(tmp)}
    with Ledger.open(target) as led:
        led.write([run])
        for chunk in spans(n, "bench"):
            led.write(chunk)
        led.write_device_totals(device_totals("bench"))
        led.end_run("bench", T0 + timedelta(days=DAYS))
    return time.perf_counter() - t


def ingest_rate(target: Path | str, n: int) -> float:
    """Spans per second through the background writer (records made beforehand) into a new
    ledger at ``target`` (a SQLite path, removed afterwards, or an empty PostgreSQL schema)."""
    records = [r for chunk in spans(n, "ingest", seed=2) for r in chunk]
    with Ledger.open(target) as led:
        writer = LedgerWriter(led, max_batch=5000, max_queue=n + 10)
        writer.submit(run_record("ingest"))
        writer.flush()
        t = time.perf_counter()
        for r in records:
            writer.submit(r)
        writer.flush()
        elapsed = time.perf_counter() - t
        stats = writer.stats
        writer.close()
    if isinstance(target, Path):
        target.unlink()
    if stats.get("dropped"):
        print(f"  writer dropped records: {stats}", file=sys.stderr)
    return n / elapsed


class PostgresSchema:
    """A new schema in the database at ``base_url``, reached through the URL it gives
    (``options=-csearch_path=...``); dropped on exit unless ``keep``."""

    def __init__(self, base_url: str, name: str, keep: bool = False):
        from sqlalchemy.engine import make_url

        self.base = make_url(base_url)
        self.name = name
        self.keep = keep
        options = f"{self.base.query.get('options', '')} -csearch_path={name}".strip()
        self.url = self.base.update_query_dict({"options": options}).render_as_string(hide_password=False)

    def _execute(self, *statements) -> Any:
        """Run ``statements`` in one transaction; the last one's first value, if it has rows."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.base, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                for statement in statements:
                    result = conn.execute(statement)
                return result.scalar() if result.returns_rows else None
        finally:
            engine.dispose()

    def analyze(self) -> None:
        """Refresh the planner's statistics of the schema's tables, as autovacuum soon would."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("ANALYZE"))
        finally:
            engine.dispose()

    def reset(self) -> str:
        """Empty the schema (made if missing); returns its URL."""
        import sqlalchemy as sa

        self._execute(sa.schema.DropSchema(self.name, cascade=True, if_exists=True), sa.schema.CreateSchema(self.name))
        return self.url

    def bytes(self) -> int:
        """What the schema's tables take, indexes and TOAST included."""
        import sqlalchemy as sa

        from sqlalchemy.dialects.postgresql import REGCLASS

        tables = sa.table("pg_tables", sa.column("schemaname"), sa.column("tablename"))
        relation = sa.cast(sa.func.format("%I.%I", tables.c.schemaname, tables.c.tablename), REGCLASS)
        query = sa.select(sa.func.coalesce(sa.func.sum(sa.func.pg_total_relation_size(relation)), 0)).where(
            tables.c.schemaname == self.name)
        return int(self._execute(query))

    def server_version(self) -> str:
        import sqlalchemy as sa

        return str(self._execute(sa.select(sa.func.current_setting("server_version"))))

    def __enter__(self) -> PostgresSchema:
        self.reset()
        return self

    def __exit__(self, *exc) -> None:
        if not self.keep:
            import sqlalchemy as sa

            self._execute(sa.schema.DropSchema(self.name, cascade=True, if_exists=True))


def time_command(args: list[str], repeat: int) -> tuple[float, float, int]:
    """Best wall time (s), peak RSS (GB) and output bytes of ``greenmaas <args>`` as a subprocess."""
    exe = [sys.executable, "-m", "cli.main"] if not shutil.which("greenmaas") else [shutil.which("greenmaas")]
    greenmaas = ROOT / ".venv" / "bin" / "greenmaas"
    if greenmaas.exists():
        exe = [str(greenmaas)]
    gnu_time = Path("/usr/bin/time")
    best, rss_kb, size = float("inf"), 0, 0
    for _ in range(repeat):
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            cmd = ([str(gnu_time), "-v"] if gnu_time.exists() else []) + exe + args
            t = time.perf_counter()
            subprocess.run(cmd, stdout=out, stderr=err, check=True, cwd=ROOT)
            best = min(best, time.perf_counter() - t)
            size = out.tell()
            err.seek(0)
            m = re.search(rb"Maximum resident set size \(kbytes\): (\d+)", err.read())
            rss_kb = max(rss_kb, int(m.group(1)) if m else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return best, rss_kb / 1e6, size


_IN_PROCESS = (
    "import sys, time\n"
    "from greenmaas.report import summary\n"
    "import pandas, sqlalchemy\n"
    "t = time.perf_counter()\n"
    "summary(sys.argv[1], by=sys.argv[2], since=sys.argv[3] or None, until=sys.argv[4] or None)\n"
    "print(time.perf_counter() - t)\n"
)


def time_in_process(target: Path | str, by: str, since: str, until: str, repeat: int) -> float:
    """Best time (s) of the report's own work, ``summary()`` on a fresh interpreter with its imports
    done (opening the ledger included), in a subprocess."""
    best = float("inf")
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", _IN_PROCESS, str(target), by, since, until],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        best = min(best, float(out.stdout.strip().splitlines()[-1]))
    return best


def interpreter_floor(repeat: int) -> float:
    greenmaas = ROOT / ".venv" / "bin" / "greenmaas"
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([str(greenmaas), "report", "--help"], stdout=subprocess.DEVNULL, check=True)
        best = min(best, time.perf_counter() - t)
    return best


def measure(target: Path | str, n: int, args, size: Callable[[], int], built: float) -> dict:
    """Time the reports on the ledger of ``n`` spans at ``target``, built in ``built`` seconds."""
    nbytes = size()
    row = {"spans": n, "build_s": built, "bytes_per_span": nbytes / n, "file_mb": nbytes / 1e6, "reports": {}}
    print(f"{n:,} spans: built in {built:.1f} s, {nbytes / n:.0f} bytes/span", flush=True)
    day = (T0 + timedelta(days=1)).date().isoformat()
    cases = [(by, "", "") for by in GROUPINGS] + [("model", day, day)]
    for by, since, until in cases:
        window = ["--since", since, "--until", until] if since else []
        name = f"--by {by}" + (f" --since {since} --until {until}" if since else "")
        t, rss, size = time_command(["report", "--ledger", str(target), "--by", by, *window], args.repeat)
        row["reports"][name] = (t, rss, size, time_in_process(target, by, since, until, args.repeat))
        print(f"  {name}: {row['reports'][name]}", flush=True)
    if n <= args.request_json_max:
        cmd = ["report", "--ledger", str(target), "--by", "request", "--format", "json"]
        row["reports"]["--by request --format json"] = (*time_command(cmd, max(1, args.repeat - 1)), None)
        print(f"  --by request json: {row['reports']['--by request --format json']}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="span counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ingest", type=int, default=200_000, help="spans written through the writer")
    ap.add_argument("--request-json-max", type=int, default=1_000_000, metavar="N",
                    help="time `--by request --format json` on ledgers of up to N spans only (its target is at 1 M)")
    ap.add_argument("--postgres", metavar="URL", default=os.environ.get(ENV_POSTGRES) or None,
                    help=f"also benchmark PostgreSQL in this database (default ${ENV_POSTGRES})")
    ap.add_argument("--postgres-sizes", default="1000000", help="span counts on PostgreSQL, comma-separated")
    ap.add_argument("--out", default=str(ROOT / "reports" / "ledger.md"))
    ap.add_argument("--keep", metavar="DIR", help="build (and keep) the ledgers here (and the PostgreSQL schemas)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    pg_sizes = [int(s) for s in args.postgres_sizes.split(",") if s] if args.postgres else []

    tmp = Path(args.keep or tempfile.mkdtemp(prefix="greenmaas-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    results, pg_results, pg = [], [], {}
    try:
        rate = ingest_rate(tmp / "ingest.db", args.ingest)
        print(f"ingest: {rate:,.0f} spans/s", flush=True)
        floor = interpreter_floor(args.repeat)
        for n in sizes:
            path = tmp / f"ledger-{n}.db"
            built = build(path, n, tmp) if not path.exists() or not args.keep else 0.0
            results.append(measure(path, n, args, lambda: path.stat().st_size, built))
        if args.postgres:
            with PostgresSchema(args.postgres, "greenmaas_bench_ingest") as schema:
                pg["version"] = schema.server_version()
                pg["rate"] = ingest_rate(schema.url, args.ingest)
            print(f"PostgreSQL {pg['version']} ingest: {pg['rate']:,.0f} spans/s", flush=True)
            for n in pg_sizes:
                with PostgresSchema(args.postgres, f"greenmaas_bench_{n}", keep=bool(args.keep)) as schema:
                    built = build(schema.url, n, tmp)
                    schema.analyze()
                    pg_results.append(measure(schema.url, n, args, schema.bytes, built))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    write_report(Path(args.out), results, rate, floor, args, pg_results, pg)


#: A section of the report written by hand (what the numbers mean against the targets): kept
#: when the tables above it are regenerated.
KEPT_SECTION = "## Targets"


def write_report(out: Path, results: list[dict], rate: float, floor: float, args, pg_results: list[dict],
                 pg: dict) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Ledger benchmark: reports and ingest at scale",
        "",
        "Regenerate with `make ledger-bench` (or `.venv/bin/python examples/bench_ledger.py`; with "
        f"`{ENV_POSTGRES}=postgresql+psycopg://...` set, PostgreSQL too). Regenerating rewrites "
        f"everything above the `{KEPT_SECTION}` section.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (load average "
        f"{load} when the run ended: shared with other jobs, so times are noisy upper bounds), Python "
        f"{platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}"
        + (f", PostgreSQL {pg['version']} on the same machine (127.0.0.1)" if pg else "")
        + f". Best of {args.repeat} runs each (request JSON: best of {max(1, args.repeat - 1)}).",
        "",
        "Ledgers: built through `Ledger.write`; ~80 % requests (3 models, 8 pseudonymised "
        "tenants, a fifth with a child decode span), ~20 % training steps under epochs; one device "
        "each (4 GPUs); 3 days; one device-totals window per device and hour. The run's recorded "
        "accounting: an hourly intensity CSV, a time-of-use tariff, PUE 1.2, a GPU hourly price.",
        "",
        "Times are wall time of `greenmaas report ...` as a subprocess (interpreter start and imports "
        f"included: `greenmaas report --help` alone takes {floor:.2f} s here); peak RSS of that "
        "process from `/usr/bin/time -v`. *Report work*: `summary()` alone, timed on a fresh "
        "interpreter once its imports are done (opening the ledger included).",
        "",
        "| backend | spans | command | time (s) | report work (s) | peak RSS (GB) | output (MB) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    backends = [("SQLite", results), ("PostgreSQL", pg_results)]
    for backend, rows in backends:
        for r in rows:
            for cmd, (t, rss, size, work) in r["reports"].items():
                lines.append(f"| {backend} | {r['spans']:,} | `greenmaas report {cmd}` | {t:.2f} | "
                             f"{'' if work is None else f'{work:.2f}'} | {rss:.2f} | {size / 1e6:.1f} |")
    lines += [
        "",
        "| backend | spans | stored (MB) | bytes per span | build via `Ledger.write` (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for backend, rows in backends:
        for r in rows:
            lines.append(f"| {backend} | {r['spans']:,} | {r['file_mb']:.0f} | {r['bytes_per_span']:.0f} | "
                         f"{r['build_s']:.1f} |")
    lines += [
        "",
        "Stored: SQLite, the file's size; PostgreSQL, the schema's tables with their indexes and "
        "TOAST (`pg_total_relation_size`), after `ANALYZE` (run once the ledger is built, as "
        "autovacuum soon would).",
        "",
        f"Ingest through the background `LedgerWriter` (max_batch 5000, {args.ingest:,} spans made "
        f"beforehand, first submit to flush): **{rate:,.0f} spans/s** into SQLite"
        + (f", **{pg['rate']:,.0f} spans/s** into PostgreSQL." if pg else "."),
        "",
    ]
    kept = ""
    if out.exists():
        old = out.read_text()
        at = old.find(f"\n{KEPT_SECTION}\n")
        if at >= 0:
            kept = old[at + 1 :]
    out.write_text("\n".join(lines) + ("\n" + kept if kept else ""))
    print(f"wrote {out}")
    print(json.dumps({"sqlite": results, "postgresql": pg_results}, indent=1, default=str)[:2000])


if __name__ == "__main__":
    main()
