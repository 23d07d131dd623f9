"""Locations resolve to the figures codecarbon's own data files give."""

from __future__ import annotations

import csv
import importlib.util
import json
import warnings
from pathlib import Path

import pytest

from greenmaas.accounting import intensity, locations
from greenmaas.accounting.locations import Location, NoLocationWarning, resolve_location
from greenmaas.errors import AccountingError, GreenmaasError

DATA = Path(importlib.util.find_spec("codecarbon").submodule_search_locations[0]) / "data"


def _mix(iso3: str) -> dict:
    return json.loads((DATA / "private_infra/global_energy_mix.json").read_text())[iso3]


def _state_lbs_per_mwh(name: str) -> float:
    return json.loads((DATA / "private_infra/2023/usa_emissions.json").read_text())[name]["emissions"]


def _gcp(region: str) -> float:
    with open(DATA / "cloud/impact.csv", encoding="utf-8-sig") as fh:
        return next(float(r["impact"]) for r in csv.DictReader(fh) if r["region"] == region)


@pytest.mark.parametrize("spec, iso3", [("FRA", "FRA"), ("DEU", "DEU"), ("USA", "USA"), ("FR", "FRA"),
                                        ("de", "DEU"), ("fra", "FRA"), ("JP", "JPN"), ("UK", "GBR")])
def test_countries_match_codecarbon_file(spec, iso3):
    loc = resolve_location(spec)
    row = _mix(iso3)
    assert loc.spec == iso3
    assert loc.intensity_g_per_kwh == row["carbon_intensity"]
    assert loc.year == row["year"]
    assert loc.country == iso3
    assert loc.location_source == "configured"
    assert "global_energy_mix.json" in loc.source and loc.codecarbon_version in loc.source


def test_published_examples():
    assert resolve_location("USA").intensity_g_per_kwh == 369.473
    assert resolve_location("FRA").intensity_g_per_kwh == 56.039
    assert resolve_location("DEU").intensity_g_per_kwh == 380.95
    assert resolve_location("gcp:us-central1").intensity_g_per_kwh == 430
    assert resolve_location("USA/virginia").intensity_g_per_kwh == pytest.approx(244.758, abs=5e-4)


@pytest.mark.parametrize("spec", ["US-VA", "us-va", "USA/virginia", "usa/Virginia", "USA/va"])
def test_us_state_converted_from_lbs_per_mwh(spec):
    loc = resolve_location(spec)
    assert loc.spec == "US-VA"
    assert loc.intensity_g_per_kwh == pytest.approx(_state_lbs_per_mwh("virginia") * 0.45359237)
    assert loc.year == 2023 and "eGRID" in loc.source


def test_multi_word_state():
    assert resolve_location("USA/new york").spec == "US-NY"
    assert resolve_location("US-DC").intensity_g_per_kwh == pytest.approx(
        _state_lbs_per_mwh("district of columbia") * 0.45359237
    )


@pytest.mark.parametrize("region", ["us-central1", "europe-west1", "europe-west9", "asia-northeast1"])
def test_gcp_regions(region):
    loc = resolve_location(f"gcp:{region}")
    assert loc.intensity_g_per_kwh == _gcp(region)
    assert loc.spec == f"gcp:{region}" and "impact.csv" in loc.source


def test_gcp_region_misspelt_in_codecarbon_is_reachable_by_its_real_name():
    assert resolve_location("gcp:me-central1").intensity_g_per_kwh == _gcp("me-cenrtal1")


@pytest.mark.parametrize(
    "spec, grid",
    [("aws:us-east-1", "US-VA"), ("aws:us-west-2", "US-OR"), ("aws:eu-west-3", "FRA"), ("aws:eu-central-1", "DEU"),
     ("AWS:EU-NORTH-1", "SE3"), ("aws:ca-central-1", "CA-QC"), ("azure:canadacentral", "CA-ON"),
     ("azure:norwayeast", "NO1"), ("aws:cn-north-1", "CN-BJ"), ("azure:eastus", "US-VA"), ("azure:westus2", "US-WA"), ("azure:centralus", "US-IA"),
     ("azure:westeurope", "NLD"), ("azure:uksouth", "GBR"), ("azure:japaneast", "JPN")],
)
def test_aws_and_azure_regions_use_their_grid(spec, grid):
    loc = resolve_location(spec)
    ref = resolve_location(grid)
    assert loc.intensity_g_per_kwh == ref.intensity_g_per_kwh
    assert loc.year == ref.year
    assert loc.spec == spec.lower()
    assert "cloud_regions.csv" in loc.source


