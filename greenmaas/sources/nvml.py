"""NVIDIA GPU energy through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``).

:class:`NvmlSource` lists the GPUs this process can see (``CUDA_VISIBLE_DEVICES`` honoured, mapped
by UUID) and reads, per GPU, the best figure NVML offers:

* ``counter`` — ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded; Volta and
  newer), read together with instantaneous power so the timeline can shape the energy inside the
  counter's ~100 ms steps;
* ``power`` — no counter: the ``NVML_FI_DEV_POWER_INSTANT`` field, else ``nvmlDeviceGetPowerUsage``
  (which averages over ~1 s on Ampere and newer), integrated by the timeline;
* ``unmeasurable`` — neither works (some virtual GPUs, old cards). Such a GPU is listed so reports
  can say so, and every read of it raises :class:`~greenmaas.errors.DeviceReadError`: it is never
  reported as 0 J.

Each device states what its power values are (:attr:`~greenmaas.sources.base.Device.power_field`):
``instant`` when the ``NVML_FI_DEV_POWER_INSTANT`` field answers, ``average_1s`` for
``nvmlDeviceGetPowerUsage`` on Ampere and newer (or an architecture NVML does not report),
``instant`` for it on older GPUs, None when no power is read. NVML cannot tell a part-time field
(a value refreshed every ~100 ms holding a ~25 ms mean, as measured on A100/H100) from an instant
one, so such a field is labelled ``instant``; the timeline detects held values itself. A device
reads one kind of power only: when the instant field fails at a read, that read has no power
(``power_w=None`` beside the counter; a :class:`~greenmaas.errors.DeviceReadError` for a
power-only device) rather than an averaged value mixed into a series of instant ones.

NVML errors become greenmaas errors in one place, :func:`_translate`, re-raised ``from`` the
original. ``pynvml`` is imported when a source is built, never when greenmaas is imported.
"""

from __future__ import annotations

import math
import os
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from ..errors import DeviceReadError, SourceError, SourceUnavailable
from .base import COUNTER, POWER, UNMEASURABLE, Device, Reading, Source

__all__ = ["NvmlSource"]

# pynvml's codes, used only where the module under use lacks the constant.
_CODES = {
    "NVML_SUCCESS": 0,
    "NVML_ERROR_NOT_SUPPORTED": 3,
    "NVML_ERROR_NOT_FOUND": 6,
    "NVML_ERROR_NO_PERMISSION": 4,
    "NVML_ERROR_DRIVER_NOT_LOADED": 9,
    "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": 18,
    "NVML_DEVICE_ARCH_VOLTA": 5,
    "NVML_DEVICE_ARCH_AMPERE": 7,
    "NVML_FI_DEV_POWER_INSTANT": 186,
    "NVML_DEVICE_MIG_ENABLE": 1,
}

# c_nvmlFieldValue_t.value is a union; valueType says which member holds the number.
_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}

_INSTANT = "instant"  # power from the NVML_FI_DEV_POWER_INSTANT field
_USAGE = "usage"  # power from nvmlDeviceGetPowerUsage


def _const(nvml: Any, name: str) -> int:
    return getattr(nvml, name, _CODES[name])


