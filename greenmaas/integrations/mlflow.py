"""MLflow: a greenmaas run's energy, carbon and cost as metrics of the active MLflow run, and its
report as an artifact.

::

    import mlflow
    from greenmaas.integrations.mlflow import log_run, logged

    with mlflow.start_run():
        with greenmaas.Meter(ledger="greenmaas.db") as meter:
            train()
        log_run(meter)                 # after the meter stopped: the run's final figures

    with mlflow.start_run(), logged(greenmaas.Meter()) as meter:
        train()                        # the same, logged when the block ends

Metrics (``prefix`` defaults to ``greenmaas.``): ``energy_j``, ``energy_kwh`` and ``uncertainty_j``
(± J) — everything the run's devices consumed, its spans' own energy plus idle, so it equals the
devices' total; ``idle_energy_j``; ``carbon_g`` (and ``carbon_market_g`` where a market-based
intensity was given); ``energy_cost``, ``hardware_cost`` and ``cost`` where priced; and
``energy_j.<phase>`` per phase. Tags: ``run_id``, ``currency``, ``method`` (the weakest among
the run's spans), ``location`` and ``intensity_source``. Carbon and cost are computed from the
recorded energy as ``greenmaas report`` computes them (:mod:`greenmaas.reporting.pricing`), with the
accounting the run recorded unless ``accounting=`` overrides it. Artifacts, under ``greenmaas/``:
``report.md`` (the run by phase and by model, and what the figures rest on) and ``report.json``
(the same numbers).

MLflow is imported when a function here is first called. Without an active MLflow run (and no
``mlflow_run_id``), :func:`log_run` raises :class:`~greenmaas.errors.ConfigError`; :func:`logged`
logs nothing and says so at debug level.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from ..meter import Meter

__all__ = ["log_run", "logged", "run_figures"]

log = logging.getLogger("greenmaas")

_J_PER_KWH = 3.6e6
_PRICED = ("carbon_g", "carbon_market_g", "energy_cost", "hardware_cost", "cost")


def _ledger_of(run: Any, ledger: Any) -> tuple[Any, str | None]:
    """The ledger to read and the run id for ``run`` (a Meter, a run id, or None: the latest)."""
    from ..meter import Meter

    if isinstance(run, Meter):
        if ledger is None:
            if run.ledger is None:
                raise ConfigError("log_run: the meter has no ledger (Meter(ledger=False)); nothing was recorded")
            # A SQLite file is opened again (the meter closes a ledger it opened when it stops);
            # another database is read through the meter's own Ledger, or ledger= if it is closed.
            ledger = run.ledger.path if run.ledger.path is not None else run.ledger
        if run.run is not None and run.run.status == "running":  # logged as it stands so far
            run.flush()
        return ledger, run.run_id
    if run is not None and not isinstance(run, str):
        raise ConfigError(f"log_run: run must be a Meter, a run id or None, not {type(run).__name__}")
    return ledger, run


def run_figures(
    run: "Meter | str | None" = None, *, ledger: Any = None, accounting: Any = None
) -> dict[str, Any]:
    """A greenmaas run's figures, as :func:`log_run` logs them: ``{"run_id", "status", "start",
    "end", "metrics", "tags", "by_phase", "by_model", "sources", "notes"}``. Raises ConfigError
    for a run the ledger does not hold."""
    from ..reporting.frames import opened
    from ..reporting.listings import list_runs
    from ..reporting.pricing import priced_selection
    from ..reporting.summary import summary
    from ..sources.base import weakest_method

    target, run_id = _ledger_of(run, ledger)
    with opened(target) as led:
        runs = list_runs(led)
        if not runs:
            raise ConfigError("log_run: the ledger holds no run")
        if run_id is None:
            found = max(runs, key=lambda r: (r["start"], r["run_id"]))
        else:
            matches = [r for r in runs if r["run_id"] == run_id or r["run_id"].startswith(run_id)]
            if len(matches) != 1:
                what = "no run" if not matches else f"{len(matches)} runs"
                raise ConfigError(f"log_run: the ledger holds {what} with id {run_id!r}")
            found = matches[0]
        run_id = found["run_id"]
        lo = found["start"]
        hi = found["end"] + timedelta(minutes=1) if found["end"] is not None else None
        sel, sources, index = priced_selection(led, lo, hi, None, idle=True, accounting=accounting)
        # The sources and notes a report of the run's period gives (energy only: cheap in SQL).
        described = summary(led, by="run", since=lo, until=hi, accounting=accounting)

    spans = sel.spans[sel.spans["run_id"] == run_id]
    windows = sel.windows[sel.windows["run_id"] == run_id] if sel.windows is not None else None
    idle_j = float(windows["idle_j"].sum()) if windows is not None and len(windows) else 0.0
    energy_j = float(spans["self_energy_j"].sum()) + idle_j
    metrics: dict[str, float] = {"energy_j": energy_j, "energy_kwh": energy_j / _J_PER_KWH, "idle_energy_j": idle_j}
    unc = _sum(spans, "self_uncertainty_j") + _sum(windows, "self_uncertainty_j")
    if not math.isnan(unc):
        metrics["uncertainty_j"] = unc
    currencies = set(spans["currency"].dropna()) if "currency" in spans else set()
    if windows is not None and "currency" in windows:
        currencies |= set(windows["currency"].dropna())
    for column in _PRICED:
        if column not in spans and (windows is None or column not in windows):
            continue
        if column in ("energy_cost", "hardware_cost", "cost") and len(currencies) > 1:
            continue  # nothing converts currencies: a sum across them means nothing
        value = _sum(spans, column) + _sum(windows, column)
        if not math.isnan(value):
            metrics[column] = value
    idle: dict[str, float | None] = {"energy_j": idle_j}
    for column in ("carbon_g", "cost"):
        value = _sum(windows, column)
        idle[column] = None if math.isnan(value) or (column == "cost" and len(currencies) > 1) else value
    by_phase = _grouped(spans, "phase")
    for phase, row in by_phase.items():
        metrics[f"energy_j.{phase}"] = float(row["energy_j"] or 0.0)

    tags = {"run_id": run_id, "status": str(found["status"])}
    if len(currencies) == 1:
        tags["currency"] = str(next(iter(currencies)))
    methods = [m for m in spans["method"].dropna()]
    if methods:
        tags["method"] = weakest_method(methods)
    src = sources[index[run_id]] if run_id in index else None
    if src is not None:
        from ..accounting.config import describe

        facts = describe(src.config)
        for key in ("location", "intensity_source"):
            if facts.get(key) is not None:
                tags[key] = str(facts[key])
    return {
        "run_id": run_id,
        "status": found["status"],
        "start": found["start"],
        "end": found["end"],
        "metrics": metrics,
        "tags": tags,
        "by_phase": by_phase,
        "by_model": _grouped(spans, "model"),
        "idle": idle,
        "sources": [s for s in described.sources if run_id in (s.get("runs") or [])],
        # Notes naming runs name this one, or are about another run of the same period.
        "notes": [n for n in described.notes if not n.startswith("run") or run_id in n],
        "currency": tags.get("currency"),
    }


def _sum(frame: "pd.DataFrame | None", column: str) -> float:
    """The column's sum; NaN where the frame has no such values (0.0 for an empty frame)."""
    if frame is None or not len(frame):
        return 0.0
    if column not in frame:
        return math.nan
    total = frame[column].sum(min_count=1)
    return math.nan if total is None or math.isnan(float(total)) else float(total)


