"""Public fakes for testing code that measures energy, with no GPU and no sysfs.

* :class:`FakeClock` — monotonic time you advance by hand; :class:`TickingClock` moves on each read.
* :class:`FakeNVML` — an object with the ``pynvml`` functions the NVML source calls, driven by
  plain Python functions of time (counters, power, architectures, errors, visible devices).
* :class:`ReplaySource` — an energy source that replays a trace CSV against a clock.
* :func:`make_rapl_tree` — writes a powercap sysfs tree into a temporary directory.
* :class:`StaticSource` — a source whose devices read from functions you give it.
* :class:`SimulatedGPU` — a :class:`FakeGPU` that behaves like a data-centre GPU (stepping,
  jittered, resettable energy counter; instantaneous, 1 s averaged or part-time power) over a
  known true power, given as a function of time or a :class:`PowerTrace` (exact energies).
"""

from __future__ import annotations

from .clock import FakeClock, TickingClock

__all__ = [
    "FakeClock",
    "TickingClock",
    "FakeNVML",
    "FakeGPU",
    "ReplaySource",
    "make_rapl_tree",
    "StaticSource",
    "SimulatedGPU",
    "PowerTrace",
]


def __getattr__(name: str):
    if name in ("FakeNVML", "FakeGPU"):
        from . import nvml

        return getattr(nvml, name)
    if name == "make_rapl_tree":
        from .rapl import make_rapl_tree

        return make_rapl_tree
    if name == "ReplaySource":
        from ..sources.replay import ReplaySource

        return ReplaySource
    if name == "StaticSource":
        from .static import StaticSource

        return StaticSource
    if name in ("SimulatedGPU", "PowerTrace"):
        from . import sim

        return getattr(sim, name)
    raise AttributeError(name)
