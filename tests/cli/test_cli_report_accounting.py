"""``greenmaas report`` with carbon, cost, sources, model cards and SCI, and its input errors."""

from __future__ import annotations

import json

import pytest

from greenmaas_cli.main import cli

FR = 56.039  # codecarbon 3.3.x, France: what --location FR prices with
KWH = 3.6e6


def ok(runner, args):
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def one_error_line(runner, args):
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ")
    return line


@pytest.fixture
def report(runner, ledger_path):
    def run(*args):
        return ok(runner, ["report", "--ledger", str(ledger_path), *args])

    return run


def test_overrides_reprice_the_recorded_energy(report):
    rows = {r["group"]: r for r in json.loads(report("--location", "FR", "--price", "0.25EUR/kWh",
                                                     "--pue", "1.2", "--format", "json"))}
    assert rows["bert"]["carbon_g"] == pytest.approx(1000 / KWH * 1.2 * FR, rel=1e-3)
    assert rows["bert"]["cost"] == pytest.approx(1000 / KWH * 1.2 * 0.25)
    assert rows["bert"]["currency"] == "EUR" and rows["bert"]["hardware_cost"] is None
    idle = rows["(idle)"]
    assert idle["carbon_g"] == pytest.approx(300 / KWH * 1.2 * FR, rel=1e-3) and idle["currency"] == "EUR"
    # Groups and (idle) add up to what the devices consumed, in carbon and cost as in energy.
    assert sum(r["carbon_g"] for r in rows.values()) == pytest.approx(1500 / KWH * 1.2 * FR, rel=1e-3)
    assert sum(r["cost"] for r in rows.values()) == pytest.approx(1500 / KWH * 1.2 * 0.25)


def test_market_based_and_hardware_columns_in_json_and_csv(report):
    (bert, *_) = json.loads(report("--market-intensity", "20", "--hardware-price", "gpu=2.5USD/h",
                                   "--format", "json"))
    assert bert["carbon_market_g"] == pytest.approx(1000 / KWH * 20)
    assert bert["hardware_cost"] == 0.0 and bert["currency"] == "USD"  # these spans recorded no device time
    header = report("--market-intensity", "20", "--format", "csv").splitlines()[0]
    assert header == ("group,spans,duration_s,energy_j,method,uncertainty_j,uncertainty_source,carbon_g,"
                      "carbon_market_g,energy_cost,hardware_cost,cost,currency")


def test_table_names_units_and_ends_with_the_sources(report):
    out = report("--location", "FR", "--price", "0.25EUR/kWh")
    for text in ("Carbon (gCO2e)", "Cost (EUR)", "Energy (kWh)", "France (FRA)", "location_source configured",
                 "global_energy_mix.json", "data year 2023", "PUE: 1.0", "tariff 0.25EUR/kWh", "currency EUR",
                 "counter", "±5%", "Measured: 2024-05-01"):
        assert text in out, text


def test_the_default_location_is_visible(report):
    out = report()
    assert "location_source default" in out and "world average" in out and "475" in out
    assert "Cost: " not in out.split("Sources")[0] and "cost not priced" in out


def test_markdown_by_model_has_a_model_card_per_model_with_sources_and_method(report):
    out = report("--format", "markdown", "--location", "aws:us-east-1", "--market-intensity", "30",
                 "--price", "0.30USD/kWh@08-20@mon-fri,0.18USD/kWh")
    assert out.index("| Model |") < out.index("## Model cards") < out.index("## Sources")
    card = out[out.index("### bert"):out.index("### llama")]
    for text in ("**Energy:**", "kWh (1,000.0 J)", "**Hardware:**", "aws:us-east-1", "location_source configured",
                 "usa_emissions.json", "data year", "counter", "±5%", "location-based", "market-based",
                 "USD", "**Measured:** 2024-05-01 10:00:00"):
        assert text in card, text
    assert "llama\\|7b" in out  # pipes escaped for markdown


def test_markdown_by_another_group_has_the_sources_but_no_model_cards(report):
    out = report("--format", "markdown", "--by", "phase")
    assert "## Sources" in out and "## Model cards" not in out and "location_source default" in out


