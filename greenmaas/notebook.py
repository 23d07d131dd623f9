"""HTML tables for Jupyter: summaries, span results and runs.

Jupyter shows an object through its ``_repr_html_``: :class:`~greenmaas.reporting.summary.Summary` and
:class:`~greenmaas.spans.SpanResult` render with the functions here, and :func:`runs` returns the
ledger's runs as a list that renders as a table. Each function returns one HTML fragment with
inline styles only (no script, nothing fetched), every value escaped, units in the headers.

>>> from greenmaas.reporting.summary import summary
>>> summary("greenmaas.db", by="phase")          # in a notebook: a table, with sources and notes
>>> greenmaas.notebook.runs("greenmaas.db")       # the runs, newest last

``%load_ext greenmaas`` adds the ``%%measure`` cell magic (:mod:`greenmaas.integrations.ipython`).
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

if TYPE_CHECKING:
    import pandas as pd

    from .ledger import Ledger
    from .reporting.summary import Summary
    from .spans import SpanResult

__all__ = ["summary_html", "span_result_html", "runs_html", "runs", "RunList", "table_html"]

_J_PER_KWH = 3.6e6
_TABLE = "border-collapse:collapse;font-variant-numeric:tabular-nums;margin:0.3em 0"
_CELL = "padding:0.2em 0.6em;border-bottom:1px solid #ddd"
_NOTE = "color:#555;font-size:90%;margin:0.2em 0"


def _amount(value: Any, missing: str = "") -> str:
    from .reporting.modelcard import format_amount

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format_amount(float(value), missing=missing)


def _fixed(digits: int) -> Callable[[Any], str]:
    def fmt(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return f"{float(value):,.{digits}f}"

    return fmt


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    return str(value)


def table_html(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str, Callable[[Any], str]]],
    *,
    caption: str | None = None,
) -> str:
    """A table of ``rows``: ``columns`` are ``(key, header, format)``; numbers align right."""
    out = [f'<table class="greenmaas" style="{_TABLE}">']
    if caption:
        out.append(f'<caption style="text-align:left;font-weight:bold">{escape(caption)}</caption>')
    out.append("<thead><tr>")
    out += [f'<th style="{_CELL};text-align:left">{escape(header)}</th>' for _, header, _ in columns]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for key, _, fmt in columns:
            value = row.get(key)
            align = "right" if isinstance(value, (int, float)) and not isinstance(value, bool) else "left"
            out.append(f'<td style="{_CELL};text-align:{align}">{escape(fmt(value))}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _notes(lines: Iterable[str]) -> str:
    items = "".join(f"<li>{escape(line)}</li>" for line in lines)
    return f'<ul style="{_NOTE}">{items}</ul>' if items else ""


# ---------------------------------------------------------------------------- summaries

def summary_html(s: "Summary") -> str:
    """A summary as Jupyter shows it: its table (columns nobody recorded left out), then the
    sources, methods, period and notes its figures rest on."""
    from .reporting.modelcard import source_lines
    from .reporting.summary import GROUP_HEADERS

    rows = [dict(r) for r in s.rows]
    for r in rows:
        r["energy_kwh"] = None if r.get("energy_j") is None else r["energy_j"] / _J_PER_KWH
    present = {k for r in rows for k, v in r.items() if v is not None}
    currencies = {r.get("currency") for r in rows if r.get("currency")}
    money = f" ({next(iter(currencies))})" if len(currencies) == 1 else ""
    candidates: list[tuple[str, str, Callable[[Any], str]]] = [
        ("group", GROUP_HEADERS.get(s.by, s.by), _text),
        ("spans", "Spans", _text),
        ("duration_s", "Duration (s)", _fixed(1)),
        ("energy_j", "Energy (J)", _fixed(1)),
        ("energy_kwh", "Energy (kWh)", _amount),
        ("uncertainty_j", "± J", _fixed(1)),
        ("method", "Method", _text),
        ("carbon_g", "Carbon (gCO2e)", _amount),
        ("carbon_market_g", "Carbon, market-based (gCO2e)", _amount),
        ("energy_cost", f"Energy cost{money}", _amount),
        ("hardware_cost", f"Hardware cost{money}", _amount),
        ("cost", f"Cost{money}", _amount),
        ("sci_g", f"SCI (gCO2e/{s.sci})" if s.sci else "SCI (gCO2e)", lambda v: _amount(v, "n/a")),
    ]
    if len(currencies) > 1:
        candidates.append(("currency", "Currency", _text))
    columns = [c for c in candidates if c[0] in present or c[0] in ("group", "spans", "energy_j")]
    if not s.rows:
        return f"<div><p>No spans in this selection.</p>{_notes(source_lines(s))}</div>"
    caption = f"Energy, carbon and cost by {s.by}"
    return f"<div>{table_html(rows, columns, caption=caption)}{_notes(source_lines(s))}</div>"


# ---------------------------------------------------------------------------- span results


def span_result_html(result: "SpanResult", name: str | None = None) -> str:
    """One span's result: duration, energy ± J, method, carbon and cost where priced, then its
    energy by device. A provisional result says so."""
    unc = "" if result.uncertainty_j is None else f" ± {result.uncertainty_j:,.3f}"
    rows: list[tuple[str, str]] = [
        ("Duration", f"{result.duration_s:,.3f} s"),
        ("Energy", f"{result.energy_j:,.3f}{unc} J" if not math.isnan(result.energy_j) else "not measured"),
        ("Method", result.method),
    ]
    if result.carbon_g is not None:
        rows.append(("Carbon", f"{_amount(result.carbon_g)} gCO2e"))
    if result.cost is not None:
        rows.append(("Cost", f"{_amount(result.cost)} {result.currency or ''}".rstrip()))
    if result.gap_s:
        rows.append(("Unread", f"{result.gap_s:,.3f} s (a device could not be read)"))
    if not result.final:
        rows.append(("Final", "no: provisional, the devices' energy has not all settled yet"))
    body = "".join(
        f'<tr><th style="{_CELL};text-align:left">{escape(k)}</th><td style="{_CELL}">{escape(v)}</td></tr>'
        for k, v in rows
    )
    caption = f'<caption style="text-align:left;font-weight:bold">{escape(name)}</caption>' if name else ""
    head = f'<table class="greenmaas" style="{_TABLE}">{caption}{body}</table>'
    if len(result.by_device_j) <= 1:
        return f"<div>{head}</div>"
    devices = [
        {"device": d, "energy_j": j, "method": result.methods.get(d), "device_s": result.device_s.get(d)}
        for d, j in sorted(result.by_device_j.items())
    ]
    table = table_html(devices, [("device", "Device", _text), ("energy_j", "Energy (J)", _fixed(3)),
                                 ("method", "Method", _text), ("device_s", "Device time (s)", _fixed(3))])
    return f"<div>{head}{table}</div>"


# ---------------------------------------------------------------------------- runs

_RUN_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("run_id", "Run", _text),
    ("host", "Host", _text),
    ("start", "Start (UTC)", _text),
    ("end", "End (UTC)", _text),
    ("status", "Status", _text),
    ("spans", "Spans", _text),
    ("energy_j", "Energy (J)", _fixed(1)),
]


def runs_html(rows: Sequence[dict[str, Any]]) -> str:
    """The runs of :func:`greenmaas.reporting.listings.list_runs` as a table."""
    if not rows:
        return "<div><p>No runs in this ledger.</p></div>"
    return f"<div>{table_html(rows, _RUN_COLUMNS, caption=f'Runs ({len(rows)})')}</div>"


class RunList(list):
    """The ledger's runs (dicts, oldest first), shown as a table in Jupyter."""

    def _repr_html_(self) -> str:
        return runs_html(self)

    def to_frame(self) -> "pd.DataFrame":
        """The runs as a DataFrame indexed by ``run_id``."""
        import pandas as pd

        columns = ["run_id", "host", "pid", "start", "end", "status", "heartbeat", "spans", "energy_j"]
        frame = pd.DataFrame.from_records(list(self), columns=columns)
        for c in ("start", "end", "heartbeat"):
            frame[c] = pd.to_datetime(frame[c], utc=True)
        return frame.set_index("run_id")


def runs(ledger_or_url: "Ledger | str | os.PathLike | None" = None) -> RunList:
    """The ledger's runs (:func:`greenmaas.reporting.listings.list_runs`), shown as a table in Jupyter."""
    from .reporting.listings import list_runs

    return RunList(list_runs(ledger_or_url))
