"""Processes that use a measured GPU besides this one: seen, recorded, said.

A :class:`~greenmaas.meter.Meter` divides a GPU's whole energy among its own spans and idle. A
process that greenmaas does not measure (another user's notebook, a second server, a job that
does not use greenmaas) draws power on the same GPU, and that power lands in this run's spans and
idle: greenmaas cannot split a GPU between processes it does not see. It can see that they are
there: NVML lists the processes with a context on each GPU. A meter asks at start, every
:data:`CHECK_S` seconds and at stop; the first time it sees others on a GPU it warns, and the run
records what it saw (``config["gpu_processes"]``), which reports repeat as a note. Where NVML
also gives each process's SM utilisation over its last sample period
(``nvmlDeviceGetProcessUtilization``), the meter takes it every :data:`ACTIVITY_S` seconds and
the run records what share of the SM activity seen was other processes': how much of the
figures their work may be.

NVML numbers processes as the host does. In a container (a pid namespace of its own) this
process's pid is not among them, so which listed process is this one cannot be told: at least
all but one of them are others, and only when two or more are listed is another one certain. A
GPU whose driver does not list processes is recorded as such: whether others used it is unknown.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime
from typing import Any, Callable, Iterable

__all__ = ["ACTIVITY_S", "CHECK_S", "NOT_LISTED", "ProcessWatch", "list_processes", "notes_for_run", "own_pid_is_hosts"]

log = logging.getLogger("greenmaas")

#: Seconds between two looks at the processes on each GPU ...
CHECK_S = 10.0
#: ... and between two reads of what each did (NVML keeps the last sample period only).
ACTIVITY_S = 1.0
#: Other pids kept per GPU in the run's record (the count of checks goes on).
_KEEP_PIDS = 16
#: The host's (initial) pid namespace, as ``/proc/self/ns/pid`` names it on Linux.
_INIT_PID_NS = "pid:[4026531836]"


def own_pid_is_hosts(read_link: Callable[[str], str] = os.readlink) -> bool | None:
    """Whether this process's pid is the one the host (and NVML) knows: True in the host's pid
    namespace, False in another (a container), None where that cannot be told."""
    try:
        return read_link("/proc/self/ns/pid") == _INIT_PID_NS
    except OSError:
        return None


#: Why a GPU's processes are not known, where its driver does not list them.
NOT_LISTED = "NVML does not list the processes on this GPU"


def list_processes(source: Any, device_id: str) -> tuple[list[int] | None, str | None]:
    """The pids on a GPU (``source.processes``) and, where they are not known, why: the driver
    does not list them, or listing failed. Never raises."""
    try:
        pids = source.processes(device_id)
    except Exception as exc:  # noqa: BLE001 - looking must never break measuring
        return None, str(exc) or type(exc).__name__
    return pids, (NOT_LISTED if pids is None else None)


class _Seen:
    """What the checks of one GPU found."""

    __slots__ = ("checks", "listed", "with_others", "most_others", "pids", "first", "last", "reason", "warned",
                 "periods", "sm_all", "sm_others", "last_ts", "activity")

    def __init__(self) -> None:
        self.checks = 0
        self.listed = 0  # checks at which NVML listed the processes
        self.with_others = 0  # checks at which another process was certainly there
        self.most_others = 0
        self.pids: list[int] = []
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.reason: str | None = None  # why the processes could not be listed (the last time)
        self.warned = False
        # SM activity (NVML's per-process samples): sample periods seen, summed SM % of all
        # processes and of others, the newest sample's timestamp (µs), and whether NVML gives it.
        self.periods = 0
        self.sm_all = 0.0
        self.sm_others = 0.0
        self.last_ts = 0
        self.activity: bool | None = None

    def to_dict(self, comparable: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"checks": self.checks, "listed": self.listed, "with_others": self.with_others}
        if self.with_others:
            out.update(
                most_others=self.most_others,
                pids=list(self.pids),
                first_seen=self.first.isoformat() if self.first else None,
                last_seen=self.last.isoformat() if self.last else None,
            )
        if not comparable:
            out["own_pid_unknown"] = True  # NVML's pids are the host's; this process's is not among them
        if self.reason is not None and self.listed < self.checks:
            out["not_listed"] = self.reason
        if self.activity is False:
            out["activity"] = "not given"
        elif self.periods:
            out["activity_periods"] = self.periods
            if comparable:
                out["others_sm_share"] = self.sm_others / self.sm_all if self.sm_all > 0 else 0.0
        return out


class ProcessWatch:
    """Looks at the processes on each GPU a meter measures.

    ``gpus``: ``(device id, source)`` pairs; ``source.processes(device_id)`` returns the pids
    (host numbering) or None where they cannot be listed, and raises where listing fails;
    ``source.process_activity(device_id, since_us)``, where the source has it, the samples of
    what each did (see :meth:`greenmaas.sources.nvml.NvmlSource.process_activity`). ``own_pid``:
    this process's pid as NVML would list it, or None where it cannot be known (a container).
    """

    def __init__(self, gpus: Iterable[tuple[str, Any]], own_pid: int | None) -> None:
        self._gpus = list(gpus)
        self.own_pid = own_pid
        self._seen = {dev: _Seen() for dev, _ in self._gpus}

    @classmethod
    def for_sampler(cls, sampler: Any) -> "ProcessWatch":
        """One over the GPUs of ``sampler`` whose sources can list processes (NVML's)."""
        gpus = []
        for ch in getattr(sampler, "_channels", ()):
            if ch.device.kind == "gpu" and callable(getattr(ch.source, "processes", None)):
                gpus.append((ch.device.id, ch.source))
        hosts = own_pid_is_hosts()
        if hosts is None:  # no /proc: outside Linux, pids are the system's own (no pid namespaces)
            hosts = not sys.platform.startswith("linux")
        return cls(gpus, os.getpid() if hosts else None)

    def __bool__(self) -> bool:
        return bool(self._gpus)

    def check(self, when: datetime) -> list[str]:
        """Look once at every GPU; returns the warnings to give (a GPU's first sighting of
        others, once). Never raises: a failed listing is recorded as a reason."""
        warnings = []
        for dev, source in self._gpus:
            seen = self._seen[dev]
            seen.checks += 1
            pids, reason = list_processes(source, dev)
            if pids is None:
                seen.reason = reason
                continue
            seen.listed += 1
            if self.own_pid is not None:
                others = [p for p in pids if p != self.own_pid]
                certain = len(others)
            else:  # this process may be any one of them
                others = list(pids)
                certain = max(0, len(pids) - 1)
            if certain <= 0:
                continue
            seen.with_others += 1
            seen.most_others = max(seen.most_others, certain)
            for p in others:
                if p not in seen.pids and len(seen.pids) < _KEEP_PIDS:
                    seen.pids.append(p)
            seen.first = seen.first or when
            seen.last = when
            if not seen.warned:
                seen.warned = True
                warnings.append(self._warning(dev, others, certain))
        return warnings

    def sample_activity(self) -> None:
        """Add NVML's newest per-process SM samples of every GPU to the sums. Never raises."""
        for dev, source in self._gpus:
            seen = self._seen[dev]
            read = getattr(source, "process_activity", None)
            if seen.activity is False or not callable(read):
                seen.activity = False
                continue
            try:
                samples = read(dev, seen.last_ts)
            except Exception:  # noqa: BLE001 - a failed read is a missing sample, not an error
                continue
            if samples is None:
                seen.activity = False
                continue
            seen.activity = True
            fresh = [(pid, ts, sm) for pid, ts, sm in samples if ts > seen.last_ts]
            if not fresh:
                continue
            seen.periods += len({ts for _, ts, _ in fresh})
            seen.last_ts = max(ts for _, ts, _ in fresh)
            for pid, _, sm in fresh:
                seen.sm_all += sm
                if self.own_pid is not None and pid != self.own_pid:
                    seen.sm_others += sm

    def _warning(self, dev: str, others: list[int], certain: int) -> str:
        listed = ", ".join(str(p) for p in others[:8]) + (", …" if len(others) > 8 else "")
        who = (f"{certain} other process(es) (pid {listed})" if self.own_pid is not None else
               f"{len(others)} processes (host pids {listed}; this process runs in its own pid namespace, so "
               f"at least {certain} of them are others)")
        return (f"greenmaas: {dev} is also used by {who}; their work on it is counted in this run's spans and "
                "idle (greenmaas divides a GPU only among the spans it measures); the run records it")

    def record(self) -> dict[str, Any]:
        """What the run records (``config["gpu_processes"]``): per GPU, the checks made, how
        many listed the processes, how many found others, and which (the first few pids); where
        NVML gave per-process activity, the sample periods read and (outside a container) the
        share of the SM activity seen that was other processes'."""
        comparable = self.own_pid is not None
        return {dev: self._seen[dev].to_dict(comparable) for dev, _ in self._gpus}


def notes_for_run(run_id: str, host: str | None, record: dict[str, Any]) -> list[str]:
    """Report notes for one run's ``gpu_processes`` record (see :meth:`ProcessWatch.record`)."""
    notes = []
    for dev, r in sorted((record or {}).items()):
        if not isinstance(r, dict):
            continue
        checks, listed, others = int(r.get("checks") or 0), int(r.get("listed") or 0), int(r.get("with_others") or 0)
        where = f"{dev}" + (f" on {host}" if host else "")
        share = r.get("others_sm_share")
        if others:
            pids = ", ".join(str(p) for p in (r.get("pids") or [])[:8])
            activity = (f"; {share:.0%} of the SM activity in {r.get('activity_periods')} NVML samples"
                        if isinstance(share, (int, float)) else "")
            notes.append(
                f"run {run_id}: {where} was also used by processes greenmaas did not measure (pid {pids}; seen at "
                f"{others} of {checks} checks{activity}): their work on it is counted in that run's spans and idle"
            )
        elif checks and listed < checks:
            notes.append(
                f"run {run_id}: whether other processes used {where} is unknown "
                f"({r.get('not_listed') or 'NVML did not list its processes'})"
            )
    return notes