def test_every_cloud_region_row_resolves():
    rows = locations.cloud_regions()
    assert len(rows) >= 60
    for (provider, region), row in rows.items():
        assert row.source.startswith("https://")
        loc = resolve_location(f"{provider}:{region}")
        assert loc.intensity_g_per_kwh > 0


@pytest.mark.parametrize("spec, value", [("420", 420.0), (420, 420.0), (12.5, 12.5), ("420 g/kWh", 420.0),
                                         ("0", 0.0)])
def test_fixed_numbers(spec, value):
    loc = resolve_location(spec)
    assert loc.intensity_g_per_kwh == value
    assert loc.source == "fixed" and loc.year is None


def test_location_source_recorded():
    assert resolve_location("FR", source="env").location_source == "env"
    with pytest.raises(AccountingError):
        resolve_location("FR", source="guessed")


def test_location_passes_through_and_round_trips():
    loc = resolve_location("aws:us-east-1")
    assert resolve_location(loc) is loc
    assert Location.from_dict(loc.to_dict()) == loc


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("FRR", "unknown location 'FRR': did you mean FRA, FRO"),
        ("US-XX", "did you mean US-"),
        ("USA/virgina", "did you mean USA/virginia"),
        ("aws:us-east-7", "did you mean aws:us-east-1"),
        ("gcp:europe-west99", "did you mean gcp:europe-west"),
        ("France", "did you mean FRA"),
        ("us-east-1", "aws:us-east-1"),
    ],
)
def test_unknown_locations_name_close_matches(spec, expected):
    with pytest.raises(AccountingError, match=None) as info:
        resolve_location(spec)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("spec", ["ZZ", "nowhere at all", "oci:us-ashburn-1", "-3", "nan", True, [1]])
def test_bad_specs_raise_one_line_errors(spec):
    with pytest.raises(AccountingError) as info:
        resolve_location(spec)
    assert isinstance(info.value, GreenmaasError) and "\n" not in str(info.value)


def test_country_without_data_says_so():
    with pytest.raises(AccountingError, match="no carbon intensity for 'AQ'"):
        resolve_location("AQ")


def test_default_is_world_average_and_warns_once(fresh_caches):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = resolve_location(None)
        second = resolve_location("")
    assert first.location_source == second.location_source == "default"
    assert first.intensity_g_per_kwh == json.loads((DATA / "private_infra/carbon_intensity_per_source.json").read_text())[
        "world_average"
    ]
    ours = [w for w in caught if issubclass(w.category, NoLocationWarning)]
    assert len(ours) == 1
    text = str(ours[0].message)
    assert "GREENMAAS_LOCATION" in text and "default" in text
    assert ours[0].filename == __file__  # points at the caller, not at greenmaas


def test_codecarbon_missing_gives_install_hint(fresh_caches, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "codecarbon" else real(name, *a))
    with pytest.raises(AccountingError, match="pip install"):
        resolve_location("FR")
    # A fixed number needs no data files.
    assert resolve_location(300).intensity_g_per_kwh == 300


