"""Everything a person reads: report tables, model cards, DataFrames, an HTML page with plots,
regulator documents and standard exports. It reads the ledger through
:mod:`greenmaas.ledger.query` and prices through :mod:`greenmaas.accounting`.

* :mod:`~greenmaas.reporting.summary` — energy, carbon and cost per group (``summary``), and per
  request a page at a time (``request_rows``); :mod:`~greenmaas.reporting.rollup` prices the
  ledger's sums, :mod:`~greenmaas.reporting.pricing` span by span (the reference); :mod:`~greenmaas.reporting.listings` lists runs and device totals.
* :mod:`~greenmaas.reporting.modelcard` — model-card text; :mod:`~greenmaas.reporting.frames` —
  ``read_ledger`` DataFrames.
* :func:`html_report` — one self-contained HTML page (tables and inline SVG plots).
* :func:`eu_ai_act` — the energy fields of EU AI Act Annex XI §2(d)–(e) and of the General-Purpose
  AI Code of Practice model documentation form that a ledger can fill (markdown or JSON).
* :func:`sci_form` — the Green Software Foundation SCI figure with its terms.
* :func:`boamps_report` and :func:`validate_boamps` — a Boavizta BoAmps energy report (JSON),
  checked against its published schema (shipped with greenmaas).

The modules once at the package's top level (``greenmaas.report``, ``greenmaas.pricing``,
``greenmaas.listings``, ``greenmaas.modelcard``, ``greenmaas.analysis``, ``greenmaas.rollup``)
are the same modules under their old names. Each module here is imported when first used.
"""

from __future__ import annotations

__all__ = ["html_report", "eu_ai_act", "sci_form", "boamps_report", "validate_boamps"]

_WHERE = {
    "html_report": "html",
    "eu_ai_act": "euaiact",
    "sci_form": "exports",
    "boamps_report": "exports",
    "validate_boamps": "exports",
}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(name)
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
