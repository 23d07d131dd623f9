"""CPU package and DRAM energy from RAPL counters in the Linux powercap tree.

The kernel exposes each RAPL domain as a directory under ``/sys/class/powercap``::

    intel-rapl:0/name                    "package-0"   -> device cpu:0
    intel-rapl:0/energy_uj               cumulative µJ, wraps at max_energy_range_uj
    intel-rapl:0/intel-rapl:0:2/name     "dram"        -> device dram:0

AMD processors appear under the same ``intel-rapl`` names on recent kernels; trees named
``amd-rapl:N`` are read the same way. ``psys`` (platform) and ``core``/``uncore`` subdomains are
not listed: psys overlaps the packages and core/uncore are parts of them. ``intel-rapl-mmio``
duplicates the package domain on some platforms and is skipped to avoid counting it twice.

Since Linux 5.10 ``energy_uj`` is readable by root only (CVE-2020-8694); the error raised then
names the file and the command that grants access.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

from ..errors import DeviceReadError, SourceUnavailable
from .base import COUNTER, Device, Reading, Source

__all__ = ["RaplSource"]

_PACKAGE_DIR = re.compile(r"(intel-rapl|amd-rapl):(\d+)")
_PACKAGE_NAME = re.compile(r"package-(\d+)")


def _read_file(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("ascii", "replace")


@dataclass(frozen=True)
class _Domain:
    device: Device
    energy_path: str
    max_energy_j: float | None


class RaplSource(Source):
    """Cumulative energy of CPU packages (``cpu:N``) and their DRAM (``dram:N``) from RAPL.

    ``root`` is the powercap directory. ``read_text(path) -> str`` reads one sysfs file (default:
    open and read it); tests inject one to emulate permissions. Raises :class:`SourceUnavailable`
    when the tree is missing, has no package domain, or cannot be read.
    """

    name = "rapl"
    #: 100 ms: RAPL counters update about every millisecond; 10 reads a second bound the wrap risk
    #: (a 262 kJ range wraps after ~20 min at 200 W) at negligible cost.
    default_period_s = 0.1

    def __init__(
        self, root: str | os.PathLike[str] = "/sys/class/powercap", *, read_text: Callable[[str], str] | None = None
    ) -> None:
        self.root = os.fspath(root)
        self._read_text = read_text or _read_file
        if not os.path.isdir(self.root):
            raise SourceUnavailable(f"RAPL: no powercap tree at {self.root}")
        self._domains = self._discover()
        if not self._domains:
            raise SourceUnavailable(f"RAPL: no package domain (intel-rapl:N named package-N) under {self.root}")
        for domain in self._domains.values():
            self._energy_uj(domain.energy_path)  # fail now, with the fix, rather than at first read

    # ------------------------------------------------------------------ Source interface

    def devices(self) -> list[Device]:
        return [d.device for d in self._domains.values()]

    def read(self, device_id: str) -> Reading:
        """Cumulative energy in J (raw: it wraps at ``max_energy_j``, which the timeline handles)."""
        domain = self._domains.get(device_id)
        if domain is None:
            raise DeviceReadError(f"{device_id}: no such device in this RAPL source")
        try:
            uj = int(self._read_text(domain.energy_path).strip())
        except (OSError, ValueError) as exc:
            raise DeviceReadError(f"{device_id}: cannot read {domain.energy_path}: {exc}") from exc
        return Reading(energy_j=uj / 1e6, max_energy_j=domain.max_energy_j)

    # ------------------------------------------------------------------ discovery

    def _text(self, path: str) -> str:
        """Read a sysfs file during discovery; OS errors become SourceUnavailable."""
        try:
            return self._read_text(path).strip()
        except PermissionError as exc:
            raise SourceUnavailable(_permission_message(path, self.root)) from exc
        except OSError as exc:
            raise SourceUnavailable(f"RAPL: cannot read {path}: {exc.strerror or exc}") from exc

    def _energy_uj(self, path: str) -> int:
        text = self._text(path)
        try:
            return int(text)
        except ValueError as exc:
            raise SourceUnavailable(f"RAPL: {path} holds {text!r}, not a counter in µJ") from exc

    def _max_energy_j(self, domain_dir: str) -> float | None:
        path = os.path.join(domain_dir, "max_energy_range_uj")
        try:
            return int(self._read_text(path).strip()) / 1e6
        except (OSError, ValueError):
            return None  # without it a wrap reads as a reset; the timeline still never goes negative

    def _discover(self) -> dict[str, _Domain]:
        found: dict[str, _Domain] = {}
        entries = sorted(os.listdir(self.root), key=_natural_key)
        for entry in entries:
            m = _PACKAGE_DIR.fullmatch(entry)
            if not m:
                continue
            pkg_dir = os.path.join(self.root, entry)
            name = self._text(os.path.join(pkg_dir, "name"))
            pm = _PACKAGE_NAME.fullmatch(name)
            if pm is None:
                continue  # psys and other non-package domains
            n = int(pm.group(1))
            cpu_id = f"cpu:{n}"
            if cpu_id in found:
                continue
            found[cpu_id] = _Domain(
                Device(cpu_id, "cpu", f"CPU package {n} (RAPL)", COUNTER),
                os.path.join(pkg_dir, "energy_uj"),
                self._max_energy_j(pkg_dir),
            )
            dram_dir = self._find_dram(entry, pkg_dir)
            dram_id = f"dram:{n}"
            if dram_dir is not None and dram_id not in found:
                found[dram_id] = _Domain(
                    Device(dram_id, "dram", f"DRAM of CPU package {n} (RAPL)", COUNTER),
                    os.path.join(dram_dir, "energy_uj"),
                    self._max_energy_j(dram_dir),
                )
        return found

    def _find_dram(self, entry: str, pkg_dir: str) -> str | None:
        """The subdomain of ``entry`` named "dram": nested in the package directory, or beside it
        (sysfs shows subdomains in both places)."""
        sub = re.compile(re.escape(entry) + r":\d+")
        candidates: list[str] = []
        for parent in (pkg_dir, self.root):
            try:
                names = sorted(os.listdir(parent), key=_natural_key)
            except OSError:
                continue
            candidates.extend(os.path.join(parent, x) for x in names if sub.fullmatch(x))
        seen: set[str] = set()
        for path in candidates:
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            if self._text(os.path.join(path, "name")) == "dram":
                return path
        return None


def _natural_key(name: str) -> list[object]:
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", name)]


def _permission_message(path: str, root: str) -> str:
    vendor = "amd-rapl" if "amd-rapl" in os.path.basename(os.path.dirname(path)) else "intel-rapl"
    return (
        f"RAPL: permission denied on {path} — grant read access with "
        f"`sudo chmod a+r {root}/{vendor}:*/energy_uj` (or in a container, mount "
        "/sys/class/powercap read-only and run with the needed capability)"
    )
