"""Standard machine-readable forms of a ledger's figures: the Green Software Foundation SCI and a
Boavizta BoAmps energy report.

* :func:`sci_form` — Software Carbon Intensity (GSF SCI v1.1, ISO/IEC 21031:2024):
  ``SCI = (E·I + M) / R`` for the whole selection and per group, each term with its unit and
  source: E the energy in kWh including PUE, I the location-based grid intensity (market-based
  instruments are excluded by the specification), M embodied emissions amortised over the device
  time reserved, R the functional unit (request, output token or sample).
* :func:`boamps_report` — a BoAmps report (the JSON format CodeCarbon exports), one measure per
  run, the devices the runs described as components. :func:`validate_boamps` checks a report
  against the BoAmps JSON schemas shipped in ``greenmaas/reporting/boamps/`` (format 1.1.0); it
  needs the ``jsonschema`` package.

Fields only the publisher knows (task family, data types, publisher, algorithm) are never guessed:
BoAmps requires some of them, so they carry the schema's own catch-all (``other``) or the words
``not recorded``, and the report's ``taskDescription`` lists them.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ConfigError, GreenmaasError
from .summary import IDLE, NONE, SCI_UNITS, summary

if TYPE_CHECKING:
    from ..ledger import Ledger

__all__ = ["sci_form", "boamps_report", "validate_boamps", "BoAmpsError", "BOAMPS_FORMAT_VERSION"]

#: The BoAmps format the shipped schemas define.
BOAMPS_FORMAT_VERSION = "1.1.0"
_BOAMPS_URI = "https://github.com/Boavizta/BoAmps/tree/main/model"
_SCHEMA_BASE = "https://raw.githubusercontent.com/Boavizta/BoAmps/main/model/"
_J_PER_KWH = 3.6e6


class BoAmpsError(GreenmaasError):
    """A BoAmps report that cannot be made (nothing measured) or does not match the published
    schema."""


# --------------------------------------------------------------------------------------- SCI


def sci_form(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    unit: str = "request",
    by: str = "model",
    since: Any = None,
    until: Any = None,
    model: str | None = None,
    accounting: Any = None,
) -> dict[str, Any]:
    """The SCI of the selection per ``unit`` (``request``, ``token``: output tokens, ``sample``),
    in total and per group of ``by``, as a JSON-ready dict with every term, its unit and source.

    The total counts the energy used while no span ran (``(idle)``) too: the software's boundary
    is the devices it ran on, and their idle draw is part of what serving R units cost.
    """
    if unit not in SCI_UNITS:
        raise ConfigError(f"unknown SCI functional unit {unit!r}; expected one of {', '.join(SCI_UNITS)}")
    s = summary(ledger_or_url, by=by, since=since, until=until, model=model, accounting=accounting, sci=unit)
    rows = s.rows

    def total(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) if values else None

    e, ei = total("sci_energy_kwh"), total("sci_operational_g")
    m, r = total("sci_embodied_g"), total("functional_units")

    def term_row(row: Mapping[str, Any]) -> dict[str, Any]:
        energy, operational = row.get("sci_energy_kwh"), row.get("sci_operational_g")
        return {
            "group": row["group"],
            "E_kwh": energy,
            "I_g_per_kwh": operational / energy if operational is not None and energy else None,
            "E_times_I_g": operational,
            "M_g": row.get("sci_embodied_g"),
            "R": row.get("functional_units"),
            "sci_g_per_unit": row.get("sci_g"),
        }

    sources = [{
        "location": src["location"], "location_source": src["location_source"],
        "intensity_g_per_kwh": src["intensity_g_per_kwh"], "intensity_source": src["intensity_source"],
        "intensity_year": src.get("intensity_year"), "time_varying": bool(src.get("intensity_series")),
        "pue": src["pue"], "embodied": src.get("embodied") or {}, "runs": src.get("runs") or [],
    } for src in s.sources]
    first, last = s.period
    return {
        "standard": "Green Software Foundation Software Carbon Intensity (SCI) v1.1 (ISO/IEC 21031:2024)",
        "equation": "SCI = (E * I + M) / R",
        "functional_unit": {"request": "request", "token": "output token", "sample": "sample"}[unit],
        "software_boundary": "the devices greenmaas measured for the selected spans (energy while no span ran "
                             "included in the total); networking, storage and unmeasured devices excluded",
        "period": {"first": first.isoformat() if first else None, "last": last.isoformat() if last else None},
        "total": {
            "E_kwh": e,
            "I_g_per_kwh": ei / e if ei is not None and e else None,
            "E_times_I_g": ei,
            "M_g": m,
            "R": r,
            "sci_g_per_unit": (ei + (m or 0.0)) / r if ei is not None and r else None,
        },
        "groups": [term_row(row) for row in rows],
        "grouped_by": by,
        "intensity": {"type": "location-based", "sources": sources},
        "quantification": {
            "E": "measured energy of the spans' devices (each span's own energy, so nothing is counted twice) × PUE",
            "I": "location-based grid intensity per run (time-weighted where an hourly series was given)",
            "M": "embodied emissions per device kind × device time reserved / lifetime (0 where none was given)",
            "R": {"request": "distinct request ids", "token": "output tokens of the top-most span carrying them",
                  "sample": "items of the top-most span carrying them"}[unit],
        },
        "methods": s.methods,
        "notes": s.notes,
    }


# ------------------------------------------------------------------------------------ BoAmps


def _quality(methods: list[dict[str, Any]]) -> str | None:
    """BoAmps quality from the weakest method's stated uncertainty: high (±10%), medium (±25%),
    low (±50%); None where no figure is stated."""
    worst = max((m["uncertainty"] for m in methods if m.get("uncertainty") is not None and m.get("spans")),
                default=None)
    if worst is None:
        return None
    return "high" if worst <= 0.10 else "medium" if worst <= 0.25 else "low"


def _infrastructure(sources: list[dict[str, Any]]) -> tuple[str, str | None]:
    providers = set()
    for src in sources:
        spec = str(src.get("location_spec") or "")
        if ":" in spec:
            providers.add(spec.split(":", 1)[0])
    if len(providers) == 1:
        return "publicCloud", {"gcp": "google", "aws": "aws", "azure": "azure"}.get(*providers, *providers)
    return "other", None


def _components(described_runs, used: Mapping[str, set[str]]) -> list[dict[str, Any]]:
    """One component per device kind and name: how many such devices the runs had at most. A
    run that did not describe its devices counts the devices its spans used (``used``: run id →
    device ids), by the kind their id names (``gpu:0`` → gpu)."""
    most: dict[tuple[str, str | None], int] = {}
    for run in described_runs:
        counts: dict[tuple[str, str | None], int] = {}
        devices = [d for d in run.devices or [] if isinstance(d, dict)]
        if not devices:
            devices = [{"id": dev} for dev in sorted(used.get(run.run_id, ()))]
        for d in devices:
            key = (str(d.get("kind") or str(d.get("id", "")).split(":", 1)[0] or "other"), d.get("name"))
            counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            most[key] = max(most.get(key, 0), n)
    out = []
    for (kind, name), n in sorted(most.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        c: dict[str, Any] = {"componentType": kind, "nbComponent": n}
        if name:
            c["componentName"] = f"{n} x {name}" if n > 1 else str(name)
            maker = str(name).split()[0]
            if maker.lower() in ("nvidia", "amd", "intel", "apple", "google"):
                c["manufacturer"] = maker
        out.append(c)
    return out


def _tracking(devices: list[Any]) -> tuple[str | None, str | None]:
    words = {"counter": {"gpu": "nvml", "cpu": "rapl"}, "power": {"gpu": "nvml", "cpu": "power"},
             "estimate": {"gpu": "constant", "cpu": "constant"}}
    cpu = gpu = None
    for d in devices:
        if not isinstance(d, dict):
            continue
        kind, method = d.get("kind"), d.get("method")
        word = words.get(str(method), {}).get(str(kind))
        if kind == "cpu" and word:
            cpu = word
        if kind == "gpu" and word:
            gpu = word
    return cpu, gpu


def boamps_report(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    since: Any = None,
    until: Any = None,
    model: str | None = None,
    accounting: Any = None,
    fields: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A BoAmps report of the selection (see the module doc): the spans' energy per run as
    measures, the runs' devices as components, location and intensity as environment.

    ``fields`` fills what only the publisher knows and is merged in last, by nesting
    (``{"task": {"taskFamily": "chatbot"}, "header": {"publisher": {...}}}``). The result is not
    validated here: call :func:`validate_boamps`. Raises :class:`BoAmpsError` when nothing in
    the selection was measured (BoAmps needs at least one measure).
    """
    from .frames import opened
    from ..ledger import query
    from ..period import to_utc

    lo, hi = to_utc(since), to_utc(until, upper=True)
    by_run = summary(ledger_or_url, by="run", since=since, until=until, model=model, accounting=accounting)
    run_rows = [r for r in by_run.rows if r["group"] not in (IDLE, NONE)]
    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        described = query.runs_described(conn, [r["group"] for r in run_rows]) if run_rows else []
        phases = query.phase_runs(conn, lo, hi, model)
        used: dict[str, set[str]] = {}
        for d in query.rollup_devices(conn, "run", NONE, lo, hi, model):
            used.setdefault(d.run_id, set()).add(d.device)
    info = {r.run_id: r for r in described}
    models = sorted({g for g in _models(ledger_or_url, since, until, model, accounting)})

    measures = []
    for row in run_rows:
        run = info.get(row["group"])
        facts = by_run.groups.get(row["group"], {})
        m: dict[str, Any] = {"measurementMethod": "greenmaas"}
        if run is not None and run.greenmaas_version:
            m["version"] = str(run.greenmaas_version)
        cpu, gpu = _tracking(list(run.devices or []) if run is not None else [])
        if cpu:
            m["cpuTrackingMode"] = cpu
        if gpu:
            m["gpuTrackingMode"] = gpu
        m["powerConsumption"] = (row["energy_j"] or 0.0) / _J_PER_KWH
        first, last = facts.get("first"), facts.get("last")
        if first is not None and last is not None:
            m["measurementDuration"] = (last - first).total_seconds()
            m["measurementDateTime"] = first.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        if row["energy_j"] is None:
            continue  # nothing measured in this run: no measure rather than 0 kWh
        measures.append(m)

    if not measures:
        raise BoAmpsError("no measured energy in this selection: a BoAmps report needs at least one measure "
                          "(record a run, or widen --since/--until/--model)")
    stages = sorted({p.phase for p in phases if p.phase not in (NONE,)})
    requests = sum(int(p.requests or 0) for p in phases if p.phase == "inference")
    tokens_in = sum(int(p.tokens_in or 0) for p in phases if p.phase == "inference")
    tokens_out = sum(int(p.tokens_out or 0) for p in phases if p.phase == "inference")
    items = sum(int(p.items or 0) for p in phases)
    dataset: list[dict[str, Any]] = []
    if tokens_in:
        dataset.append({"dataUsage": "input", "dataType": "token", "dataQuantity": tokens_in})
    if tokens_out:
        dataset.append({"dataUsage": "output", "dataType": "token", "dataQuantity": tokens_out})
    if not dataset:
        entry: dict[str, Any] = {"dataUsage": "input", "dataType": "other"}
        if items:
            entry["dataQuantity"] = items
        dataset.append(entry)
    unknown = ["taskFamily", "algorithms"] + (["dataset dataType"] if dataset[0]["dataType"] == "other" else [])
    idle = next((r for r in by_run.rows if r["group"] == IDLE), None)
    description = (
        f"Measured by greenmaas: models {', '.join(models) or 'none recorded'}; phases {', '.join(stages) or 'none'}. "
        "powerConsumption is the spans' own energy per run (IT energy of the measured devices, PUE not applied)"
        + (f"; {(idle['energy_j'] or 0.0) / _J_PER_KWH:.6g} kWh used while no span ran is not included"
           if idle and idle.get("energy_j") else "")
        + f". Not recorded in the ledger: {', '.join(unknown)}.")
    task: dict[str, Any] = {
        "taskStage": "+".join(stages) if stages else "not recorded",
        "taskFamily": "not recorded",
        "algorithms": [{}],
        "dataset": dataset,
        "taskDescription": description,
    }
    if requests:
        task["nbRequest"] = requests
    infra_type, provider = _infrastructure(by_run.sources)
    infrastructure: dict[str, Any] = {"infraType": infra_type, "components": _components(described, used)}
    if provider:
        infrastructure["cloudProvider"] = provider
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    report: dict[str, Any] = {
        "header": {
            "formatVersion": BOAMPS_FORMAT_VERSION,
            "formatVersionSpecificationUri": _BOAMPS_URI,
            "reportId": str(uuid.uuid4()),
            "reportDatetime": stamp.strftime("%Y-%m-%d %H:%M:%S"),
            "reportStatus": "draft",
        },
        "task": task,
        "measures": measures,
        "infrastructure": infrastructure,
    }
    located = [s for s in by_run.sources if s.get("location_source") != "default"]
    if len(located) == 1 and len(by_run.sources) == 1:
        src = located[0]
        report["environment"] = {"country": str(src["location"]), "powerSupplierType": "public",
                                 "powerSourceCarbonIntensity": float(src["intensity_g_per_kwh"])}
    quality = _quality(by_run.methods)
    if quality:
        report["quality"] = quality
    if fields:
        _merge(report, fields)
    return report


