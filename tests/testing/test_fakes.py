import os

import pytest

import greenmaas.testing as testing
from greenmaas.testing import FakeClock
from greenmaas.testing import nvml as fake
from greenmaas.testing.nvml import FakeGPU, FakeNVML, NVMLError, step_counter, stepped
from greenmaas.testing.rapl import make_rapl_tree

pynvml = pytest.importorskip("pynvml")


def test_lazy_public_names():
    assert testing.FakeNVML is FakeNVML
    assert testing.FakeGPU is FakeGPU
    assert testing.make_rapl_tree is make_rapl_tree
    from greenmaas.sources.replay import ReplaySource

    assert testing.ReplaySource is ReplaySource


# ---------------------------------------------------------------------- fidelity to pynvml


def test_constants_match_pynvml():
    names = [n for n in dir(fake) if n.startswith("NVML_")]
    assert len(names) > 30
    for name in names:
        assert getattr(fake, name) == getattr(pynvml, name), name


def test_field_value_has_the_shape_of_the_real_struct():
    real_fields = [f[0] for f in pynvml.c_nvmlFieldValue_t._fields_]
    real_members = [f[0] for f in pynvml.c_nvmlValue_t._fields_]
    nv = FakeNVML([FakeGPU(instant_power_mw=123_456)])
    nv.nvmlInit()
    (fv,) = nv.nvmlDeviceGetFieldValues(nv.nvmlDeviceGetHandleByIndex(0), [fake.NVML_FI_DEV_POWER_INSTANT])
    for name in real_fields:
        assert hasattr(fv, name), name
    for name in real_members:
        assert hasattr(fv.value, name), name
    assert (fv.fieldId, fv.nvmlReturn, fv.valueType, fv.value.uiVal) == (186, 0, 1, 123_456)


def test_error_text_matches_pynvml():
    for code in (1, 3, 4, 9, 12, 15, 999):
        assert str(NVMLError(code)) == str(pynvml.NVMLError(code))
    assert NVMLError(3) == NVMLError(3) and NVMLError(3).value == 3


def test_fake_offers_every_function_the_source_calls():
    import re
    from pathlib import Path

    import greenmaas.sources.nvml as src_module

    used = set(re.findall(r"\.(nvml[A-Z]\w+)\(", Path(src_module.__file__).read_text()))
    assert used  # sanity
    for name in used:
        assert callable(getattr(FakeNVML, name, None)), name
        assert callable(getattr(pynvml, name, None)), name  # and the real module has it too


# ---------------------------------------------------------------------- behaviour


def test_calls_need_init_and_shutdown_balances():
    nv = FakeNVML([FakeGPU()])
    with pytest.raises(NVMLError) as info:
        nv.nvmlDeviceGetCount()
    assert info.value.value == fake.NVML_ERROR_UNINITIALIZED
    nv.nvmlInit()
    assert nv.nvmlDeviceGetCount() == 1
    nv.nvmlShutdown()
    assert not nv.initialised
    with pytest.raises(NVMLError):
        nv.nvmlShutdown()
    assert (nv.init_count, nv.shutdown_count, nv.calls["nvmlDeviceGetCount"]) == (1, 1, 2)


def test_library_missing_and_init_error():
    with pytest.raises(NVMLError) as info:
        FakeNVML(library_missing=True).nvmlInit()
    assert info.value.value == fake.NVML_ERROR_LIBRARY_NOT_FOUND
    with pytest.raises(NVMLError) as info:
        FakeNVML(init_error=fake.NVML_ERROR_DRIVER_NOT_LOADED).nvmlInit()
    assert str(info.value) == "Driver Not Loaded"


def test_readings_follow_the_clock_and_counters_are_ints():
    clock = FakeClock()
    gpu = FakeGPU(energy_mj=lambda t: 1000.7 * t, power_mw=lambda t: 100_000 + t, instant_power_mw=None)
    nv = FakeNVML([gpu], clock=clock)
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    clock.advance(2.0)
    mj = nv.nvmlDeviceGetTotalEnergyConsumption(h)
    assert (mj, type(mj)) == (2001, int)
    assert nv.nvmlDeviceGetPowerUsage(h) == 100_002
    (fv,) = nv.nvmlDeviceGetFieldValues(h, [fake.NVML_FI_DEV_POWER_INSTANT])
    assert fv.nvmlReturn == fake.NVML_ERROR_NOT_SUPPORTED


