"""The span summaries the ledger keeps as it writes (greenmaas.ledger.summary): reports read from
them give what the span-by-span path gives, whatever order spans are written in, through however
many ledger objects, and they equal the summaries computed afresh from the spans in SQL."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from compare import same

from greenmaas.errors import LedgerError
from greenmaas.ledger import Ledger
from greenmaas.ledger import query as ledger_query
from greenmaas.ledger.models import SpanCrossing, SpanHour, SpanHourDevice, SpanNesting
from greenmaas.ledger.summary import rebuild
from greenmaas.ledger.writer import LedgerWriter
from greenmaas.records import DeviceEnergy, RunRecord, SpanRecord
from greenmaas.report import GROUPS, summary

T0 = datetime(2024, 5, 1, 6, 40, tzinfo=timezone.utc)
DEVICES = [{"id": "gpu:0", "kind": "gpu", "name": "H100"}, {"id": "gpu:1", "kind": "gpu", "name": "H100"},
           {"id": "cpu:0", "kind": "cpu", "name": "Xeon"}]
ACCOUNTING = {"location": "FR", "tariff": "0.3EUR/kWh@08-20,0.1EUR/kWh", "hardware_prices": "gpu=2EUR/h"}


def _trees(rng: random.Random, run_id: str, roots: int) -> list[SpanRecord]:
    """Span trees in the order they finish (children before parents): epochs of steps with
    forward passes, requests with decode children and batch shares linked to them, rollups,
    spans crossing hours, spans with nothing measured, with and without ± J."""
    out: list[SpanRecord] = []
    counter = iter(range(10**9))

    def make(kind, name, start_s, dur_s, parent, **kw):
        sid = f"{run_id}-{next(counter)}"
        start = T0 + timedelta(seconds=start_s)
        if rng.random() < 0.05:
            devices = [DeviceEnergy("gpu:1", 0.0, "unmeasurable")]
        else:
            devices = []
            for dev in rng.sample(["gpu:0", "gpu:1", "cpu:0"], rng.randint(1, 2)):
                energy = rng.uniform(1, 500)
                u = None if rng.random() < 0.2 else rng.uniform(0, 20)
                devices.append(DeviceEnergy(dev, energy, rng.choice(["counter", "power", "estimate"]),
                                            energy * rng.uniform(0.2, 1.0), rng.uniform(0, dur_s), 0.0, u))
        return SpanRecord(
            span_id=sid, run_id=run_id, name=name, kind=kind, start=start, end=start + timedelta(seconds=dur_s),
            duration_s=dur_s, parent_id=parent, devices=devices, count=kw.pop("count", 1), **kw)

    for _ in range(roots):
        t = rng.uniform(0, 9 * 3600)
        model = rng.choice(["llama", "bert", "", None])
        tenant = rng.choice([None, "t-0123456789abcdef", "t-fedcba9876543210"])
        if rng.random() < 0.5:  # an epoch of steps, each with forward passes
            dur = rng.choice([120.0, 900.0, 5000.0])
            epoch = make("epoch", "epoch", t, dur, None, model=model, phase="training")
            for k in range(rng.randint(0, 4)):
                st = t + k * dur / 5
                step = make("step", "step", st, dur / 6, epoch.span_id, model=model, phase="training",
                            count=rng.choice([1, 1, 1, 40]))
                for f in range(rng.randint(0, 2)):
                    out.append(make("forward", "forward", st + f, 0.5, step.span_id,
                                    model=rng.choice([model, "other"]), phase="training"))
                out.append(step)
            out.append(epoch)
        else:  # a request with a decode child and batch shares linked to it
            dur = rng.uniform(0.5, 2400.0)
            request = make("request", "generate", t, dur, None, model=model, phase="inference", tenant=tenant,
                           request_id=f"req-{t:.3f}")
            children = []
            if rng.random() < 0.6:
                children.append(make("span", "decode", t + 0.1, dur / 2, request.span_id, model=model,
                                     phase=rng.choice(["inference", None]), tenant=tenant))
            for b in range(rng.randint(0, 2)):
                batch = make("batch", "iteration", t + b, 0.3, None, model=model)
                share = make("share", rng.choice(["prefill", "decode"]), t + b, 0.3, batch.span_id,
                             model=model, link_id=request.span_id, tenant=tenant)
                children += [share, batch]
            out += children + [request]
    return out


def _orders(records, rng, order):
    if order == "finish":
        return list(records)
    if order == "start":
        return sorted(records, key=lambda r: (r.start, r.span_id))
    shuffled = list(records)
    rng.shuffle(shuffled)
    return shuffled


def _chunks(records, rng):
    i = 0
    while i < len(records):
        n = rng.randint(1, 60)
        yield records[i:i + n]
        i += n


def _write(path, records_by_run, rng, how):
    runs = [RunRecord(r, "node", 1, T0 - timedelta(hours=1), config={}, devices=DEVICES) for r in records_by_run]
    everything = [rec for recs in records_by_run.values() for rec in recs]
    if how == "one ledger":
        with Ledger.open(path) as led:
            for run in runs:
                led.start_run(run)
            for chunk in _chunks(everything, rng):
                led.write_spans(chunk)
    elif how == "a ledger per chunk":  # runs this object did not start: children looked up
        with Ledger.open(path) as led:
            for run in runs:
                led.start_run(run)
        for chunk in _chunks(everything, rng):
            with Ledger.open(path) as led:
                led.write_spans(chunk)
    else:  # the background writer, as a meter writes
        with Ledger.open(path) as led:
            writer = LedgerWriter(led, max_batch=37)
            for run in runs:
                writer.submit(run)
            for rec in everything:
                writer.submit(rec)
            writer.flush()
            writer.close()


def _close(a, b, where):
    same(a, b, where, abs_tol=1e-7)


def _agree(path, **kw):
    fast, reference = summary(path, **kw), summary(path, in_sql=False, **kw)
    for name in ("rows", "methods", "period", "groups", "notes"):
        _close(getattr(fast, name), getattr(reference, name), f"{kw}.{name}")


def _tables(path) -> dict:
    """The summary tables' rows, keyed by their key, sums rounded against float order."""
    with Ledger.open(path, readonly=True) as led, led.read() as conn:
        return _read_tables(conn)


