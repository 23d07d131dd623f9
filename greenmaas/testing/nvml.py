"""A fake of the ``pynvml`` module, driven by plain functions of (fake) time.

:class:`FakeNVML` has the functions and constants :class:`greenmaas.sources.nvml.NvmlSource`
calls, with pynvml's signatures, return types and error codes, so the source can be tested with
no GPU::

    clock = FakeClock()
    gpu = FakeGPU(uuid="GPU-aaaa", energy_mj=stepped(power_w=300.0))
    source = NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None)

Each :class:`FakeGPU` reading is a function of ``t = clock.monotonic()`` (or a constant). A
function that raises :class:`NVMLError` makes that call fail, as the driver would; a counter
function that goes backwards emulates a driver reload. :func:`stepped` turns a power figure into a
counter that updates every 100 ms, like the real one on recent data-centre GPUs.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, overload

from .clock import FakeClock

__all__ = ["FakeNVML", "FakeGPU", "FakeFieldValue", "FakeProcessInfo", "FakeProcessUtilization", "NVMLError", "stepped", "step_counter"]

# ---------------------------------------------------------------------- constants (as pynvml)

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_UNKNOWN = 999

NVML_DEVICE_ARCH_KEPLER = 2
NVML_DEVICE_ARCH_MAXWELL = 3
NVML_DEVICE_ARCH_PASCAL = 4
NVML_DEVICE_ARCH_VOLTA = 5
NVML_DEVICE_ARCH_TURING = 6
NVML_DEVICE_ARCH_AMPERE = 7
NVML_DEVICE_ARCH_ADA = 8
NVML_DEVICE_ARCH_HOPPER = 9
NVML_DEVICE_ARCH_BLACKWELL = 10
NVML_DEVICE_ARCH_UNKNOWN = 0xFFFFFFFF

NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186

NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG = 2
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
NVML_VALUE_TYPE_SIGNED_INT = 5
NVML_VALUE_TYPE_UNSIGNED_SHORT = 6

NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

#: MIG slots per GPU, as nvmlDeviceGetMaxMigDeviceCount reports on A100/H100.
_MAX_MIG = 7

_ERROR_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
    NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
    NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    NVML_ERROR_MEMORY: "Insufficient Memory",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """pynvml's error: ``.value`` is the NVML return code, ``str()`` its description."""

    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _ERROR_STRINGS.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


# ---------------------------------------------------------------------- helpers for tests


def step_counter(
    energy_mj: Callable[[float], float], *, period_s: float = 0.1, phase_s: float = 0.0
) -> Callable[[float], int]:
    """Turn a continuous cumulative-energy function (mJ of ``t``) into NVML's stepping counter:
    the value at ``t`` is the value at the last update, updates every ``period_s`` seconds
    starting at ``phase_s``, returned as an int."""

    def counter(t: float) -> int:
        k = math.floor((t - phase_s) / period_s + 1e-9)
        return int(energy_mj(max(0.0, k * period_s + phase_s)))

    return counter


def stepped(
    power_w: float = 300.0, *, period_s: float = 0.1, phase_s: float = 0.0, start_mj: float = 0.0
) -> Callable[[float], int]:
    """A counter (mJ) of a GPU drawing a constant ``power_w`` that updates every ``period_s``
    seconds, like NVML's on recent data-centre GPUs."""
    watts = float(power_w)
    return step_counter(lambda t: start_mj + watts * t * 1000.0, period_s=period_s, phase_s=phase_s)


_DEFAULT = object()


def _as_fn(value: Any) -> Callable[[float], Any] | None:
    if value is None:
        return None
    if callable(value):
        return value

    def constant(t: float) -> Any:
        return value

    return constant


@dataclass(eq=False)
class _Mig:
    uuid: str
    parent: "FakeGPU"
    name: str


