import subprocess
import sys

import pytest

from greenmaas.errors import DeviceReadError
from greenmaas.sources.base import ESTIMATE
from greenmaas.sources.cpu_estimate import (
    DEFAULT_TDP_W,
    IDLE_SHARE,
    CpuEstimateSource,
    ProcStatUtilisation,
    load_cpu_tdp_table,
    match_cpu_model,
    read_cpu_model,
)

TABLE = (
    ("Intel Xeon Gold 6248", 150.0),
    ("Intel Xeon Gold 6248R", 205.0),
    ("AMD EPYC 7763", 280.0),
    ("AMD EPYC 7763P", 280.0),
    ("AMD Ryzen 9 5900X", 105.0),
    ("AMD Ryzen 9 5900 (OEM Only)", 65.0),
    ("Intel Core i7-10700", 65.0),
    ("Intel Core i7-10700K", 125.0),
    ("Apple M2", 22.0),
    ("Apple M2 Max", 50.0),
)


@pytest.mark.parametrize(
    "model, expected",
    [
        ("Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz", "Intel Xeon Gold 6248R"),
        ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "Intel Xeon Gold 6248"),
        ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763"),
        ("Intel(R) Core(TM) i7-10700K CPU @ 3.80GHz", "Intel Core i7-10700K"),
        ("AMD Ryzen 9 5900X 12-Core Processor", "AMD Ryzen 9 5900X"),
        ("Apple M2 Max", "Apple M2 Max"),
        ("Intel(R) Xeon(R) Processor", None),  # no model number: no guess
        ("Intel(R) Xeon(R) Gold 6348 CPU @ 2.60GHz", None),  # not in the table
        ("AMD Ryzen 9 7950X 16-Core Processor", None),  # "9" alone is not a model number
        ("", None),
    ],
)
def test_match_by_model_number(model, expected):
    found = match_cpu_model(model, TABLE)
    assert (found[0] if found else None) == expected


def test_codecarbon_table_is_read_by_path_without_importing_codecarbon():
    table = load_cpu_tdp_table()
    assert len(table) > 1000
    assert all(tdp > 0 for _, tdp in table)  # malformed rows such as "27.29.5" are skipped
    assert match_cpu_model("AMD EPYC 7763 64-Core Processor", table) == ("AMD EPYC 7763", 280.0)
    code = (
        "import sys\n"
        "from greenmaas.sources.cpu_estimate import CpuEstimateSource\n"
        "CpuEstimateSource(cpu_model='AMD EPYC 7763', utilisation=lambda: 0.5)\n"
        "assert 'codecarbon' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_power_is_tdp_scaled_by_utilisation_with_an_idle_floor():
    u = iter([0.0, 1.0, 0.5, 1.7, -0.2])
    src = CpuEstimateSource(
        cpu_model="AMD EPYC 7763 64-Core Processor", utilisation=lambda: next(u), cpu_count=1, tdp_table=TABLE
    )
    watts = [src.read("cpu:0").power_w for _ in range(5)]
    half = 280 * (IDLE_SHARE + (1 - IDLE_SHARE) * 0.5)
    assert watts == pytest.approx([280 * IDLE_SHARE, 280, half, 280, 280 * IDLE_SHARE])  # clamped to [0, 1]
    assert src.default_period_s == 0.5


def test_device_is_labelled_estimate_with_where_the_tdp_came_from():
    model = "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"
    src = CpuEstimateSource(cpu_model=model, utilisation=lambda: 0.3, cpu_count=2, tdp_table=TABLE)
    (dev,) = src.devices()
    assert (dev.id, dev.kind, dev.method) == ("cpu:0", "cpu", ESTIMATE)
    assert "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz" in dev.name and "TDP 2 × 150 W" in dev.name
    assert dev.tdp_w == 300.0
    assert "TDP 150 W from codecarbon's CPU table ('Intel Xeon Gold 6248')" in dev.note
    assert src.read("cpu:0").power_w == pytest.approx(300 * (IDLE_SHARE + (1 - IDLE_SHARE) * 0.3))
    assert src.read("cpu:0").energy_j is None


def test_unknown_model_assumes_the_default_and_says_why():
    src = CpuEstimateSource(cpu_model="Weird CPU 9000X", utilisation=lambda: 1.0, cpu_count=1, tdp_table=TABLE)
    (dev,) = src.devices()
    expected = f"TDP {DEFAULT_TDP_W:g} W assumed: no match for 'Weird CPU 9000X' in codecarbon's CPU table"
    assert dev.note.startswith(expected)
    assert dev.method == ESTIMATE
    assert src.read("cpu:0").power_w == DEFAULT_TDP_W


def test_given_tdp_and_missing_table():
    src = CpuEstimateSource(cpu_model="x", tdp_w=65, utilisation=lambda: 0.0, cpu_count=1)
    assert src.devices()[0].note.startswith("TDP 65 W given")
    src = CpuEstimateSource(cpu_model="AMD EPYC 7763", utilisation=lambda: 0.0, cpu_count=1, tdp_table=())
    assert "codecarbon's CPU table not found" in src.devices()[0].note


def test_failing_utilisation_is_a_device_read_error():
    def broken():
        raise OSError("no /proc/stat")

    src = CpuEstimateSource(cpu_model="x", tdp_w=100, utilisation=broken, cpu_count=1)
    with pytest.raises(DeviceReadError, match="cpu:0: cannot read CPU utilisation"):
        src.read("cpu:0")
    with pytest.raises(DeviceReadError):
        src.read("cpu:1")


def test_proc_stat_utilisation_from_deltas(tmp_path):
    stat = tmp_path / "stat"

    def write(user, system, idle, iowait):
        stat.write_text(f"cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4\n")

    write(100, 50, 800, 50)
    util = ProcStatUtilisation(str(stat))
    assert util() == pytest.approx(0.15)  # no tick since construction: the average since boot
    write(160, 70, 900, 70)  # +80 busy, +120 idle/iowait
    assert util() == pytest.approx(0.4)
    assert util() == pytest.approx(0.4)  # no new tick: repeats the last value
    write(260, 70, 900, 70)
    assert util() == 1.0


def test_read_cpu_model(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz\n"
    )
    assert read_cpu_model(str(info)) == "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"
    info.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")
    assert read_cpu_model(str(info)) is None
    assert read_cpu_model(str(tmp_path / "missing")) is None
