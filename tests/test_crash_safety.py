"""A measured process that is killed keeps what it measured: real meters in child processes,
killed at random moments (SIGKILL), or stopped by SIGTERM and SIGINT.

Each child opens and closes spans in a loop on a real Meter with a SQLite ledger and prints each
closed span's id and monotonic end time (the system-wide clock the parent shares). The parent
signals it at a random moment and then reads the ledger as a user would."""

import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner

from cli.main import cli
from greenmaas.analysis import read_ledger

CHILD = textwrap.dedent(
    """
    import signal, sys, time
    from greenmaas.clock import SystemClock
    from greenmaas.meter import Meter
    from greenmaas.testing import StaticSource

    db, own_handler = sys.argv[1], sys.argv[2] == "1"
    # A process as Python starts one when nobody ignored SIGINT (a disposition the test runner's
    # process may have been left with is inherited across exec).
    print(f"SIGINT-AT-START {signal.getsignal(signal.SIGINT)!r}", flush=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if own_handler:
        def previous(signum, frame):
            print(f"\\nPREVIOUS-HANDLER {signum}", flush=True)  # a line of its own, even mid-print
            sys.exit(0)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous)
    clock = SystemClock()
    source = StaticSource(clock, {"cpu:0": {"power_w": lambda t: 40.0}})
    meter = Meter(sources=[source], clock=clock, ledger=db, accounting=False, period_s=0.02).start()
    print("STARTED", flush=True)
    i = 0
    while True:
        with meter.measure(f"step-{i}") as span:
            time.sleep(0.005)
        print(f"SPAN {span.span_id} {time.monotonic():.6f}", flush=True)
        i += 1
    """
)

#: Spans closed at least this long before the kill must be in the ledger.
GRACE_S = 1.0


@dataclass
class Child:
    db: object
    sig: int
    own_handler: bool
    proc: subprocess.Popen = None  # type: ignore[assignment]
    lines: list = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    stderr: str = ""
    sent_at: float | None = None

    def spans(self) -> dict[str, float]:
        return {p[1]: float(p[2]) for p in (line.split() for line in self.lines) if len(p) == 3 and p[0] == "SPAN"}


def _read(child: Child) -> None:
    for line in child.proc.stdout:
        child.lines.append(line.strip())
        if line.startswith("SPAN"):
            child.started.set()


def _run_children(tmp_path, specs, *, after=(1.3, 2.2)) -> list[Child]:
    """Start one child per (signal, own handler), all at once; signal each a random time after
    its first closed span; wait for every one to end (killing it, whatever happens)."""
    children = []
    try:
        for i, (sig, own) in enumerate(specs):
            c = Child(tmp_path / f"c{i}.db", sig, own)
            c.proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(c.db), "1" if own else "0"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            threading.Thread(target=_read, args=(c,), daemon=True).start()
            children.append(c)
        due = []
        for c in children:
            assert c.started.wait(30), f"child never closed a span: {c.proc.poll()}"
            due.append(time.monotonic() + random.uniform(*after))
        for c, at in sorted(zip(children, due), key=lambda p: p[1]):
            time.sleep(max(at - time.monotonic(), 0.0))
            c.sent_at = time.monotonic()
            c.proc.send_signal(c.sig)
        for c in children:
            try:
                c.proc.wait(30)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
                raise AssertionError(f"child {c.db.name} ({c.sig!r}, own handler {c.own_handler}) did not end "
                                     f"30 s after the signal; its output: {c.lines[:2]} ... "
                                     f"{c.lines[-3:]}; stderr: {c.proc.stderr.read()[-2000:]}") from None
            c.stderr = c.proc.stderr.read()
    finally:
        for c in children:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
    return children


def _check_ledger(c: Child, *, every_span: bool) -> None:
    import sqlite3

    with sqlite3.connect(c.db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = set(read_ledger(c.db, "spans")["span_id"])
    closed = c.spans()
    assert closed, c.stderr
    must = {s for s, t in closed.items() if every_span or t <= c.sent_at - GRACE_S}
    assert must
    missing = must - stored
    assert not missing, f"{len(missing)} of {len(must)} spans missing; stderr: {c.stderr[-2000:]}"
    runs = read_ledger(c.db, "runs")
    assert runs["status"].tolist() == ["interrupted"]
    assert runs["heartbeat"].notna().all()


def test_sigkill_loses_no_span_closed_a_second_before(tmp_path):
    children = _run_children(tmp_path, [(signal.SIGKILL, False)] * 5)
    for c in children:
        assert c.proc.returncode == -signal.SIGKILL
        _check_ledger(c, every_span=False)
        # The run still says "running": readers see the pid is gone.
        out = CliRunner().invoke(cli, ["runs", "--ledger", str(c.db), "--format", "csv"], catch_exceptions=False)
        assert out.exit_code == 0 and "interrupted" in out.stdout


def test_sigterm_and_sigint_stop_the_meter_then_run_the_previous_handler(tmp_path):
    specs = [(signal.SIGTERM, True), (signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGINT, False)]
    children = _run_children(tmp_path, specs, after=(0.3, 0.8))
    for c in children:
        _check_ledger(c, every_span=True)
        if c.own_handler:
            assert f"PREVIOUS-HANDLER {int(c.sig)}" in c.lines, c.stderr
            assert c.proc.returncode == 0, c.stderr
        elif c.sig == signal.SIGTERM:  # the default action: terminated by the signal
            assert c.proc.returncode == -signal.SIGTERM, c.stderr
        else:  # Python's default: KeyboardInterrupt, which ends the interpreter by SIGINT
            assert c.proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in c.stderr, c.stderr


@pytest.mark.parametrize("in_thread", [False, True])
def test_handlers_are_installed_in_the_main_thread_only_and_removed_at_stop(in_thread):
    from greenmaas.clock import SystemClock
    from greenmaas.meter import Meter
    from greenmaas.testing import StaticSource

    # Start from Python's own dispositions (an earlier test's meter may have chained its own).
    found = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    before = {s: signal.getsignal(s) for s in found}
    clock = SystemClock()
    meter = Meter(sources=[StaticSource(clock, {"cpu:0": {"power_w": lambda t: 1.0}})], clock=clock,
                  ledger=False, accounting=False)
    try:
        if in_thread:
            t = threading.Thread(target=meter.start)
            t.start()
            t.join()
            assert {s: signal.getsignal(s) for s in before} == before
        else:
            meter.start()
            now = {s: signal.getsignal(s) for s in before}
            assert all(now[s] is not before[s] for s in before), (now, before, found)
        meter.stop()
        assert {s: signal.getsignal(s) for s in before} == before
        off = Meter(sources=[], clock=clock, ledger=False, accounting=False, handle_signals=False).start()
        assert {s: signal.getsignal(s) for s in before} == before
        off.stop()
    finally:
        meter.stop()  # never leave its threads running for the tests after this one
        for s, h in found.items():
            signal.signal(s, h)