def _grouped(spans: "pd.DataFrame", key: str) -> dict[str, dict[str, float | None]]:
    """Own energy (and carbon, cost where priced) of the run's spans per ``key`` value."""
    out: dict[str, dict[str, float | None]] = {}
    if not len(spans):
        return out
    labels = spans[key].where(spans[key].notna() & (spans[key].astype(str) != ""), "(none)").astype(str)
    for label, g in spans.groupby(labels, sort=True):
        row: dict[str, float | None] = {"energy_j": float(g["self_energy_j"].sum()), "spans": float(len(g))}
        for column in ("carbon_g", "cost"):
            if column in g:
                total = g[column].sum(min_count=1)
                row[column] = None if math.isnan(float(total)) else float(total)
        out[str(label)] = row
    return out


def _markdown(fig: dict[str, Any]) -> str:
    from ..reporting.modelcard import format_amount, source_text

    m = fig["metrics"]
    currency = fig.get("currency") or ""
    unc = f" ± {format_amount(m['uncertainty_j'])}" if "uncertainty_j" in m else ""
    lines = [
        f"# greenmaas run {fig['run_id']}",
        "",
        f"- Status: {fig['status']}",
        f"- Period: {fig['start']:%Y-%m-%d %H:%M:%S} – "
        + (f"{fig['end']:%Y-%m-%d %H:%M:%S} UTC" if fig["end"] is not None else "(running)"),
        f"- Energy: {format_amount(m['energy_j'])}{unc} J ({format_amount(m['energy_kwh'])} kWh), "
        f"of which idle {format_amount(m['idle_energy_j'])} J",
    ]
    if "carbon_g" in m:
        lines.append(f"- Carbon: {format_amount(m['carbon_g'])} gCO2e")
    if "cost" in m:
        lines.append(f"- Cost: {format_amount(m['cost'])} {currency}".rstrip())
    for title, key in (("By phase", "by_phase"), ("By model", "by_model")):
        rows = fig[key]
        if not rows:
            continue
        lines += ["", f"## {title}", "", "| group | spans | energy (J) | carbon (gCO2e) | cost |", "|---|---:|---:|---:|---:|"]
        for label, r in rows.items():
            lines.append(
                f"| {label} | {int(r['spans'] or 0)} | {format_amount(r['energy_j'])} | "
                f"{format_amount(r.get('carbon_g'), missing='n/a')} | "
                f"{format_amount(r.get('cost'), missing='n/a')} |"
            )
        idle = fig["idle"]
        lines.append(
            f"| (idle) | | {format_amount(idle['energy_j'])} | {format_amount(idle.get('carbon_g'), missing='n/a')} | "
            f"{format_amount(idle.get('cost'), missing='n/a')} |"
        )
    if fig["sources"] or fig["notes"]:
        lines += ["", "## Sources", ""]
        lines += [f"- {source_text(s)}" for s in fig["sources"]]
        lines += [f"- Note: {n}" for n in fig["notes"]]
    return "\n".join(lines) + "\n"