def test_sources_alone(report):
    data = json.loads(report("--sources", "--format", "json", "--location", "DE", "--pue", "1.3"))
    (src,) = data["sources"]
    assert (src["location_spec"], src["location_source"], src["pue"]) == ("DEU", "configured", 1.3)
    assert src["intensity_year"] == 2023 and "global_energy_mix.json" in src["intensity_source"]
    assert data["methods"] == [{"method": "counter", "uncertainty": 0.05, "spans": 3, "energy_j": 1200.0,
                                "uncertainty_j": pytest.approx(60.0)}]  # stated: 5% (none recorded)
    assert data["period"]["first"].startswith("2024-05-01T10:00:00")
    text = report("--sources")
    assert text.startswith("Sources (run r1):") and "Method: counter" in text
    assert report("--sources", "--format", "csv").splitlines()[0].startswith("location,location_spec,")


def test_sci_per_request(report):
    rows = {r["group"]: r for r in json.loads(report("--by", "model", "--sci", "request", "--format", "json"))}
    llama = rows["llama|7b"]
    assert llama["functional_units"] == 1 and llama["sci_unit"] == "request"
    assert llama["sci_g"] == pytest.approx(200 / KWH * 475.0)
    assert rows["bert"]["functional_units"] == 0 and rows["bert"]["sci_g"] is None
    table = report("--sci", "request", "--embodied", "gpu=150kg/4y")
    assert "SCI (gCO2e/request)" in table and "n/a" in table and "R (requests)" in table
    assert "M = 0" in report("--sci", "request")  # without --embodied the footer says M is left out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--location", "FRR"], "Error: --location: unknown location 'FRR': did you mean"),
        (["--location", "gcp:europe-wset1"], "did you mean gcp:europe-west1"),
        (["--price", "0.25EUR"], "Error: --price: malformed price '0.25EUR'"),
        (["--price", "0.30EUR/kWh@08-20"], "the last rule must have no conditions"),
        (["--price", "0.3EUR/kWh@25-26,0.1EUR/kWh"], "malformed hours"),
        (["--hardware-price", "gpu:2.50USD/h"], "Error: --hardware-price: malformed hardware price"),
        (["--hardware-price", "gpu=2.50USD/kWh"], "unit /kWh is not allowed here"),
        (["--embodied", "gpu=150"], "Error: --embodied: malformed embodied carbon 'gpu=150'"),
        (["--pue", "abc"], "Error: --pue: PUE 'abc' is not a number"),
        (["--pue", "0.8"], "must be a number from 1.0 to 10"),
        (["--pue", "1e308"], "must be a number from 1.0 to 10"),
        (["--pue", "inf"], "must be a number from 1.0 to 10"),
        (["--since", "2024-05-02", "--until", "2024-05-01"], "is not after --since"),
        (["--market-intensity", "-5"], "Error: --market-intensity: market-based intensity"),
        (["--price", "0.2EUR/kWh", "--hardware-price", "gpu=1USD/h"], "mixed currencies"),
    ],
)
def test_bad_accounting_options_are_one_line_errors(runner, ledger_path, args, expected):
    line = one_error_line(runner, ["report", "--ledger", str(ledger_path), *args])
    assert expected in line


def test_bad_intensity_csv_is_one_line_naming_file_and_line(runner, ledger_path, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,gco2_per_kwh\n2024-05-01T00:00:00Z,50\nyesterday,60\n")
    line = one_error_line(runner, ["report", "--ledger", str(ledger_path), "--intensity-csv", str(bad)])
    assert f"{bad}, line 3: bad timestamp 'yesterday'" in line
    bad.write_text("time,value\n")
    assert "missing column 'timestamp'" in one_error_line(
        runner, ["report", "--ledger", str(ledger_path), "--intensity-csv", str(bad)])
    missing = tmp_path / "missing.csv"
    assert "cannot read intensity CSV" in one_error_line(
        runner, ["report", "--ledger", str(ledger_path), "--intensity-csv", str(missing)])
    late = tmp_path / "late.csv"
    late.write_text("timestamp,gco2_per_kwh\n2030-01-01T00:00:00Z,50\n")
    assert "before intensity series" in one_error_line(
        runner, ["report", "--ledger", str(ledger_path), "--intensity-csv", str(late)])


def test_a_good_intensity_csv_prices_by_the_hour(report, tmp_path):
    grid = tmp_path / "grid.csv"
    grid.write_text("timestamp,gco2_per_kwh\n2024-05-01T10:00:00Z,100\n2024-05-01T10:01:45Z,1000\n")
    rows = {r["group"]: r for r in json.loads(report("--intensity-csv", str(grid), "--format", "json"))}
    assert rows["bert"]["carbon_g"] == pytest.approx(1000 / KWH * 100)  # 10:00:00-10:01:40
    assert rows["llama|7b"]["carbon_g"] == pytest.approx(200 / KWH * 1000)  # 10:01:50-10:02:00
