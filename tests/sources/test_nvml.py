import __future__
import ast
import gc
import importlib.util
import itertools
import os
import subprocess
import sys
import types
import typing
import warnings
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from greenmaas.errors import DeviceReadError, SourceUnavailable
from greenmaas.sampling.timeline import Timeline
from greenmaas.sources.base import COUNTER, POWER, UNMEASURABLE
from greenmaas.sources.nvml import NvmlSource
from greenmaas.testing import FakeClock
from greenmaas.testing import nvml as fake
from greenmaas.testing.nvml import FakeGPU, FakeNVML, NVMLError, stepped

UUIDS = [
    "GPU-11111111-aaaa-0000-0000-000000000000",
    "GPU-22222222-bbbb-0000-0000-000000000000",
    "GPU-22223333-cccc-0000-0000-000000000000",
]


def host(n=3, **kw):
    clock = FakeClock()
    gpus = [FakeGPU(uuid=UUIDS[i], name=f"GPU model {i}", **kw) for i in range(n)]
    return FakeNVML(gpus, clock=clock)


def visible(spec, n=3):
    """The (device id, uuid) pairs an NvmlSource sees under CUDA_VISIBLE_DEVICES=spec."""
    with NvmlSource(nvml=host(n), visible_devices=spec) as src:
        return [(d.id, d.uuid) for d in src.devices()]


# ---------------------------------------------------------------------- CUDA_VISIBLE_DEVICES


def test_unset_means_every_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with NvmlSource(nvml=host()) as src:
        devs = src.devices()
    assert [d.id for d in devs] == ["gpu:0", "gpu:1", "gpu:2"]
    assert [d.uuid for d in devs] == UUIDS
    assert [d.name for d in devs] == ["GPU model 0", "GPU model 1", "GPU model 2"]
    assert all(d.kind == "gpu" for d in devs)


def test_environment_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with NvmlSource(nvml=host()) as src:
        assert [(d.id, d.uuid) for d in src.devices()] == [("gpu:0", UUIDS[2])]


def test_indices_are_renumbered_in_list_order():
    assert visible("2,0") == [("gpu:0", UUIDS[2]), ("gpu:1", UUIDS[0])]
    assert visible(" 1 , 2") == [("gpu:0", UUIDS[1]), ("gpu:1", UUIDS[2])]
    assert visible("1gpu2,+2") == [("gpu:0", UUIDS[1]), ("gpu:1", UUIDS[2])]  # read like strtoul


def test_full_uuid_and_unique_prefix():
    assert visible(UUIDS[2]) == [("gpu:0", UUIDS[2])]
    assert visible("GPU-1111") == [("gpu:0", UUIDS[0])]
    assert visible(f"GPU-22223,{UUIDS[0]}") == [("gpu:0", UUIDS[2]), ("gpu:1", UUIDS[0])]


def test_ambiguous_prefix_is_invalid_and_stops_the_list():
    # GPU-2222 is a prefix of two UUIDs
    assert visible(f"{UUIDS[0]},GPU-2222,{UUIDS[2]}") == [("gpu:0", UUIDS[0])]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0,7,1", [UUIDS[0]]),  # index out of range ends the list
        ("1,abc,0", [UUIDS[1]]),
        ("abc,0", []),
        (f"GPU-ffff,{UUIDS[0]}", []),  # unknown UUID
        (f"{UUIDS[1]},0", [UUIDS[1]]),  # the first entry sets the form: an index ends a UUID list
        (f"1,{UUIDS[0]}", [UUIDS[1]]),  # and a UUID ends an index list
        ("gpu-1111", []),  # prefixes and UUIDs are case-sensitive, as in CUDA
        ("1,1,0", []),  # a device named twice empties the list
        (f"{UUIDS[0]},GPU-1111", []),  # also by a prefix
        ("0,", [UUIDS[0]]),
        ("", []),
        ("-1", []),
        ("0,-1,1", [UUIDS[0]]),
    ],
)
def test_invalid_entries_stop_the_list(spec, expected):
    assert [u for _, u in visible(spec)] == expected


