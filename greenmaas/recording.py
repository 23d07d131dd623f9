"""An offline attribution recorded in the ledger as a run, reported like a live one.

``greenmaas attribute --trace T --spans S --ledger L`` (or :func:`record_attribution`) writes the
division of a recorded trace among its spans as a run whose devices say method ``replay``: the
run, one span row per span (energy inclusive and self, ± J, device time), per-device totals
(spans + idle = the trace's total), and the trace's raw reads, so ``greenmaas report``,
``read_ledger`` and ``greenmaas export`` treat it as any other run.

Times. A trace holds monotonic seconds, not wall-clock times: ``anchor`` (UTC) is the wall time
of the trace's first read, and every span's UTC start and end are placed from it; the monotonic
times are kept as they were (``start_mono``/``end_mono``), so an export of the recorded run
gives back the same files. The anchor is stated in the run's config.

Ids. A spans file's ids are local to the file; in the ledger each becomes
``<run prefix>-<id>`` (parents and batch links likewise), the file's id kept in
``attrs["source_id"]``. Tenants are pseudonymised by the ledger's key like a live run's.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from .records import DeviceEnergy, DeviceTotals, ReadRecord, RunRecord, SpanRecord
from .sources.base import REPLAY

if TYPE_CHECKING:
    from .attribution.offline import AttributionResult
    from .ledger import Ledger
    from .sources.replay import TraceData

__all__ = ["record_attribution"]


def record_attribution(
    result: "AttributionResult",
    trace: "dict[str, TraceData]",
    ledger: "Ledger",
    *,
    anchor: datetime,
    sources: dict[str, str] | None = None,
    run_id: str | None = None,
) -> str:
    """Write ``result`` (from :func:`~greenmaas.attribution.offline.attribute_trace` on
    ``trace``) to ``ledger`` as a finished run; return its id. ``anchor``: the UTC time of the
    trace's first read. ``sources``: what to say the run came from (e.g. the file paths)."""
    if anchor.tzinfo is None:
        anchor = anchor.replace(tzinfo=timezone.utc)
    run_id = run_id or uuid.uuid4().hex
    prefix = run_id[:12]
    firsts = [float(td.t[0]) for td in trace.values() if len(td)]
    lasts = [float(td.t[-1]) for td in trace.values() if len(td)]
    t_ref = min(firsts) if firsts else 0.0
    t_end = max(lasts) if lasts else t_ref

    def utc(t: float) -> datetime:
        return anchor + timedelta(seconds=float(t) - t_ref)

    table = result.spans
    devices = sorted(trace)
    run = RunRecord(
        run_id=run_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        start=utc(t_ref),
        end=utc(t_end),
        status="finished",
        config={
            "source": "replay",
            "policy": result.policy,
            "anchor_utc": anchor.isoformat(),
            "t0_mono": t_ref,
            **({"files": dict(sources)} if sources else {}),
        },
        devices=[
            {"id": d, "kind": d.split(":", 1)[0], "name": d, "method": REPLAY,
             "power_field": trace[d].power_field}
            for d in devices
        ],
    )
    records: list[Any] = [run]
    for dev in devices:
        td = trace[dev]
        errors = td.errors or {}
        for i in range(len(td)):
            t_start = None
            if td.t_start is not None and not np.isnan(td.t_start[i]):
                t_start = float(td.t_start[i])
            if i in errors:
                records.append(ReadRecord(run_id, dev, float(td.t[i]), error=errors[i], t_start_mono=t_start))
                continue
            records.append(ReadRecord(
                run_id, dev, float(td.t[i]), _num(td.energy_j[i]), _num(td.power_w[i]),
                _num(td.max_energy_j[i]) if td.max_energy_j is not None else None, t_start_mono=t_start,
            ))

    def local(sid: str | None) -> str | None:
        return None if sid is None else f"{prefix}-{sid}"

    parents = table.parent or [None] * len(table)
    links = table.link or [None] * len(table)
    kinds = table.kind or [None] * len(table)
    names = table.name or [None] * len(table)
    for i, sid in enumerate(table.ids):
        on = table.devices[i]
        devs = [
            DeviceEnergy(
                device=d,
                energy_j=float(result.by_device[d][i]),
                self_j=float(result.self_by_device[d][i]) if result.self_by_device else float(result.by_device[d][i]),
                self_device_s=float(result.device_s_by_device[d][i]) if result.device_s_by_device else 0.0,
                method=REPLAY,
                uncertainty_j=float(result.uncertainty_by_device[d][i]) if result.uncertainty_by_device else None,
            )
            for d in devices
            if d in on
        ]
        tenant = table.tenant[i] if table.tenant else None
        start, end = float(table.start[i]), float(table.end[i])
        records.append(SpanRecord(
            span_id=local(sid),  # type: ignore[arg-type]
            run_id=run_id,
            name=names[i] or sid,
            start=utc(start),
            end=utc(end),
            duration_s=end - start,
            parent_id=local(parents[i]),
            kind=kinds[i] or "span",
            model=table.model[i] if table.model else None,
            request_id=table.request_id[i] if table.request_id else None,
            tenant=_pseudonym(ledger, tenant),
            weight=float(table.weight[i]),
            attrs={"source_id": sid},
            devices=devs,
            start_mono=start,
            end_mono=end,
            link_id=local(links[i]),
        ))
    for dev in devices:
        total = result.total_j.get(dev, 0.0)
        idle = result.idle_j.get(dev, 0.0)
        td = trace[dev]
        records.append(DeviceTotals(
            run_id=run_id,
            device=dev,
            method=REPLAY,
            total_j=total,
            attributed_j=total - idle,
            idle_j=idle,
            idle_s=result.idle_s.get(dev, 0.0),
            start=utc(float(td.t[0])) if len(td) else run.start,
            end=utc(float(td.t[-1])) if len(td) else run.start,
            uncertainty_j=result.idle_uncertainty_j.get(dev),
        ))
    ledger.write(records)
    return run_id


_PSEUDONYM = re.compile(r"t-[0-9a-f]{16}")


def _pseudonym(ledger: "Ledger", tenant: str | None) -> str | None:
    """A tenant's pseudonym; one already pseudonymised (an exported run's) is kept as it is."""
    if not tenant:
        return None
    return tenant if _PSEUDONYM.fullmatch(tenant) else ledger.pseudonymise(tenant)


def _num(v: Any) -> float | None:
    x = float(v)
    return None if np.isnan(x) else x
