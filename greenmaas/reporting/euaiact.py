"""The energy part of a general-purpose AI model's technical documentation, filled from a ledger.

EU AI Act Annex XI, Section 1 §2(d) asks for the computational resources used to train the model,
its training time and other relevant details; §2(e) the known or estimated energy consumption.
The General-Purpose AI Code of Practice model documentation form asks the training energy in
MWh to at least two significant figures with its methodology, the training time (wall-clock and
hardware-days), and the computation used for inference on a stated task. Neither fixes a
measurement boundary, so the document states it: which devices were measured and how, the PUE,
and what was estimated.

>>> from greenmaas.reporting import eu_ai_act
>>> doc = eu_ai_act("greenmaas.db", model="llama-8b")
>>> print(doc.to_markdown())      # or json.dumps(doc.to_dict())

Every figure comes from the ledger: energy from :func:`greenmaas.reporting.summary.summary` by phase,
times, requests and tokens from :func:`greenmaas.ledger.query.phase_runs`, device time and
device methods from :func:`greenmaas.ledger.query.rollup_devices`. A field the ledger cannot fill
(floating-point operations, the energy of work that was never measured) is listed as not filled,
with the reason, never given a value.

Training is the spans of phase ``training``; other development phases (evaluation, validation)
are listed beside it and not added in. Inference is the spans of phase ``inference`` and the
serving engine's ``prefill`` and ``decode`` shares.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .modelcard import METHOD_TEXT
from .summary import IDLE, NONE, summary

if TYPE_CHECKING:
    from ..ledger import Ledger

__all__ = ["eu_ai_act", "AIActDocument", "TRAINING_PHASES", "INFERENCE_PHASES"]

#: Phases whose energy is the training figure.
TRAINING_PHASES = ("training",)
#: Phases whose energy is the inference figure.
INFERENCE_PHASES = ("inference", "prefill", "decode")
_J_PER_MWH = 3.6e9
_J_PER_KWH = 3.6e6

FILLED = "filled"
NOT_FILLED = "not filled"


@dataclass
class AIActDocument:
    """The fields per model (``models``: one dict each, see :meth:`to_dict`), and what the whole
    selection rests on (``sources``, ``notes``, ``period``)."""

    models: list[dict[str, Any]]
    period: tuple[datetime | None, datetime | None]
    generated: datetime
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"document", "generated", "period", "models": [{"model", "fields": [{"id",
        "source", "label", "status", "value", ...}], "methodology"}], "notes"}``."""
        first, last = self.period
        return {
            "document": "EU AI Act Annex XI §2(d)-(e) and GPAI Code of Practice model documentation form: "
                        "energy and compute fields",
            "generated": self.generated.isoformat(),
            "period": {"first": first.isoformat() if first else None, "last": last.isoformat() if last else None},
            "models": self.models,
            "notes": self.notes,
        }

    def to_markdown(self) -> str:
        """GitHub markdown: per model, a table of fields, the methodology and what is not filled."""
        first, last = self.period
        out = ["# Energy and compute documentation (EU AI Act Annex XI §2(d)–(e); GPAI Code of Practice)", ""]
        if first and last:
            out.append(f"Measured {first:%Y-%m-%d %H:%M:%S} – {last:%Y-%m-%d %H:%M:%S} UTC; generated "
                       f"{self.generated:%Y-%m-%d %H:%M:%S} UTC by greenmaas from its ledger.")
        else:
            out.append("The ledger holds no spans for this selection: no field can be filled.")
        out.append("")
        for m in self.models:
            out += [f"## {_md(m['model'])}", "", "| Field | Asked by | Value |", "|---|---|---|"]
            for f in m["fields"]:
                if f["status"] == FILLED:
                    out.append(f"| {_md(f['label'])} | {_md(f['source'])} | {_md(f['text'])} |")
            out += ["", "### Methodology", "", m["methodology"], ""]
            missing = [f for f in m["fields"] if f["status"] != FILLED]
            if missing:
                out += ["### Not filled from the ledger", ""]
                out += [f"- **{_md(f['label'])}** ({_md(f['source'])}): {_md(f['reason'])}" for f in missing]
                out.append("")
        if self.notes:
            out += ["## Notes", ""] + [f"- {_md(n)}" for n in self.notes] + [""]
        return "\n".join(out)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def sig(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant figures, in plain or scientific notation as fits."""
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exp = text.split("e")
        return f"{mantissa}×10^{int(exp)}"
    return text


def _field(fid: str, source: str, label: str, value: Any = None, text: str | None = None,
           reason: str | None = None, **extra: Any) -> dict[str, Any]:
    if reason is not None:
        return {"id": fid, "source": source, "label": label, "status": NOT_FILLED, "value": None, "reason": reason}
    return {"id": fid, "source": source, "label": label, "status": FILLED, "value": value,
            "text": text if text is not None else str(value), **extra}


def eu_ai_act(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    model: str | None = None,
    since: Any = None,
    until: Any = None,
    accounting: Any = None,
) -> AIActDocument:
    """The document for ``model``, or for every model in the selection (see the module doc).
    ``accounting`` as :func:`greenmaas.reporting.summary.summary` takes it (location, PUE, ...)."""
    from datetime import timezone

    from .frames import opened
    from ..ledger import query
    from ..period import to_utc

    lo, hi = to_utc(since), to_utc(until, upper=True)
    overall = summary(ledger_or_url, by="model", since=since, until=until, model=model, accounting=accounting)
    models = [r["group"] for r in overall.rows if r["group"] not in (IDLE,)]
    docs = []
    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        for name in models:
            key = None if name == NONE else name
            if key is None:
                continue  # spans without a model belong to no model's documentation
            by_phase = summary(ledger_or_url, by="phase", since=since, until=until, model=key, accounting=accounting)
            phases = query.phase_runs(conn, lo, hi, key)
            devices = list(query.rollup_devices(conn, "phase", NONE, lo, hi, key))
            described = {}
            for run_id in {p.run_id for p in phases}:
                for d in query.run_devices(conn, run_id):
                    described[(run_id, d.get("id"))] = d
            docs.append(_model_fields(key, by_phase, phases, devices, described))
    notes = list(overall.notes)
    if any(r["group"] == NONE for r in overall.rows):
        notes.append("Spans recorded without a model are not in any model's figures.")
    return AIActDocument(models=docs, period=overall.period, generated=datetime.now(timezone.utc), notes=notes)


def _rows_of(by_phase, phases: tuple[str, ...]) -> list[dict[str, Any]]:
    return [r for r in by_phase.rows if r["group"] in phases]


def _sum(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) if values else None


def _model_fields(name: str, by_phase, phases, devices, described) -> dict[str, Any]:
    train_rows = _rows_of(by_phase, TRAINING_PHASES)
    infer_rows = _rows_of(by_phase, INFERENCE_PHASES)
    other_rows = [r for r in by_phase.rows if r["group"] not in TRAINING_PHASES + INFERENCE_PHASES]
    sources = by_phase.sources
    pues = sorted({s["pue"] for s in sources})
    fields: list[dict[str, Any]] = []
    annex_d, annex_e, cop = "Annex XI §2(d)", "Annex XI §2(e)", "CoP model documentation form"

    # ---- training time and hardware (Annex XI §2(d); CoP: training time)
    train_runs = [p for p in phases if p.phase in TRAINING_PHASES]
    train_devices = [d for d in devices if d.grp in TRAINING_PHASES]
    if train_runs:
        wall = sum((_dt(p.last) - _dt(p.first)).total_seconds() for p in train_runs)
        fields.append(_field("training_time_wall_clock_h", f"{annex_d}; {cop}", "Training time (wall-clock)",
                             wall / 3600, f"{sig(wall / 3600)} h ({sig(wall)} s; first to last training span, "
                             f"summed over {len(train_runs)} run(s))"))
        per_kind: dict[str, float] = {}
        for d in train_devices:
            kind = (described.get((d.run_id, d.device)) or {}).get("kind") or d.device.split(":", 1)[0]
            per_kind[kind] = per_kind.get(kind, 0.0) + float(d.device_s or 0.0)
        if per_kind and any(v > 0 for v in per_kind.values()):
            text = "; ".join(f"{k}: {sig(v / 3600)} device-hours ({sig(v / 86400)} hardware-days)"
                             for k, v in sorted(per_kind.items()))
            fields.append(_field("training_device_hours", f"{annex_d}; {cop}", "Training time (device-hours)",
                                 {k: v / 3600 for k, v in per_kind.items()}, text))
        else:
            fields.append(_field("training_device_hours", f"{annex_d}; {cop}", "Training time (device-hours)",
                                 reason="the ledger holds no device time for the training spans (recorded before "
                                        "device time was kept)"))
        hardware = _hardware(train_devices, described)
        fields.append(_field("training_hardware", annex_d, "Training hardware (devices measured)", hardware,
                             "; ".join(hardware)))
    else:
        for fid, label in (("training_time_wall_clock_h", "Training time (wall-clock)"),
                           ("training_device_hours", "Training time (device-hours)"),
                           ("training_hardware", "Training hardware")):
            fields.append(_field(fid, f"{annex_d}; {cop}", label, reason="no training spans in the ledger for this "
                                 "model (phase 'training')"))
    fields.append(_field("training_compute_flop", f"{annex_d}; {cop}", "Training compute (floating-point operations)",
                         reason="greenmaas measures energy and time, not floating-point operations"))

    # ---- training energy (Annex XI §2(e); CoP: energy in MWh, >= 2 significant figures)
    energy = _sum(train_rows, "energy_j")
    if energy is not None:
        u = _sum(train_rows, "uncertainty_j")
        methods = sorted({r["method"] for r in train_rows if r.get("method")})
        text = f"{sig(energy / _J_PER_MWH)} MWh" + (f" ± {sig(u / _J_PER_MWH, 2)} MWh" if u else "") + \
            f" ({energy / _J_PER_KWH:,.4g} kWh; IT energy of the measured devices, PUE not applied)"
        fields.append(_field("training_energy_mwh", f"{annex_e}; {cop}", "Training energy consumption",
                             energy / _J_PER_MWH, text, uncertainty_mwh=None if u is None else u / _J_PER_MWH,
                             measured_or_estimated="estimated" if "estimate" in methods else "measured",
                             methods=methods))
        if pues and pues != [1.0]:
            facility = _sum(train_rows, "energy_j") * max(pues) / _J_PER_MWH if len(pues) == 1 else None
            if facility is not None:
                fields.append(_field("training_energy_facility_mwh", f"{annex_e}; {cop}",
                                     "Training energy including facility overhead",
                                     facility, f"{sig(facility)} MWh (× PUE {pues[0]:g})"))
        carbon = _sum(train_rows, "carbon_g")
        if carbon is not None:
            fields.append(_field("training_emissions_tco2e", cop, "Training emissions (location-based)",
                                 carbon / 1e6, f"{sig(carbon / 1e6)} tCO2e ({carbon:,.4g} gCO2e)"))
    else:
        fields.append(_field("training_energy_mwh", f"{annex_e}; {cop}", "Training energy consumption",
                             reason="no measured training energy in the ledger for this model"
                             + (" (its training spans could not be measured)" if train_rows else "")))

    # ---- location and intensity
    if sources:
        loc = "; ".join(f"{s['location']} ({s['location_source']})" for s in sources)
        fields.append(_field("location", cop, "Location of the computation (grid)", [s["location"] for s in sources],
                             loc))
        intensity = "; ".join(
            (f"time-varying, mean {s['intensity_g_per_kwh']:.4g} gCO2e/kWh ({s['intensity_source']})"
             if s.get("intensity_series") else
             f"{s['intensity_g_per_kwh']:.4g} gCO2e/kWh ({s['intensity_source']}"
             + (f", data year {s['intensity_year']})" if s.get("intensity_year") else ")"))
            for s in sources)
        fields.append(_field("grid_intensity", cop, "Grid carbon intensity and its source",
                             [s["intensity_g_per_kwh"] for s in sources], intensity))

    # ---- inference (CoP: computation used for inference on a stated task)
    infer_runs = [p for p in phases if p.phase in INFERENCE_PHASES]
    inference_energy = _sum(infer_rows, "energy_j")
    requests = sum(int(p.requests or 0) for p in infer_runs if p.phase == "inference")
    tokens_out = sum(int(p.tokens_out or 0) for p in infer_runs if p.phase == "inference")
    tokens_in = sum(int(p.tokens_in or 0) for p in infer_runs if p.phase == "inference")
    if inference_energy is not None and requests:
        task = f"the {requests:,} requests recorded"
        if tokens_out:
            task += (f" ({tokens_in / requests:,.4g} prompt and {tokens_out / requests:,.4g} output tokens per "
                     "request on average)")
        fields.append(_field("inference_energy_per_request_j", cop, "Inference energy per request",
                             inference_energy / requests,
                             f"{sig(inference_energy / requests)} J ({sig(inference_energy / requests / 3600)} Wh) "
                             f"per request, task: {task}", requests=requests))
        if tokens_out:
            fields.append(_field("inference_energy_per_output_token_j", cop, "Inference energy per output token",
                                 inference_energy / tokens_out,
                                 f"{sig(inference_energy / tokens_out)} J per output token over {tokens_out:,} "
                                 "output tokens", output_tokens=tokens_out))
        else:
            fields.append(_field("inference_energy_per_output_token_j", cop, "Inference energy per output token",
                                 reason="no output tokens recorded with the requests (tokens_out)"))
    else:
        why = ("no inference requests in the ledger for this model (phase 'inference' with request ids)"
               if inference_energy is None or not requests else "")
        fields.append(_field("inference_energy_per_request_j", cop, "Inference energy per request", reason=why))
    fields.append(_field("inference_compute_flop", cop, "Inference compute (floating-point operations)",
                         reason="greenmaas measures energy and time, not floating-point operations"))

    other = [f"{r['group']}: {sig(r['energy_j'] / _J_PER_KWH)} kWh" for r in other_rows if r.get("energy_j")]
    if other:
        fields.append(_field("other_phases_energy", annex_e, "Energy of other phases (not in the training figure)",
                             {r["group"]: r["energy_j"] / _J_PER_MWH for r in other_rows if r.get("energy_j")},
                             "; ".join(other)))
    return {"model": name, "fields": fields,
            "methodology": _methodology(name, train_rows, infer_rows, devices, described, sources)}


def _dt(value: Any) -> datetime:
    from datetime import timezone

    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value)).replace(tzinfo=timezone.utc)


def _hardware(rows, described) -> list[str]:
    seen: dict[str, str] = {}
    for d in rows:
        info = described.get((d.run_id, d.device)) or {}
        name = info.get("name")
        label = f"{d.device}" + (f" ({name})" if name else "") + f", {d.method}"
        seen.setdefault(d.device + str(name), label)
    return sorted(seen.values())


def _methodology(name, train_rows, infer_rows, devices, described, sources) -> str:
    """A paragraph stating what was measured, how, over what boundary, and what was estimated."""
    device_methods: dict[str, set[str]] = {}
    for d in devices:
        info = described.get((d.run_id, d.device)) or {}
        device_methods.setdefault(d.method, set()).add(d.device + (f" ({info['name']})" if info.get("name") else ""))
    parts = []
    if device_methods:
        how = "; ".join(f"{', '.join(sorted(devs))} by {METHOD_TEXT.get(m, m)}"
                        for m, devs in sorted(device_methods.items()))
        parts.append(f"Energy of {name} was measured by greenmaas while it ran: {how}.")
    elif train_rows or infer_rows:
        parts.append(f"Energy of {name} was recorded by greenmaas while it ran.")
    else:
        return f"The ledger holds no measured spans for {name}: nothing was measured."
    parts.append(
        "Devices were read on their own periods and each span (epoch, step, request) was given the energy of the "
        "instants it ran, shared among concurrent spans; the figures sum each span's own energy, so nested spans are "
        "not counted twice, and energy while no span ran (idle) is not in the model's figures.")
    estimated = sorted({r["group"] for r in train_rows + infer_rows if r.get("method") == "estimate"})
    if estimated:
        parts.append(f"Part of the {', '.join(estimated)} energy is an estimate from a CPU utilisation and TDP model, "
                     "not a measurement.")
    unmeasured = sorted({r["group"] for r in train_rows + infer_rows if r.get("method") == "unmeasurable"})
    if unmeasured:
        parts.append(f"Some {', '.join(unmeasured)} spans ran on devices that could not be measured; their energy "
                     "is missing, not zero.")
    pues = sorted({s["pue"] for s in sources})
    if pues == [1.0] or not pues:
        parts.append("The boundary is the measured devices only: no facility overhead (PUE 1.0), no networking, "
                     "storage or devices that were not measured.")
    else:
        parts.append(f"The boundary is the measured devices; facility overhead is added with a PUE of "
                     f"{', '.join(f'{p:g}' for p in pues)} where stated, and networking, storage and devices that were "
                     "not measured are not included.")
    u = _sum(train_rows, "uncertainty_j")
    e = _sum(train_rows, "energy_j")
    if u is not None and e:
        parts.append(f"The stated uncertainty of the training energy is ± {100 * u / e:.2g}% "
                     "(timing of the devices' readings and the power model, summed, not in quadrature).")
    if sources:
        src = "; ".join(f"{s['location']} at {s['intensity_g_per_kwh']:.4g} gCO2e/kWh ({s['intensity_source']})"
                        for s in sources)
        parts.append(f"Carbon uses location-based grid intensity: {src}.")
    return " ".join(parts)