def test_visible_devices_as_a_list():
    with NvmlSource(nvml=host(), visible_devices=["1", "0"]) as src:
        assert [d.uuid for d in src.devices()] == [UUIDS[1], UUIDS[0]]


# ---------------------------------------------------------------------- MIG

MIG_A = "MIG-aaaaaaaa-0000-0000-0000-000000000001"
MIG_B = "MIG-bbbbbbbb-0000-0000-0000-000000000002"


def mig_host():
    plain = FakeGPU(uuid=UUIDS[0])
    parted = FakeGPU(uuid=UUIDS[1], name="NVIDIA A100-SXM4-40GB", migs=[MIG_A, MIG_B])
    return FakeNVML([plain, parted], clock=FakeClock())


def test_mig_instance_measures_the_parent_gpu_and_says_so():
    with NvmlSource(nvml=mig_host(), visible_devices=MIG_B) as src:
        (dev,) = src.devices()
        assert dev.id == "gpu:0"
        assert dev.uuid == UUIDS[1]
        assert dev.name == "NVIDIA A100-SXM4-40GB"
        assert dev.method == COUNTER
        assert dev.note == (
            f"MIG instance {MIG_B}: energy is the parent GPU {UUIDS[1]}, shared with other instances"
        )
        assert src.read("gpu:0").energy_j is not None


def test_two_mig_instances_by_prefix_and_a_gpu_uuid_ends_the_list():
    with NvmlSource(nvml=mig_host(), visible_devices=f"MIG-aaaa,{MIG_B},{UUIDS[0]}") as src:
        a, b = src.devices()
    assert (a.id, a.uuid, MIG_A in a.note) == ("gpu:0", UUIDS[1], True)
    assert (b.id, b.uuid, MIG_B in b.note) == ("gpu:1", UUIDS[1], True)


def test_unknown_mig_stops_the_list():
    with NvmlSource(nvml=mig_host(), visible_devices=f"{MIG_A},MIG-ffff,{MIG_B}") as src:
        assert [d.note.split(":")[0] for d in src.devices()] == [f"MIG instance {MIG_A}"]


def test_legacy_mig_form_names_the_parent():
    spec = f"MIG-{UUIDS[1]}/1/0"
    with NvmlSource(nvml=mig_host(), visible_devices=spec) as src:
        (dev,) = src.devices()
    assert dev.uuid == UUIDS[1]
    assert spec in dev.note


def test_mig_found_by_uuid_lookup_when_enumeration_is_unavailable():
    class NoMigEnumeration(FakeNVML):
        def nvmlDeviceGetMaxMigDeviceCount(self, handle):
            raise NVMLError(fake.NVML_ERROR_NOT_SUPPORTED)

    nv = NoMigEnumeration(mig_host().gpus, clock=FakeClock())
    with NvmlSource(nvml=nv, visible_devices=MIG_A) as src:
        (dev,) = src.devices()
    assert dev.uuid == UUIDS[1]
    assert nv.calls["nvmlDeviceGetDeviceHandleFromMigDeviceHandle"] == 1


# ---------------------------------------------------------------------- method per device


def one(gpu, clock=None):
    clock = clock or FakeClock()
    return NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None), clock


def test_counter_with_instant_power():
    src, clock = one(FakeGPU(energy_mj=lambda t: 5_000 + 250_000 * t, instant_power_mw=251_500, power_mw=240_000))
    assert src.devices()[0].method == COUNTER
    clock.advance(2.0)
    r = src.read("gpu:0")
    assert r.energy_j == pytest.approx(505.0)
    assert r.power_w == pytest.approx(251.5)  # the instantaneous field, not the 1 s average
    assert r.max_energy_j is None


def test_counter_power_falls_back_to_power_usage():
    src, _ = one(FakeGPU(energy_mj=1000, instant_power_mw=None, power_mw=123_000))
    r = src.read("gpu:0")
    assert (r.energy_j, r.power_w) == (1.0, 123.0)


def test_field_value_read_by_its_value_type():
    gpu = FakeGPU(energy_mj=None, instant_power_mw=199_250.5, power_mw=None)
    nv = FakeNVML([gpu], clock=FakeClock(), field_value_type=fake.NVML_VALUE_TYPE_DOUBLE)
    with NvmlSource(nvml=nv, visible_devices=None) as src:
        assert src.read("gpu:0").power_w == pytest.approx(199.2505)


