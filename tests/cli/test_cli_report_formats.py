"""``greenmaas report --format html|eu-ai-act|eu-ai-act-json|sci|boamps`` and ``--output``, run
through the real CLI on a real ledger."""

from __future__ import annotations

import json

import pytest

from greenmaas.report import GROUPS
from greenmaas_cli.main import cli

KWH = 3.6e6


def run(runner, *args):
    result = runner.invoke(cli, ["report", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def one_error_line(runner, *args):
    result = runner.invoke(cli, ["report", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ")
    return line


@pytest.mark.parametrize("by", GROUPS)
def test_html_for_every_grouping_to_a_file(runner, ledger_path, tmp_path, by):
    out = tmp_path / f"{by}.html"
    result = run(runner, "--ledger", str(ledger_path), "--by", by, "--format", "html", "--output", str(out))
    assert result.stdout == "" and f"Wrote {out}" in result.stderr
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert 'data-chart="bars"' in text and "<script" not in text


def test_html_to_stdout(runner, ledger_path):
    result = run(runner, "--ledger", str(ledger_path), "--format", "html", "--location", "FR")
    assert result.stdout.startswith("<!DOCTYPE html>") and "France (FRA)" in result.stdout


def test_eu_ai_act_markdown_and_json(runner, ledger_path, tmp_path):
    md = run(runner, "--ledger", str(ledger_path), "--format", "eu-ai-act").stdout
    assert md.startswith("# Energy and compute documentation")
    assert "## bert" in md and "## llama|7b" not in md and "## llama\\|7b" in md
    # bert trained: 1,000 J of its spans' own energy (100 J epoch + 900 J step)
    assert f"{1000 / 3.6e9:.3g}".replace("e-", "×10^-").replace("×10^-0", "×10^-") in md
    path = tmp_path / "doc.json"
    run(runner, "--ledger", str(ledger_path), "--format", "eu-ai-act", "--output", str(path))
    data = json.loads(path.read_text())
    (bert,) = [m for m in data["models"] if m["model"] == "bert"]
    energy = next(f for f in bert["fields"] if f["id"] == "training_energy_mwh")
    assert energy["value"] == pytest.approx(1000 / 3.6e9)
    as_json = json.loads(run(runner, "--ledger", str(ledger_path), "--format", "eu-ai-act-json").stdout)
    assert [m["model"] for m in as_json["models"]] == [m["model"] for m in data["models"]]


def test_sci_form_uses_the_sci_unit(runner, ledger_path):
    form = json.loads(run(runner, "--ledger", str(ledger_path), "--format", "sci", "--location", "100").stdout)
    assert form["functional_unit"] == "request" and form["total"]["R"] == 1
    # Spans and idle: 1,000 + 200 + 300 J at 100 g/kWh, one request.
    assert form["total"]["sci_g_per_unit"] == pytest.approx(1500 / KWH * 100)
    tokens = json.loads(run(runner, "--ledger", str(ledger_path), "--format", "sci", "--sci", "sample").stdout)
    assert tokens["functional_unit"] == "sample"


def test_boamps_is_validated_json(runner, ledger_path):
    pytest.importorskip("jsonschema")
    doc = json.loads(run(runner, "--ledger", str(ledger_path), "--format", "boamps").stdout)
    assert doc["measures"][0]["powerConsumption"] == pytest.approx(1200 / KWH)
    assert doc["header"]["formatVersion"] == "1.1.0"


def test_rows_formats_can_go_to_a_file(runner, ledger_path, tmp_path):
    path = tmp_path / "rows.csv"
    result = run(runner, "--ledger", str(ledger_path), "--format", "csv", "--output", str(path))
    assert result.stdout == ""
    assert path.read_text().splitlines()[0].startswith("group,spans,duration_s,energy_j")


def test_errors_are_one_line(runner, ledger_path, tmp_path):
    line = one_error_line(runner, "--ledger", str(ledger_path), "--format", "html", "--sources")
    assert "--sources" in line
    line = one_error_line(runner, "--ledger", str(ledger_path), "--format", "html", "--output",
                          str(tmp_path / "missing" / "x.html"))
    assert "--output" in line and "cannot write" in line
    empty = tmp_path / "empty.db"
    from greenmaas.ledger import Ledger

    Ledger.open(empty).close()
    pytest.importorskip("jsonschema")
    line = one_error_line(runner, "--ledger", str(empty), "--format", "boamps")
    assert "no measured energy" in line


def test_empty_ledger_documents_say_so(runner, tmp_path):
    from greenmaas.ledger import Ledger

    empty = tmp_path / "empty.db"
    Ledger.open(empty).close()
    assert "No spans in the ledger" in run(runner, "--ledger", str(empty), "--format", "html").stdout
    assert "no field can be filled" in run(runner, "--ledger", str(empty), "--format", "eu-ai-act").stdout
