"""A powercap sysfs tree written into a directory, for testing the RAPL source without root.

:func:`make_rapl_tree` lays out what Linux shows under ``/sys/class/powercap`` (package domains,
their ``core`` and ``dram`` subdomains nested and linked beside them) and returns a
:class:`RaplTree` to move the counters. Tests run as root in CI, where ``chmod 000`` does not
stop a read; :meth:`RaplTree.read_text` applies the permission bits as an unprivileged user
would see them, so pass it to ``RaplSource(root, read_text=tree.read_text)`` to test denials.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Mapping

__all__ = ["make_rapl_tree", "RaplTree", "DEFAULT_MAX_ENERGY_RANGE_UJ"]

#: A common value on Intel server parts (about 262 kJ).
DEFAULT_MAX_ENERGY_RANGE_UJ = 262_143_328_850


class RaplTree:
    """A written powercap tree. Domains are named by device id (``cpu:0``, ``dram:0``)."""

    def __init__(self, root: str, domains: dict[str, str]) -> None:
        self.root = root
        self._domains = domains  # device id -> domain directory

    def path(self, domain: str, file: str = "energy_uj") -> str:
        """Path of one file of a domain: a device id (``"cpu:0"``, ``"dram:1"``) or a domain
        directory relative to the root (``"intel-rapl:0:0"``)."""
        directory = self._domains.get(domain) or os.path.join(self.root, domain)
        return os.path.join(directory, file)

    def set_energy(self, domain: str, uj: int) -> None:
        """Set a domain's ``energy_uj`` counter (µJ)."""
        path = self.path(domain)
        mode = os.stat(path).st_mode
        os.chmod(path, 0o644)
        with open(path, "w") as f:
            f.write(f"{int(uj)}\n")
        os.chmod(path, stat.S_IMODE(mode))

    def set_readable(self, domain: str, readable: bool) -> None:
        """Make a domain's ``energy_uj`` readable by everyone (0444) or by no one (0000)."""
        os.chmod(self.path(domain), 0o444 if readable else 0o000)

    @staticmethod
    def read_text(path: str) -> str:
        """Read a file as an unprivileged user would: no read bit for others, PermissionError."""
        if not os.stat(path).st_mode & stat.S_IROTH:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        with open(path) as f:
            return f.read()


def make_rapl_tree(
    root: str | os.PathLike[str],
    packages: int = 1,
    dram: bool = True,
    energy_uj: int | Mapping[str, int] = 0,
    max_energy_range_uj: int = DEFAULT_MAX_ENERGY_RANGE_UJ,
    readable: bool = True,
    *,
    vendor: str = "intel-rapl",
    psys: bool = False,
) -> RaplTree:
    """Write a powercap tree under ``root`` (created if needed) and return a :class:`RaplTree`.

    ``energy_uj`` is one starting value for every domain or a mapping from device id to value.
    ``readable=False`` writes the ``energy_uj`` files with mode 0000. ``vendor`` names the
    domains (``intel-rapl`` or ``amd-rapl``); ``psys=True`` adds a platform domain after the
    packages, which the source must ignore.
    """
    root = os.fspath(root)
    os.makedirs(os.path.join(root, vendor), exist_ok=True)
    _write(os.path.join(root, vendor, "enabled"), "1")
    domains: dict[str, str] = {}

    def start(dev_id: str) -> int:
        if isinstance(energy_uj, Mapping):
            return int(energy_uj.get(dev_id, 0))
        return int(energy_uj)

    def domain(path: str, name: str, dev_id: str | None) -> None:
        os.makedirs(path, exist_ok=True)
        _write(os.path.join(path, "name"), name)
        _write(os.path.join(path, "max_energy_range_uj"), str(max_energy_range_uj))
        _write(os.path.join(path, "enabled"), "1")
        energy = os.path.join(path, "energy_uj")
        _write(energy, str(start(dev_id) if dev_id else 0))
        os.chmod(energy, 0o444 if readable else 0o000)
        if dev_id:
            domains[dev_id] = path

    for n in range(packages):
        top = f"{vendor}:{n}"
        pkg = os.path.join(root, top)
        domain(pkg, f"package-{n}", f"cpu:{n}")
        subs = [("core", None)] + ([("dram", f"dram:{n}")] if dram else [])
        for m, (name, dev_id) in enumerate(subs):
            sub = f"{top}:{m}"
            domain(os.path.join(pkg, sub), name, dev_id)
            link = os.path.join(root, sub)
            if not os.path.lexists(link):
                os.symlink(os.path.join(top, sub), link)  # as sysfs shows subdomains at the top too
    if psys:
        domain(os.path.join(root, f"{vendor}:{packages}"), "psys", None)
    return RaplTree(root, domains)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text + "\n")
