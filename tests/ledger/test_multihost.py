"""Several hosts writing one ledger at once: separate processes, each with its own Meter and host
name (``$GREENMAAS_HOST``) and its own local time zone, start together on an empty ledger
(PostgreSQL, and a SQLite file for comparison). Runs and devices are told apart by host, every
time comes back in UTC, and the report and ``read_ledger`` add up across hosts: per host and
device, its spans' energy plus idle is what the device consumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from greenmaas.analysis import read_ledger
from greenmaas.ledger import Ledger
from greenmaas.listings import list_runs
from greenmaas.report import summary
from greenmaas_cli.main import cli

T0 = datetime(2026, 3, 29, 0, 30, tzinfo=timezone.utc)  # a night when Europe's clocks change
SPANS, SPAN_S, GAP_S = 24, 0.5, 0.25
#: host name, local time zone, GPU watts, CPU watts
HOSTS = [
    ("node-a", "Asia/Kolkata", 300.0, 20.0),
    ("node-b", "America/New_York", 250.0, 30.0),
    ("node-c", "Europe/Berlin", 400.0, 25.0),
    ("node-d", "UTC", 150.0, 40.0),
]

# One host: waits for the word to start (so that all open the empty ledger together), then runs
# requests on a fake clock, sleeping a little between them so that the hosts' writes interleave.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    from datetime import datetime, timezone
    from greenmaas.meter import Meter
    from greenmaas.testing import FakeClock, StaticSource

    gpu_w, cpu_w, spans, span_s, gap_s = (float(a) for a in sys.argv[1:6])
    clock = FakeClock(utc0=datetime.fromisoformat(sys.argv[6]))
    source = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: gpu_w * t},
                                  "cpu:0": {"power_w": lambda t: cpu_w}})
    host = os.environ["GREENMAAS_HOST"]
    print("ready", flush=True)
    sys.stdin.readline()
    meter = Meter(sources=[source], clock=clock, background=False, accounting=False)
    meter.start()
    for i in range(int(spans)):
        with meter.request(f"{host}-{i}", model=f"model-{host}", tenant=f"tenant-{i % 3}"):
            clock.advance(span_s)
            meter.tick()
        clock.advance(gap_s)
        meter.tick()
        time.sleep(0.01)
    meter.stop()
    assert not meter.errors, meter.errors
    print("done", meter.run_id, flush=True)
    """
)


