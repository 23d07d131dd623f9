"""The typed path the ledger used to write with, and records that exercise every conversion.

``typed_write`` is the reference: each record turned into a dict by the per-row conversions the
ledger had before its fast path, inserted through SQLAlchemy's typed ``Table.insert()`` (so
``UTCDateTime``, JSON and the dialect's own bind processors do the rest). The fast path must
store exactly what this stores.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from zoneinfo import ZoneInfo

import numpy as np

from greenmaas.ledger.models import DeviceTotal, Read, Sample, Span, SpanDevice
from greenmaas.records import DeviceEnergy, DeviceTotals, ReadRecord, RunRecord, SampleRecord, SpanRecord
from greenmaas.sources.base import UNMEASURABLE

T0 = datetime(2024, 5, 1, 23, 59, 58, 999_000, tzinfo=timezone.utc)
_PSEUDONYM = re.compile(r"t-[0-9a-f]{16}")


# ------------------------------------------------------------------------ the typed reference


def _num(value):
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _int(value):
    return None if value is None else int(value)


def _span_row(ledger, s: SpanRecord) -> dict:
    measured = any(d.method != UNMEASURABLE for d in s.devices)
    tenant = s.tenant
    if tenant is not None and not _PSEUDONYM.fullmatch(tenant):
        tenant = ledger.pseudonymise(tenant)
    return {
        "span_id": s.span_id,
        "run_id": s.run_id,
        "parent_id": s.parent_id,
        "kind": s.kind,
        "name": s.name,
        "model": s.model,
        "phase": s.phase,
        "request_id": s.request_id,
        "tenant": tenant,
        "start": s.start,
        "end": s.end,
        "duration_s": _num(s.duration_s),
        "weight": _num(s.weight),
        "tokens_in": _int(s.tokens_in),
        "tokens_out": _int(s.tokens_out),
        "items": _int(s.items),
        "status": s.status,
        "attrs": dict(s.attrs),
        "energy_j": _num(s.energy_j) if measured else None,
        "self_energy_j": _num(s.self_energy_j) if measured else None,
        "method": s.method,
        "carbon_g": _num(s.carbon_g),
        "carbon_market_g": _num(s.carbon_market_g),
        "cost": _num(s.cost),
        "currency": s.currency,
        "start_mono": _num(s.start_mono),
        "end_mono": _num(s.end_mono),
        "link_id": s.link_id,
        "uncertainty_j": _num(s.uncertainty_j) if measured else None,
        "count": _int(s.count),
    }


def _device_row(span_id: str, d: DeviceEnergy) -> dict:
    measured = d.method != UNMEASURABLE
    return {
        "span_id": span_id,
        "device": d.device,
        "energy_j": _num(d.energy_j) if measured else None,
        "self_j": _num(d.self_j) if measured else None,
        "method": d.method,
        "gap_s": _num(d.gap_s) or 0.0,
        "self_device_s": _num(d.self_device_s) or 0.0,
        "uncertainty_j": _num(d.uncertainty_j) if measured else None,
    }


def _read_row(r: ReadRecord) -> dict:
    return {
        "run_id": r.run_id,
        "device": r.device,
        "t_mono": _num(r.t_mono),
        "energy_j": _num(r.energy_j),
        "power_w": _num(r.power_w),
        "max_energy_j": _num(r.max_energy_j),
        "error": r.error,
        "t_start_mono": _num(getattr(r, "t_start_mono", None)),
    }


def _sample_row(s: SampleRecord) -> dict:
    return {
        "run_id": s.run_id,
        "device": s.device,
        "t": s.t,
        "energy_j": _num(s.energy_j),
        "power_w": _num(s.power_w),
        "method": s.method,
    }


def _totals_row(d: DeviceTotals) -> dict:
    return {
        "run_id": d.run_id,
        "device": d.device,
        "method": d.method,
        "start": d.start,
        "end": d.end,
        "total_j": _num(d.total_j),
        "attributed_j": _num(d.attributed_j),
        "idle_j": _num(d.idle_j),
        "gap_s": _num(d.gap_s) or 0.0,
        "idle_s": _num(d.idle_s) or 0.0,
        "uncertainty_j": _num(d.uncertainty_j),
    }


def typed_write(ledger, records) -> None:
    """Write ``records`` (after their run, already started) as the typed path did, in order."""
    with ledger.engine.begin() as conn:
        for rec in records:
            if isinstance(rec, SpanRecord):
                conn.execute(Span.__table__.insert(), [_span_row(ledger, rec)])
                if rec.devices:
                    rows = [_device_row(rec.span_id, d) for d in rec.devices]
                    conn.execute(SpanDevice.__table__.insert(), rows)
            elif isinstance(rec, ReadRecord):
                conn.execute(Read.__table__.insert(), [_read_row(rec)])
            elif isinstance(rec, SampleRecord):
                conn.execute(Sample.__table__.insert(), [_sample_row(rec)])
            else:
                conn.execute(DeviceTotal.__table__.insert(), [_totals_row(rec)])


# ------------------------------------------------------------------------------- the records


def run(run_id: str = "r1") -> RunRecord:
    return RunRecord(run_id=run_id, host="node-1", pid=4242, start=T0, config={"k": 1},
                     devices=[{"id": "gpu:0"}])


def _times(i: int):
    """Start and end of span ``i``: mostly aware UTC (crossing minutes, hours and a day), and now
    and then naive (taken as UTC), in another zone, or a ``ZoneInfo("UTC")`` time."""
    start = T0 + timedelta(microseconds=i * 7_919_113)
    end = start + timedelta(microseconds=(i * 104_729) % 90_000_000)
    kind = i % 11
    if kind == 3:
        start = start.replace(tzinfo=None)
    elif kind == 5:
        end = end.astimezone(timezone(timedelta(hours=-5, minutes=-30)))
    elif kind == 7:
        start = start.astimezone(ZoneInfo("UTC"))
    elif kind == 9:
        start = start.replace(microsecond=0)
    return start, end


_ATTRS = [
    {},
    {"timing": "host"},
    {"epoch": 3, "lr": 0.001, "ok": True, "off": False, "none": None, "big": 10**30},
    {"quote": 'a"b\\c', "ctl": "x\n\ty\x00", "uni": "énergie ⚡ 日本", "neg": -0.0, "tiny": 5e-324},
    {"nested": {"a": [1, 2.5, None]}, "list": ["x"]},
    {1: "int key", "s": "str key"},
    {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")},
    {"np": np.float32(1.5), "npi": np.int64(7), "path": datetime(2020, 1, 1)},
    MappingProxyType({"mapping": "not a dict"}),
]


def _devices(i: int) -> list[DeviceEnergy]:
    kind = i % 7
    if kind == 0:
        return []
    if kind == 1:
        return [DeviceEnergy("gpu:0", 0.0, UNMEASURABLE, 0.0)]
    if kind == 2:
        return [
            DeviceEnergy("gpu:0", 1.25 * i, "counter", 0.5, self_device_s=0.1, gap_s=0.01, uncertainty_j=0.03),
            DeviceEnergy("gpu:1", 0.1, "power", 0.2, self_device_s=np.float64(0.2), uncertainty_j=np.float32(0.5)),
            DeviceEnergy("cpu", 3, "estimate", 1, self_device_s=0, gap_s=None, uncertainty_j=None),
        ]
    if kind == 3:
        return [
            DeviceEnergy("gpu:0", float("nan"), "counter", -0.0, self_device_s=float("nan"), uncertainty_j=1),
            DeviceEnergy("gpu:1", 2.0, UNMEASURABLE, 1.0, uncertainty_j=0.5),
        ]
    if kind == 4:
        return [DeviceEnergy("gpu:0", np.float64(-0.0), "replay", np.float32(0.25), gap_s=-0.0,
                             uncertainty_j=float("nan"))]
    return [DeviceEnergy("gpu:0", 0.1 * i + 1e-9, "counter", 0.05 * i, self_device_s=0.001 * i,
                         uncertainty_j=[None, 0.0, 1e-3 * i][i % 3])]


def spans(n: int = 260, run_id: str = "r1", prefix: str = "s", sqlite: bool = True) -> list[SpanRecord]:
    """``n`` spans covering the conversions (more than one multi-row INSERT's worth). With
    ``sqlite``, also values only SQLite takes: empty ``bytes`` in a text column (a blob), NaN and
    infinities in JSON attributes."""
    attrs = _ATTRS if sqlite else [a for a in _ATTRS if "nan" not in a and "ctl" not in a]
    out = []
    for i in range(n):
        start, end = _times(i)
        maybe = (lambda v: v) if i % 2 else (lambda v: None)
        out.append(
            SpanRecord(
                span_id=f"{prefix}{i:05d}",
                run_id=run_id,
                name=["step", "", "x'); DROP TABLE spans; --", "naïve"][i % 4],
                start=start,
                end=end,
                duration_s=[0.5, 2, np.float64(0.25), -0.0, 1e-9][i % 5],
                parent_id=maybe(f"{prefix}{i // 3:05d}"),
                kind=["span", "request", "forward", "step"][i % 4],
                model=[None, "llama", "", b"" if sqlite else "m"][i % 4],
                phase=[None, "training", "inference"][i % 3],
                request_id=maybe(f"req-{i}"),
                tenant=[None, "acme", "t-0123456789abcdef", "globex", "Ünïcode"][i % 5],
                weight=[1.0, 3, np.float64(0.5), 1e300][i % 4],
                tokens_in=[None, 12, np.int64(34), True][i % 4],
                tokens_out=maybe(i),
                items=[None, 0, 8][i % 3],
                status=["ok", "error"][i % 2],
                attrs=attrs[i % len(attrs)],
                devices=_devices(i),
                carbon_g=[None, 0.3, float("nan"), np.float64(1.5), 2][i % 5],
                carbon_market_g=[None, -0.0, 7.25][i % 3],
                cost=[None, 1e-5, 0][i % 3],
                currency=[None, "EUR", ""][i % 3],
                start_mono=[None, 1234.5 + i / 7, np.float64(0.1 * i), i, float("nan")][i % 5],
                end_mono=[None, 1234.5 + i / 3, np.float64(0.2 * i), i + 1, 1e-300][i % 5],
                link_id=[None, f"{prefix}{i // 2:05d}", ""][i % 3],
            )
        )
    return out


def reads(n: int = 500, run_id: str = "r1", sqlite: bool = True) -> list[ReadRecord]:
    """Raw reads: exact floats (times far from 0, many digits), numpy values, blanks, errors. With
    ``sqlite``, also a NUL in an error's text, which only SQLite takes."""
    errors = ["NVML_ERROR_GPU_IS_LOST", "", "é\n\x00" if sqlite else "é\n"]
    out = []
    for i in range(n):
        t = [81234.56789 + i * 0.0100000007, np.float64(i) / 3, i, 1e-9 * i][i % 4]
        if i % 9 == 4:
            out.append(ReadRecord(run_id, f"gpu:{i % 2}", t, error=errors[(i // 9) % 3]))
            continue
        energy = [123456789.123456789 + i, np.float64(i) * 0.1, None, float("nan"), 2**53 + 1.0][i % 5]
        power = [None, 300.25, np.float32(12.5), float("inf"), -0.0][i % 5]
        wrap = [None, 262143.999939, np.float64(65536.0)][i % 3]
        read = ReadRecord(run_id, ["gpu:0", "cpu:0", "dram:0"][i % 3], t, energy, power, wrap)
        read.t_start_mono = [None, t - 0.000123456789, np.float64(t) - 1e-6, float("nan")][i % 4]
        out.append(read)
    return out


def samples(n: int = 400, run_id: str = "r1") -> list[SampleRecord]:
    out = []
    for i in range(n):
        t = T0 + timedelta(milliseconds=i * 997)
        if i % 13 == 0:
            t = t.replace(tzinfo=None)
        energy = [30.0 * i, float("nan"), np.float64(i), i][i % 4]
        power = [None, 300.0, np.float32(12.5), float("nan")][i % 4]
        out.append(SampleRecord(run_id, f"gpu:{i % 2}", t, energy, power, "counter"))
    return out


def totals(run_id: str = "r1") -> list[DeviceTotals]:
    return [
        DeviceTotals(run_id, "gpu:0", "counter", 100.0, 70.0, 30.0, start=T0, end=T0 + timedelta(1),
                     uncertainty_j=1.5),
        DeviceTotals(run_id, "gpu:1", "power", np.float64(1), 2, float("nan"), gap_s=None,
                     idle_s=np.float32(2.5), uncertainty_j=np.float32(0.25)),
        DeviceTotals(run_id, "cpu", UNMEASURABLE, 0.0, 0.0, 0.0, gap_s=float("nan"),
                     start=datetime(2024, 1, 1), end=T0.astimezone(timezone(timedelta(hours=9)))),
    ]
