"""Every location in codecarbon's data resolves to the figure codecarbon's own ``Emissions`` computes.

codecarbon is imported here only, and only in a child interpreter (this file run as a script):
importing it initialises NVML and installs a log handler, which must not leak into other tests,
and a child can be pointed at another codecarbon release. The child walks every entry of the
data codecarbon's ``DataSource`` reads (countries, US states, Canadian provinces, Nordic zones,
Chinese provinces, Google Cloud regions) plus every AWS/Azure row of greenmaas's
``cloud_regions.csv``, asks codecarbon's ``Emissions`` for the emissions of 1 kWh there (offline:
no Electricity Maps token, geography given, never looked up), resolves greenmaas's spec for the
same place, and prints both. Figures must agree to 1e-9 relative: the two compute the same
arithmetic and may differ only in floating-point rounding.

The lowest supported release is checked from a downloaded wheel: set
``GREENMAAS_TEST_CODECARBON_WHEEL`` to a codecarbon ``.whl`` file (or a folder of them), e.g.
``pip download --no-deps --only-binary=:all: codecarbon==3.0.0 -d DIR``. Without it the test is
skipped, except under CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REL_TOL = 1e-9
ROOT = Path(__file__).resolve().parents[2]
WHEEL_ENV = "GREENMAAS_TEST_CODECARBON_WHEEL"
# Specs whose data set some supported releases lack; the child reports what each gives.
PROBES = ["SE3", "FIN/FI", "CN-GD", "CHN/guangdong", "CA-QC", "US-VA", "aws:eu-north-1", "aws:cn-north-1",
          "azure:norwayeast", "aws:ca-central-1"]


# ------------------------------------------------------------------------------------------ child


def _child() -> None:  # pragma: no cover - runs in the child interpreter
    import csv
    import logging

    import codecarbon
    from codecarbon.core.emissions import Emissions
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import CloudMetadata, GeoMetadata
    from codecarbon.input import DataSource

    from greenmaas.accounting import intensity, locations

    logging.getLogger("codecarbon").setLevel(logging.CRITICAL)
    ds = DataSource()
    emissions = Emissions(ds)  # no token: codecarbon's own data only, no network
    kwh = Energy.from_energy(kWh=1.0)
    cases: list[dict] = []

    def add(kind: str, key: str, specs: list[str], geo=None, cloud=None) -> None:
        if cloud is not None:
            kg = emissions.get_cloud_emissions(kwh, cloud)
        else:
            kg = emissions.get_private_infra_emissions(kwh, geo)
        for spec in specs:
            case = {"kind": kind, "key": key, "spec": spec, "codecarbon_g": kg * 1000.0}
            try:
                loc = locations.resolve_location(spec)
                case.update(greenmaas_g=loc.intensity_g_per_kwh, version=loc.codecarbon_version)
            except Exception as exc:  # reported, and failed, by the parent
                case["error"] = f"{type(exc).__name__}: {exc}"
            cases.append(case)

    mix = ds.get_global_energy_mix_data()
    for iso3 in mix:
        add("country", iso3, [iso3], GeoMetadata(country_iso_code=iso3))

    usa = ds.get_country_emissions_data("usa")
    for name, row in usa.items():
        if name.startswith("_") or name == "usa":  # metadata, and eGRID's national total
            continue
        add("usa", name, [f"USA/{name}", f"US-{row['regionCode']}"], GeoMetadata("USA", region=name))

    codes = intensity.CANADA_PROVINCE_CODES
    for name in ds.get_country_energy_mix_data("can"):
        add("can", name, [f"CAN/{name}", f"CA-{codes[name]}"], GeoMetadata("CAN", region=name))

    if hasattr(ds, "get_nordic_country_energy_mix_data"):
        countries = {"SE": "SWE", "NO": "NOR", "FI": "FIN"}
        for zone in ds.get_nordic_country_energy_mix_data()["data"]:
            iso3 = countries[zone.rstrip("0123456789")]
            specs = [f"{iso3}/{zone}"] + ([zone] if zone != "FI" else [])
            add("nordic", zone, specs, GeoMetadata(iso3, region=zone))

    if hasattr(ds, "get_china_provincial_emissions_data"):
        for code, row in ds.get_china_provincial_emissions_data()["data"].items():
            for i, name in enumerate(row["names"]):
                add("chn", f"{code}/{name}", [f"CHN/{name}"] + ([code] if i == 0 else []),
                    GeoMetadata("CHN", region=name))

    for _, row in ds.get_cloud_emissions_data().iterrows():
        add("gcp", row["region"], [f"{row['provider']}:{row['region']}"],
            cloud=CloudMetadata(provider=row["provider"], region=row["region"]))

    # AWS and Azure: codecarbon has no figures; the grid each region is mapped to must get the
    # figure codecarbon gives that place.
    by_code = {v: k for k, v in codes.items()}
    china = ds.get_china_provincial_emissions_data()["data"] if hasattr(ds, "get_china_provincial_emissions_data") else {}
    for (provider, region), row in locations.cloud_regions().items():
        grid = row.location
        if re.fullmatch(r"[A-Za-z]{3}", grid):
            geo = GeoMetadata(grid)
        elif grid.upper().startswith("USA/"):
            geo = GeoMetadata("USA", region=grid[4:])
        elif grid.upper().startswith("CA-"):
            geo = GeoMetadata("CAN", region=by_code[grid[3:].upper()])
        elif grid.upper().startswith("CN-"):
            if grid.upper() not in china:
                continue  # a release without Chinese provinces: checked through PROBES
            geo = GeoMetadata("CHN", region=china[grid.upper()]["names"][0])
        elif re.fullmatch(r"(SE|NO)[0-9]", grid.upper()):
            if not hasattr(ds, "get_nordic_country_energy_mix_data"):
                continue  # a release without Nordic zones: checked through PROBES
            geo = GeoMetadata({"SE": "SWE", "NO": "NOR"}[grid[:2].upper()], region=grid)
        else:
            raise SystemExit(f"cloud_regions.csv row {provider}:{region} has a grid this test cannot map: {grid}")
        add(provider, f"{region} -> {grid}", [f"{provider}:{region}"], geo)

    probes = {}
    for spec in PROBES:
        try:
            loc = locations.resolve_location(spec)
            probes[spec] = {"g": loc.intensity_g_per_kwh, "label": loc.label, "spec": loc.spec}
        except Exception as exc:
            probes[spec] = {"error": f"{type(exc).__name__}: {exc}"}

    data = Path(codecarbon.__file__).parent / "data"
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.json")) + ["cloud/impact.csv"]
    with open(data / "cloud/impact.csv", encoding="utf-8-sig") as fh:
        gcp_rows = sum(1 for _ in csv.DictReader(fh))
    print(json.dumps({
        "codecarbon_version": codecarbon.__version__,
        "codecarbon_path": str(Path(codecarbon.__file__).parent),
        "greenmaas_reads": intensity.codecarbon_version(),
        "files": files,
        "gcp_rows": gcp_rows,
        "cases": cases,
        "probes": probes,
    }))


# ------------------------------------------------------------------------------------------ parent


def _run_child(extra_path: Path | None = None) -> dict:
    env = dict(os.environ)
    env.pop("GREENMAAS_LOCATION", None)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), str(ROOT)])
    proc = subprocess.run(
        [sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mismatches(cases: list[dict]) -> list[str]:
    bad = []
    for case in cases:
        if "error" in case:
            bad.append(f"{case['spec']} ({case['kind']} {case['key']}): {case['error']}")
        elif not math.isclose(case["greenmaas_g"], case["codecarbon_g"], rel_tol=REL_TOL, abs_tol=1e-12):
            bad.append(f"{case['spec']} ({case['kind']} {case['key']}): greenmaas {case['greenmaas_g']!r} "
                       f"!= codecarbon {case['codecarbon_g']!r} g/kWh")
    return bad


def _read_json(data: Path, relative: str) -> dict:
    return json.loads((data / relative).read_text(encoding="utf-8"))


def _newest(data: Path, name: str) -> Path | None:
    found = sorted(data.glob(f"private_infra/[0-9][0-9][0-9][0-9]/{name}"))
    return found[-1] if found else None


def _check(result: dict, data: Path) -> None:
    """Every entry of the release's data files was checked, and all agree."""
    cases = result["cases"]
    assert result["greenmaas_reads"] == result["codecarbon_version"]
    assert {c["version"] for c in cases if "version" in c} == {result["codecarbon_version"]}
    assert _mismatches(cases) == []

    def keys(kind: str) -> set[str]:
        return {c["key"] for c in cases if c["kind"] == kind}

    # Counted here from the files themselves, so that a case the child skipped would show.
    assert keys("country") == set(_read_json(data, "private_infra/global_energy_mix.json"))
    usa = _read_json(data, _newest(data, "usa_emissions.json").relative_to(data).as_posix())
    assert keys("usa") == {k for k in usa if not k.startswith("_")} - {"usa"}
    can = _read_json(data, _newest(data, "canada_energy_mix.json").relative_to(data).as_posix())
    assert keys("can") == set(can)
    nordic = data / "private_infra/nordic_emissions.json"
    assert keys("nordic") == (set(json.loads(nordic.read_text())["data"]) if nordic.is_file() else set())
    china = _newest(data, "china_provincial_emissions.json")
    china_rows = json.loads(china.read_text())["data"] if china else {}
    assert keys("chn") == {f"{code}/{name}" for code, row in china_rows.items() for name in row["names"]}
    assert len(keys("gcp")) == result["gcp_rows"]
    assert keys("aws") and keys("azure")


