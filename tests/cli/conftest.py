"""A small ledger for the CLI tests, built from records (no meter involved)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from greenmaas.ledger import Ledger
from greenmaas.records import DeviceEnergy, DeviceTotals, RunRecord, SpanRecord

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)


def _span(span_id, start, end, energy, self_j=None, **kw):
    return SpanRecord(
        span_id=span_id, run_id="r1", name=kw.pop("name", "step"),
        start=T0 + timedelta(seconds=start), end=T0 + timedelta(seconds=end), duration_s=end - start,
        devices=[DeviceEnergy("gpu:0", energy, "counter", energy if self_j is None else self_j)], **kw,
    )


@pytest.fixture
def ledger_path(tmp_path):
    path = tmp_path / "cli.db"
    with Ledger.open(path) as led:
        led.start_run(RunRecord("r1", "node-1", 4242, T0))
        led.write_spans([
            _span("e", 0, 100, 1000.0, 100.0, model="bert", phase="training", kind="epoch"),
            _span("s", 0, 50, 900.0, parent_id="e", model="bert", phase="training"),
            _span("q", 110, 120, 200.0, model="llama|7b", phase="inference", request_id="req-1"),
        ])
        led.write_device_totals([DeviceTotals("r1", "gpu:0", "counter", 1500.0, 1200.0, 300.0, start=T0)])
        led.end_run("r1", T0 + timedelta(seconds=200))
    return path


@pytest.fixture
def runner():
    return CliRunner()