def test_pre_volta_gpu_uses_power_even_if_a_counter_answers():
    src, _ = one(FakeGPU(arch=fake.NVML_DEVICE_ARCH_PASCAL, energy_mj=1234, instant_power_mw=None, power_mw=90_000))
    dev = src.devices()[0]
    assert dev.method == POWER
    assert "nvmlDeviceGetPowerUsage" in dev.note
    r = src.read("gpu:0")
    assert (r.energy_j, r.power_w) == (None, 90.0)


def test_volta_without_working_counter_uses_instant_power():
    src, _ = one(FakeGPU(arch=fake.NVML_DEVICE_ARCH_VOLTA, energy_mj=None, instant_power_mw=70_000))
    dev = src.devices()[0]
    assert dev.method == POWER
    assert "instantaneous" in dev.note
    assert src.read("gpu:0").power_w == 70.0


def test_unknown_architecture_lets_the_counter_decide():
    class NoArch(FakeNVML):
        def nvmlDeviceGetArchitecture(self, handle):
            raise NVMLError(fake.NVML_ERROR_NOT_SUPPORTED)

    with NvmlSource(nvml=NoArch([FakeGPU(energy_mj=42)], clock=FakeClock()), visible_devices=None) as src:
        assert src.devices()[0].method == COUNTER


@pytest.mark.parametrize("zero_power", [None, 0])
def test_unmeasurable_gpu_is_listed_and_never_reads_as_zero(zero_power):
    src, _ = one(FakeGPU(energy_mj=None, instant_power_mw=zero_power, power_mw=zero_power, name="GRID vGPU"))
    dev = src.devices()[0]
    assert dev.method == UNMEASURABLE
    assert "neither an energy counter nor a power reading" in dev.note
    with pytest.raises(DeviceReadError, match=r"gpu:0 \(GRID vGPU.*has neither an energy counter nor a power reading"):
        src.read("gpu:0")


def test_counter_alone_when_power_fails():
    def power_lost(t):
        raise NVMLError(fake.NVML_ERROR_UNKNOWN)

    gpu = FakeGPU(energy_mj=lambda t: 1000 * t, instant_power_mw=300_000, power_mw=300_000)
    src, clock = one(gpu)  # power works when the source is built, and is lost later
    gpu.instant_power_mw = power_lost
    gpu.power_mw = power_lost
    clock.advance(3)
    r = src.read("gpu:0")
    assert (r.energy_j, r.power_w) == (3.0, None)


def _field_error(t):
    raise NVMLError(fake.NVML_ERROR_UNKNOWN)


@pytest.mark.parametrize("lost", [None, _field_error], ids=["not-supported", "error"])
def test_instant_field_failing_at_read_never_falls_back_to_the_average(lost):
    # The series stays of one kind: an averaged value among instant samples would be misread.
    gpu = FakeGPU(energy_mj=lambda t: 1000 * t, instant_power_mw=300_000, power_mw=280_000)
    src, clock = one(gpu)
    gpu.instant_power_mw = lost  # the field now answers NOT_SUPPORTED, or an error
    clock.advance(2)
    assert (src.read("gpu:0").energy_j, src.read("gpu:0").power_w) == (2.0, None)


def test_instant_field_failing_at_read_of_a_power_only_gpu_is_a_read_error():
    gpu = FakeGPU(energy_mj=None, instant_power_mw=300_000, power_mw=280_000)
    src, _ = one(gpu)
    assert src.read("gpu:0").power_w == 300.0
    gpu.instant_power_mw = None  # the field now answers NOT_SUPPORTED
    with pytest.raises(DeviceReadError, match="gpu:0.*power read failed"):
        src.read("gpu:0")
    gpu.instant_power_mw = lambda t: 310_000
    assert src.read("gpu:0").power_w == 310.0


# ---------------------------------------------------------------------- power field labels


