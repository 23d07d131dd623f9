"""Turn rows (lists of dicts) into a rich table, CSV, JSON or a GitHub markdown table.

Machine formats (CSV, JSON) keep raw values and the row keys (units are in the names:
``energy_j``); human formats (table, markdown) use each column's header, with its unit, and end
with a total line for the columns that add up.
"""

from __future__ import annotations

import csv
import json
import sys
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Callable, Iterator, Sequence

import click

__all__ = ["Column", "render", "render_stream", "format_value", "write_document", "output_to", "progress_steps"]


@dataclass(frozen=True)
class Column:
    """One output column.

    ``key`` is the row key (and the CSV/JSON name); ``header`` the table label, unit included.
    ``kind`` is ``str``, ``int``, ``float`` (``digits`` decimals), ``amount`` (three significant
    digits for small values: grams, money) or ``time``. ``total`` adds the column up in the total
    line. ``value`` derives a display-only column from the row (e.g. kWh); such columns are left
    out of CSV and JSON, which carry the raw keys only. ``missing`` is shown for None in tables
    (``n/a``). ``show`` is ``all``, ``human`` (table, markdown) or ``machine`` (CSV, JSON).
    """

    key: str
    header: str
    kind: str = "str"
    digits: int = 1
    total: bool = False
    value: Callable[[dict], Any] | None = None
    missing: str = ""
    show: str = "all"

    def get(self, row: dict) -> Any:
        return self.value(row) if self.value is not None else row.get(self.key)


def format_value(value: Any, column: Column) -> str:
    if value is None:
        return column.missing
    if column.kind == "amount":
        from greenmaas.reporting.modelcard import format_amount

        return format_amount(value, missing=column.missing)
    if column.kind == "float":
        return f"{float(value):,.{column.digits}f}"
    if column.kind == "int":
        return f"{int(value):,}"
    if column.kind == "time" and isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


_NUMERIC = frozenset({"int", "float", "amount"})


def _total_cell(total: dict, column: Column, position: int) -> str:
    if position == 0 or column.total:
        value = total.get(column.key)
        return "" if value is None else format_value(value, column)
    return ""


def _total_row(rows: Sequence[dict], columns: Sequence[Column], label: str) -> dict:
    total: dict[str, Any] = {}
    for c in columns:
        if c.total:
            values = [c.get(r) for r in rows if c.get(r) is not None]
            total[c.key] = sum(values) if values else None
    total[columns[0].key] = label
    return total


def render(
    rows: Sequence[dict],
    columns: Sequence[Column],
    fmt: str,
    *,
    title: str | None = None,
    total_label: str | None = "Total",
    after: str | None = None,
    totals_of: Sequence[dict] | None = None,
) -> None:
    """Write ``rows`` to stdout in ``fmt`` (``table``, ``csv``, ``json`` or ``markdown``).

    ``after`` is text printed after a table or markdown table (a footer, more sections); machine
    formats leave it out so that they stay a plain list of rows. ``totals_of``: the rows the total
    line adds up, where ``rows`` shows only some of them.
    """
    out = sys.stdout
    raw = [c for c in columns if c.value is None and c.show != "human"]
    columns = [c for c in columns if c.show != "machine"]
    if fmt == "json":
        data = [{c.key: r.get(c.key) for c in raw} for r in rows]
        out.write(json.dumps(data, indent=2, default=_json_default) + "\n")
        return
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([c.key for c in raw])
        for r in rows:
            writer.writerow(
                ["" if r.get(c.key) is None else _csv_value(r.get(c.key)) for c in raw]
            )
        return

    shown = list(rows)
    has_total = bool(rows) and any(c.total for c in columns)
    summed = rows if totals_of is None else totals_of
    total = _total_row(summed, columns, total_label) if has_total and total_label is not None else None
    if fmt == "markdown":
        right = _NUMERIC
        lines = [
            "| " + " | ".join(c.header for c in columns) + " |",
            "|" + "|".join("---:" if c.kind in right else "---" for c in columns) + "|",
        ]
        for r in shown:
            lines.append("| " + " | ".join(_md(format_value(c.get(r), c)) for c in columns) + " |")
        if total is not None:
            cells = [_total_cell(total, c, i) for i, c in enumerate(columns)]
            lines.append("| " + " | ".join(f"**{_md(x)}**" if x else "" for x in cells) + " |")
        if title:
            out.write(f"**{_md(title)}**\n\n")
        out.write("\n".join(lines) + "\n")
        if after:
            out.write("\n" + after.rstrip("\n") + "\n")
        return
    if fmt == "table":
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text  # plain text: a model called "x[1]" is not rich markup

        table = Table(title=title, show_footer=total is not None)
        for c in columns:
            footer = _total_cell(total, c, len(table.columns)) if total is not None else ""
            table.add_column(Text(c.header), footer=Text(footer), justify="right" if c.kind in _NUMERIC else "left")
        for r in shown:
            table.add_row(*(Text(format_value(c.get(r), c)) for c in columns))
        Console(file=out, width=None if out.isatty() else 160).print(table)
        if after:
            out.write(after.rstrip("\n") + "\n")
        return
    raise click.UsageError(f"unknown format {fmt!r}")


def render_stream(rows: Iterator[dict], columns: Sequence[Column], fmt: str) -> None:
    """Write ``rows`` to stdout as CSV or JSON as they come, holding none of them: the same keys
    and values as :func:`render`; JSON is one array with an object per line."""
    out = sys.stdout
    raw = [c.key for c in columns if c.value is None and c.show != "human"]
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(raw)
        for r in rows:
            writer.writerow(["" if r.get(k) is None else _csv_value(r.get(k)) for k in raw])
        return
    if fmt != "json":
        raise click.UsageError(f"rows cannot be streamed as {fmt!r}")
    encode = json.JSONEncoder(default=_json_default).encode
    separator = "[\n  "
    keys = tuple(raw)
    for r in rows:
        # A row that holds exactly the columns, in order (a report's rows do), is written as is.
        out.write(separator + encode(r if tuple(r) == keys else {k: r.get(k) for k in raw}))
        separator = ",\n  "
    out.write("[]\n" if separator.startswith("[") else "\n]\n")


def _csv_value(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return value


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _open_output(path: str) -> Any:
    from .options import UserError

    try:
        return open(path, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise UserError(f"--output {path}: cannot write: {exc.strerror or exc}") from exc


def write_document(text: str, output: str | None) -> None:
    """Write a document to ``output`` (a path), or to stdout when None."""
    if output is None:
        sys.stdout.write(text)
        return
    with _open_output(output) as fh:
        fh.write(text)
    click.echo(f"Wrote {output}", err=True)


@contextmanager
def output_to(output: str) -> Iterator[None]:
    """Send what a command writes to stdout into the file ``output`` instead."""
    with _open_output(output) as fh, redirect_stdout(fh):
        yield


@contextmanager
def progress_steps(title: str, steps: Sequence[str]) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on stderr over named ``steps``; yields ``step(name)``, to call as each
    one starts. Shown only on a terminal: pipes and files get nothing."""
    if not sys.stderr.isatty():
        yield lambda _name: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(title, total=len(steps))
        seen: list[str] = []

        def step(name: str) -> None:
            if seen:
                bar.advance(task)
            seen.append(name)
            bar.update(task, description=f"{title}: {name}")

        yield step
