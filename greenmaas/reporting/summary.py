"""Summaries of a ledger: energy, carbon and cost per model, phase, run, day, request, tenant or
span name, re-computed from the recorded energy.

This module groups a priced selection (:mod:`greenmaas.reporting.pricing`, which says how each span's
carbon and cost are computed) into rows, and says what the figures rest on. Device totals and
the list of runs are in :mod:`greenmaas.reporting.listings`; all are importable from here.

The counting rule
-----------------
Spans nest (an epoch contains steps, a batch contains requests). A group's ``energy_j`` is the sum
of its spans' ``self_energy_j`` — the energy attributed to each span itself, excluding its
children — so no joule is counted twice however spans nest or however they are grouped.
``duration_s`` sums only the group's top-most spans (those whose parent is not in the same group),
so time is not counted twice either. Concurrent spans (parallel requests) still add up to more
than wall time: durations are span-seconds.

Uncertainty follows the same rule: a group's ``uncertainty_j`` (± J) is the sum of its spans' own
± J (``self_uncertainty_j``, see :mod:`greenmaas.reporting.pricing`): added up, not in quadrature, as a
span's devices' are (errors are not assumed to cancel). Where a span's was not recorded (ledgers
written before schema 2) the method's stated relative uncertainty × its own energy stands in;
``uncertainty_source`` says ``recorded``, ``stated`` or ``mixed``, and the notes name the groups
that rest on a stated figure. ``method`` is the weakest method among the group's spans.

When grouping by model, phase, run, day or tenant, an ``(idle)`` row holds the energy the devices
used while no span ran, so the rows add up to what the devices consumed. Rows are sorted by energy,
largest first, with ``(idle)`` last. A span without a value for the grouping key is in ``(none)``.

Carbon and cost
---------------
Energy is the recorded fact; carbon and cost are computed from it each time a report is made, with
the accounting each run recorded or with settings given now (``accounting=``), without re-running
anything (see :mod:`greenmaas.reporting.pricing`). A row's ``carbon_g``, ``carbon_market_g``,
``energy_cost``, ``hardware_cost`` and ``cost`` (in ``currency``; ``"mixed"`` and no sum where
a group spans currencies) are the sums of its spans' own shares.

The ``(idle)`` row prices the idle energy of each device window (``device_totals``) the same way
and charges its idle device time (``idle_s``): the operator's own line. Its ± J is the windows'
recorded uncertainty of their idle energy, or the method's stated figure. So rows add up to the
devices' totals for energy, carbon and cost alike.

SCI (Green Software Foundation v1.1) per group, with ``sci="request" | "token" | "sample"``:
``(E·I + M) / R``, E the group's energy × PUE, E·I its location-based carbon, M embodied carbon
amortised over the group's device time, R the number of distinct ``request_id``, the output
tokens (``tokens_out``; a group with none counts ``tokens_in + tokens_out``) or the ``items``.
Tokens and items are counted on the top-most span carrying them (a child repeating its parent's
count is not counted again). R = 0 (the ``(idle)`` row) gives ``sci_g`` None: "n/a".

Extra columns plug in through :class:`ExtraColumn`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from ..errors import ConfigError
from .listings import list_runs, totals
from ..period import parse_date, to_utc
from .pricing import (
    RECORDED,
    STATED,
    AccountingSource,
    Selection,
    as_float,
    device_kinds,
    load_selection,
    priced_selection,
    priced_spans,
)
from ..sources.base import METHOD_UNCERTAINTY, method_rank

if TYPE_CHECKING:
    import pandas as pd

    from ..ledger import Ledger

__all__ = [
    "GROUPS",
    "RUN_GROUPS",
    "GROUP_HEADERS",
    "run_group",
    "largest_requests",
    "IDLE",
    "NONE",
    "SCI_UNITS",
    "ExtraColumn",
    "SERVING_COLUMNS",
    "Summary",
    "summary",
    "summarize",
    "priced_spans",
    "totals",
    "list_runs",
    "to_utc",
    "parse_date",
]

#: What ``summarize(by=...)`` accepts.
GROUPS = ("model", "phase", "run", "day", "request", "tenant", "name", "host", "job", "rank")
#: How a table heads each grouping's column.
GROUP_HEADERS = {"model": "Model", "phase": "Phase", "run": "Run", "day": "Day (UTC)", "request": "Request",
                 "tenant": "Tenant", "name": "Span name", "host": "Host", "job": "Job", "rank": "Rank"}
#: Groupings by where a run ran (:mod:`greenmaas.distributed`): its host, its job id and its rank
#: in the job, as it recorded them; runs outside a distributed job have no job or rank.
RUN_GROUPS = ("host", "job", "rank")
#: Functional units ``summarize(sci=...)`` accepts.
SCI_UNITS = ("request", "token", "sample")
#: Group label of the row holding energy used while no span ran.
IDLE = "(idle)"
#: Group label for spans without a value for the grouping key.
NONE = "(none)"

_GROUP_COLUMN = {
    "model": "model",
    "phase": "phase",
    "run": "run_id",
    "request": "request_id",
    "tenant": "tenant",
    "name": "name",
}
# Every grouping ends with the (idle) line (left out when a model is chosen): spans + idle = what
# the devices used. Idle energy belongs to no request or span name; the line is there so that
# the rows add up (billing per request reconciles with the meter).
_IDLE_GROUPS = frozenset(GROUPS)
_J_PER_KWH = 3.6e6
#: Priced columns, per span and per row.
_MONEY = ("energy_cost", "hardware_cost", "cost")


@dataclass(frozen=True)
class ExtraColumn:
    """A report column computed per span and summed per group (e.g. water, or a custom price).

    ``per_span(spans)`` gets the selected spans as a DataFrame (columns: span_id, parent_id,
    run_id, kind, model, phase, request_id, tenant, name, start, end, duration_s, energy_j,
    self_energy_j, method, tokens_in, tokens_out, items, uncertainty_j, self_uncertainty_j,
    uncertainty_source, group, and — when priced — carbon_g,
    carbon_market_g, energy_cost, hardware_cost, cost, currency, embodied_g, facility_energy_j,
    all for the span's own share) and returns one value per span, aligned with its index. To
    avoid double counting, base it on ``self_energy_j``. ``idle(windows)`` gets the device-totals
    windows of the ``(idle)`` row (columns: run_id, device, method, start, end, total_j,
    attributed_j, idle_j, gap_s, idle_s, uncertainty_j, self_uncertainty_j, uncertainty_source,
    and the priced columns) and returns the idle row's
    value, or None. ``header`` is the label for tables, with its unit: ``"Water (L)"``.
    """

    key: str
    header: str
    per_span: Callable[["pd.DataFrame"], "pd.Series"]
    idle: Callable[["pd.DataFrame"], float | None] | None = None
    digits: int = 2


@dataclass
class Summary:
    """A report: its rows and what the figures rest on.

    ``rows``: what :func:`summarize` returns. ``sources``: one dict per accounting configuration
    in use (``describe(config)`` plus ``runs`` and ``notes``), in the order rows refer to them.
    ``methods``: ``{"method", "uncertainty", "spans", "energy_j", "uncertainty_j"}`` per
    measurement method (``uncertainty`` the stated fraction, ``uncertainty_j`` the ± J of its
    spans' energy, as the rows sum it).
    ``period``: first span start and last span end (UTC). ``groups``: per group label, the facts
    a model card states (``sources`` indices, ``methods``, ``devices``, ``first``, ``last``,
    ``runs``). ``notes``: what a reader must know (defaults, fallbacks, what SCI leaves out).
    """

    by: str
    rows: list[dict[str, Any]]
    sources: list[dict[str, Any]] = field(default_factory=list)
    methods: list[dict[str, Any]] = field(default_factory=list)
    period: tuple[datetime | None, datetime | None] = (None, None)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sci: str | None = None
    priced: bool = True
    run: str | None = None  # the one run reported on (its id), when ``summary(run=...)`` chose one

    def to_dict(self) -> dict[str, Any]:
        """The sources, methods, period and notes, JSON-ready (rows are left out)."""
        first, last = self.period
        return {
            "by": self.by,
            "period": {"first": first.isoformat() if first else None, "last": last.isoformat() if last else None},
            "sources": self.sources,
            "methods": self.methods,
            "sci": self.sci,
            "notes": self.notes,
            **({"run": self.run} if self.run is not None else {}),
        }

    def to_frame(self) -> "pd.DataFrame":
        """The rows as a DataFrame indexed by group (the index named after ``by``), one column
        per key of the rows, in their order; a value a row lacks is NaN (None in text columns)."""
        import pandas as pd

        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        frame = pd.DataFrame.from_records(self.rows, columns=columns or ["group"])
        return frame.set_index("group").rename_axis(self.by)

    def _repr_html_(self) -> str:
        from ..notebook import summary_html

        return summary_html(self)


# ----------------------------------------------------------------------------------- grouping


def summary(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    by: str = "model",
    since: date | datetime | str | None = None,
    until: date | datetime | str | None = None,
    model: str | None = None,
    extra_columns: Sequence[ExtraColumn] = (),
    accounting: Any = None,
    sci: str | None = None,
    in_sql: bool = True,
    run: str | None = None,
) -> Summary:
    """Energy, carbon and cost per group, with the sources they rest on (see the module doc).

    ``accounting``: None prices each run with the accounting it recorded (the world average,
    stated as ``location_source`` "default", where it recorded none); a dict replaces some
    settings for every run (keys are :class:`~greenmaas.accounting.AccountingConfig` fields,
    values objects or the strings ``GREENMAAS_*`` take: ``{"location": "FR", "pue": "1.2"}``);
    an ``AccountingConfig`` replaces them all; False gives energy only. ``sci``: add SCI
    columns per ``request``, ``token`` or ``sample``. ``run``: one run's spans and idle time
    only (its id, or ``"latest"``: the run that started last). Raises ConfigError,
    AccountingError, LedgerError (no such run).

    The ledger groups and sums the spans (:mod:`greenmaas.reporting.rollup`) unless ``extra_columns`` or
    ``sci`` need them one by one, or the accounting changes within an hour; ``in_sql=False``
    always loads every span (the reference the tests compare the SQL sums with).
    """
    if by not in GROUPS:
        raise ConfigError(f"cannot group by {by!r}; expected one of {', '.join(GROUPS)}")
    if sci is not None and sci not in SCI_UNITS:
        raise ConfigError(f"unknown SCI functional unit {sci!r}; expected one of {', '.join(SCI_UNITS)}")
    if sci is not None and accounting is False:
        raise ConfigError("SCI needs carbon: do not pass accounting=False with sci=")
    lo, hi = to_utc(since), to_utc(until, upper=True)
    idle = by in _IDLE_GROUPS and model is None
    if run is not None:
        run = _resolve_run(ledger_or_url, run)
    if in_sql and not extra_columns and sci is None and by != "request":
        done = _summary_in_sql(ledger_or_url, by, lo, hi, model, idle, accounting, run)
        if done is not None:
            return done
    import pandas as pd

    if accounting is False:
        sel = load_selection(ledger_or_url, lo, hi, model, idle=idle, run=run)
        sources: list[AccountingSource] = []
    else:
        sel, sources, _ = priced_selection(ledger_or_url, lo, hi, model, idle=idle, accounting=accounting, run=run)
    priced = accounting is not False
    market = any(s.config.market_intensity_g_per_kwh is not None for s in sources)
    out = Summary(by=by, rows=[], sci=sci, priced=priced, run=run)

    spans = sel.spans
    spans["group"] = _group_keys(spans, by, sel.runs)
    for c in extra_columns:
        spans[f"__{c.key}"] = c.per_span(spans)
    # Time counts only a group's top-most spans: a parent in the same group already covers it.
    parent_group = spans["parent_id"].map(dict(zip(spans["span_id"], spans["group"])))
    spans["top_duration_s"] = spans["duration_s"].where(parent_group != spans["group"], 0.0)
    if sci is not None:
        for name, counts in _unit_counts(spans, sci).items():
            spans[name] = counts
    keys: dict[str, Any] = dict(
        priced=priced, market=market, extra=[c.key for c in extra_columns], sci=sci, out=out
    )
    rows = _rows(spans, spans["group"], **keys)
    rows.sort(key=lambda r: (r["energy_j"] is None, -(r["energy_j"] or 0.0), str(r["group"])))

    windows = sel.windows
    if windows is not None and len(windows):
        w = windows.assign(self_energy_j=windows["idle_j"], top_duration_s=0.0, request_id=None)
        for c in extra_columns:
            w[f"__{c.key}"] = float("nan")
        (row,) = _rows(w, pd.Series(IDLE, index=w.index), **keys, idle=True)
        for c in extra_columns:
            row[c.key] = as_float(c.idle(windows)) if c.idle is not None else None
        rows.append(row)
    out.rows = rows
    if by == "request":
        _serving_columns(out, ledger_or_url, lo, hi, model, run)
    _note_stated(out)
    _note_runs(out, sel.runs, _selected_runs(sel))
    _describe(out, sel, sources)
    return out


#: Per-request serving columns ``summary(by="request")`` adds (see :mod:`greenmaas.serving`).
SERVING_COLUMNS = ("prompt_tokens", "output_tokens", "prefill_j", "decode_j", "j_per_output_token", "ttft_s")


def _resolve_run(ledger_or_url: Any, run: str) -> str:
    """``run`` as stored (:func:`greenmaas.ledger.query.resolve_run`: ``latest`` is the run that
    started last); raises LedgerError naming an unknown run."""
    from .frames import opened
    from ..ledger import query

    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        return query.resolve_run(conn, ledger.display, run)


def largest_requests(rows: Iterable[dict[str, Any]], keep: int, *,
                     seen: Callable[[dict[str, Any]], None] | None = None,
                     dropped: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[dict], list[dict]]:
    """From :func:`request_rows`, holding at most ``keep`` of them: the ``keep`` requests that used
    the most energy (largest first; unmeasured last, then in the order they came) and the
    ``(none)`` and ``(idle)`` rows. ``seen(row)`` is called on every row, ``dropped(row)`` on each
    request left out."""
    import heapq

    top: list[tuple] = []
    tail: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        if seen is not None:
            seen(row)
        if row["group"] in (NONE, IDLE):
            tail.append(row)
            continue
        item = (row["energy_j"] if row["energy_j"] is not None else -1.0, -i, row)
        if len(top) < keep:
            heapq.heappush(top, item)
            continue
        out = heapq.heappushpop(top, item)[2]
        if dropped is not None:
            dropped(out)
    largest = [row for _, _, row in sorted(top, key=lambda t: (-t[0], -t[1]))]
    return largest, sorted(tail, key=lambda r: r["group"] == IDLE)


def _serving_columns(out: Summary, ledger_or_url: Any, lo, hi, model, run=None) -> None:
    """Add prompt and output tokens, prefill and decode J, J per output token and time to first
    token to each request row (None where not recorded; a time to first token only where the
    request ran in one run, whose clock both ends are on)."""
    from .frames import opened
    from ..ledger import query

    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        _add_serving(out.rows, query.serving_requests(conn, lo, hi, model, run))


def _add_serving(rows: list[dict[str, Any]], found: Iterable[Any]) -> None:
    """:func:`_serving_columns` on ``rows``, from what :func:`~greenmaas.ledger.query.serving_requests` found."""
    per: dict[str, dict[str, Any]] = {}
    for request_id, _run_id, prompt, output, prefill, decode, start, first_token in found:
        key = str(request_id)
        d = per.get(key)
        if d is None:
            d = per[key] = {"prompt_tokens": None, "output_tokens": None, "prefill_j": None, "decode_j": None,
                            "ttft_s": None, "runs": 0}
        d["runs"] += 1
        if prompt is not None:
            d["prompt_tokens"] = (d["prompt_tokens"] or 0) + int(prompt)
        if output is not None:
            d["output_tokens"] = (d["output_tokens"] or 0) + int(output)
        if prefill is not None:
            d["prefill_j"] = (d["prefill_j"] or 0) + float(prefill)
        if decode is not None:
            d["decode_j"] = (d["decode_j"] or 0) + float(decode)
        if first_token is not None and start is not None:
            d["ttft_s"] = float(first_token) - float(start)
    for row in rows:
        got = per.get(row["group"])
        if got is None:
            row.update({k: None for k in SERVING_COLUMNS})
            continue
        if got["runs"] > 1:
            got["ttft_s"] = None
        tokens, energy = got["output_tokens"], row.get("energy_j")
        row.update({k: got[k] for k in SERVING_COLUMNS if k != "j_per_output_token"})
        row["j_per_output_token"] = energy / tokens if tokens and energy is not None else None


def request_rows(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    since: date | datetime | str | None = None,
    until: date | datetime | str | None = None,
    model: str | None = None,
    run: str | None = None,
    accounting: Any = None,
    page: int = 20_000,
) -> Iterator[dict[str, Any]]:
    """The rows of ``summary(by="request", ...)``, computed and given a page of ``page``
    request ids at a time, so that memory does not grow with the ledger: in request id order,
    then the spans of no request (``(none)``) and the ``(idle)`` line (left out with ``model``).

    The same figures as :func:`summary` (which sorts them by energy); where the accounting
    changes within an hour, it is :func:`summary`'s rows, sorted by request id.
    """
    from .frames import opened
    from ..ledger import query
    from .pricing import _resolve_accounting, _sources_for, load_runs_and_windows, price_windows
    from .rollup import rollup

    lo, hi = to_utc(since), to_utc(until, upper=True)
    if run is not None:
        run = _resolve_run(ledger_or_url, run)
    priced = accounting is not False
    idle = model is None
    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        runs, windows = load_runs_and_windows(conn, lo, hi, idle=idle, run=run)
        resolved = _resolve_accounting(accounting) if priced else None
        sources, index = _sources_for(runs, sorted(runs), resolved) if priced else ([], {})
        if priced and not _hourly(runs, sources):
            rows = summary(ledger, by="request", since=since, until=until, model=model, run=run,
                           accounting=accounting).rows
            idle_rows = [r for r in rows if r["group"] == IDLE]
            yield from sorted((r for r in rows if r["group"] not in (IDLE, NONE)), key=lambda r: str(r["group"]))
            yield from (r for r in rows if r["group"] == NONE)
            yield from idle_rows
            return
        used = query.runs_with_spans(conn, lo, hi, model, run)
        market = any(sources[index[r]].config.market_intensity_g_per_kwh is not None for r in used if r in index)

        def rows_of(requests) -> list[dict[str, Any]]:
            rows = rollup(conn, "request", NONE, lo, hi, model, runs, priced=priced, market=True, sources=sources,
                          index=index, run=run, requests=requests, facts=False).rows
            rows.sort(key=lambda r: r["group"])
            for r in rows if priced and not market else ():
                del r["carbon_market_g"]
            _add_serving(rows, query.serving_requests(conn, lo, hi, model, run, requests))
            return rows

        for first, last in query.request_pages(conn, page, lo, hi, model, run):
            yield from rows_of((first, last))
        yield from rows_of(query.NO_REQUEST)
    if windows:
        used_runs = sorted({w["run_id"] for w in windows})
        window_sources, window_index = _sources_for(runs, used_runs, resolved) if priced else ([], {})
        if priced:
            price_windows(windows, window_sources, window_index)
        row = _idle_row(windows, priced=priced, market=market)
        row.update({k: None for k in SERVING_COLUMNS})
        yield row


def _note_runs(out: Summary, runs: dict[str, dict[str, Any]], selected: set[str]) -> None:
    """What a reader must know of the ``selected`` runs themselves (ids; ``runs`` as
    :class:`Selection` holds them): interrupted ones, devices that several runs measured at once,
    and GPUs that processes greenmaas did not measure used too."""
    from ..processes import notes_for_run

    _note_unfinished(out, runs, selected)
    _note_shared(out, runs, selected)
    for run_id in sorted(selected):
        run = runs.get(run_id) or {}
        for text in notes_for_run(run_id, run.get("host"), (run.get("config") or {}).get("gpu_processes") or {}):
            _note(out, text)


def _selected_runs(sel: Selection) -> set[str]:
    selected = set(sel.spans["run_id"])
    if sel.windows is not None:
        selected |= set(sel.windows["run_id"])
    return selected


def _note_shared(out: Summary, runs: dict[str, dict[str, Any]], selected: set[str]) -> None:
    """Say where a selected run measured a device while another run on its host measured the
    same one (see :mod:`greenmaas.claims`): each counted the whole device among its own spans."""
    from ..claims import claim_key

    now = datetime.now(timezone.utc)

    def span_of(run: dict[str, Any]) -> tuple[Any, Any]:
        start, end = run.get("start"), run.get("end")
        if end is None:  # still measuring, or stopped without ending: its last sign of life
            end = now if run.get("status") == "running" else run.get("heartbeat") or start
        return start, end

    by_key: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (host, key) -> (run, device id)
    for run_id, run in runs.items():
        if run.get("start") is None:
            continue
        for d in run.get("devices") or ():
            key = claim_key(d)
            if key is not None:
                by_key.setdefault((str(run.get("host")), key), []).append((run_id, str(d.get("id"))))
    for (host, _key), users in sorted(by_key.items()):
        if len(users) < 2 or not any(r in selected for r, _ in users):
            continue
        together: set[str] = set()
        for i, (a, _) in enumerate(users):
            a0, a1 = span_of(runs[a])
            for b, _ in users[i + 1:]:
                b0, b1 = span_of(runs[b])
                if a0 < b1 and b0 < a1 and (a in selected or b in selected):
                    together |= {a, b}
        if together:
            ids = sorted(together)
            names = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            device = next(d for r, d in users if r in together)
            _note(out, f"{device} on {host} was measured by {len(ids)} runs at once ({names}): each counted the "
                       "whole device's energy among its own spans, so this report counts it more than once")
    for run_id in sorted(selected):
        for h in (runs.get(run_id) or {}).get("config", {}).get("shared_devices") or ():
            other = h.get("run_id")
            if other in runs:
                continue  # in this ledger: said above
            _note(out, f"run {run_id} measured {h.get('device')} while another process on its host did too "
                       f"(pid {h.get('pid')}, run {other or 'unknown'}, not in this ledger): its spans carry that "
                       "process's work on it")


def _note_unfinished(out: Summary, runs: dict[str, dict[str, Any]], selected: set[str]) -> None:
    """Name the selected runs that were interrupted (a killed process included, see
    :func:`greenmaas.ledger.liveness.run_status`), with their last heartbeat."""
    for run_id in sorted(selected):
        run = runs.get(run_id) or {}
        status, beat = run.get("status"), run.get("heartbeat")
        if status == "interrupted":
            when = f" (last heartbeat {beat:%Y-%m-%d %H:%M:%S} UTC)" if beat is not None else ""
            _note(out, f"run {run_id} was interrupted{when}: its figures stop there")


def _note_stated(out: Summary) -> None:
    """Say which rows' ± J rests on the method's stated uncertainty rather than a recorded one."""
    with_figure = [r for r in out.rows if r.get("uncertainty_source")]
    stated = [r["group"] for r in with_figure if r["uncertainty_source"] != RECORDED]
    if not stated:
        return
    what = "the measurement method's stated uncertainty × energy"
    if all(r["uncertainty_source"] == STATED for r in with_figure):
        _note(out, f"± J is {what}: no uncertainty was recorded (a ledger written before schema 2)")
        return
    shown = ", ".join(stated[:3]) + (f" and {len(stated) - 3} more" if len(stated) > 3 else "")
    _note(out, f"± J of {shown} is, wholly or in part, {what}: no uncertainty was recorded for some of "
               "their spans")


def summarize(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    by: str = "model",
    since: date | datetime | str | None = None,
    until: date | datetime | str | None = None,
    model: str | None = None,
    extra_columns: Sequence[ExtraColumn] = (),
    accounting: Any = None,
    sci: str | None = None,
) -> list[dict[str, Any]]:
    """Energy, carbon and cost per group, without double counting (see the module docstring).

    Returns rows ``{"group", "spans", "duration_s", "energy_j", "method", "uncertainty_j",
    "uncertainty_source", "carbon_g", "energy_cost", "hardware_cost", "cost", "currency"}``
    (``method`` the weakest of the group's spans, ``uncertainty_j`` ± J of ``energy_j``, recorded,
    stated or mixed as ``uncertainty_source`` says; ``carbon_market_g`` too where a market-based intensity
    is set; one key more per extra column; the SCI keys ``sci_unit``, ``functional_units``,
    ``sci_energy_kwh``, ``sci_operational_g``, ``sci_embodied_g``, ``sci_g`` with ``sci=``),
    largest energy first, ``(idle)`` last. ``since``/``until`` filter on span start (UTC;
    ``until`` exclusive, a bare date included). ``model`` keeps that model's spans only (and
    drops the ``(idle)`` row, which has no model). ``energy_j`` is None for a group none of whose
    spans could be measured. ``accounting`` and ``sci``: see :func:`summary`, which also says
    what the figures rest on.
    """
    return summary(ledger_or_url, by=by, since=since, until=until, model=model,
                   extra_columns=extra_columns, accounting=accounting, sci=sci).rows


def run_group(run: dict[str, Any], by: str) -> str | None:
    """A run's value for ``by`` in :data:`RUN_GROUPS` (None where it recorded none)."""
    if by == "host":
        value = run.get("host")
    else:
        distributed = (run.get("config") or {}).get("distributed") or {}
        value = distributed.get("job_id" if by == "job" else "rank") if isinstance(distributed, dict) else None
    return None if value is None or value == "" else str(value)


def _run_regroup(runs: dict[str, dict[str, Any]], by: str) -> dict[str, str]:
    return {run_id: run_group(run, by) or NONE for run_id, run in runs.items()}


def _group_keys(spans: "pd.DataFrame", by: str, runs: dict[str, dict[str, Any]] | None = None) -> "pd.Series":
    if spans.empty:
        return spans["span_id"].astype(str)
    if by in RUN_GROUPS:
        return spans["run_id"].map(_run_regroup(runs or {}, by)).fillna(NONE).astype(str)
    key = spans["start"].dt.strftime("%Y-%m-%d") if by == "day" else spans[_GROUP_COLUMN[by]]
    key = key.where(key.notna() & (key.astype(str) != ""), NONE).astype(str)
    if by == "phase":  # serving shares: prefill and decode are phases of their own
        from ..ledger.query import SERVING_PHASES

        serving = spans["kind"].eq("share") & spans["name"].isin(SERVING_PHASES)
        key = key.where(~serving, spans["name"].astype(str))
    return key


def _rows(frame: "pd.DataFrame", key: "pd.Series", *, priced: bool, market: bool, extra: list[str],
          sci: str | None, out: Summary, idle: bool = False) -> list[dict[str, Any]]:
    """One row per value of ``key``, summed without loops over groups (reports may have 100,000)."""
    import numpy as np
    import pandas as pd

    g = frame.groupby(key, sort=False)
    ranks = frame["method"].map(method_rank)
    weakest = ranks.groupby(key, sort=False).max().map(dict(zip(ranks, frame["method"])))
    source = frame["uncertainty_source"]
    recorded = source.eq(RECORDED).groupby(key, sort=False).any()
    stated = source.eq(STATED).groupby(key, sort=False).any()
    labels = np.full(len(recorded), None, dtype=object)
    labels[stated.to_numpy()] = STATED
    labels[recorded.to_numpy()] = RECORDED
    labels[(recorded & stated).to_numpy()] = "mixed"
    agg = pd.DataFrame({
        # A rollup row stands for ``count`` spans (NULL before schema 3: one).
        "spans": 0 if idle else (
            frame["count"].fillna(1).astype("int64").groupby(key, sort=False).sum()
            if "count" in frame.columns else g.size()
        ),
        "duration_s": g["top_duration_s"].sum(),
        "energy_j": g["self_energy_j"].sum(min_count=1),
        "method": weakest,
        "uncertainty_j": g["self_uncertainty_j"].sum(min_count=1),
        "uncertainty_source": pd.Series(labels, index=recorded.index, dtype=object),
    })
    money = ["carbon_g", *(["carbon_market_g"] if market else []), *_MONEY] if priced else []
    for c in money:
        agg[c] = g[c].sum(min_count=1)
    if priced:
        currencies = g["currency"].nunique()
        agg["currency"] = g["currency"].first().where(currencies == 1, None).astype(object)
        mixed = currencies > 1  # nothing converts currencies; a sum across them means nothing
        agg.loc[mixed, list(_MONEY)] = np.nan
        agg.loc[mixed, "currency"] = "mixed"
    for k in extra:
        agg[k] = g[f"__{k}"].sum(min_count=1)
    if sci is not None:
        _sci_columns(agg, g, sci, out, idle)

    rows = []
    columns = list(agg.columns)
    for group, values in zip(agg.index, agg.itertuples(index=False, name=None)):
        row: dict[str, Any] = {"group": str(group)}
        for c, v in zip(columns, values):
            if c == "spans":
                row[c] = int(v)
            elif c in ("currency", "sci_unit", "method", "uncertainty_source"):
                row[c] = None if v is None or (isinstance(v, float) and np.isnan(v)) else v
            elif c == "functional_units":
                row[c] = int(v) if float(v).is_integer() else float(v)
            else:
                row[c] = as_float(v)
        rows.append(row)
    return rows


def _idle_row(windows: list[dict[str, Any]], *, priced: bool, market: bool) -> dict[str, Any]:
    """The ``(idle)`` row of a report from device windows (:func:`~greenmaas.reporting.pricing.load_runs_and_windows`,
    priced by :func:`~greenmaas.reporting.pricing.price_windows` when ``priced``): what
    :func:`_rows` gives for them, without pandas (a report summed in SQL never loads it)."""

    def total(values: Iterable[float]) -> float | None:  # a sum of what is known; None if nothing is
        known = [v for v in values if v == v]
        return math.fsum(known) if known else None

    weakest: dict[int, str] = {}
    for w in windows:
        weakest[method_rank(w["method"])] = w["method"]  # the last of a rank, as _rows takes it
    sources = {w["uncertainty_source"] for w in windows}
    label = ("mixed" if {RECORDED, STATED} <= sources else RECORDED if RECORDED in sources
             else STATED if STATED in sources else None)
    row: dict[str, Any] = {
        "group": IDLE, "spans": 0, "duration_s": 0.0,
        "energy_j": total(w["idle_j"] for w in windows),
        "method": weakest[max(weakest)] if weakest else None,
        "uncertainty_j": total(w["self_uncertainty_j"] for w in windows),
        "uncertainty_source": label,
    }
    if priced:
        for c in ("carbon_g", *(["carbon_market_g"] if market else []), *_MONEY):
            row[c] = total(w[c] for w in windows)
        currencies = {w["currency"] for w in windows if w["currency"] is not None}
        row["currency"] = next(iter(currencies)) if len(currencies) == 1 else None
        if len(currencies) > 1:  # nothing converts currencies; a sum across them means nothing
            row.update({c: None for c in _MONEY}, currency="mixed")
    return row


def _sci_columns(agg: "pd.DataFrame", g: Any, unit: str, out: Summary, idle: bool) -> None:
    """SCI = (E·I + M) / R per row of ``agg``; R = 0 (the idle row) gives None: n/a."""
    import numpy as np

    if idle:
        units = agg["spans"] * 0.0
    elif unit == "request":
        units = g["request_id"].nunique().astype("float64")
    elif unit == "token":
        units = g["__u_tokens_out"].sum()
        inputs = g["__u_tokens_in"].sum()
        fallback = (units == 0) & (inputs > 0)
        if fallback.any():
            units = units.where(~fallback, inputs)
            _note(out, "SCI: groups with no output tokens count tokens_in + tokens_out")
    else:
        units = g["__u_items"].sum()
    operational = g["carbon_g"].sum(min_count=1)
    embodied = g["embodied_g"].sum()
    agg["sci_unit"] = unit
    agg["functional_units"] = units
    agg["sci_energy_kwh"] = g["facility_energy_j"].sum(min_count=1) / _J_PER_KWH
    agg["sci_operational_g"] = operational
    agg["sci_embodied_g"] = embodied
    agg["sci_g"] = ((operational + embodied) / units.where(units > 0, np.nan))


def _unit_counts(spans: "pd.DataFrame", unit: str) -> dict[str, "pd.Series"]:
    """Tokens (out and in) or items per span, counted only on the top-most span carrying them."""
    import pandas as pd

    columns = {"request": (), "token": ("tokens_out", "tokens_in"), "sample": ("items",)}[unit]
    parent_of = dict(zip(spans["span_id"], spans["parent_id"]))
    out = {}
    for col in columns:
        carries = dict(zip(spans["span_id"], spans[col].notna()))
        covered = pd.Series(False, index=spans.index)
        ancestor = spans["parent_id"]
        for _ in range(len(spans)):  # parents in the selection, or outside it (NaN); no cycles
            if not ancestor.notna().any():
                break
            covered |= ancestor.map(carries).fillna(False).astype(bool)
            ancestor = ancestor.map(parent_of)
        out[f"__u_{col}"] = spans[col].where(~covered, 0.0).fillna(0.0)
    return out


def _note(out: Summary, text: str) -> None:
    if text not in out.notes:
        out.notes.append(text)


# ----------------------------------------------------------------------------------- sources


def _describe_sources(out: Summary, sources: list[AccountingSource]) -> None:
    """One entry per accounting source the runs used, and a note for each of its notes."""
    from ..accounting.config import describe

    for src in sources:
        facts = describe(src.config)
        facts.update(runs=sorted(src.runs), notes=list(src.notes))
        out.sources.append(facts)
        for note in src.notes:
            names = ", ".join(sorted(src.runs)[:3]) + (" …" if len(src.runs) > 3 else "")
            _note(out, f"run {names}: {note}" if len(src.runs) == 1 else f"runs {names}: {note}")


def _describe(out: Summary, sel: Selection, sources: list[AccountingSource]) -> None:
    """Fill in what a summary's figures rest on: sources, methods, period, per-group facts."""
    spans, devices, windows = sel.spans, sel.devices, sel.windows
    _describe_sources(out, sources)

    energy: pd.Series | dict[str, float] = (
        spans.groupby("method")["self_energy_j"].sum(min_count=1) if len(spans) else {}
    )
    plus_minus: pd.Series | dict[str, float] = (
        spans.groupby("method")["self_uncertainty_j"].sum(min_count=1) if len(spans) else {}
    )
    # A rollup row stands for ``count`` spans (NULL before schema 3: one).
    stands_for = spans["count"].fillna(1).astype("int64") if "count" in spans.columns else None
    counts: pd.Series | dict[str, int] = (
        ({} if not len(spans) else stands_for.groupby(spans["method"]).sum() if stands_for is not None
         else spans["method"].value_counts())
    )
    methods = set(spans["method"]) | (set(windows["method"]) if windows is not None else set())
    out.methods = [
        {"method": m, "uncertainty": METHOD_UNCERTAINTY.get(m), "spans": int(counts.get(m, 0)),
         "energy_j": as_float(energy.get(m)) if len(spans) else None,
         "uncertainty_j": as_float(plus_minus.get(m)) if len(spans) else None}
        for m in sorted(methods, key=method_rank)
    ]
    if len(spans):
        out.period = (spans["start"].min().to_pydatetime(), spans["end"].max().to_pydatetime())

    if out.sci is not None and out.priced:
        if not any(s.config.embodied for s in sources):
            _note(out, "SCI: M = 0, no embodied carbon given (--embodied gpu=150kg/4y or GREENMAAS_EMBODIED)")
        else:
            kinds = set(devices["kind"]) - {k for s in sources for k in s.config.embodied}
            if kinds:
                _note(out, f"SCI: M leaves out device kind(s) {', '.join(sorted(kinds))}: no embodied figure given")

    # Per group: the facts a model card states. Distinct (group, value) pairs first, so that a
    # report of 100,000 requests loops over few rows.
    if spans.empty:
        return
    described = device_kinds(sel.runs)
    index = {run: i for i, s in enumerate(sources) for run in s.runs}
    pairs = spans[["group", "run_id", "method"]].drop_duplicates()
    runs = pairs[["group", "run_id"]].drop_duplicates()
    used = devices.assign(group=devices["span_id"].map(dict(zip(spans["span_id"], spans["group"]))))
    used = used[["group", "run_id", "device"]].drop_duplicates().sort_values("device", kind="stable")
    times = spans.groupby("group", sort=False).agg(first=("start", "min"), last=("end", "max"))
    facts: dict[str, dict[str, Any]] = {
        str(group): {"sources": set(), "methods": set(), "devices": [], "runs": set(),
                     "first": first.to_pydatetime(), "last": last.to_pydatetime()}
        for group, first, last in zip(times.index, times["first"], times["last"])
    }
    for group, run_id in zip(runs["group"], runs["run_id"]):
        facts[group]["runs"].add(run_id)
        if run_id in index:
            facts[group]["sources"].add(index[run_id])
    for group, method in zip(pairs["group"], pairs["method"]):
        facts[group]["methods"].add(method)
    for group, run_id, dev in zip(used["group"], used["run_id"], used["device"]):
        d = described.get((run_id, dev)) or {}
        name = f"{d['name']} ({dev})" if d.get("name") else dev
        if name not in facts[group]["devices"]:
            facts[group]["devices"].append(name)
    for f in facts.values():
        f.update(sources=sorted(f["sources"]), methods=sorted(f["methods"], key=method_rank),
                 runs=sorted(f["runs"]))
    out.groups = facts


# ----------------------------------------------------------------------------------- in SQL


def _hourly(runs: dict[str, dict[str, Any]], sources: list[AccountingSource]) -> bool:
    """Whether every source's intensity and tariff hold still within each UTC hour over the runs'
    times (a day either side), so the ledger's hourly sums can be priced hour by hour."""
    from ..accounting.timeseries import _datetime_ns
    from .rollup import supported

    starts = [r["start"] for r in runs.values() if r["start"] is not None]
    if not starts:
        return True
    ends = [r["end"] or r["start"] for r in runs.values() if r["start"] is not None]
    lo_ns = _datetime_ns(min(starts, key=_datetime_ns)) - 86_400 * 10**9
    hi_ns = _datetime_ns(max(ends, key=_datetime_ns)) + 86_400 * 10**9
    return all(supported(src.config, lo_ns, hi_ns) for src in sources)


def _summary_in_sql(ledger_or_url, by: str, lo, hi, model, idle: bool, accounting: Any,
                    run: str | None = None) -> Summary | None:
    """:func:`summary` from sums the ledger computes (see :mod:`greenmaas.reporting.rollup`); None where
    the accounting needs pricing span by span."""
    from .frames import opened
    from .pricing import _resolve_accounting, _sources_for, load_runs_and_windows, price_windows
    from .rollup import rollup

    priced = accounting is not False
    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        runs, windows = load_runs_and_windows(conn, lo, hi, idle=idle, run=run)
        resolved = _resolve_accounting(accounting) if priced else None
        all_sources, all_index = _sources_for(runs, sorted(runs), resolved) if priced else ([], {})
        if priced and not _hourly(runs, all_sources):
            return None
        regroup = _run_regroup(runs, by) if by in RUN_GROUPS else None
        done = rollup(conn, "run" if regroup is not None else by, NONE, lo, hi, model, runs, priced=priced,
                      market=True, sources=all_sources, index=all_index, run=run, regroup=regroup)

    out = Summary(by=by, rows=done.rows, sci=None, priced=priced, run=run)
    window_runs = {w["run_id"] for w in windows} if windows is not None else set()
    sources: list[AccountingSource] = []
    index: dict[str, int] = {}
    if priced:
        sources, index = _sources_for(runs, sorted(done.run_ids | window_runs), resolved)
    market = any(s.config.market_intensity_g_per_kwh is not None for s in sources)
    for r in out.rows if priced and not market else ():
        del r["carbon_market_g"]
    out.rows.sort(key=lambda r: (r["energy_j"] is None, -(r["energy_j"] or 0.0), str(r["group"])))
    if windows:
        if priced:
            price_windows(windows, sources, index)
        out.rows.append(_idle_row(windows, priced=priced, market=market))
    _note_stated(out)
    _note_runs(out, runs, done.run_ids | window_runs)

    _describe_sources(out, sources)
    methods = set(done.methods) | ({w["method"] for w in windows} if windows is not None else set())
    out.methods = [
        {"method": m, "uncertainty": METHOD_UNCERTAINTY.get(m), "spans": int(done.methods.get(m, {}).get("spans", 0)),
         "energy_j": done.methods[m]["energy_j"] if m in done.methods else None,
         "uncertainty_j": done.methods[m]["uncertainty_j"] if m in done.methods else None}
        for m in sorted(methods, key=method_rank)
    ]
    out.period = done.period
    for group, facts in done.groups.items():
        facts["sources"] = sorted({index[r] for r in facts["runs"] if r in index})
    out.groups = done.groups
    return out
