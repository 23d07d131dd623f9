import os

import pytest

from greenmaas.errors import DeviceReadError, SourceUnavailable
from greenmaas.sampling.timeline import Timeline
from greenmaas.sources.base import COUNTER
from greenmaas.sources.rapl import RaplSource
from greenmaas.testing import FakeClock
from greenmaas.testing.rapl import make_rapl_tree


def test_packages_and_dram_become_devices(tmp_path):
    tree = make_rapl_tree(tmp_path, packages=2, dram=True, energy_uj={"cpu:0": 5_000_000, "dram:1": 250_000})
    src = RaplSource(tree.root)
    devs = src.devices()
    assert [(d.id, d.kind, d.method) for d in devs] == [
        ("cpu:0", "cpu", COUNTER),
        ("dram:0", "dram", COUNTER),
        ("cpu:1", "cpu", COUNTER),
        ("dram:1", "dram", COUNTER),
    ]
    r = src.read("cpu:0")
    assert r.energy_j == 5.0
    assert r.power_w is None
    assert r.max_energy_j == pytest.approx(262_143.32885)
    assert src.read("dram:1").energy_j == 0.25
    assert src.default_period_s == 0.1


def test_without_dram_and_with_psys(tmp_path):
    tree = make_rapl_tree(tmp_path, packages=1, dram=False, psys=True)
    assert [d.id for d in RaplSource(tree.root).devices()] == ["cpu:0"]


def test_amd_rapl_tree(tmp_path):
    tree = make_rapl_tree(tmp_path, packages=1, vendor="amd-rapl", energy_uj=7_000_000)
    src = RaplSource(tree.root)
    assert [d.id for d in src.devices()] == ["cpu:0", "dram:0"]
    assert src.read("cpu:0").energy_j == 7.0


def test_counter_moves_between_reads(tmp_path):
    tree = make_rapl_tree(tmp_path, energy_uj=1_000_000)
    src = RaplSource(tree.root)
    tree.set_energy("cpu:0", 3_500_000)
    assert src.read("cpu:0").energy_j == 3.5


def test_wraparound_through_a_timeline(tmp_path):
    """A counter that wraps past max_energy_range_uj still gives the true energy."""
    max_uj = 10_000_000  # 10 J range so the wrap comes quickly
    tree = make_rapl_tree(tmp_path, energy_uj=9_000_000, max_energy_range_uj=max_uj)
    src = RaplSource(tree.root)
    clock = FakeClock()
    tl = Timeline("cpu:0", COUNTER)
    uj = 9_000_000
    for _ in range(20):  # 20 reads, 100 ms apart, 0.5 J each (5 W): wraps once
        tl.append(clock.monotonic(), src.read("cpu:0"))
        clock.advance(0.1)
        uj = (uj + 500_000) % max_uj
        tree.set_energy("cpu:0", uj)
    tl.append(clock.monotonic(), src.read("cpu:0"))
    assert tl.resets == 0  # a wrap, not a driver reset
    assert tl.energy_between(0.0, 2.0) == pytest.approx(10.0)


def test_missing_tree(tmp_path):
    with pytest.raises(SourceUnavailable, match=f"RAPL: no powercap tree at {tmp_path / 'nope'}"):
        RaplSource(tmp_path / "nope")


def test_tree_without_packages(tmp_path):
    (tmp_path / "intel-rapl").mkdir()
    with pytest.raises(SourceUnavailable, match="no package domain"):
        RaplSource(tmp_path)


def test_permission_denied_names_the_file_and_the_fix(tmp_path):
    # Tests run as root, where mode 0000 does not stop a read: the tree's reader applies the
    # permission bits as an unprivileged user sees them.
    tree = make_rapl_tree(tmp_path, readable=False)
    with pytest.raises(SourceUnavailable) as info:
        RaplSource(tree.root, read_text=tree.read_text)
    path = os.path.join(tree.root, "intel-rapl:0", "energy_uj")
    assert str(info.value) == (
        f"RAPL: permission denied on {path} — grant read access with "
        f"`sudo chmod a+r {tree.root}/intel-rapl:*/energy_uj` (or in a container, mount "
        "/sys/class/powercap read-only and run with the needed capability)"
    )
    assert isinstance(info.value.__cause__, PermissionError)


def test_permission_denied_on_dram_only(tmp_path):
    tree = make_rapl_tree(tmp_path)
    tree.set_readable("dram:0", False)
    with pytest.raises(SourceUnavailable, match=r"permission denied on .*intel-rapl:0:1/energy_uj"):
        RaplSource(tree.root, read_text=tree.read_text)


def test_readable_tree_through_the_permission_checking_reader(tmp_path):
    tree = make_rapl_tree(tmp_path, energy_uj=2_000_000)
    assert RaplSource(tree.root, read_text=tree.read_text).read("cpu:0").energy_j == 2.0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_with_the_real_reader(tmp_path):
    tree = make_rapl_tree(tmp_path, readable=False)
    with pytest.raises(SourceUnavailable, match="permission denied"):
        RaplSource(tree.root)


def test_read_failure_later_is_a_device_read_error(tmp_path):
    tree = make_rapl_tree(tmp_path)
    src = RaplSource(tree.root)
    os.remove(tree.path("cpu:0"))
    with pytest.raises(DeviceReadError, match=r"cpu:0: cannot read .*energy_uj"):
        src.read("cpu:0")
    with pytest.raises(DeviceReadError, match="no such device"):
        src.read("cpu:7")


def test_missing_max_energy_range_is_tolerated(tmp_path):
    tree = make_rapl_tree(tmp_path, dram=False)
    os.remove(tree.path("cpu:0", "max_energy_range_uj"))
    assert RaplSource(tree.root).read("cpu:0").max_energy_j is None
