"""Energy sources: where joules and watts come from.

* :class:`NvmlSource` — NVIDIA GPUs through NVML (counter, else power, else unmeasurable).
* :class:`RaplSource` — CPU packages and DRAM from the Linux powercap tree.
* :class:`CpuEstimateSource` — a labelled TDP × utilisation estimate when RAPL is absent.
* :class:`ReplaySource` and :func:`load_trace` — recorded traces, replayed against a clock.
* :func:`detect` — every source that works on this machine, and why the others were left out.

The interface they share (:class:`Source`, :class:`Device`, :class:`Reading`) is in
:mod:`greenmaas.sources.base`. None of these imports pynvml until an NVML source is built.
"""

from __future__ import annotations

from .base import Detection, Device, Reading, Source, Unused
from .cpu_estimate import CpuEstimateSource
from .detect import detect
from .nvml import NvmlSource
from .rapl import RaplSource
from .replay import ReplaySource, TraceData, load_trace

__all__ = [
    "Source",
    "Device",
    "Reading",
    "Unused",
    "Detection",
    "NvmlSource",
    "RaplSource",
    "CpuEstimateSource",
    "ReplaySource",
    "TraceData",
    "load_trace",
    "detect",
]