class FakeGPU:
    """One fake GPU. Every reading is a function of time ``t`` (s) or a constant; ``None``
    means the driver answers NOT_SUPPORTED.

    ``energy_mj`` — cumulative counter (returned as an int, like NVML). Default: a 300 W counter
    stepping every 100 ms. ``power_mw`` — ``nvmlDeviceGetPowerUsage``. ``instant_power_mw`` —
    the ``NVML_FI_DEV_POWER_INSTANT`` field (``None``: the field answers NOT_SUPPORTED).
    ``migs`` — MIG instance UUIDs (``"MIG-..."``); non-empty turns MIG mode on.
    ``fail(t)`` — called before every device call: return an NVML error code, or raise, to make
    the call fail (e.g. the GPU falls off the bus mid-run); return None to let it through.
    ``processes`` — pids with a compute context on the GPU (a sequence, or a function of ``t``
    returning one), as ``nvmlDeviceGetComputeRunningProcesses`` lists them; ``None``: the
    driver does not list processes (NOT_SUPPORTED). Default: none. ``activity`` — a function of
    ``t`` giving ``{pid: SM utilisation %}`` over the last sample period, as
    ``nvmlDeviceGetProcessUtilization`` reports it (a sample every ``activity_period_s``);
    ``None`` (the default): NOT_SUPPORTED.
    """

    def __init__(
        self,
        uuid: str = "GPU-00000000-0000-0000-0000-000000000000",
        name: str = "NVIDIA H100 80GB HBM3",
        arch: int = NVML_DEVICE_ARCH_HOPPER,
        energy_mj: Any = _DEFAULT,
        power_mw: Any = 300_000,
        instant_power_mw: Any = 300_000,
        migs: Sequence[str] = (),
        fail: Callable[[float], int | None] | None = None,
        mig_name: str | None = None,
        processes: Any = (),
        activity: Callable[[float], Mapping[int, float]] | None = None,
        activity_period_s: float = 1.0 / 6.0,
    ) -> None:
        self.uuid = uuid
        self.name = name
        self.arch = arch
        self.energy_mj = _as_fn(stepped(300.0) if energy_mj is _DEFAULT else energy_mj)
        self.power_mw = _as_fn(power_mw)
        self.instant_power_mw = _as_fn(instant_power_mw)
        self.fail = fail
        self.processes = processes if processes is None or callable(processes) else tuple(processes)
        self.activity = activity
        self.activity_period_s = activity_period_s
        self.migs = [_Mig(u, self, mig_name or f"{name} MIG 1g.10gb") for u in migs]

    def __repr__(self) -> str:
        return f"FakeGPU({self.uuid!r})"


class FakeProcessInfo:
    """Shaped like pynvml's ``c_nvmlProcessInfo_t``: ``pid``, ``usedGpuMemory`` (bytes),
    ``gpuInstanceId``, ``computeInstanceId``."""

    def __init__(self, pid: int, used_gpu_memory: int = 0) -> None:
        self.pid = pid
        self.usedGpuMemory = used_gpu_memory
        self.gpuInstanceId = 0xFFFFFFFF
        self.computeInstanceId = 0xFFFFFFFF


class FakeProcessUtilization:
    """Shaped like pynvml's ``c_nvmlProcessUtilizationSample_t``: ``pid``, ``timeStamp`` (µs),
    ``smUtil``, ``memUtil``, ``encUtil``, ``decUtil`` (%)."""

    def __init__(self, pid: int, time_stamp_us: int, sm_util: int) -> None:
        self.pid = pid
        self.timeStamp = time_stamp_us
        self.smUtil = sm_util
        self.memUtil = 0
        self.encUtil = 0
        self.decUtil = 0


class FakeFieldValue:
    """Shaped like pynvml's ``c_nvmlFieldValue_t``: ``fieldId``, ``scopeId``, ``timestamp`` (µs),
    ``latencyUsec``, ``valueType``, ``nvmlReturn`` and ``value`` (a union with ``dVal``,
    ``uiVal``, ``ulVal``, ``ullVal``, ``sllVal``, ``siVal``, ``usVal``)."""

    class _Value:
        def __init__(self, number: float) -> None:
            self.dVal = float(number)
            n = int(number)
            self.uiVal = n & 0xFFFFFFFF
            self.ulVal = n & 0xFFFFFFFFFFFFFFFF
            self.ullVal = n & 0xFFFFFFFFFFFFFFFF
            self.sllVal = n
            self.siVal = n
            self.usVal = n & 0xFFFF

    def __init__(
        self,
        field_id: int,
        *,
        value: float = 0,
        value_type: int = NVML_VALUE_TYPE_UNSIGNED_INT,
        nvml_return: int = NVML_SUCCESS,
        timestamp_us: int = 0,
    ) -> None:
        self.fieldId = field_id
        self.scopeId = 0
        self.timestamp = timestamp_us
        self.latencyUsec = 0
        self.valueType = value_type
        self.nvmlReturn = nvml_return
        self.value = FakeFieldValue._Value(value)


