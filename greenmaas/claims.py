"""Which process on this host measures which device: a claim per device, to see double counting.

Each :class:`~greenmaas.meter.Meter` reads the whole of every device it measures and divides that
energy among its own spans. Two processes on one host measuring one GPU (two server workers,
two notebooks) therefore each count the whole GPU: a report over both runs counts it twice, and
each process's spans are charged for the other's work. Until the processes share one reading of
the device, they must at least know and say so.

A meter claims each device it measures with an exclusive lock on a file of its own for that
device (``fcntl.flock``, released by the kernel when the process dies, so a killed meter never
leaves a stale claim). The file holds the holder's pid and run id. A meter that finds a device
already claimed by a live process records who holds it (the run's ``config["shared_devices"]``)
and warns; reports say so for every run that measured a device at the same time as another run
on its host (see :func:`greenmaas.reporting.summary`).

Devices are matched by what identifies the hardware: a GPU by its UUID (its index depends on
``CUDA_VISIBLE_DEVICES``; a GPU without one is not claimed), a host device (CPU package, DRAM)
by its id on this host. The files live in ``$XDG_RUNTIME_DIR/greenmaas`` (else a directory of
this user's under the temporary directory, created 0700): processes of other users are not seen.
Where ``fcntl`` is missing (Windows) nothing is claimed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from ._paths import mkdir_private
from .sources.base import UNMEASURABLE

__all__ = ["Claims", "Holder", "claim_key", "claims_dir"]

#: Device kinds that exist once per host, whatever process reads them.
HOST_KINDS = frozenset({"cpu", "dram"})


@dataclass(frozen=True)
class Holder:
    """A device already measured by another process on this host when a meter started."""

    device: str  # the device's id in this process
    key: str  # what identifies the hardware (see :func:`claim_key`)
    pid: int | None
    run_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "key": self.key, "pid": self.pid, "run_id": self.run_id}


def claim_key(device: Mapping[str, Any]) -> str | None:
    """What identifies a device's hardware on its host (a run's ``devices`` entry): ``uuid:<uuid>``
    for a GPU with one, ``<id>`` for a host device (``cpu:0``), None otherwise."""
    if device.get("method") == UNMEASURABLE:  # never read: it counts nothing
        return None
    uuid = device.get("uuid")
    if uuid:
        return f"uuid:{uuid}"
    if device.get("kind") in HOST_KINDS:
        return str(device.get("id"))
    return None


def claims_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where the claim files are: ``$XDG_RUNTIME_DIR/greenmaas`` when that is an absolute path,
    else ``<tempdir>/greenmaas-<uid>``."""
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "greenmaas"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"greenmaas-{uid}"


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", key) + ".claim"


class Claims:
    """This process's claims on the devices it measures (see the module doc). :meth:`take`
    claims what it can and returns the devices another live process already holds; :meth:`release`
    lets them go. Never raises: a claim that cannot be made (no ``fcntl``, a directory that
    cannot be created) is skipped, and :attr:`problem` says why."""

    def __init__(self, run_id: str, directory: Path | None = None) -> None:
        self.run_id = run_id
        self.directory = directory if directory is not None else claims_dir()
        self.problem: str | None = None
        self._held: list[int] = []  # open file descriptors holding a lock
        # A meter dropped without stop() still lets its claims go when it is collected.
        weakref.finalize(self, _close_all, self._held)

    def take(self, devices: Iterable[Mapping[str, Any]]) -> list[Holder]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            self.problem = "device claims need fcntl (not on this platform)"
            return []
        try:
            mkdir_private(self.directory)
        except OSError as exc:
            self.problem = f"cannot create {self.directory}: {exc.strerror or exc}"
            return []
        found: list[Holder] = []
        seen: set[str] = set()
        for device in devices:
            key = claim_key(device)
            if key is None or key in seen:
                continue
            seen.add(key)
            path = self.directory / _file_name(key)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                self.problem = f"cannot open {path}: {exc.strerror or exc}"
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    # Held by a live process (a dead one's lock is gone with it).
                    pid, run_id = _holder(fd)
                    found.append(Holder(str(device.get("id")), key, pid, run_id))
                else:  # a file system without locks (some network ones): nothing known
                    self.problem = f"cannot lock {path}: {exc.strerror or exc}"
                os.close(fd)
                continue
            self._held.append(fd)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps({"pid": os.getpid(), "run_id": self.run_id}).encode())
            except OSError as exc:  # still claimed; others just cannot read who holds it
                self.problem = f"cannot write {path}: {exc.strerror or exc}"
        return found

    def release(self) -> None:
        _close_all(self._held)


def _close_all(fds: list[int]) -> None:
    """Close the descriptors (closing the last one of a file releases its lock) and forget them."""
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass


def _holder(fd: int) -> tuple[int | None, str | None]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid = data.get("pid")
        run_id = data.get("run_id")
        return (pid if isinstance(pid, int) else None), (run_id if isinstance(run_id, str) else None)
    except (OSError, ValueError, AttributeError):
        return None, None
