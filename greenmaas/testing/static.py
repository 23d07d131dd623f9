"""A source whose devices are read from plain functions of time."""

from __future__ import annotations

from typing import Callable, Mapping

from ..clock import Clock
from ..errors import DeviceReadError
from ..sources.base import COUNTER, POWER, Device, Reading, Source

__all__ = ["StaticSource"]


class StaticSource(Source):
    """Devices whose energy (cumulative J) and/or power (W) are functions of clock time.

    ``StaticSource(clock, {"gpu:0": {"energy_j": lambda t: 300 * t, "power_w": lambda t: 300}})``.
    A function that raises makes that read fail, as a real device would.
    """

    name = "static"

    def __init__(self, clock: Clock, devices: Mapping[str, Mapping[str, Callable[[float], float]]]):
        self._clock = clock
        self._fns = {k: dict(v) for k, v in devices.items()}

    def devices(self) -> list[Device]:
        out = []
        for dev_id, fns in self._fns.items():
            kind = dev_id.split(":", 1)[0]
            method = COUNTER if "energy_j" in fns else POWER
            field = "instant" if "power_w" in fns else None  # a function of time at the read
            out.append(Device(id=dev_id, kind=kind, name=f"static {dev_id}", method=method, power_field=field))
        return out

    def read(self, device_id: str) -> Reading:
        fns = self._fns[device_id]
        t = self._clock.monotonic()
        try:
            e = fns["energy_j"](t) if "energy_j" in fns else None
            p = fns["power_w"](t) if "power_w" in fns else None
        except Exception as exc:  # the function stands for a device; its failure is a read error
            raise DeviceReadError(f"{device_id}: {exc}") from exc
        return Reading(energy_j=e, power_w=p)