def test_codecarbon_is_never_imported():
    # In a fresh interpreter, so that no other test's imports can hide or fake the result.
    import subprocess
    import sys

    code = (
        "import sys; from greenmaas.accounting import resolve_location as r; "
        "r('FR'); r('gcp:us-central1'); r('US-CA'); r('aws:us-east-1'); "
        "assert 'codecarbon' not in sys.modules, 'codecarbon was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
    assert intensity.codecarbon_version() != "unknown"


# ---------------------------------------------------------------------------------- regions


def _canada_mix(name: str) -> dict:
    folder = max(p.parent.name for p in DATA.glob("private_infra/*/canada_energy_mix.json"))
    return json.loads((DATA / f"private_infra/{folder}/canada_energy_mix.json").read_text())[name]


@pytest.mark.parametrize("spec", ["CA-QC", "ca-qc", "CAN/quebec", "CAN/Québec", "can/QC", "CA/quebec", " CAN / quebec "])
def test_canadian_province(spec):
    loc = resolve_location(spec)
    mix = _canada_mix("quebec")
    # Fossil shares times the coal / petroleum / natural-gas factors, the rest counts as 0.
    expected = 1000 * (mix["coal"] * 0.995725971 + mix["petroleum"] * 0.8166885263
                       + mix["naturalGas"] * 0.7438415916) / mix["total"]
    assert loc.spec == "CA-QC" and loc.country == "CAN"
    assert loc.intensity_g_per_kwh == pytest.approx(expected, rel=1e-12)
    assert "canada_energy_mix.json" in loc.source and "Quebec" in loc.label


def test_every_canadian_province_has_its_iso_code():
    for name, code in intensity.CANADA_PROVINCE_CODES.items():
        assert resolve_location(f"CA-{code}").spec == resolve_location(f"CAN/{name}").spec == f"CA-{code}"
    assert set(intensity.canada_province_intensities()) == set(intensity.CANADA_PROVINCE_CODES)


def test_cloud_region_uses_the_province_not_the_country():
    montreal, canada = resolve_location("aws:ca-central-1"), resolve_location("CAN")
    assert montreal.intensity_g_per_kwh == resolve_location("CA-QC").intensity_g_per_kwh
    assert montreal.intensity_g_per_kwh < canada.intensity_g_per_kwh / 10
    assert "Quebec" in montreal.label and montreal.country == "CAN"


def _nordic(zone: str) -> dict:
    return json.loads((DATA / "private_infra/nordic_emissions.json").read_text())["data"][zone]


@pytest.mark.parametrize("spec, zone, country", [("SE3", "SE3", "SWE"), ("se1", "SE1", "SWE"), ("SWE/SE3", "SE3", "SWE"),
                                                 ("NO4", "NO4", "NOR"), ("NOR/no4", "NO4", "NOR"),
                                                 ("FIN/FI", "FI", "FIN")])
def test_nordic_bidding_zones(spec, zone, country):
    loc = resolve_location(spec)
    assert loc.intensity_g_per_kwh == _nordic(zone)["emission_factor"]
    assert loc.year == _nordic(zone)["year"] and loc.country == country
    assert loc.spec == (zone if zone != "FI" else "FIN/FI")
    assert "nordic_emissions.json" in loc.source


def test_fi_is_the_country_and_fin_fi_the_bidding_zone():
    assert resolve_location("FI").spec == "FIN"
    assert resolve_location("FI").intensity_g_per_kwh == _mix("FIN")["carbon_intensity"]
    assert resolve_location("FIN/FI").intensity_g_per_kwh == _nordic("FI")["emission_factor"]


def _china(code: str) -> dict:
    return json.loads((DATA / "private_infra/2023/china_provincial_emissions.json").read_text())["data"][code]


@pytest.mark.parametrize("spec, code", [("CN-GD", "CN-GD"), ("CHN/guangdong", "CN-GD"), ("CN/Guangdong Province", "CN-GD"),
                                        ("chn/nei mongol", "CN-NM"), ("CHN/Inner Mongolia Autonomous Region", "CN-NM"),
                                        ("CHN/gd", "CN-GD"), ("cn-bj", "CN-BJ"), ("CHN/Beijing Municipality", "CN-BJ")])
def test_chinese_provinces(spec, code):
    loc = resolve_location(spec)
    assert loc.spec == code and loc.country == "CHN"
    assert loc.intensity_g_per_kwh == _china(code)["emission_factor"]
    assert loc.year == 2023 and "china_provincial_emissions.json" in loc.source


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("CAN/quebek", "did you mean CAN/quebec"),
        ("CA-QQ", "did you mean CA-"),
        ("CHN/guangdon", "did you mean CHN/guangdong"),
        ("CHN/tibet", "no figure for 'CHN/tibet': use the national figure, CHN"),
        ("CN-HK", "no figure for 'CN-HK': use its own country code, HKG"),
        ("SE-3", "Nordic bidding zones are written SE1-SE4"),
        ("SE5", "did you mean SE"),
        ("NOR/SE3", "unknown location 'NOR/SE3'"),
        ("DE-BY", "no regional data for 'DE-BY': use the country (DEU)"),
        ("FRA/paris", "no regional data for 'FRA/paris'"),
        ("XX/somewhere", "unknown location 'XX/somewhere'"),
        ("Quebec", "CAN/quebec"),
    ],
)
def test_unknown_regions_name_close_matches(spec, expected):
    with pytest.raises(AccountingError) as info:
        resolve_location(spec)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_every_known_location_resolves_to_its_canonical_spec():
    for lower, canonical in locations.known_locations().items():
        loc = resolve_location(lower)
        assert resolve_location(canonical).intensity_g_per_kwh == loc.intensity_g_per_kwh, lower
        assert resolve_location(loc.spec).spec == loc.spec, lower