def test_stepped_counter_updates_every_100ms():
    counter = stepped(300.0, period_s=0.1, start_mj=5_000)
    assert counter(0.0) == counter(0.099) == 5_000
    assert counter(0.1) == counter(0.15) == 5_000 + 30_000
    assert counter(1.05) == 5_000 + 300_000
    shaped = step_counter(lambda t: 1000 * t * t, period_s=0.5, phase_s=0.25)
    assert [shaped(t) for t in (0.2, 0.3, 0.74, 0.76)] == [0, 62, 62, 562]


def test_fail_function_and_a_counter_that_goes_backwards():
    clock = FakeClock()
    gpu = FakeGPU(
        energy_mj=lambda t: 10_000 if t < 1 else 5,  # driver reload at t = 1 s
        fail=lambda t: fake.NVML_ERROR_GPU_IS_LOST if 2 <= t < 3 else None,
    )
    nv = FakeNVML([gpu], clock=clock)
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    assert nv.nvmlDeviceGetTotalEnergyConsumption(h) == 10_000
    clock.set(1.5)
    assert nv.nvmlDeviceGetTotalEnergyConsumption(h) == 5
    clock.set(2.5)
    with pytest.raises(NVMLError) as info:
        nv.nvmlDeviceGetUUID(h)
    assert info.value.value == fake.NVML_ERROR_GPU_IS_LOST


def test_mig_functions():
    parted = FakeGPU(uuid="GPU-p", migs=["MIG-1", "MIG-2"])
    nv = FakeNVML([parted, FakeGPU(uuid="GPU-q", arch=fake.NVML_DEVICE_ARCH_TURING)])
    nv.nvmlInit()
    parent = nv.nvmlDeviceGetHandleByIndex(0)
    assert nv.nvmlDeviceGetMigMode(parent) == [1, 1]
    assert nv.nvmlDeviceGetMaxMigDeviceCount(parent) == 7
    mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)
    assert nv.nvmlDeviceGetUUID(mig) == "MIG-2"
    assert nv.nvmlDeviceIsMigDeviceHandle(mig) == 1
    assert nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig) is parent
    assert nv.nvmlDeviceGetHandleByUUID("MIG-1") is not None
    with pytest.raises(NVMLError):
        nv.nvmlDeviceGetMigDeviceHandleByIndex(parent, 3)  # empty slot: NOT_FOUND
    with pytest.raises(NVMLError):
        nv.nvmlDeviceGetTotalEnergyConsumption(mig)  # MIG instances have no energy of their own
    with pytest.raises(NVMLError):
        nv.nvmlDeviceGetMigMode(nv.nvmlDeviceGetHandleByIndex(1))  # pre-Ampere


# ---------------------------------------------------------------------- RAPL tree


def test_rapl_tree_layout(tmp_path):
    tree = make_rapl_tree(tmp_path, packages=2, energy_uj=42, max_energy_range_uj=1000)
    root = tmp_path
    assert (root / "intel-rapl:1" / "name").read_text().strip() == "package-1"
    assert (root / "intel-rapl:0" / "intel-rapl:0:1" / "name").read_text().strip() == "dram"
    assert os.path.islink(root / "intel-rapl:0:1")  # subdomains also appear at the top
    assert (root / "intel-rapl:0" / "max_energy_range_uj").read_text().strip() == "1000"
    tree.set_energy("dram:1", 77)
    assert open(tree.path("dram:1")).read().strip() == "77"
    assert tree.read_text(tree.path("cpu:0")).strip() == "42"


def test_rapl_tree_unreadable_emulates_an_unprivileged_reader(tmp_path):
    tree = make_rapl_tree(tmp_path, readable=False)
    assert os.stat(tree.path("cpu:0")).st_mode & 0o777 == 0
    with pytest.raises(PermissionError):
        tree.read_text(tree.path("cpu:0"))
    tree.set_energy("cpu:0", 5)  # still settable, and stays unreadable
    with pytest.raises(PermissionError):
        tree.read_text(tree.path("cpu:0"))
    tree.set_readable("cpu:0", True)
    assert tree.read_text(tree.path("cpu:0")).strip() == "5"
