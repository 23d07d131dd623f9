"""greenmaas: measured energy, carbon and cost per model and per request.

Two lines in a training loop::

    import greenmaas
    with greenmaas.measure("epoch-3", model="resnet50", phase="training"):
        train_one_epoch()

Importing greenmaas is cheap and has no side effects: no NVML initialisation, no subprocess, no
network, no logging configuration. Names below are loaded on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .errors import (
    AccountingError,
    AttributionError,
    ConfigError,
    DeviceReadError,
    GreenmaasError,
    InputError,
    LedgerError,
    SourceError,
    SourceUnavailable,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # spans and meters
    "Meter",
    "Span",
    "SpanResult",
    "measure",
    "request",
    "batch",
    "get_meter",
    "current_span",
    "bind",
    # serving
    "ServingMeter",
    # PyTorch
    "track_module",
    "track_optimizer",
    # analysis
    "read_ledger",
    "Ledger",
    "AccountingConfig",
    "detect",
    # errors
    "GreenmaasError",
    "ConfigError",
    "SourceError",
    "SourceUnavailable",
    "DeviceReadError",
    "InputError",
    "LedgerError",
    "AttributionError",
    "AccountingError",
    # IPython: %load_ext greenmaas
    "load_ipython_extension",
]

_LAZY = {
    "Meter": ".meter",
    "measure": ".meter",
    "request": ".meter",
    "batch": ".meter",
    "get_meter": ".meter",
    "Span": ".spans",
    "SpanResult": ".spans",
    "current_span": ".spans",
    "bind": ".spans",
    "ServingMeter": ".serving",
    "track_module": ".integrations.torch",
    "track_optimizer": ".integrations.torch",
    "read_ledger": ".reporting.frames",
    "Ledger": ".ledger.store",
    "AccountingConfig": ".accounting.config",
    "detect": ".sources.detect",
}


def load_ipython_extension(ip) -> None:
    """``%load_ext greenmaas``: adds the ``%%measure NAME [--model M] [--phase P]`` cell magic
    (:mod:`greenmaas.integrations.ipython`)."""
    from .integrations.ipython import load_ipython_extension as load

    load(ip)


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'greenmaas' has no attribute {name!r}")
    value = getattr(import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .accounting.config import AccountingConfig
    from .reporting.frames import read_ledger
    from .integrations.torch import track_module, track_optimizer
    from .ledger.store import Ledger
    from .meter import Meter, batch, get_meter, measure, request
    from .serving import ServingMeter
    from .sources.detect import detect
    from .spans import Span, SpanResult, bind, current_span
