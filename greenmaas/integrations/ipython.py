"""IPython and Jupyter: ``%load_ext greenmaas`` and the ``%%measure`` cell magic.

::

    %load_ext greenmaas

    %%measure fine-tune --model bert-tiny --phase training
    trainer.train()

measures the cell as one span and prints its result when the cell ends::

    fine-tune: 1,234.5 ± 3.2 J in 12.41 s (counter), 0.0571 gCO2e

The cell runs as any cell does (its magics, its output, its last value displayed); an exception
in it is shown as usual and the span is recorded with status ``error``. Options:

``--model M``, ``--phase P``
    tags of the span (``training``, ``inference`` or ``other``); omitted, they are inherited from
    an enclosing span, as with :func:`greenmaas.measure`.
``--meter VAR``
    the :class:`~greenmaas.Meter` held by ``VAR`` in the notebook's namespace; default the current
    meter (:func:`greenmaas.get_meter`: the process default, started on first use and recording
    to ``$GREENMAAS_LEDGER`` or ``./greenmaas.db``).
``--as VAR``
    also store the span in ``VAR`` (its ``result``, a :class:`~greenmaas.SpanResult`, renders as a
    table in Jupyter).
``--quiet``
    print nothing.

Bad options are a one-line usage error; the cell does not run.
"""

from __future__ import annotations

import math
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class

__all__ = ["load_ipython_extension", "MeasureMagics", "result_line"]


def result_line(name: str, result: Any) -> str:
    """``NAME: E ± U J in D s (method)``, with carbon and cost where priced and a word where the
    result is provisional or not measured."""
    if result.energy_j is None or math.isnan(result.energy_j):
        return f"{name}: not measured ({result.method}) in {result.duration_s:,.2f} s"
    unc = "" if result.uncertainty_j is None else f" ± {result.uncertainty_j:,.1f}"
    text = f"{name}: {result.energy_j:,.1f}{unc} J in {result.duration_s:,.2f} s ({result.method})"
    if result.carbon_g is not None:
        text += f", {result.carbon_g:.4g} gCO2e"
    if result.cost is not None:
        text += f", {result.cost:.4g} {result.currency or ''}".rstrip()
    if not result.final:
        text += " [provisional: the devices' energy had not all settled]"
    return text


def _parse(line: str) -> dict[str, Any]:
    """The options of ``%%measure NAME [--model M] [--phase P] [--meter VAR] [--as VAR] [--quiet]``."""
    usage = "usage: %%measure NAME [--model M] [--phase P] [--meter VAR] [--as VAR] [--quiet]"
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%%measure: {exc}; {usage}") from None
    out: dict[str, Any] = {"name": None, "model": None, "phase": None, "meter": None, "as": None, "quiet": False}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--quiet":
            out["quiet"] = True
        elif word in ("--model", "--phase", "--meter", "--as"):
            if i + 1 >= len(words) or words[i + 1].startswith("--"):
                raise UsageError(f"%%measure: {word} needs a value; {usage}")
            out[word[2:]] = words[i + 1]
            i += 1
        elif word.startswith("-"):
            raise UsageError(f"%%measure: unknown option {word!r}; {usage}")
        elif out["name"] is None:
            out["name"] = word
        else:
            raise UsageError(f"%%measure: one NAME only, got {out['name']!r} and {word!r} (quote a name with spaces)")
        i += 1
    if out["name"] is None:
        raise UsageError(f"%%measure: a span NAME is needed; {usage}")
    for key in ("meter", "as"):
        if out[key] is not None and not out[key].isidentifier():
            raise UsageError(f"%%measure: --{key} takes a variable name, not {out[key]!r}")
    return out


@magics_class
class MeasureMagics(Magics):
    """The ``%%measure`` cell magic (see the module doc)."""

    @cell_magic
    def measure(self, line: str, cell: str) -> None:
        from ..errors import ConfigError
        from ..meter import Meter, get_meter
        from ..spans import PHASES, Span

        opts = _parse(line)
        if opts["phase"] is not None and opts["phase"] not in PHASES:
            raise UsageError(f"%%measure: --phase must be one of {', '.join(PHASES)}, not {opts['phase']!r}")
        shell = self.shell
        if shell is None:  # a Magics object outside a shell
            raise UsageError("%%measure: no IPython shell")
        ns = shell.user_ns
        if opts["meter"] is not None:
            meter = ns.get(opts["meter"])
            if not isinstance(meter, Meter):
                what = "not defined" if opts["meter"] not in ns else f"a {type(meter).__name__}, not a greenmaas Meter"
                raise UsageError(f"%%measure: --meter {opts['meter']} is {what}")
        else:
            meter = get_meter()
        try:
            span = Span(opts["name"], meter=meter, model=opts["model"], phase=opts["phase"])
            span.__enter__()
        except ConfigError as exc:
            raise UsageError(f"%%measure: {exc}") from None
        error: BaseException | None = None
        try:
            outcome = shell.run_cell(cell, store_history=False)
            error = outcome.error_before_exec or outcome.error_in_exec
        except BaseException as exc:  # KeyboardInterrupt reaching us: record, then let it go on
            error = exc
            raise
        finally:
            span.__exit__(type(error) if error is not None else None, error, None)
            if opts["as"] is not None:
                ns[opts["as"]] = span
        if not opts["quiet"]:
            try:
                print(result_line(span.name, span.result))
            except Exception as exc:  # a result is never worth failing the cell over
                print(f"{span.name}: result unavailable: {exc}")


def load_ipython_extension(ip: Any) -> None:
    """Register ``%%measure`` with the IPython shell ``ip`` (what ``%load_ext greenmaas`` calls)."""
    ip.register_magics(MeasureMagics)