@pytest.mark.parametrize(
    "arch, energy_mj, instant, usage, method, field",
    [
        (fake.NVML_DEVICE_ARCH_HOPPER, 1000, 300_000, 280_000, COUNTER, "instant"),
        (fake.NVML_DEVICE_ARCH_HOPPER, 1000, None, 280_000, COUNTER, "average_1s"),
        (fake.NVML_DEVICE_ARCH_AMPERE, None, None, 280_000, POWER, "average_1s"),
        (fake.NVML_DEVICE_ARCH_AMPERE, None, 0, 280_000, POWER, "average_1s"),  # 0 W: no value
        (fake.NVML_DEVICE_ARCH_TURING, 1000, None, 70_000, COUNTER, "instant"),
        (fake.NVML_DEVICE_ARCH_PASCAL, None, None, 90_000, POWER, "instant"),
        (fake.NVML_DEVICE_ARCH_PASCAL, None, 90_000, 90_000, POWER, "instant"),
        (fake.NVML_DEVICE_ARCH_HOPPER, 1000, None, None, COUNTER, None),
        (fake.NVML_DEVICE_ARCH_HOPPER, None, None, 0, UNMEASURABLE, None),
    ],
)
def test_power_field_label(arch, energy_mj, instant, usage, method, field):
    src, _ = one(FakeGPU(arch=arch, energy_mj=energy_mj, instant_power_mw=instant, power_mw=usage))
    dev = src.devices()[0]
    assert (dev.method, dev.power_field) == (method, field)
    if field is None and method == COUNTER:
        assert src.read("gpu:0").power_w is None


def test_power_field_of_an_unknown_architecture_is_taken_as_averaged():
    class NoArch(FakeNVML):
        def nvmlDeviceGetArchitecture(self, handle):
            raise NVMLError(fake.NVML_ERROR_NOT_SUPPORTED)

    gpu = FakeGPU(energy_mj=42, instant_power_mw=None, power_mw=100_000)
    with NvmlSource(nvml=NoArch([gpu], clock=FakeClock()), visible_devices=None) as src:
        assert src.devices()[0].power_field == "average_1s"


def test_power_field_uses_its_own_ampere_code_when_pynvml_lacks_it():
    class OldPynvml(FakeNVML):
        def __getattr__(self, name):
            if name == "NVML_DEVICE_ARCH_AMPERE":
                raise AttributeError(name)
            return super().__getattr__(name)

    gpus = [
        FakeGPU(uuid=UUIDS[0], arch=fake.NVML_DEVICE_ARCH_AMPERE, instant_power_mw=None),
        FakeGPU(uuid=UUIDS[1], arch=fake.NVML_DEVICE_ARCH_TURING, instant_power_mw=None),
    ]
    with NvmlSource(nvml=OldPynvml(gpus, clock=FakeClock()), visible_devices=None) as src:
        assert [d.power_field for d in src.devices()] == ["average_1s", "instant"]


def test_gpu_that_cannot_be_opened_has_no_power_field():
    denied = FakeGPU(uuid=UUIDS[0], fail=lambda t: fake.NVML_ERROR_NO_PERMISSION)
    with NvmlSource(nvml=FakeNVML([denied]), visible_devices=None) as src:
        assert src.devices()[0].power_field is None


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"library_missing": True}, "NVML library not found (libnvidia-ml.so.1)"),
        ({"init_error": fake.NVML_ERROR_DRIVER_NOT_LOADED}, "NVML: driver not loaded"),
        ({"init_error": fake.NVML_ERROR_NO_PERMISSION}, "NVML: insufficient permissions to initialise"),
        ({"init_error": fake.NVML_ERROR_UNKNOWN}, "NVML: initialisation failed (Unknown Error)"),
    ],
)
def test_init_failures_become_source_unavailable(kwargs, message):
    nv = FakeNVML([FakeGPU()], **kwargs)
    with pytest.raises(SourceUnavailable) as info:
        NvmlSource(nvml=nv)
    assert str(info.value) == message
    assert isinstance(info.value.__cause__, NVMLError)