def _read_tables(conn) -> dict:
    out = {}
    for model in (SpanHour, SpanHourDevice, SpanNesting):
        table = model.__table__
        key = [c.name for c in table.primary_key.columns]
        rows = {}
        for r in conn.execute(select(table)).mappings():
            rows[tuple(r[k] for k in key)] = {k: v for k, v in r.items() if k not in key}
        out[table.name] = rows
    c = SpanCrossing.__table__
    out["span_crossings"] = sorted(tuple(r) for r in conn.execute(
        select(c.c.run_id, c.c.hour, c.c.method, c.c.kind, c.c.model, c.c.phase, c.c.tenant, c.c.name, c.c.start,
               c.c.end, c.c.energy_j)))
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One ledger per write order and way of writing, with the same spans."""
    rng = random.Random(7)
    records = {run: _trees(rng, run, 70) for run in ("r1", "r2")}
    out = {}
    for order in ("finish", "start", "shuffled"):
        for how in ("one ledger", "a ledger per chunk", "writer"):
            if order == "shuffled" and how == "writer":
                continue
            path = tmp_path_factory.mktemp("summary") / "l.db"
            ordered = {run: _orders(recs, random.Random(order), order) for run, recs in records.items()}
            _write(path, ordered, random.Random(3), how)
            out[order, how] = path
    return out


@pytest.mark.parametrize("by", [g for g in GROUPS if g != "request"])
def test_reports_from_summaries_equal_the_span_by_span_path(written, by):
    for (order, how), path in written.items():
        _agree(path, by=by, accounting=ACCOUNTING)


@pytest.mark.parametrize("by", ["model", "phase", "day", "name"])
def test_whole_hour_filters_are_read_from_summaries_and_agree(written, by, monkeypatch):
    used = []
    real = ledger_query.summary_spans
    monkeypatch.setattr(ledger_query, "summary_spans", lambda *a, **k: used.append(1) or real(*a, **k))
    path = written["finish", "one ledger"]
    for since, until in ((T0.replace(minute=0) + timedelta(hours=2), T0.replace(minute=0) + timedelta(hours=5)),
                         (T0.replace(minute=0) + timedelta(hours=1), None), (None, "2024-05-01T10:00Z")):
        _agree(path, by=by, since=since, until=until, accounting=ACCOUNTING)
    _agree(path, by=by, model="llama", accounting=False)
    _agree(path, by=by, model="llama", since=T0.replace(minute=0) + timedelta(hours=3), accounting=ACCOUNTING)
    assert used  # the summaries answered
    before = len(used)
    _agree(path, by=by, since=T0 + timedelta(minutes=7), accounting=False)  # not on an hour: the spans answer
    assert len(used) == before


def test_every_way_of_writing_gives_the_summaries_sql_computes_afresh(written):
    for (order, how), path in written.items():
        kept = _tables(path)
        with Ledger.open(path) as led, led.transaction(), led.read() as conn:
            rebuild(conn)
            afresh = _read_tables(conn)
        assert kept["span_crossings"] == afresh["span_crossings"], (order, how)
        for name in ("span_hours", "span_hour_devices", "span_nesting"):
            assert set(kept[name]) == set(afresh[name]), (order, how, name, set(kept[name]) ^ set(afresh[name]))
            _close(kept[name], afresh[name], f"{order}/{how}/{name}")


def test_a_failed_write_leaves_the_summaries_as_they_were(tmp_path):
    path = tmp_path / "l.db"
    rng = random.Random(11)
    records = _trees(rng, "r1", 40)
    with Ledger.open(path) as led:
        led.start_run(RunRecord("r1", "node", 1, T0, config={}, devices=DEVICES))
        half = len(records) // 2
        led.write_spans(records[:half])
        # The second half fails on a span stored already: nothing of it is kept, in the spans or
        # in what the summaries remember; written again without it, all is as if it never failed.
        with pytest.raises(LedgerError):
            led.write_spans(records[half:] + [records[0]])
        led.write_spans(records[half:])
    _agree(path, by="model", accounting=False)
    _agree(path, by="name", accounting=False)
    kept = _tables(path)
    with Ledger.open(path) as led, led.transaction(), led.read() as conn:
        rebuild(conn)
        afresh = _read_tables(conn)
    for name in ("span_hours", "span_nesting"):
        _close(kept[name], afresh[name], name)


def test_a_report_reads_summaries_not_spans(written, monkeypatch):
    """The report of a whole ledger never runs the span-level roll-ups."""
    def refuse(*a, **k):
        raise AssertionError("read the spans")

    for name in ("rollup_spans", "rollup_devices", "rollup_crossing"):
        monkeypatch.setattr(ledger_query, name, refuse)
    for by in ("model", "phase", "day", "tenant", "run", "name"):
        summary(written["finish", "one ledger"], by=by, accounting=ACCOUNTING)


@pytest.mark.postgres
def test_postgresql_keeps_the_same_summaries(postgres_url):
    rng = random.Random(5)
    records = {run: _orders(_trees(rng, run, 40), random.Random(1), "shuffled") for run in ("r1", "r2")}
    _write(postgres_url, records, random.Random(2), "a ledger per chunk")
    for by in ("model", "phase", "day", "tenant"):
        _agree(postgres_url, by=by, accounting=ACCOUNTING)
    kept = _tables(postgres_url)
    with Ledger.open(postgres_url) as led, led.transaction(), led.read() as conn:
        rebuild(conn)
        afresh = _read_tables(conn)
    assert kept["span_crossings"] == afresh["span_crossings"]
    for name in ("span_hours", "span_hour_devices", "span_nesting"):
        assert set(kept[name]) == set(afresh[name]), name
        _close(kept[name], afresh[name], name)


@pytest.mark.parametrize("by", ["model", "phase", "run", "tenant"])
def test_one_run_alone_agrees_and_leaves_the_other_out(written, by):
    path = written["finish", "one ledger"]
    for run in ("r1", "r2"):
        _agree(path, by=by, run=run, accounting=ACCOUNTING)
        _agree(path, by=by, run=run, since=T0.replace(minute=0) + timedelta(hours=2), accounting=False)
    rows = summary(path, by="run", run="r2", accounting=False).rows
    assert [r["group"] for r in rows] == ["r2"]
    assert summary(path, by="model", run="latest").run in ("r1", "r2")


def test_request_rows_page_by_page_equal_the_report_by_request(written):
    from greenmaas.report import IDLE, NONE, request_rows

    path = written["finish", "one ledger"]
    for kw in ({}, {"run": "r2"}, {"since": T0.replace(minute=0) + timedelta(hours=2)}, {"model": "llama"}):
        reference = summary(path, by="request", accounting=ACCOUNTING, **kw).rows
        streamed = list(request_rows(path, accounting=ACCOUNTING, page=7, **kw))
        groups = [r["group"] for r in streamed]
        tail = [g for g in groups if g in (NONE, IDLE)]
        assert groups[: len(groups) - len(tail)] == sorted(groups[: len(groups) - len(tail)])
        assert tail == [g for g in (NONE, IDLE) if g in {r["group"] for r in reference}]
        _close({r["group"]: r for r in streamed}, {r["group"]: r for r in reference}, str(kw))