def test_every_location_in_installed_codecarbon_matches_its_emissions():
    import importlib.util

    result = _run_child()
    data = Path(importlib.util.find_spec("codecarbon").submodule_search_locations[0]) / "data"
    _check(result, data)
    kinds = {c["kind"] for c in result["cases"]}
    assert {"country", "usa", "can", "gcp", "aws", "azure"} <= kinds
    by_spec = {c["spec"]: c for c in result["cases"]}
    # The grid, not the national average: Montreal is on Quebec's grid.
    assert by_spec["aws:ca-central-1"]["greenmaas_g"] == by_spec["CA-QC"]["greenmaas_g"]
    assert by_spec["aws:ca-central-1"]["greenmaas_g"] < by_spec["CAN"]["greenmaas_g"] / 10
    if result["codecarbon_version"] == "3.3.2":
        assert len(result["cases"]) > 400
        assert by_spec["CA-QC"]["codecarbon_g"] == pytest.approx(3.937, abs=5e-4)
        assert {"nordic", "chn"} <= kinds


def _wheels() -> list[Path]:
    value = os.environ.get(WHEEL_ENV)
    if not value:
        if os.environ.get("CI"):
            pytest.fail(f"{WHEEL_ENV} is not set: CI must check the lowest supported codecarbon release")
        pytest.skip(f"set {WHEEL_ENV} to a downloaded codecarbon wheel (or a folder of them)")
    path = Path(value)
    wheels = sorted(path.glob("codecarbon-*.whl")) if path.is_dir() else [path]
    if not wheels or not all(w.is_file() for w in wheels):
        pytest.fail(f"{WHEEL_ENV}={value} names no codecarbon wheel")
    return wheels


