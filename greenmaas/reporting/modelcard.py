"""What a report rests on, in words: a short sources footer, a markdown sources section, and a
model card per model.

Every statement names the location and where it came from (``location_source``: configured,
env or default — the default is the world average and is always said so), the grid intensity
with its data set and data year, the PUE (1.0 unless set), the tariff and currency, and the
measurement method with the uncertainty greenmaas states for it
(:data:`greenmaas.sources.base.METHOD_UNCERTAINTY`), and beside each energy its ± J: the one
recorded with the spans, or where none was (ledgers written before schema 2) the method's stated
figure, said so. Plain text and plain GitHub markdown.

>>> from greenmaas.reporting.summary import summary
>>> from greenmaas.reporting.modelcard import model_cards
>>> print(model_cards(summary("greenmaas.db", by="model")))
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from ..errors import ConfigError
from .summary import IDLE, NONE, Summary

__all__ = [
    "METHOD_TEXT",
    "format_amount",
    "plus_minus",
    "method_text",
    "source_text",
    "source_lines",
    "sources_markdown",
    "model_cards",
]

#: What each measurement method is, for readers.
METHOD_TEXT = {
    "counter": "hardware energy counter (NVML total energy, RAPL)",
    "power": "power samples integrated over time",
    "replay": "replayed from a recorded trace",
    "estimate": "estimate from a model (CPU TDP × utilisation), not a measurement",
    "unmeasurable": "could not be measured: no energy figure (never 0 J)",
}
_UNITS = {"request": "request", "token": "token", "sample": "sample"}


def format_amount(value: float | None, *, missing: str = "") -> str:
    """A number for people: thousands separated, small values with three significant digits.

    ``1234.5`` → ``1,234``, ``12.345`` → ``12.35``, ``0.0001234`` → ``0.000123``.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    v = float(value)
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 1:
        return f"{v:,.2f}"
    decimals = min(12, 2 - math.floor(math.log10(a)))
    return f"{v:.{decimals}f}"


def plus_minus(row: dict[str, Any]) -> str:
    """`` ± 50.0 J`` for a report row, `` ± 50.0 J (the method's stated uncertainty: none recorded)``
    where it is not a recorded figure; empty where there is none."""
    u = row.get("uncertainty_j")
    if u is None or (isinstance(u, float) and math.isnan(u)):
        return ""
    source = row.get("uncertainty_source")
    why = {"stated": " (the method's stated uncertainty: none recorded)",
           "mixed": " (partly the method's stated uncertainty: not all recorded)"}.get(source or "", "")
    return f" ± {u:,.1f} J{why}"


def _measured(m: dict[str, Any]) -> str:
    """``3 spans`` and, where known, the ± J of their energy: ``3 spans; ± 60.0 J``."""
    text = _plural(m["spans"], "span")
    if m.get("uncertainty_j") is not None:
        text += f"; ± {m['uncertainty_j']:,.1f} J"
    return text


def _pct(fraction: float | None) -> str:
    return "uncertainty not stated" if fraction is None else f"±{fraction * 100:g}%"


def method_text(method: str, uncertainty: float | None = None) -> str:
    """``counter — hardware energy counter (...), stated uncertainty ±5%``."""
    from ..sources.base import METHOD_UNCERTAINTY

    if uncertainty is None:
        uncertainty = METHOD_UNCERTAINTY.get(method)
    what = METHOD_TEXT.get(method, method)
    if method == "unmeasurable":
        return f"{method} — {what}"
    return f"{method} — {what}, stated uncertainty {_pct(uncertainty)}"


def _g(value: float) -> str:
    """An intensity or PUE: ``56.04``, ``475``, ``1.0``."""
    text = f"{float(value):.4g}"
    return text if any(c in text for c in ".e") else f"{text}.0" if len(text) == 1 else text


def _intensity(src: dict[str, Any]) -> str:
    series = src.get("intensity_series")
    if series:
        return (f"time-varying (location-based), mean {_g(series['mean_g_per_kwh'])} gCO2e/kWh — "
                f"{series['source']}, {series['points']} points, {series['first']}..{series['last']}")
    year = src.get("intensity_year")
    year_text = f"data year {year}" if year else "data year not stated"
    return f"{_g(src['intensity_g_per_kwh'])} gCO2e/kWh (location-based) — {src['intensity_source']}, {year_text}"