def _models(ledger_or_url, since, until, model, accounting) -> list[str]:
    if model is not None:
        return [model]
    rows = summary(ledger_or_url, by="model", since=since, until=until, accounting=False).rows
    return [r["group"] for r in rows if r["group"] not in (IDLE, NONE)]


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _schemas() -> dict[str, Any]:
    folder = resources.files("greenmaas.reporting") / "boamps"
    return {name: json.loads((folder / f"{name}_schema.json").read_text(encoding="utf-8"))
            for name in ("report", "algorithm", "dataset", "hardware", "measure")}


def validate_boamps(report: Mapping[str, Any]) -> None:
    """Check ``report`` against the BoAmps JSON schemas (resolved locally, nothing fetched).

    Raises :class:`BoAmpsError` naming the first failing field and why; ConfigError if the
    ``jsonschema`` package is not installed.
    """
    try:
        from jsonschema import Draft4Validator  # type: ignore[import-untyped]
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT4
    except ImportError as exc:
        raise ConfigError("validating a BoAmps report needs the jsonschema package: pip install jsonschema") from exc
    schemas = _schemas()
    registry: Registry = Registry().with_resources(
        (f"{_SCHEMA_BASE}{name}_schema.json", Resource.from_contents(schema, default_specification=DRAFT4))
        for name, schema in schemas.items()
    )
    validator = Draft4Validator(schemas["report"], registry=registry)
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BoAmpsError(f"BoAmps report does not match the schema at {where}: {first.message}{more}")
