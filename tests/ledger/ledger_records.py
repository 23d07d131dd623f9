"""Records for the ledger tests, built directly (no meter involved)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from greenmaas.records import DeviceEnergy, DeviceTotals, RunRecord, SampleRecord, SpanRecord

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(run_id: str = "r1", **kw) -> RunRecord:
    kw.setdefault("config", {"sample_interval_s": 0.1})
    kw.setdefault("devices", [{"id": "gpu:0", "kind": "gpu", "name": "H100", "method": "counter"}])
    return RunRecord(run_id=run_id, host="node-1", pid=4242, start=T0, **kw)


def span(span_id: str, start: float = 0.0, end: float = 1.0, *, energy: float = 10.0,
         self_j: float | None = None, run_id: str = "r1", method: str = "counter",
         device_s: float | None = None, device: str = "gpu:0", **kw) -> SpanRecord:
    """A span on one device; ``device_s`` is its own device time (default: its whole duration)."""
    return SpanRecord(
        span_id=span_id,
        run_id=run_id,
        name=kw.pop("name", "step"),
        start=at(start),
        end=at(end),
        duration_s=end - start,
        devices=[DeviceEnergy(device, energy, method, energy if self_j is None else self_j,
                              self_device_s=(end - start) if device_s is None else device_s)],
        **kw,
    )


def sample(i: int, run_id: str = "r1") -> SampleRecord:
    return SampleRecord(run_id, "gpu:0", at(i * 0.1), 30.0 * i, 300.0, "counter")


def totals(run_id: str = "r1", **kw) -> DeviceTotals:
    values = dict(device="gpu:0", method="counter", total_j=100.0, attributed_j=70.0, idle_j=30.0,
                  start=T0, end=at(10))
    values.update(kw)
    return DeviceTotals(run_id=run_id, **values)


def file_bytes(path) -> dict[str, bytes]:
    """The bytes of a SQLite file and its side files, to prove nothing changed."""
    out = {}
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = type(path)(str(path) + suffix)
        if p.exists():
            out[suffix] = p.read_bytes()
    return out