def _fake_codecarbon(tmp_path: Path, version: str, drop: tuple[str, ...]) -> Path:
    """A copy of the installed codecarbon's data folder, as an older release would ship it."""
    import shutil

    pkg = tmp_path / "codecarbon"
    shutil.copytree(DATA, pkg / "data", ignore=shutil.ignore_patterns("*.py", "*.pyc", "hardware"))
    for relative in drop:
        (pkg / "data" / relative).unlink()
    (pkg / "__init__.py").write_text("raise ImportError('greenmaas must not import codecarbon')\n")
    (pkg / "_version.py").write_text(f'__version__ = "{version}"\n')
    return tmp_path


def _resolve_in_child(path: Path, specs: list[str]) -> list[str]:
    import subprocess
    import sys

    code = (
        "import sys\nfrom greenmaas.accounting import resolve_location as r\nfrom greenmaas.errors import AccountingError\n"
        "for s in sys.argv[1:]:\n"
        "    try:\n        l = r(s); print(s, l.spec, l.intensity_g_per_kwh, l.codecarbon_version, l.label, sep='|')\n"
        "    except AccountingError as e:\n        print(s, 'ERROR', 'AccountingError', e, sep='|')\n"
    )
    env = {"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code, *specs], env=env, capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    return out.splitlines()


def test_a_release_without_nordic_or_chinese_data_says_which_to_install(tmp_path):
    path = _fake_codecarbon(tmp_path, "3.2.3", ("private_infra/nordic_emissions.json",
                                                "private_infra/2023/china_provincial_emissions.json"))
    lines = dict(line.split("|", 1) for line in _resolve_in_child(path, ["SE3", "CN-GD", "FR", "aws:eu-north-1"]))
    assert lines["SE3"].startswith("ERROR|AccountingError|")
    assert "codecarbon 3.2.3 ships no data for Nordic bidding zones (first in codecarbon 3.2.5)" in lines["SE3"]
    assert "pip install -U 'codecarbon>=3.3.2,<3.4'" in lines["CN-GD"]
    assert lines["FR"].split("|")[:3] == ["FRA", str(_mix("FRA")["carbon_intensity"]), "3.2.3"]
    spec, value, _, label = lines["aws:eu-north-1"].split("|")
    assert float(value) == _mix("SWE")["carbon_intensity"]
    assert "grid SE3 not in codecarbon 3.2.3, national figure Sweden (SWE) used" in label


def test_us_states_fall_back_to_the_newest_year_folder(tmp_path):
    import shutil

    path = _fake_codecarbon(tmp_path, "3.3.1", ())
    infra = path / "codecarbon" / "data" / "private_infra"
    (infra / "2016").mkdir()
    shutil.move(infra / "2023" / "usa_emissions.json", infra / "2016" / "usa_emissions.json")
    lines = dict(line.split("|", 1) for line in _resolve_in_child(path, ["US-VA"]))
    spec, value, version, label = lines["US-VA"].split("|")
    assert spec == "US-VA" and version == "3.3.1"
    assert float(value) == pytest.approx(_state_lbs_per_mwh("virginia") * 0.45359237)
