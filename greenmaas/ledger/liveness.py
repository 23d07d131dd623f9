"""Whether a run the ledger says is ``running`` still is: the one place that decides it.

A meter writes its run's ``heartbeat`` (its last sample time, UTC) at least once a second while
it runs, and ends the run (``finished``, ``interrupted``, ``failed``) when it stops. A process
killed outright (SIGKILL, power loss, OOM killer) cannot end its run, so readers derive it, with
no write, from what the ledger holds:

* recorded on this host: the run is ``interrupted`` when its pid is gone (``os.kill(pid, 0)``
  raises ``ProcessLookupError``; ``PermissionError`` means some process has it, so alive);
* recorded on another host: ``interrupted`` when its heartbeat is older than
  :data:`STALE_HEARTBEAT_S` (hosts' clocks are assumed to agree to well within that).

A run without a heartbeat (recorded before schema 2) on another host stays ``running``: nothing
says otherwise. A pid reused by another process since keeps a dead run ``running`` on its host
until that process ends too.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone
from typing import Callable

__all__ = ["STALE_HEARTBEAT_S", "run_status"]

#: A run of another host whose last heartbeat is older than this (s) is shown ``interrupted``.
#: Meters beat at least once a second; the slack covers a busy writer and clock skew.
STALE_HEARTBEAT_S = 30.0


def run_status(
    status: str,
    host: str | None,
    pid: int | None,
    heartbeat: datetime | None,
    *,
    now: datetime | None = None,
    this_host: str | None = None,
    pid_alive: Callable[[int], bool] | None = None,
) -> str:
    """The run's status as readers should show it: ``status`` as recorded, except that a
    ``running`` run whose process is gone is ``interrupted`` (see the module docstring).

    ``now`` (UTC), ``this_host`` and ``pid_alive`` default to the real ones (for tests).
    """
    if status != "running":
        return status
    here = this_host if this_host is not None else (os.environ.get("GREENMAAS_HOST", "").strip() or socket.gethostname())
    if host is not None and host == here:
        if pid is not None:
            return "running" if (pid_alive or _pid_alive)(int(pid)) else "interrupted"
    if heartbeat is None:
        return status
    if heartbeat.tzinfo is None:
        heartbeat = heartbeat.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return "interrupted" if (now - heartbeat).total_seconds() > STALE_HEARTBEAT_S else status


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process we may not signal: alive
        return True
    except OSError:  # cannot tell (e.g. no kill on this platform): not provably gone
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has exited but not been reaped by its parent (Linux; elsewhere False)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ")".
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"Z"
