"""The energy source interface.

A source lists its devices and reads them. A reading is cumulative energy in joules, instantaneous
power in watts, or both, plus the method that produced it. The sampler stamps each reading with
its own monotonic clock right after the read returns, so sources need no clock of their own
(the replay source is the exception: it answers "what was the value at time t").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

__all__ = [
    "POWER_FIELDS",
    "COUNTER",
    "POWER",
    "ESTIMATE",
    "REPLAY",
    "UNMEASURABLE",
    "METHODS",
    "Device",
    "Reading",
    "Source",
    "Unused",
    "Detection",
    "METHOD_UNCERTAINTY",
    "weakest_method",
    "method_rank",
]

#: A hardware cumulative energy counter (NVML total energy, RAPL energy_uj).
COUNTER = "counter"
#: Instantaneous power samples integrated over time.
POWER = "power"
#: A model, not a measurement (e.g. CPU TDP scaled by utilisation).
ESTIMATE = "estimate"
#: Values replayed from a recorded trace.
REPLAY = "replay"
#: The device exists but nothing about its energy can be read. Never reported as 0 J.
UNMEASURABLE = "unmeasurable"

METHODS = (COUNTER, POWER, ESTIMATE, REPLAY, UNMEASURABLE)

#: Kinds of power field (see :attr:`Device.power_field`) and the averaging window of each (s):
#: how long before a read the power it reports was drawn, for integrating power-only devices.
POWER_FIELDS = {"instant": 0.0, "average_1s": 1.0, "part_time": 0.1}

#: Weakest first. A figure that combines devices carries the weakest of their methods.
_STRENGTH = (UNMEASURABLE, ESTIMATE, POWER, REPLAY, COUNTER)


def weakest_method(methods) -> str:
    """The weakest of ``methods`` (``unmeasurable`` when there are none)."""
    ms = set(methods)
    for m in _STRENGTH:
        if m in ms:
            return m
    return UNMEASURABLE


def method_rank(method: str) -> int:
    """Sort key listing methods strongest first (``counter`` is 0); a method not known sorts last."""
    return len(_STRENGTH) - 1 - _STRENGTH.index(method) if method in _STRENGTH else len(_STRENGTH)


#: Relative uncertainty we state for each method, for reports and model cards. Counter and power
#: figures follow the published NVML studies summarised in FIELD.md; the estimate is a TDP model.
METHOD_UNCERTAINTY = {
    COUNTER: 0.05,
    POWER: 0.10,
    ESTIMATE: 0.50,
    REPLAY: None,
    UNMEASURABLE: None,
}


@dataclass(frozen=True)
class Device:
    """One measurable device.

    ``id`` is stable within a host: ``gpu:0`` (index as the process sees it, after
    ``CUDA_VISIBLE_DEVICES``), ``cpu:0`` (RAPL package 0), ``dram:0``.
    """

    id: str
    kind: str  # "gpu", "cpu", "dram"
    name: str
    method: str
    uuid: str | None = None
    note: str | None = None  # e.g. "MIG instance: measuring parent GPU GPU-..."
    tdp_w: float | None = None
    #: What the power values in this device's readings are, as the source knows them:
    #: ``instant`` (a sample of the power at the read), ``average_1s`` (the mean over about the
    #: last second, nvmlDeviceGetPowerUsage on Ampere and newer), ``part_time`` (a value refreshed
    #: every ~100 ms holding the mean of a ~25 ms window), or None when readings carry no power.
    #: Only ``instant`` samples are used as the shape of power inside counter updates.
    power_field: str | None = None


@dataclass(frozen=True)
class Reading:
    """What one read of one device returned. Either field may be None, not both."""

    energy_j: float | None = None  # cumulative, raw (may wrap or reset; the timeline handles it)
    power_w: float | None = None
    max_energy_j: float | None = None  # counter wraps past this value (RAPL max_energy_range_uj)


@dataclass(frozen=True)
class Unused:
    """A method that was considered and not used, with the reason (for ``greenmaas devices``)."""

    source: str
    reason: str


class Source:
    """Base class for energy sources.

    Subclasses set ``name`` and implement :meth:`devices` and :meth:`read`. ``read`` raises
    :class:`~greenmaas.errors.DeviceReadError` for a device that fails; the sampler records the
    failure and keeps reading the others. ``close`` releases handles and is safe to call twice.
    """

    name: str = "source"

    def devices(self) -> Sequence[Device]:
        raise NotImplementedError

    def read(self, device_id: str) -> Reading:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Detection:
    """What auto-detection found: the sources to use, and each method not used with why."""

    sources: list[Source] = field(default_factory=list)
    unused: list[Unused] = field(default_factory=list)

    def devices(self) -> list[Device]:
        return [d for s in self.sources for d in s.devices()]
