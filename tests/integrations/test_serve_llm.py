"""The real server (examples/serve_llm.py) under the load script (examples/load_llm.py): 500
requests at concurrency 50 on 127.0.0.1, then the ledger must account for every one of them."""

import hashlib
import hmac
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from greenmaas.analysis import read_ledger
from greenmaas.report import summary

ROOT = Path(__file__).resolve().parents[2]
REQUESTS, CONCURRENCY, TENANTS = 500, 50, 4
KEY = "serve-llm-test-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.stdout.read()}")
        try:
            if httpx.get(url + "/metrics", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not start")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    db, record = tmp / "serve.db", tmp / "responses.jsonl"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GREENMAAS_TENANT_KEY": KEY, "XDG_CONFIG_HOME": str(tmp), "PYTHONUNBUFFERED": "1"}
    env.pop("GREENMAAS_LOCATION", None)
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "serve_llm.py"), "--host", "127.0.0.1", "--port", str(port),
         "--ledger", str(db), "--period-ms", "20", "--final-wait-ms", "300"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_until_serving(url, server)
        load = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "load_llm.py"), "--url", url, "--requests", str(REQUESTS),
             "--concurrency", str(CONCURRENCY), "--tenants", str(TENANTS), "--min-tokens", "2",
             "--stream", "0.2", "--record", str(record)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        metrics = httpx.get(url + "/metrics", timeout=10).text
        responses = [json.loads(line) for line in record.read_text().splitlines()]
        some_id = responses[0]["greenmaas"]["greenmaas-request-id"]
        endpoint = httpx.get(f"{url}/greenmaas/requests/{some_id}", timeout=10).json()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            out, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            out, _ = server.communicate()
    assert server.returncode == 0, out
    return {"db": db, "load": load, "responses": responses, "metrics": metrics, "endpoint": endpoint,
            "server_out": out}


def test_none_lost(served):
    load = served["load"]
    failed = [r for r in served["responses"] if r.get("status") != 200][:5]
    assert load.returncode == 0, f"{load.stdout}{load.stderr}\nfailed: {failed}\nserver: {served['server_out'][-3000:]}"
    s = json.loads(load.stdout)
    assert s["sent"] == REQUESTS and s["completed"] == REQUESTS and s["errors"] == 0
    assert s["p50_latency_s"] > 0 and s["requests_per_s"] > 0
    assert all(r["status"] == 200 and r["tokens"] == r["max_tokens"] for r in served["responses"])


def test_exactly_one_request_span_each_with_prefill_and_decode_energy(served):
    spans = read_ledger(str(served["db"]))
    requests = spans[spans["kind"] == "request"]
    assert len(requests) == REQUESTS and requests["request_id"].is_unique
    ids = {r["greenmaas"]["greenmaas-request-id"] for r in served["responses"]}
    assert ids == set(requests["request_id"])
    rows = {r["group"]: r for r in summary(str(served["db"]), by="request").rows}
    by_i = {r["greenmaas"]["greenmaas-request-id"]: r for r in served["responses"]}
    for rid in ids:
        row, sent = rows[rid], by_i[rid]
        assert row["prefill_j"] > 0 and row["decode_j"] > 0, row
        assert row["energy_j"] == pytest.approx(row["prefill_j"] + row["decode_j"], rel=1e-9)
        assert row["prompt_tokens"] == sent["prompt_bytes"] and row["output_tokens"] == sent["max_tokens"]
        assert 0 < row["ttft_s"] <= sent["latency_s"]


def test_requests_plus_idle_is_the_device_total(served):
    spans = read_ledger(str(served["db"]))
    devices = read_ledger(str(served["db"]), "devices")
    requests = spans[spans["kind"] == "request"]
    total = devices["total_j"].sum()
    assert total > 0
    assert requests["energy_j"].sum() + devices["idle_j"].sum() == pytest.approx(total, rel=1e-9)
    # nothing else took energy: every joule spans got went through a request's shares
    assert spans["self_energy_j"].sum() == pytest.approx(requests["energy_j"].sum(), rel=1e-9)


def test_tenants_only_as_keyed_pseudonyms(served):
    spans = read_ledger(str(served["db"]))
    expected = {f"tenant-{k}": "t-" + hmac.new(KEY.encode(), f"tenant-{k}".encode(), hashlib.sha256).hexdigest()[:16]
                for k in range(TENANTS)}
    stored = set(spans.loc[spans["kind"] == "request", "tenant"])
    assert stored <= set(expected.values()) and len(stored) == TENANTS
    text = (served["db"]).read_bytes()
    assert not any(raw.encode() in text for raw in expected)
    assert 'tenant="tenant-' not in served["metrics"]
    assert any(f'tenant="{p}"' in served["metrics"] for p in expected.values())


def test_headers_present_and_equal_to_the_ledger_where_final(served):
    spans = read_ledger(str(served["db"]))
    requests = spans[spans["kind"] == "request"].set_index("request_id")
    with_energy = 0
    for r in served["responses"]:
        h = r["greenmaas"]
        rid = h["greenmaas-request-id"]
        if "greenmaas-energy-j" in h:
            with_energy += 1
            assert not r["stream"]  # streamed responses carry it in their last event instead
            assert float(h["greenmaas-energy-j"]) == pytest.approx(requests.loc[rid, "energy_j"], rel=1e-12)
            assert float(h["greenmaas-carbon-g"]) == pytest.approx(requests.loc[rid, "carbon_g"], rel=1e-12)
        event = r.get("greenmaas_event")
        if event is not None and event["final"]:
            with_energy += 1
            assert r["stream"] and event["request_id"] == rid
            assert event["energy_j"] == pytest.approx(requests.loc[rid, "energy_j"], rel=1e-12)
            assert event["prefill_j"] + event["decode_j"] == pytest.approx(event["energy_j"], rel=1e-9)
    assert with_energy > 0
    e = served["endpoint"]
    assert e["final"] is True
    assert e["energy_j"] == pytest.approx(requests.loc[e["request_id"], "energy_j"], rel=1e-12)
    assert not math.isnan(e["prefill_j"]) and e["prefill_j"] > 0