class FakeNVML:
    """A module-like stand-in for ``pynvml`` over a list of :class:`FakeGPU`.

    ``library_missing=True`` makes ``nvmlInit`` fail as when ``libnvidia-ml.so.1`` is absent;
    ``init_error`` (an NVML error code, or an exception) makes it fail otherwise, e.g.
    ``NVML_ERROR_DRIVER_NOT_LOADED``. ``init_count``, ``shutdown_count`` and ``calls`` (a Counter
    of function names) let tests check how the fake was used. ``field_value_type`` is the value
    type the power fields are reported in (drivers differ).
    """

    NVMLError = NVMLError

    def __init__(
        self,
        gpus: Sequence[FakeGPU] = (),
        clock: Any = None,
        library_missing: bool = False,
        init_error: int | BaseException | None = None,
        driver_version: str = "550.54.15",
        field_value_type: int = NVML_VALUE_TYPE_UNSIGNED_INT,
    ) -> None:
        self.gpus = list(gpus)
        self.clock = clock if clock is not None else FakeClock()
        self.library_missing = library_missing
        self.init_error = init_error
        self.driver_version = driver_version
        self.field_value_type = field_value_type
        self.init_count = 0
        self.shutdown_count = 0
        self.calls: Counter[str] = Counter()
        self._refs = 0

    def __getattr__(self, name: str) -> Any:
        # Constants (NVML_*) resolve from this module, so the fake reads like pynvml.
        if name.startswith("NVML_") and name in globals():
            return globals()[name]
        raise AttributeError(name)

    # ------------------------------------------------------------------ internals

    def _t(self) -> float:
        return float(self.clock.monotonic())

    @overload
    def _check(self, fn: str) -> None: ...

    @overload
    def _check(self, fn: str, handle: Any) -> FakeGPU: ...

    def _check(self, fn: str, handle: Any = None) -> FakeGPU | None:
        self.calls[fn] += 1
        if self._refs <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if handle is None:
            return None
        gpu = handle.parent if isinstance(handle, _Mig) else handle
        if not isinstance(gpu, FakeGPU):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if gpu.fail is not None:
            code = gpu.fail(self._t())
            if code is not None:
                raise NVMLError(int(code))
        return gpu

    @staticmethod
    def _value(fn: Callable[[float], Any] | None, t: float) -> Any:
        if fn is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return fn(t)

    # ------------------------------------------------------------------ library

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.library_missing:
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        if isinstance(self.init_error, BaseException):
            raise self.init_error
        if self.init_error is not None:
            raise NVMLError(int(self.init_error))
        self._refs += 1
        self.init_count += 1

    def nvmlInitWithFlags(self, flags: int) -> None:
        self.nvmlInit()

    def nvmlShutdown(self) -> None:
        self.calls["nvmlShutdown"] += 1
        if self._refs <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        self._refs -= 1
        self.shutdown_count += 1

    @property
    def initialised(self) -> bool:
        """Whether nvmlInit has been called more times than nvmlShutdown."""
        return self._refs > 0

    def nvmlErrorString(self, result: int) -> str:
        return _ERROR_STRINGS.get(result, f"NVML Error with code {result}")

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion")
        return self.driver_version

    # ------------------------------------------------------------------ enumeration

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGPU:
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= int(index) < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[int(index)]
        if gpu.fail is not None:
            code = gpu.fail(self._t())
            if code is not None:
                raise NVMLError(int(code))
        return gpu

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> FakeGPU | _Mig:
        self._check("nvmlDeviceGetHandleByUUID")
        if isinstance(uuid, bytes):
            uuid = uuid.decode()
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
            for mig in gpu.migs:
                if mig.uuid == uuid:
                    return mig
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        self._check("nvmlDeviceGetUUID", handle)
        return handle.uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        self._check("nvmlDeviceGetName", handle)
        return handle.name

    def nvmlDeviceGetArchitecture(self, handle: Any) -> int:
        gpu = self._check("nvmlDeviceGetArchitecture", handle)
        return gpu.arch

    # ------------------------------------------------------------------ readings

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        gpu = self._check("nvmlDeviceGetTotalEnergyConsumption", handle)
        if isinstance(handle, _Mig):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return int(self._value(gpu.energy_mj, self._t()))

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        gpu = self._check("nvmlDeviceGetPowerUsage", handle)
        if isinstance(handle, _Mig):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return int(self._value(gpu.power_mw, self._t()))

    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: Sequence[Any]) -> list[FakeFieldValue]:
        gpu = self._check("nvmlDeviceGetFieldValues", handle)
        t = self._t()
        out = []
        for fid in fieldIds:
            fid = fid[0] if isinstance(fid, tuple) else fid
            fn = {NVML_FI_DEV_POWER_INSTANT: gpu.instant_power_mw, NVML_FI_DEV_POWER_AVERAGE: gpu.power_mw}.get(fid)
            if fn is None or isinstance(handle, _Mig):
                out.append(FakeFieldValue(fid, nvml_return=NVML_ERROR_NOT_SUPPORTED))
                continue
            try:
                v = fn(t)
            except NVMLError as exc:  # a failing field fails alone, as in NVML
                out.append(FakeFieldValue(fid, nvml_return=exc.value))
                continue
            out.append(
                FakeFieldValue(fid, value=v, value_type=self.field_value_type, timestamp_us=int(t * 1e6))
            )
        return out

    # ------------------------------------------------------------------ processes

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[FakeProcessInfo]:
        gpu = self._check("nvmlDeviceGetComputeRunningProcesses", handle)
        return [FakeProcessInfo(int(pid)) for pid in self._processes(gpu)]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[FakeProcessInfo]:
        gpu = self._check("nvmlDeviceGetGraphicsRunningProcesses", handle)
        self._processes(gpu)  # NOT_SUPPORTED alike
        return []

    def nvmlDeviceGetProcessUtilization(self, handle: Any, timeStamp: int) -> list[FakeProcessUtilization]:
        gpu = self._check("nvmlDeviceGetProcessUtilization", handle)
        if gpu.activity is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        period = gpu.activity_period_s
        t = math.floor(self._t() / period) * period  # the last sample period's end
        ts = int(round(t * 1e6))
        if t <= 0 or ts <= int(timeStamp):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        busy = gpu.activity(t)
        return [FakeProcessUtilization(int(pid), ts, int(round(sm))) for pid, sm in busy.items() if sm > 0]

    def _processes(self, gpu: FakeGPU) -> Any:
        """The GPU's pids; the clock is read only for a function of time (a constant list asks
        nothing, so listing processes does not move a clock that moves on every read)."""
        if gpu.processes is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.processes(self._t()) if callable(gpu.processes) else gpu.processes

    # ------------------------------------------------------------------ MIG

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        gpu = self._check("nvmlDeviceGetMigMode", handle)
        if gpu.arch < NVML_DEVICE_ARCH_AMPERE:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        mode = NVML_DEVICE_MIG_ENABLE if gpu.migs else NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        gpu = self._check("nvmlDeviceGetMaxMigDeviceCount", handle)
        return _MAX_MIG if gpu.migs else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> _Mig:
        gpu = self._check("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if not gpu.migs or not 0 <= index < _MAX_MIG:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(gpu.migs):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return gpu.migs[index]

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: Any) -> FakeGPU:
        self._check("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle)
        if not isinstance(handle, _Mig):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return handle.parent

    def nvmlDeviceIsMigDeviceHandle(self, handle: Any) -> int:
        self._check("nvmlDeviceIsMigDeviceHandle", handle)
        return 1 if isinstance(handle, _Mig) else 0