def _run_hosts(url: str) -> dict[str, str]:
    """Run every host at once; their run ids by host."""
    procs = []
    for host, tz, gpu_w, cpu_w in HOSTS:
        env = {**os.environ, "GREENMAAS_HOST": host, "GREENMAAS_LEDGER": url, "TZ": tz,
               "GREENMAAS_TENANT_KEY": "one-key-for-the-team"}
        args = [sys.executable, "-c", CHILD, str(gpu_w), str(cpu_w), str(SPANS), str(SPAN_S), str(GAP_S),
                T0.isoformat()]
        procs.append(subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        runs = {}
        for (host, *_), p in zip(HOSTS, procs):
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            runs[host] = out.split()[-1]
        return runs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def hosts_ledger(request, tmp_path_factory):
    """The ledger after every host ran, and the run ids by host. On PostgreSQL the hosts also
    create the ledger together, in an empty schema; the SQLite file is made beforehand."""
    if request.param == "sqlite":
        url = str(tmp_path_factory.mktemp("hosts") / "ledger.db")
        Ledger.open(url).close()
    else:
        url = request.getfixturevalue("module_postgres_url")
    return url, _run_hosts(url)


def _truth():
    """What each host's devices consumed, what its spans took, and its idle (J), by (host, device)."""
    busy, idle = SPANS * SPAN_S, SPANS * GAP_S
    out = {}
    for host, _, gpu_w, cpu_w in HOSTS:
        for device, watts in (("gpu:0", gpu_w), ("cpu:0", cpu_w)):
            out[host, device] = {"total_j": watts * (busy + idle), "spans_j": watts * busy, "idle_j": watts * idle}
    return out


def test_runs_are_keyed_by_host_and_times_are_utc(hosts_ledger):
    url, run_ids = hosts_ledger
    runs = read_ledger(url, "runs").set_index("run_id")
    assert sorted(runs["host"]) == sorted(h for h, *_ in HOSTS)
    assert {runs.loc[run_ids[h], "host"] for h in run_ids} == set(run_ids)
    assert set(runs["status"]) == {"finished"}
    end = T0 + timedelta(seconds=SPANS * (SPAN_S + GAP_S))
    # Each host lives in its own time zone; the ledger holds UTC only.
    for column, expected in (("start", T0), ("end", end)):
        assert str(runs[column].dt.tz) == "UTC"
        assert set(runs[column].dt.to_pydatetime()) == {expected}
    spans = read_ledger(url)
    assert str(spans["start"].dt.tz) == "UTC"
    assert spans["start"].min().to_pydatetime() == T0 and spans["end"].max().to_pydatetime() == end - timedelta(
        seconds=GAP_S)
    first = spans[spans["request_id"] == "node-b-0"].iloc[0]
    assert first["start"].to_pydatetime() == T0 and first["run_id"] == run_ids["node-b"]
    # One team key: the same tenant has the same pseudonym whichever host served it.
    assert spans["tenant"].nunique() == 3 and not spans["tenant"].str.startswith("tenant").any()
    listed = {r["run_id"]: r for r in list_runs(url)}
    truth = _truth()
    for host, run_id in run_ids.items():
        assert listed[run_id]["host"] == host and listed[run_id]["spans"] == SPANS
        assert listed[run_id]["energy_j"] == pytest.approx(
            truth[host, "gpu:0"]["total_j"] + truth[host, "cpu:0"]["total_j"])


def test_spans_plus_idle_are_each_host_devices_total(hosts_ledger):
    url, run_ids = hosts_ledger
    host_of = read_ledger(url, "runs").set_index("run_id")["host"]
    spans = read_ledger(url)[["span_id", "run_id"]]
    span_devices = read_ledger(url, "span_devices").merge(spans, on="span_id")
    span_devices["host"] = span_devices["run_id"].map(host_of)
    devices = read_ledger(url, "devices")
    devices["host"] = devices["run_id"].map(host_of)

    per_spans = span_devices.groupby(["host", "device"])["self_j"].sum()
    per_device = devices.groupby(["host", "device"])[["total_j", "attributed_j", "idle_j"]].sum()
    truth = _truth()
    assert set(per_device.index) == set(truth) == set(per_spans.index)
    for key, want in truth.items():
        got = per_device.loc[key]
        assert got["total_j"] == pytest.approx(want["total_j"]), key
        assert per_spans.loc[key] == pytest.approx(want["spans_j"]), key
        assert got["idle_j"] == pytest.approx(want["idle_j"]), key
        assert per_spans.loc[key] + got["idle_j"] == pytest.approx(got["total_j"]), key
    # The same device name on four hosts is four devices.
    assert devices.groupby("device")["host"].nunique().to_dict() == {"cpu:0": 4, "gpu:0": 4}


def test_the_report_adds_up_across_hosts(hosts_ledger):
    url, run_ids = hosts_ledger
    truth = _truth()
    result = CliRunner().invoke(cli, ["report", "--ledger", url, "--by", "model", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["group"]: r for r in json.loads(result.stdout)}
    for host, *_ in HOSTS:
        row = rows.pop(f"model-{host}")
        assert row["spans"] == SPANS
        assert row["energy_j"] == pytest.approx(truth[host, "gpu:0"]["spans_j"] + truth[host, "cpu:0"]["spans_j"])
    (idle,) = rows.values()
    assert idle["group"] == "(idle)"
    assert idle["energy_j"] == pytest.approx(sum(t["idle_j"] for t in truth.values()))

    by_run = summary(url, by="run")
    by_run_energy = {r["group"]: r["energy_j"] for r in by_run.rows}
    for host, run_id in run_ids.items():
        assert by_run_energy[run_id] == pytest.approx(
            truth[host, "gpu:0"]["spans_j"] + truth[host, "cpu:0"]["spans_j"])
    everything = sum(r["energy_j"] for r in by_run.rows)
    assert everything == pytest.approx(sum(t["total_j"] for t in truth.values()))