def _describe(exc: BaseException) -> str:
    """NVML's text for an error; pynvml's ``str()`` can itself call into the library."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a description must never raise
        text = ""
    code = getattr(exc, "value", None)
    return text or f"NVML error {code}"


@contextmanager
def _translate(nvml: Any, error: type[SourceError], what: str) -> Iterator[None]:
    """The boundary where NVML errors become ``error(f"{what}: <NVML's text>")``."""
    try:
        yield
    except nvml.NVMLError as exc:
        raise error(f"{what}: {_describe(exc)}") from exc


def _init_reason(nvml: Any, exc: BaseException) -> str:
    """A short, actionable reason for an nvmlInit failure."""
    code = getattr(exc, "value", None)
    if code == _const(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND"):
        return "NVML library not found (libnvidia-ml.so.1)"
    if code == _const(nvml, "NVML_ERROR_DRIVER_NOT_LOADED"):
        return "NVML: driver not loaded"
    if code == _const(nvml, "NVML_ERROR_NO_PERMISSION"):
        return "NVML: insufficient permissions to initialise"
    if code == _const(nvml, "NVML_ERROR_LIB_RM_VERSION_MISMATCH"):
        return "NVML: library and kernel driver versions differ (reload the driver or reboot)"
    return f"NVML: initialisation failed ({_describe(exc)})"


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except nvml.NVMLError:
        pass  # nothing useful to do about a failing shutdown


@dataclass
class _HostGpu:
    """One GPU as NVML indexes it on the host."""

    index: int
    handle: Any = None
    uuid: str | None = None
    error: str | None = None  # why NVML could not open it


@dataclass
class _Choice:
    """One visible device: a host GPU, or a MIG instance measured through its parent."""

    host: _HostGpu
    mig_uuid: str | None = None


@dataclass
class _Plan:
    """How one visible device is read."""

    device: Device
    handle: Any
    power: str | None = None  # _INSTANT, _USAGE or None


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlSource(Source):
    """Energy of the NVIDIA GPUs visible to this process.

    ``nvml`` is a module-like object with pynvml's functions and constants (default: ``pynvml``,
    imported here; tests pass :class:`greenmaas.testing.FakeNVML`). ``visible_devices`` has the
    syntax of ``CUDA_VISIBLE_DEVICES`` and defaults to it: unset means every GPU; otherwise a
    comma-separated list of indices, of ``GPU-<uuid>`` (full or a unique prefix) or of
    ``MIG-<uuid>``; an empty string or ``-1`` means none. As in CUDA, the first invalid entry ends
    the list and a device named twice empties it. Device ids are ``gpu:<i>`` with ``i`` the
    position in that list, i.e. the index CUDA gives the process.

    Indices are NVML's (PCI bus order); CUDA numbers GPUs the same way under
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and, on hosts with identical GPUs, by default too.

    NVML is initialised once per source and shut down by :meth:`close` (safe to call twice, and
    run at garbage collection if forgotten). Raises :class:`SourceUnavailable` when NVML cannot be
    loaded or initialised.
    """

    name = "nvml"
    #: 10 ms: enough reads per ~100 ms counter update to time each update to well under a
    #: millisecond, which is what resolves 10–600 ms requests (reports/accuracy.md: per-request
    #: median error below 0.1% and p90 below 1.5% at 10 ms reads). Two NVML calls per read cost
    #: well under a millisecond.
    default_period_s = 0.01

    def __init__(self, nvml: Any = None, visible_devices: str | Sequence[str] | None = None) -> None:
        if nvml is None:
            try:
                import pynvml  # noqa: PLC0415 - lazily: importing greenmaas stays cheap
            except ImportError as exc:
                raise SourceUnavailable("NVML: the nvidia-ml-py package (pynvml) is not installed") from exc
            nvml = pynvml
        if visible_devices is None:
            visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        elif not isinstance(visible_devices, str):
            visible_devices = ",".join(visible_devices)
        self._nvml = nvml
        self.visible_devices = visible_devices
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise SourceUnavailable(_init_reason(nvml, exc)) from exc
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, nvml)
        try:
            self._plans = self._plan(visible_devices)
        except BaseException:
            self.close()
            raise
        self._devices = [p.device for p in self._plans.values()]

    # ------------------------------------------------------------------ Source interface

    def devices(self) -> list[Device]:
        return list(self._devices)

    def read(self, device_id: str) -> Reading:
        """Cumulative energy (J) and/or instantaneous power (W) of one GPU.

        Raises :class:`DeviceReadError` naming the device and NVML's error when the read fails,
        and always for an ``unmeasurable`` GPU.
        """
        plan = self._live_plan(device_id)
        dev = plan.device
        label = f"{device_id} ({dev.name}, {dev.uuid})"
        if dev.method == COUNTER:
            with _translate(self._nvml, DeviceReadError, f"{label}: energy counter read failed"):
                energy_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(plan.handle)
            power_w = None
            if plan.power is not None:
                try:
                    power_w = self._power_w(plan)
                except self._nvml.NVMLError:
                    power_w = None  # the counter alone still measures the energy
            return Reading(energy_j=energy_mj / 1000.0, power_w=power_w)
        if dev.method == POWER:
            with _translate(self._nvml, DeviceReadError, f"{label}: power read failed"):
                power_w = self._power_w(plan)
            if power_w is None:
                raise DeviceReadError(f"{label}: power read failed: NVML returned no valid value")
            return Reading(power_w=power_w)
        raise DeviceReadError(f"{label} has neither an energy counter nor a power reading")

    def _live_plan(self, device_id: str) -> _Plan:
        """The plan of ``device_id``; raises :class:`DeviceReadError` for an unknown device or a
        closed source."""
        plan = self._plans.get(device_id)
        if plan is None:
            raise DeviceReadError(f"{device_id}: no such device in this NVML source")
        if self._closed:
            raise DeviceReadError(f"{device_id}: the NVML source is closed")
        return plan

    def close(self) -> None:
        """Shut NVML down (once; later calls do nothing)."""
        self._closed = True
        self._finalizer()

    @property
    def nvml(self) -> Any:
        """The pynvml-like module this source reads through (initialised until :meth:`close`)."""
        return self._nvml

    def handle(self, device_id: str) -> Any:
        """The NVML handle ``device_id`` is read through (a MIG instance's parent GPU), for
        callers that need NVML directly, such as :func:`greenmaas.sources.probe.probe_gpu`.
        None when NVML could not open the GPU. Raises :class:`DeviceReadError` for an unknown
        device."""
        plan = self._plans.get(device_id)
        if plan is None:
            raise DeviceReadError(f"{device_id}: no such device in this NVML source")
        return plan.handle

    def processes(self, device_id: str) -> list[int] | None:
        """The pids of the processes with a context on the GPU ``device_id`` is read through (a
        MIG instance's parent), compute and graphics, each once, in order. NVML numbers them as
        the host does: in a container they are not the container's pids. None where NVML does
        not list them (NOT_SUPPORTED) or the GPU is not read. Raises :class:`DeviceReadError`
        when listing fails otherwise."""
        plan = self._live_plan(device_id)
        if plan.handle is None or plan.device.method == UNMEASURABLE:
            return None
        nvml = self._nvml
        pids: set[int] = set()
        listed = False
        for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            fn = getattr(nvml, name, None)
            if fn is None:
                continue
            try:
                infos = fn(plan.handle)
            except nvml.NVMLError as exc:
                if getattr(exc, "value", None) == _const(nvml, "NVML_ERROR_NOT_SUPPORTED"):
                    continue
                raise DeviceReadError(f"{device_id}: listing its processes failed: {_describe(exc)}") from exc
            listed = True
            pids.update(int(info.pid) for info in infos)
        return sorted(pids) if listed else None

    def process_activity(self, device_id: str, since_us: int = 0) -> list[tuple[int, int, int]] | None:
        """What each process did on the GPU in NVML's last sample period: ``(pid, timestamp µs,
        SM utilisation %)`` per process that used the SMs then, for samples newer than
        ``since_us`` (``nvmlDeviceGetProcessUtilization``; empty when there is none). None where
        NVML does not give it (NOT_SUPPORTED, or a pynvml without it). Pids as :meth:`processes`.
        Raises :class:`DeviceReadError` when the call fails otherwise."""
        plan = self._live_plan(device_id)
        nvml = self._nvml
        fn = getattr(nvml, "nvmlDeviceGetProcessUtilization", None)
        if plan.handle is None or plan.device.method == UNMEASURABLE or fn is None:
            return None
        try:
            samples = fn(plan.handle, int(since_us))
        except nvml.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code == _const(nvml, "NVML_ERROR_NOT_FOUND"):
                return []
            if code == _const(nvml, "NVML_ERROR_NOT_SUPPORTED"):
                return None
            raise DeviceReadError(f"{device_id}: reading its processes' activity failed: {_describe(exc)}") from exc
        return [(int(x.pid), int(x.timeStamp), int(x.smUtil)) for x in samples or ()]

    # ------------------------------------------------------------------ reading power

    def _instant_power_w(self, handle: Any) -> float | None:
        """The NVML_FI_DEV_POWER_INSTANT field in W, or None when the driver gives no valid value.
        Raises NVMLError when the call itself fails."""
        nvml = self._nvml
        fv = nvml.nvmlDeviceGetFieldValues(handle, [_const(nvml, "NVML_FI_DEV_POWER_INSTANT")])[0]
        if fv.nvmlReturn != _const(nvml, "NVML_SUCCESS"):
            return None
        member = _VALUE_MEMBERS.get(int(fv.valueType))
        if member is None:
            return None
        mw = float(getattr(fv.value, member))
        if not math.isfinite(mw) or mw < 0:
            return None
        return mw / 1000.0

    def _power_w(self, plan: _Plan) -> float | None:
        """Power in W by the plan's method, or None when the driver gives no valid value; raises
        NVMLError when the call fails. The instant field never falls back to
        nvmlDeviceGetPowerUsage: that would mix averaged values into a series of instant ones."""
        if plan.power == _INSTANT:
            return self._instant_power_w(plan.handle)
        return self._nvml.nvmlDeviceGetPowerUsage(plan.handle) / 1000.0

    # ------------------------------------------------------------------ construction

    def _plan(self, visible: str | None) -> dict[str, _Plan]:
        nvml = self._nvml
        with _translate(nvml, SourceUnavailable, "NVML: cannot count GPUs"):
            count = int(nvml.nvmlDeviceGetCount())
        hosts = [self._open(i) for i in range(count)]
        if visible is None:
            choices = [_Choice(h) for h in hosts]
        else:
            choices = self._choose(visible, hosts)
        plans: dict[str, _Plan] = {}
        for i, choice in enumerate(choices):
            dev_id = f"gpu:{i}"
            plans[dev_id] = self._probe(dev_id, choice)
        return plans

    def _open(self, index: int) -> _HostGpu:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _as_str(nvml.nvmlDeviceGetUUID(handle))
        except nvml.NVMLError as exc:
            # Kept in place (not dropped) so the indices of the GPUs after it do not shift.
            return _HostGpu(index, error=_describe(exc))
        return _HostGpu(index, handle=handle, uuid=uuid)

    def _choose(self, visible: str, hosts: list[_HostGpu]) -> list[_Choice]:
        """Apply CUDA's rules for CUDA_VISIBLE_DEVICES, as PyTorch mirrors them, to the host.

        The first entry sets the form of the list: ``GPU-`` UUIDs, ``MIG-`` UUIDs or indices (read
        like C's strtoul, so ``1gpu2`` is 1). The list ends at the first entry not of that form,
        negative, out of range, unknown or an ambiguous UUID prefix; a device named twice (before
        that point) empties it.
        """
        entries = [e.strip() for e in visible.split(",")]
        form = entries[0][:4] if entries[0][:4] in ("GPU-", "MIG-") else None
        # 1. The entries as written, up to the first one not of the list's form.
        written: list[str | int] = []
        for entry in entries:
            item: str | int
            if form:
                item, stop = entry, not entry.startswith(form)
            else:
                index = _strtoul(entry)
                item, stop = index, index < 0
            if item in written:
                return []
            if stop:
                break
            written.append(item)
        # 2. The devices they name, up to the first that names none.
        chosen: list[_Choice] = []
        seen: set[str] = set()
        migs: list[tuple[_HostGpu, str]] | None = None
        for item in written:
            choice: _Choice | None = None
            if isinstance(item, int):  # the list holds indices exactly when it has no UUID form
                choice = _Choice(hosts[item]) if item < len(hosts) else None
            elif form == "GPU-":
                found = _unique_prefix(item, [(h, h.uuid) for h in hosts if h.uuid])
                choice = _Choice(found[0]) if found else None
            else:
                if migs is None:
                    migs = self._mig_instances(hosts)
                choice = self._find_mig(item, hosts, migs)
            if choice is None:
                break
            key = choice.mig_uuid or choice.host.uuid or f"index {choice.host.index}"
            if key in seen:
                return []
            seen.add(key)
            chosen.append(choice)
        return chosen

    def _mig_instances(self, hosts: list[_HostGpu]) -> list[tuple[_HostGpu, str]]:
        """Every MIG instance on the host as (parent, MIG UUID)."""
        nvml = self._nvml
        out: list[tuple[_HostGpu, str]] = []
        for host in hosts:
            if host.handle is None:
                continue
            try:
                current, _pending = nvml.nvmlDeviceGetMigMode(host.handle)
                if current != _const(nvml, "NVML_DEVICE_MIG_ENABLE"):
                    continue
                slots = int(nvml.nvmlDeviceGetMaxMigDeviceCount(host.handle))
            except nvml.NVMLError:
                continue  # no MIG on this GPU
            for slot in range(slots):
                try:
                    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(host.handle, slot)
                    out.append((host, _as_str(nvml.nvmlDeviceGetUUID(mig))))
                except nvml.NVMLError:
                    continue  # empty slot
        return out

    def _find_mig(
        self, entry: str, hosts: list[_HostGpu], migs: list[tuple[_HostGpu, str]]
    ) -> _Choice | None:
        nvml = self._nvml
        if entry.startswith("MIG-GPU-") and "/" in entry:
            # Legacy form MIG-GPU-<parent uuid>/<gpu instance>/<compute instance>.
            parent_uuid = entry[4:].split("/", 1)[0]
            for host in hosts:
                if host.uuid == parent_uuid:
                    return _Choice(host, mig_uuid=entry)
            return None
        found = _unique_prefix(entry, migs)
        if found is not None:
            return _Choice(found[0], mig_uuid=found[1])
        try:
            mig = nvml.nvmlDeviceGetHandleByUUID(entry)
            parent = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
            parent_uuid = _as_str(nvml.nvmlDeviceGetUUID(parent))
        except nvml.NVMLError:
            return None
        for host in hosts:
            if host.uuid == parent_uuid:
                return _Choice(host, mig_uuid=entry)
        return None

    def _probe(self, dev_id: str, choice: _Choice) -> _Plan:
        """Decide how a device is read (counter, power or unmeasurable) and what its power values
        are (``power_field``). NVML cannot tell a part-time field from an instant one: both are
        labelled ``instant``, and the timeline detects held values itself."""
        nvml = self._nvml
        host = choice.host
        notes: list[str] = []
        if choice.mig_uuid:
            notes.append(
                f"MIG instance {choice.mig_uuid}: energy is the parent GPU {host.uuid}, "
                "shared with other instances"
            )
        if host.handle is None:
            notes.append(f"NVML could not open GPU {host.index}: {host.error}")
            device = Device(dev_id, "gpu", f"GPU {host.index}", UNMEASURABLE, note="; ".join(notes))
            return _Plan(device, None)
        h = host.handle
        try:
            name = _as_str(nvml.nvmlDeviceGetName(h))
        except nvml.NVMLError:
            name = f"GPU {host.index}"

        has_counter = False
        try:
            arch = int(nvml.nvmlDeviceGetArchitecture(h))
        except nvml.NVMLError:
            arch = None  # unknown: let the counter call decide
        if arch is None or arch >= _const(nvml, "NVML_DEVICE_ARCH_VOLTA"):
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(h)
                has_counter = True
            except nvml.NVMLError:
                pass

        power: str | None = None
        power_field: str | None = None
        try:
            w = self._instant_power_w(h)
        except nvml.NVMLError:
            w = None
        # A GPU that answers 0 W is not drawing nothing: treat 0 as "no valid value".
        if w is not None and w > 0:
            power = power_field = _INSTANT
        else:
            try:
                if nvml.nvmlDeviceGetPowerUsage(h) > 0:
                    power = _USAGE
            except nvml.NVMLError:
                pass
            if power == _USAGE:
                # An architecture NVML does not report is taken as recent: averaged, so that
                # its values are never used as the shape of power inside counter steps.
                averaged = arch is None or arch >= _const(nvml, "NVML_DEVICE_ARCH_AMPERE")
                power_field = "average_1s" if averaged else "instant"

        if has_counter:
            method = COUNTER
        elif power is not None:
            method = POWER
            if power == _INSTANT:
                notes.append("no energy counter: energy integrates instantaneous power samples")
            else:
                notes.append(
                    "no energy counter: energy integrates nvmlDeviceGetPowerUsage, "
                    "which averages over about 1 s on Ampere and newer"
                )
        else:
            method = UNMEASURABLE
            notes.append("neither an energy counter nor a power reading")
        device = Device(
            dev_id,
            "gpu",
            name,
            method,
            uuid=host.uuid,
            note="; ".join(notes) or None,
            power_field=power_field,
        )
        return _Plan(device, h, power=power)


def _unique_prefix(entry: str, candidates: list[tuple[_HostGpu, str]]) -> tuple[_HostGpu, str] | None:
    """The one (host, UUID) whose UUID starts with ``entry``; None if none or several do."""
    matches = [(h, u) for h, u in candidates if u.startswith(entry)]
    return matches[0] if len(matches) == 1 else None


def _strtoul(text: str) -> int:
    """The integer a C strtoul reads at the start of ``text`` (``"1gpu2"`` -> 1), or -1."""
    digits = ""
    for i, c in enumerate(text):
        if c.isdigit() or (i == 0 and c in "+-"):
            digits += c
        else:
            break
    try:
        return int(digits)
    except ValueError:
        return -1
