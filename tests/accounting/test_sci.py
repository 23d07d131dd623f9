"""Embodied carbon and SCI v1.1."""

from __future__ import annotations

import pytest

from greenmaas.accounting.embodied import SECONDS_PER_YEAR, Embodied
from greenmaas.accounting.sci import sci_score
from greenmaas.errors import AccountingError


def test_gsf_example_one_tonne_four_years_one_hour():
    # Green Software Foundation example: 1,000 kg embodied, 4-year life, 1 h reserved ≈ 28.5 g.
    assert Embodied(1000, 4).amortised_g(3600) == pytest.approx(28.5, abs=0.05)


def test_resource_share_and_arrays():
    emb = Embodied(150, 5)
    one_year = emb.amortised_g(SECONDS_PER_YEAR)
    assert one_year == pytest.approx(30_000)
    assert emb.amortised_g(SECONDS_PER_YEAR, share=0.25) == pytest.approx(7_500)
    assert emb.amortised_g([3600, 7200], [1.0, 0.5]).tolist() == pytest.approx([emb.amortised_g(3600)] * 2)


@pytest.mark.parametrize("args", [(-1, 4), (1000, 0), (float("nan"), 4), (1000, float("inf"))])
def test_bad_embodied_figures(args):
    with pytest.raises(AccountingError):
        Embodied(*args)


def test_bad_share_and_time():
    with pytest.raises(AccountingError, match="between 0 and 1"):
        Embodied(1000, 4).amortised_g(3600, share=1.5)
    with pytest.raises(AccountingError, match="negative"):
        Embodied(1000, 4).amortised_g(-1)


def test_embodied_round_trip():
    emb = Embodied(1000, 4)
    assert Embodied.from_dict(emb.to_dict()) == emb
    with pytest.raises(AccountingError, match="malformed embodied"):
        Embodied.from_dict({"kg": 1})


def test_sci_formula():
    # 3.6 MJ IT energy, PUE 1.5 -> E = 1.5 kWh; I = 400 g/kWh; M = 28.5 g; R = 1000 requests.
    result = sci_score(energy_j=3.6e6, intensity_g_per_kwh=400, functional_units=1000, embodied_g=28.5, pue=1.5)
    assert result.energy_kwh == pytest.approx(1.5)
    assert result.operational_g == pytest.approx(600)
    assert result.total_g == pytest.approx(628.5)
    assert result.sci_g == pytest.approx(0.6285)
    assert result.unit == "request" and result.to_dict()["total_g"] == pytest.approx(628.5)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(functional_units=0), "R > 0"),
        (dict(functional_units=10, pue=0.9), "PUE"),
        (dict(functional_units=10, energy_j=-1), "energy_j"),
    ],
)
def test_sci_rejects_bad_inputs(kwargs, fragment):
    args = dict(energy_j=1.0, intensity_g_per_kwh=100.0) | kwargs
    with pytest.raises(AccountingError, match=fragment):
        sci_score(**args)
