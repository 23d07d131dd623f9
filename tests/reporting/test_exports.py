"""SCI and BoAmps exports against the simulated machine, and BoAmps against its published schema."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from greenmaas.errors import GreenmaasError
from greenmaas.listings import totals
from greenmaas.reporting import boamps_report, sci_form, validate_boamps
from greenmaas.reporting.exports import BoAmpsError

from .test_euaiact import INFER_J, REQUESTS, TOKENS_OUT, TRAIN_J

pytest.importorskip("jsonschema", reason="validating BoAmps needs jsonschema (in the test extra)")

KWH = 3.6e6


def device_total_j(path) -> float:
    return sum(r["total_j"] for r in totals(path))


def test_sci_per_request_adds_up_from_the_measured_energy(demo):
    form = sci_form(demo.path, unit="request", accounting={"location": "400"})
    total = form["total"]
    e_all = device_total_j(demo.path) / KWH  # spans and idle: what the devices consumed
    assert total["E_kwh"] == pytest.approx(e_all, rel=1e-9)
    assert total["I_g_per_kwh"] == pytest.approx(400.0)
    assert total["E_times_I_g"] == pytest.approx(e_all * 400.0, rel=1e-9)
    assert total["M_g"] == 0.0 and total["R"] == REQUESTS
    assert total["sci_g_per_unit"] == pytest.approx(e_all * 400.0 / REQUESTS, rel=1e-9)
    llama = next(g for g in form["groups"] if g["group"] == "llama")
    assert llama["sci_g_per_unit"] == pytest.approx(INFER_J / KWH * 400.0 / REQUESTS, rel=1e-6)
    assert form["intensity"]["type"] == "location-based"
    assert any("M = 0" in n for n in form["notes"])


def test_sci_per_output_token_with_pue_and_embodied_carbon(demo):
    form = sci_form(demo.path, unit="token", accounting={"location": "400", "pue": "1.25",
                                                        "embodied": "gpu=150kg/4y"})
    total = form["total"]
    assert total["R"] == TOKENS_OUT and form["functional_unit"] == "output token"
    assert total["E_kwh"] == pytest.approx(1.25 * device_total_j(demo.path) / KWH, rel=1e-9)
    groups_m = sum(g["M_g"] for g in form["groups"])
    assert total["M_g"] == pytest.approx(groups_m) and total["M_g"] > 0
    assert total["sci_g_per_unit"] == pytest.approx((total["E_times_I_g"] + total["M_g"]) / TOKENS_OUT)


def test_sci_rejects_an_unknown_unit(demo):
    with pytest.raises(GreenmaasError, match="functional unit"):
        sci_form(demo.path, unit="litre")


def test_boamps_report_is_valid_and_carries_the_measured_energy(demo):
    doc = boamps_report(demo.path)
    validate_boamps(doc)
    (measure,) = doc["measures"]
    assert measure["measurementMethod"] == "greenmaas" and measure["gpuTrackingMode"] == "nvml"
    assert measure["powerConsumption"] == pytest.approx((TRAIN_J + INFER_J) / KWH, rel=1e-6)
    assert doc["task"]["nbRequest"] == REQUESTS and doc["task"]["taskStage"] == "inference+training"
    assert {d["dataUsage"]: d["dataQuantity"] for d in doc["task"]["dataset"]} == {"input": 20 * REQUESTS,
                                                                                   "output": TOKENS_OUT}
    assert doc["task"]["taskFamily"] == "not recorded" and "taskFamily" in doc["task"]["taskDescription"]
    assert doc["environment"]["powerSourceCarbonIntensity"] == pytest.approx(56.039)
    assert doc["quality"] == "high"  # counter: ±5%
    assert sorted(c["componentName"] for c in doc["infrastructure"]["components"]) == ["static gpu:0", "static gpu:1"]
    json.dumps(doc)


def test_boamps_for_one_model_and_publisher_fields(demo):
    doc = boamps_report(demo.path, model="mlp", fields={"task": {"taskFamily": "image classification"},
                                                        "header": {"publisher": {"confidentialityLevel": "public"}}})
    validate_boamps(doc)
    assert doc["measures"][0]["powerConsumption"] == pytest.approx(TRAIN_J / KWH, rel=1e-6)
    assert doc["task"]["taskFamily"] == "image classification" and doc["task"]["taskStage"] == "training"
    assert "nbRequest" not in doc["task"]


def test_boamps_cloud_location_is_public_cloud(demo):
    doc = boamps_report(demo.path, accounting={"location": "gcp:europe-west1"})
    validate_boamps(doc)
    assert doc["infrastructure"]["infraType"] == "publicCloud"
    assert doc["infrastructure"]["cloudProvider"] == "google"


def test_schema_violations_name_the_field(demo):
    doc = boamps_report(demo.path)
    doc["measures"][0]["powerConsumption"] = "a lot"
    with pytest.raises(BoAmpsError, match="measures/0/powerConsumption"):
        validate_boamps(doc)
    del doc["infrastructure"]
    with pytest.raises(BoAmpsError, match="'infrastructure' is a required property"):
        validate_boamps(doc)


def test_the_published_schemas_ship_with_the_package():
    folder = resources.files("greenmaas.reporting") / "boamps"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".json"))
    assert names == ["algorithm_schema.json", "dataset_schema.json", "hardware_schema.json", "measure_schema.json",
                     "report_schema.json"]
    report = json.loads((folder / "report_schema.json").read_text())
    assert report["required"] == ["task", "measures", "infrastructure"]
