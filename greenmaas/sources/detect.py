"""Find the energy sources this machine offers, and say why each one not used was left out.

Order of preference: NVML for GPUs; RAPL for CPU packages and DRAM; the CPU estimate only when
RAPL measures no CPU. No subprocesses, no network; a missing source is recorded, never raised.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import SourceError
from .base import Detection, Unused

__all__ = ["detect"]


def detect(
    *,
    nvml: Any = None,
    rapl_root: str | os.PathLike[str] = "/sys/class/powercap",
    cpu_model: str | None = None,
    include_estimate: bool = True,
    visible_devices: str | None = None,
    host_devices: bool = True,
) -> Detection:
    """Open every source that works here.

    ``nvml`` and ``visible_devices`` (``CUDA_VISIBLE_DEVICES`` syntax; default that variable)
    are passed to :class:`~greenmaas.sources.nvml.NvmlSource` (default: pynvml);
    ``rapl_root`` to :class:`~greenmaas.sources.rapl.RaplSource`; ``cpu_model`` to
    :class:`~greenmaas.sources.cpu_estimate.CpuEstimateSource`, which is used only when RAPL
    gives no CPU device and ``include_estimate`` is true. Each method not used is listed in
    ``Detection.unused`` with its reason. ``host_devices=False`` leaves RAPL and the estimate out
    (another process on this host measures them). The caller closes the sources (``Source.close``).
    """
    found = Detection()

    from .nvml import NvmlSource  # noqa: PLC0415 - keep importing greenmaas.sources cheap

    try:
        gpus = NvmlSource(nvml=nvml, visible_devices=visible_devices)
    except SourceError as exc:
        found.unused.append(Unused("nvml", str(exc)))
    else:
        if gpus.devices():
            found.sources.append(gpus)
        else:
            visible = gpus.visible_devices
            gpus.close()
            why = "no GPU found" if visible is None else f"no GPU visible (CUDA_VISIBLE_DEVICES={visible!r})"
            found.unused.append(Unused("nvml", f"NVML: {why}"))

    if not host_devices:
        why = "host devices are measured once per host, by local rank 0 (greenmaas.distributed)"
        found.unused.extend(Unused(name, why) for name in ("rapl", "cpu-estimate"))
        return found

    from .rapl import RaplSource  # noqa: PLC0415

    rapl_measures_cpu = False
    try:
        rapl = RaplSource(rapl_root)
    except SourceError as exc:
        found.unused.append(Unused("rapl", str(exc)))
    else:
        found.sources.append(rapl)
        rapl_measures_cpu = any(d.kind == "cpu" for d in rapl.devices())

    if rapl_measures_cpu:
        found.unused.append(Unused("cpu-estimate", "not needed: RAPL measures the CPU"))
    elif not include_estimate:
        found.unused.append(Unused("cpu-estimate", "not requested (include_estimate=False)"))
    else:
        from .cpu_estimate import CpuEstimateSource  # noqa: PLC0415

        try:
            found.sources.append(CpuEstimateSource(cpu_model=cpu_model))
        except SourceError as exc:
            found.unused.append(Unused("cpu-estimate", str(exc)))
    return found
