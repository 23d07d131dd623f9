"""Integrations with ML frameworks.

Each integration lives in its own module and imports its framework only when used:
``import greenmaas.integrations`` imports no framework. The PyTorch one is
:mod:`greenmaas.integrations.torch` (``track_module``, ``track_optimizer``, ``epochs``, ``step``,
``epoch``); its names are also reachable here, importing torch on first access.

Others, each importing its framework when imported: :mod:`~greenmaas.integrations.hf`
(transformers ``GreenmaasCallback``), :mod:`~greenmaas.integrations.lightning` (Lightning
``GreenmaasCallback``), :mod:`~greenmaas.integrations.ipython` (``%%measure``) and
:mod:`~greenmaas.integrations.mlflow` (``log_run``, ``logged``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["track_module", "track_optimizer", "epochs", "step", "epoch", "TrackHandle"]

_TORCH_NAMES = frozenset(__all__)


def __getattr__(name: str) -> Any:
    if name == "torch":
        return importlib.import_module(".torch", __name__)
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(".torch", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__, "torch"])
