from __future__ import annotations

import pytest

from greenmaas.accounting import intensity, locations


def clear_caches() -> None:
    for fn in (
        intensity.codecarbon_data_dir,
        intensity.codecarbon_version,
        intensity.country_intensities,
        intensity.us_state_intensities,
        intensity.gcp_region_intensities,
        intensity.world_average,
        intensity.canada_province_intensities,
        intensity.nordic_zone_intensities,
        intensity.china_province_intensities,
        locations._region_index,
        locations.known_locations,
        locations._warn_no_location,
    ):
        fn.cache_clear()


@pytest.fixture
def fresh_caches():
    """Empty the per-process caches before and after a test that fakes the environment."""
    clear_caches()
    yield
    clear_caches()


@pytest.fixture
def write_csv(tmp_path):
    """Write text to a CSV file in a temporary folder and return its path."""

    def write(text: str, name: str = "intensity.csv"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