def log_run(
    run: "Meter | str | None" = None,
    *,
    ledger: Any = None,
    accounting: Any = None,
    artifact: bool = True,
    prefix: str = "greenmaas.",
    mlflow_run_id: str | None = None,
) -> dict[str, float]:
    """Log a greenmaas run to MLflow: metrics, tags and (``artifact``) the report files.

    ``run``: a :class:`~greenmaas.Meter` (read after it stopped for final figures; a running one
    is flushed and logged as it stands), a run id (or a unique prefix), or None for the ledger's
    latest run. ``ledger``: default the meter's, else ``$GREENMAAS_LEDGER`` / ``./greenmaas.db``.
    ``mlflow_run_id``: default the active MLflow run. Returns the metrics logged (with
    ``prefix``). Raises ConfigError.
    """
    try:
        import mlflow
        from mlflow.entities import Metric, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ConfigError(f"log_run needs MLflow: pip install 'greenmaas[mlflow]' ({exc})") from exc

    if mlflow_run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise ConfigError("log_run: no active MLflow run (mlflow.start_run()) and no mlflow_run_id given")
        mlflow_run_id = active.info.run_id
    fig = run_figures(run, ledger=ledger, accounting=accounting)
    metrics = {f"{prefix}{k}": float(v) for k, v in fig["metrics"].items()}
    import time

    now_ms = int(time.time() * 1000)
    client = MlflowClient()
    client.log_batch(
        mlflow_run_id,
        metrics=[Metric(k, v, now_ms, 0) for k, v in metrics.items()],
        tags=[RunTag(f"{prefix}{k}", v) for k, v in fig["tags"].items()],
    )
    if artifact:
        client.log_text(mlflow_run_id, _markdown(fig), "greenmaas/report.md")
        client.log_text(mlflow_run_id, json.dumps(fig, indent=2, default=str) + "\n", "greenmaas/report.json")
    return metrics


@contextmanager
def logged(meter: "Meter | None" = None, **log_kwargs: Any) -> Iterator["Meter"]:
    """Run ``meter`` (default ``Meter()``) for the block, then log its run with :func:`log_run`
    when an MLflow run is active. Logging failures are logged as warnings, never raised: they
    must not fail the work the block did."""
    if meter is None:
        from ..meter import Meter

        meter = Meter()
    with meter:
        yield meter
    try:
        import mlflow

        if log_kwargs.get("mlflow_run_id") is None and mlflow.active_run() is None:
            log.debug("greenmaas: no active MLflow run; run %s not logged to MLflow", meter.run_id)
            return
        log_run(meter, **log_kwargs)
    except Exception as exc:  # ours, MLflow's (a tracking server down) or no MLflow: the work is done
        log.warning("greenmaas: run %s not logged to MLflow: %s", meter.run_id, exc)
