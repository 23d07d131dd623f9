"""The EU AI Act / Code of Practice document against the simulated machine's known power: every
filled field is a figure computed here from the simulation, every other field says why not."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from greenmaas.ledger import Ledger
from greenmaas.records import DeviceEnergy, RunRecord, SpanRecord
from greenmaas.reporting import eu_ai_act

from .conftest import IDLE_W, INFER_W, TRAIN_W

EPOCHS, STEPS, REQUESTS = 3, 5, 24
# Training: each step 0.4 s at TRAIN_W above idle then 0.1 s idle, on gpu:0; gpu:1 draws IDLE_W / 2.
TRAIN_WALL_S = EPOCHS * STEPS * 0.5
TRAIN_J = EPOCHS * STEPS * (0.5 * (IDLE_W + IDLE_W / 2) + 0.4 * TRAIN_W)
LENGTHS = [0.2 + 0.1 * (i % 5) for i in range(REQUESTS)]
INFER_J = sum(length * (IDLE_W + INFER_W + IDLE_W / 2) for length in LENGTHS)
TOKENS_OUT = sum(10 + 5 * (i % 5) for i in range(REQUESTS))


def fields(doc, model):
    (m,) = [m for m in doc.to_dict()["models"] if m["model"] == model]
    return {f["id"]: f for f in m["fields"]}, m


def test_training_fields_match_the_simulation(demo):
    f, m = fields(eu_ai_act(demo.path), "mlp")
    energy = f["training_energy_mwh"]
    assert energy["status"] == "filled" and energy["measured_or_estimated"] == "measured"
    assert energy["value"] == pytest.approx(TRAIN_J / 3.6e9, rel=1e-6)
    assert energy["methods"] == ["counter"]
    assert "MWh" in energy["text"] and "PUE not applied" in energy["text"]
    assert f["training_time_wall_clock_h"]["value"] == pytest.approx(TRAIN_WALL_S / 3600, rel=1e-6)
    assert f["training_device_hours"]["value"] == {"gpu": pytest.approx(2 * TRAIN_WALL_S / 3600, rel=1e-6)}
    assert "gpu:0 (static gpu:0), counter" in f["training_hardware"]["value"]
    assert f["training_emissions_tco2e"]["value"] == pytest.approx(TRAIN_J / 3.6e6 * 56.039 / 1e6, rel=1e-3)
    assert f["location"]["text"] == "France (FRA) (configured)"
    assert f["training_compute_flop"]["status"] == "not filled" and f["training_compute_flop"]["value"] is None
    assert f["inference_energy_per_request_j"]["status"] == "not filled"  # mlp served nothing
    assert "counter" in m["methodology"] and "PUE 1.0" in m["methodology"]


def test_inference_fields_match_the_simulation(demo):
    f, _ = fields(eu_ai_act(demo.path, model="llama"), "llama")
    per_request = f["inference_energy_per_request_j"]
    assert per_request["value"] == pytest.approx(INFER_J / REQUESTS, rel=1e-6) and per_request["requests"] == REQUESTS
    assert f["inference_energy_per_output_token_j"]["value"] == pytest.approx(INFER_J / TOKENS_OUT, rel=1e-6)
    assert "24 requests recorded" in per_request["text"]
    for missing in ("training_energy_mwh", "training_time_wall_clock_h", "training_device_hours"):
        assert f[missing]["status"] == "not filled" and f[missing]["value"] is None and f[missing]["reason"]


def test_markdown_has_at_least_two_significant_figures_and_lists_what_is_not_filled(demo):
    text = eu_ai_act(demo.path, model="mlp").to_markdown()
    line = next(x for x in text.splitlines() if x.startswith("| Training energy consumption"))
    mwh = f"{TRAIN_J / 3.6e9:.3g}".split("e")[0]
    assert mwh in line and "MWh" in line
    not_filled = text[text.index("### Not filled from the ledger"):]
    assert "floating-point operations" in not_filled and "Inference energy per request" in not_filled
    assert "### Methodology" in text


def test_json_round_trips(demo):
    data = json.loads(json.dumps(eu_ai_act(demo.path).to_dict(), default=str))
    assert [m["model"] for m in data["models"]] == ["llama", "mlp"]
    assert data["period"]["first"].startswith("2026-01-01")


def test_pue_adds_a_facility_figure_and_the_boundary_says_so(demo):
    f, m = fields(eu_ai_act(demo.path, model="mlp", accounting={"pue": "1.5"}), "mlp")
    assert f["training_energy_facility_mwh"]["value"] == pytest.approx(1.5 * TRAIN_J / 3.6e9, rel=1e-6)
    assert f["training_energy_mwh"]["value"] == pytest.approx(TRAIN_J / 3.6e9, rel=1e-6)  # IT energy unchanged
    assert "PUE of 1.5" in m["methodology"]


def test_estimated_energy_is_said_to_be_estimated(tmp_path):
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    path = tmp_path / "estimate.db"
    with Ledger.open(path) as led:
        led.start_run(RunRecord("r", "h", 1, t0, devices=[{"id": "cpu:0", "kind": "cpu", "name": "Xeon",
                                                             "method": "estimate"}]))
        led.write_spans([SpanRecord(span_id="e", run_id="r", name="epoch", start=t0, end=t0 + timedelta(hours=2),
                                    duration_s=7200.0, model="m", phase="training",
                                    devices=[DeviceEnergy("cpu:0", 7.2e8, "estimate", 7.2e8, self_device_s=7200.0)])])
    f, m = fields(eu_ai_act(str(path)), "m")
    assert f["training_energy_mwh"]["value"] == pytest.approx(0.2)
    assert f["training_energy_mwh"]["measured_or_estimated"] == "estimated"
    assert f["training_device_hours"]["value"] == {"cpu": pytest.approx(2.0)}
    assert "estimate from a CPU utilisation and TDP model" in m["methodology"]


def test_an_empty_ledger_fills_nothing(tmp_path):
    path = tmp_path / "empty.db"
    Ledger.open(path).close()
    doc = eu_ai_act(str(path))
    assert doc.models == [] and "no field can be filled" in doc.to_markdown()