def test_failure_after_init_shuts_nvml_down():
    class CountFails(FakeNVML):
        def nvmlDeviceGetCount(self):
            raise NVMLError(fake.NVML_ERROR_GPU_IS_LOST)

    nv = CountFails([FakeGPU()])
    with pytest.raises(SourceUnavailable, match="NVML: cannot count GPUs: GPU is lost") as info:
        NvmlSource(nvml=nv)
    assert isinstance(info.value.__cause__, NVMLError)
    assert (nv.init_count, nv.shutdown_count, nv.initialised) == (1, 1, False)


def test_read_failure_mid_run_names_device_and_error_then_recovers():
    lost = lambda t: fake.NVML_ERROR_GPU_IS_LOST if 1.0 <= t < 2.0 else None  # noqa: E731
    src, clock = one(FakeGPU(uuid=UUIDS[0], energy_mj=lambda t: 100_000 * t, fail=lost))
    clock.advance(0.5)
    assert src.read("gpu:0").energy_j == pytest.approx(50.0)
    clock.advance(1.0)
    with pytest.raises(DeviceReadError) as info:
        src.read("gpu:0")
    assert "gpu:0" in str(info.value) and UUIDS[0] in str(info.value)
    assert "GPU is lost" in str(info.value)
    assert isinstance(info.value.__cause__, NVMLError)
    clock.advance(1.0)
    assert src.read("gpu:0").energy_j == pytest.approx(250.0)


def test_gpu_that_cannot_be_opened_keeps_its_index():
    denied = FakeGPU(uuid=UUIDS[1], fail=lambda t: fake.NVML_ERROR_NO_PERMISSION)
    gpus = [FakeGPU(uuid=UUIDS[0]), denied, FakeGPU(uuid=UUIDS[2])]
    with NvmlSource(nvml=FakeNVML(gpus), visible_devices=None) as src:
        devs = src.devices()
        assert [d.method for d in devs] == [COUNTER, UNMEASURABLE, COUNTER]
        assert devs[2].uuid == UUIDS[2]
        assert "NVML could not open GPU 1: Insufficient Permissions" in devs[1].note
        with pytest.raises(DeviceReadError):
            src.read("gpu:1")


def test_unknown_device_id():
    src, _ = one(FakeGPU())
    with pytest.raises(DeviceReadError, match="gpu:9"):
        src.read("gpu:9")


# ---------------------------------------------------------------------- lifecycle


def test_init_once_and_close_is_safe_twice():
    nv = host(2)
    src = NvmlSource(nvml=nv, visible_devices=None)
    src.read("gpu:0")
    src.read("gpu:1")
    assert nv.init_count == 1
    src.close()
    src.close()
    assert (nv.shutdown_count, nv.initialised) == (1, False)
    with pytest.raises(DeviceReadError, match="closed"):
        src.read("gpu:0")


def test_forgotten_source_shuts_nvml_down_when_collected():
    nv = host(1)
    src = NvmlSource(nvml=nv, visible_devices=None)
    del src
    gc.collect()
    assert nv.shutdown_count == 1


def test_default_module_is_imported_lazily(monkeypatch):
    nv = host(1)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    with NvmlSource(visible_devices="0") as src:
        assert src.devices()[0].uuid == UUIDS[0]
    assert nv.init_count == 1


def test_missing_package_is_source_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(SourceUnavailable, match="nvidia-ml-py"):
        NvmlSource()


def test_importing_the_module_does_not_import_pynvml():
    code = "import sys, greenmaas.sources.nvml, greenmaas.sources; assert 'pynvml' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------- with a timeline


def sample(src, clock, dev, t_end, period_s=0.02):
    tl = Timeline(dev, COUNTER)
    while clock.monotonic() <= t_end + 1e-9:
        try:
            tl.append(clock.monotonic(), src.read(dev))
        except DeviceReadError as exc:
            tl.mark_failed(clock.monotonic(), str(exc))
        clock.advance(period_s)
    return tl


def test_stepping_counter_sampled_at_20ms_gives_the_energy():
    clock = FakeClock()
    gpu = FakeGPU(energy_mj=stepped(300.0, period_s=0.1, phase_s=0.037), instant_power_mw=300_000)
    src = NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None)
    tl = sample(src, clock, "gpu:0", 3.0)
    # Between 1 s and 2 s the GPU drew 300 J; one counter step (30 J) is the worst error a
    # stepped counter alone could make, re-timing and power shaping do much better.
    assert tl.energy_between(1.0, 2.0) == pytest.approx(300.0, rel=0.02)


