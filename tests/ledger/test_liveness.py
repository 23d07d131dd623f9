"""Deriving whether a run marked running still is (greenmaas.ledger.liveness)."""

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from greenmaas.ledger.liveness import STALE_HEARTBEAT_S, run_status

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def test_an_ended_run_keeps_its_status():
    for status in ("finished", "failed", "interrupted"):
        assert run_status(status, "h", 1, None, this_host="h", pid_alive=lambda pid: False) == status


def test_on_this_host_the_pid_decides():
    assert run_status("running", "h", 7, NOW, this_host="h", pid_alive=lambda pid: True, now=NOW) == "running"
    old = NOW - timedelta(hours=1)  # a stale heartbeat does not matter while the pid lives
    assert run_status("running", "h", 7, old, this_host="h", pid_alive=lambda pid: True, now=NOW) == "running"
    assert run_status("running", "h", 7, NOW, this_host="h", pid_alive=lambda pid: False, now=NOW) == "interrupted"


def test_the_real_pid_check():
    assert run_status("running", "h", os.getpid(), None, this_host="h") == "running"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is gone
    assert run_status("running", "h", proc.pid, None, this_host="h") == "interrupted"
    assert run_status("running", "h", 1, None, this_host="h") == "running"  # init: alive, maybe not ours


def test_on_another_host_the_heartbeat_decides():
    fresh = NOW - timedelta(seconds=STALE_HEARTBEAT_S - 1)
    stale = NOW - timedelta(seconds=STALE_HEARTBEAT_S + 1)
    alive = dict(this_host="here", now=NOW, pid_alive=lambda pid: False)
    assert run_status("running", "there", 7, fresh, **alive) == "running"
    assert run_status("running", "there", 7, stale, **alive) == "interrupted"
    assert run_status("running", "there", 7, stale.replace(tzinfo=None), **alive) == "interrupted"
    assert run_status("running", "there", 7, None, **alive) == "running"  # before schema 2: unknown