def test_older_codecarbon_releases_match_their_own_emissions(tmp_path):
    for wheel in _wheels():
        version = wheel.name.split("-")[1]
        target = tmp_path / version
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(target)
        result = _run_child(target)
        assert result["codecarbon_version"] == version
        assert Path(result["codecarbon_path"]).is_relative_to(target), "the child imported another codecarbon"
        data = target / "codecarbon" / "data"
        _check(result, data)
        probes = result["probes"]
        has_nordic = (data / "private_infra/nordic_emissions.json").is_file()
        has_china = _newest(data, "china_provincial_emissions.json") is not None
        for spec in ("SE3", "FIN/FI"):
            if not has_nordic:
                assert "first in codecarbon 3.2.5" in probes[spec]["error"], (version, probes[spec])
        for spec in ("CN-GD", "CHN/guangdong"):
            if not has_china:
                assert "first in codecarbon 3.3.2" in probes[spec]["error"], (version, probes[spec])
        for spec, grid, country in (("aws:eu-north-1", "SE3", "SWE"), ("azure:norwayeast", "NO1", "NOR"),
                                    ("aws:cn-north-1", "CN-BJ", "CHN")):
            available = has_nordic if grid[0] != "C" else has_china
            if not available:
                # A cloud region still resolves on an older release: to its country, said so.
                assert "error" not in probes[spec], (version, probes[spec])
                assert f"grid {grid} not in codecarbon {version}" in probes[spec]["label"]
                national = next(c for c in result["cases"] if c["spec"] == country)
                assert math.isclose(probes[spec]["g"], national["codecarbon_g"], rel_tol=REL_TOL)
        assert "error" not in probes["CA-QC"] and "error" not in probes["US-VA"]


if __name__ == "__main__":
    _child()