def test_driver_reload_never_gives_negative_energy():
    clock = FakeClock()

    def counter(t):  # 200 W; the driver reloads at t=1 s and the counter restarts from 0
        return int(200_000 * t) if t < 1.0 else int(200_000 * (t - 1.0))

    gpu = FakeGPU(energy_mj=counter, instant_power_mw=None, power_mw=200_000)
    src = NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None)
    tl = sample(src, clock, "gpu:0", 2.0, period_s=0.05)
    assert tl.resets == 1
    assert tl.energy_between(0.0, 2.0) == pytest.approx(400.0, rel=0.03)
    assert tl.energy_between(0.9, 1.1) >= 0


def test_timeline_records_a_gap_while_the_gpu_fails():
    clock = FakeClock()
    lost = lambda t: fake.NVML_ERROR_GPU_IS_LOST if 1.0 <= t < 1.5 else None  # noqa: E731
    gpu = FakeGPU(energy_mj=lambda t: 100_000 * t, fail=lost)
    src = NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None)
    tl = sample(src, clock, "gpu:0", 2.0, period_s=0.125)  # exact in binary
    (gap,) = tl.gaps
    assert gap.start == pytest.approx(1.0) and gap.end == pytest.approx(1.5)
    assert "GPU is lost" in gap.reason
    # The counter spans the gap: the total is still known.
    assert tl.energy_between(0.0, 2.0) == pytest.approx(200.0, rel=0.01)


# ---------------------------------------------------------------------- agreement with PyTorch


@pytest.fixture(scope="module")
def torch_rules():
    """PyTorch's emulation of CUDA's CUDA_VISIBLE_DEVICES rules, taken from the installed torch's
    source without importing torch (2 s), over a fake host with the three GPUs of UUIDS."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        pytest.skip("torch is not installed")
    path = Path(spec.origin).parent / "cuda" / "__init__.py"
    wanted = {"_parse_visible_devices", "_transform_uuid_to_ordinals", "_device_count_nvml"}
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError) as exc:
        pytest.skip(f"cannot read {path}: {exc}")
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    if {f.name for f in funcs} != wanted:
        pytest.skip("this torch has no CUDA_VISIBLE_DEVICES helpers")
    namespace = {
        "os": os,
        "cast": typing.cast,
        "warnings": warnings,
        "torch": types.SimpleNamespace(version=types.SimpleNamespace(hip=None)),
        "_raw_device_count_nvml": lambda: len(UUIDS),
        "_raw_device_uuid_nvml": lambda: list(UUIDS),
    }
    module = ast.Module(body=funcs, type_ignores=[])
    exec(compile(module, str(path), "exec", flags=__future__.annotations.compiler_flag), namespace)
    return types.SimpleNamespace(**{name: namespace[name] for name in wanted})


ENTRY = st.sampled_from(
    ["0", "1", "2", "3", "-1", "+1", "1gpu2", "", "abc", "GPU-1111", "GPU-2222", "GPU-22223", "GPU-ffff", "GPU-"]
    + UUIDS
)


@settings(max_examples=150, deadline=None)
@given(entries=st.lists(ENTRY, min_size=1, max_size=5))
@example(entries=["GPU-1111", UUIDS[0]])  # two spellings of one GPU
@example(entries=["GPU-1111", "GPU-ffff", "GPU-1111"])  # a repeat after an unknown UUID
def test_visible_devices_agree_with_pytorch(torch_rules, entries):
    spec = ",".join(entries)
    with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": spec}):
        parsed = torch_rules._parse_visible_devices()
        if parsed and isinstance(parsed[0], str):
            ordinals = torch_rules._transform_uuid_to_ordinals(parsed, list(UUIDS))
        else:
            ordinals = list(itertools.takewhile(lambda i: i < len(UUIDS), parsed))
        count = torch_rules._device_count_nvml()
    ours = [UUIDS.index(u) for _, u in visible(spec)]
    assert ours == ordinals
    assert len(ours) == count