def _location(src: dict[str, Any]) -> str:
    if src["location_source"] == "default":
        return "world average, location_source default (no location configured)"
    return f"{src['location']}, location_source {src['location_source']}"


def _pue(src: dict[str, Any]) -> str:
    return f"PUE {_g(src['pue'])}" + (" (default: no facility overhead counted)" if src["pue"] == 1.0 else "")


def _prices(src: dict[str, Any]) -> str:
    parts = [f"tariff {src['price']}" if src.get("price") else "no tariff"]
    if src.get("tariff_timezone") and src["tariff_timezone"] != "UTC":
        parts[0] += f" (hours in {src['tariff_timezone']})"
    hw = src.get("hardware_prices") or {}
    parts.append("hardware " + ",".join(f"{k}={v}" for k, v in hw.items()) if hw else "no hardware price")
    parts.append(f"currency {src['currency']}" if src.get("currency") else "cost not priced")
    return "; ".join(parts)


def _embodied(src: dict[str, Any]) -> str | None:
    emb = src.get("embodied") or {}
    if not emb:
        return None
    return ",".join(f"{k}={e['kg_co2e']:g}kg/{e['lifetime_years']:g}y" for k, e in emb.items())


def _runs(runs: list[str]) -> str:
    shown = ", ".join(runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
    return f"run {shown}" if len(runs) == 1 else f"runs {shown}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _source_facts(src: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) pairs describing one accounting source."""
    facts = [("Location", _location(src)), ("Intensity", _intensity(src))]
    if src.get("market_intensity_g_per_kwh") is not None:
        facts.append(("Market-based", f"{_g(src['market_intensity_g_per_kwh'])} gCO2e/kWh, shown beside"))
    facts += [("PUE", _pue(src)[4:]), ("Prices", _prices(src))]
    emb = _embodied(src)
    if emb:
        facts.append(("Embodied", emb))
    return facts


def source_text(src: dict[str, Any]) -> str:
    """One accounting source in a line: location, intensity, PUE, prices (and which runs)."""
    text = "; ".join(f"{label.lower()} {value}" for label, value in _source_facts(src))
    return f"{text} [{_runs(src.get('runs') or [])}]"


def _period(first: datetime | None, last: datetime | None) -> str | None:
    if first is None or last is None:
        return None
    return f"{first:%Y-%m-%d %H:%M:%S} – {last:%Y-%m-%d %H:%M:%S} UTC"


def source_lines(s: Summary) -> list[str]:
    """The short footer a table prints: sources, methods, period, notes."""
    if not s.priced and not s.methods:
        return []
    lines = []
    for src in s.sources:
        lines.append(f"Sources ({_runs(src.get('runs') or [])}):")
        lines += [f"  {label}: {value}" for label, value in _source_facts(src)]
    for m in s.methods:
        lines.append(f"Method: {method_text(m['method'], m['uncertainty'])} ({_measured(m)})")
    period = _period(*s.period)
    if period:
        lines.append(f"Measured: {period}")
    lines += [f"Note: {n}" for n in s.notes]
    return lines


def sources_markdown(s: Summary) -> str:
    """A ``## Sources`` section in GitHub markdown."""
    out = ["## Sources", ""]
    for src in s.sources:
        out.append(f"- **Accounting** ({_runs(src.get('runs') or [])}):")
        out += [f"  - {label}: {_md(value)}" for label, value in _source_facts(src)]
    for m in s.methods:
        out.append(f"- **Method:** {_md(method_text(m['method'], m['uncertainty']))} ({_md(_measured(m))})")
    period = _period(*s.period)
    if period:
        out.append(f"- **Measured:** {period}")
    for n in s.notes:
        out.append(f"- **Note:** {_md(n)}")
    return "\n".join(out) + "\n"


def model_cards(s: Summary) -> str:
    """A ``## Model cards`` section: one ``### <model>`` card per model row of a by-model summary."""
    if s.by != "model":
        raise ConfigError(f"model cards need a summary by model, not by {s.by}")
    out = ["## Model cards", ""]
    for row in s.rows:
        if row["group"] == IDLE:
            continue
        out += _card(s, row)
    idle = next((r for r in s.rows if r["group"] == IDLE), None)
    if idle is not None:
        out.append(
            f"Energy used while no span ran (the `(idle)` row: {_kwh(idle['energy_j'])}{_md(plus_minus(idle))}"
            + (f", {format_amount(idle.get('carbon_g'))} gCO2e" if idle.get("carbon_g") is not None else "")
            + (f", {_money(idle.get('cost'), idle.get('currency'))}" if idle.get("cost") is not None else "")
            + ") is not charged to any model."
        )
        out.append("")
    return "\n".join(out)


def _kwh(energy_j: float | None) -> str:
    if energy_j is None:
        return "not measured"
    return f"{format_amount(energy_j / 3.6e6)} kWh ({energy_j:,.1f} J)"


def _money(value: float | None, currency: str | None) -> str:
    if value is None:
        return "not priced"
    return f"{format_amount(value)} {currency or ''}".rstrip()


def _card(s: Summary, row: dict[str, Any]) -> list[str]:
    name = row["group"]
    facts = s.groups.get(name, {})
    sources = [s.sources[i] for i in facts.get("sources", [])]
    title = "(spans without a model)" if name == NONE else name
    lines = [f"### {_md(title)}", ""]
    energy = (f"{_kwh(row['energy_j'])}{plus_minus(row)} of IT energy, {_plural(row['spans'], 'span')}, "
              f"{row['duration_s']:,.1f} s")
    pues = sorted({src["pue"] for src in sources})
    if pues and pues != [1.0] and row["energy_j"] is not None:
        energy += f"; PUE {', '.join(f'{p:g}' for p in pues)} applies to carbon and cost"
    lines.append(f"- **Energy:** {energy}")
    lines.append(f"- **Hardware:** {_md(', '.join(facts.get('devices') or []) or 'not recorded')}")
    several = len(sources) > 1
    for src in sources:
        runs = f" ({_runs(src['runs'])})" if several else ""
        lines.append(f"- **Location:** {_md(_location(src))}{runs}")
        lines.append(f"- **Grid intensity:** {_md(_intensity(src))}; {_pue(src)}")
    methods = facts.get("methods") or []
    by_method = {m["method"]: m["uncertainty"] for m in s.methods}
    for m in methods:
        lines.append(f"- **Measurement:** {_md(method_text(m, by_method.get(m)))}; carbon and cost inherit it "
                     "(grid-intensity uncertainty not included)")
    carbon = f"{format_amount(row.get('carbon_g'), missing='not computed')} gCO2e location-based"
    if "carbon_market_g" in row:
        carbon += f"; {format_amount(row['carbon_market_g'], missing='n/a')} gCO2e market-based"
    else:
        carbon += "; market-based: no market-based intensity given"
    lines.append(f"- **Carbon:** {carbon}")
    cost = _money(row.get("cost"), row.get("currency"))
    if row.get("cost") is not None:
        cost += (f" (electricity {_money(row.get('energy_cost'), row.get('currency'))}, "
                 f"hardware {_money(row.get('hardware_cost'), row.get('currency'))})")
        prices = sorted({_prices(src) for src in sources})
        cost += f" at {'; '.join(prices)}"
    else:
        cost += " (no tariff or hardware price given)" if row.get("currency") != "mixed" else " (mixed currencies)"
    lines.append(f"- **Cost:** {_md(cost)}")
    if s.sci is not None and "sci_unit" in row:
        unit = _UNITS[row["sci_unit"]]
        value = "n/a" if row.get("sci_g") is None else f"{format_amount(row['sci_g'])} gCO2e/{unit}"
        lines.append(
            f"- **SCI:** {value} (E·I {format_amount(row.get('sci_operational_g'))} g + "
            f"M {format_amount(row.get('sci_embodied_g'))} g, R = {_plural(row.get('functional_units') or 0, unit)})"
        )
    period = _period(facts.get("first"), facts.get("last"))
    if period:
        lines.append(f"- **Measured:** {period} ({_runs(facts.get('runs') or [])})")
    lines.append("")
    return lines


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
