"""Price one energy profile in two locations: carbon, electricity and hardware cost.

Builds a small synthetic training run (an epoch of steps on one GPU, then an evaluation) as the
DataFrame that ``greenmaas.accounting.price`` takes, and prices it as if it had run in each of two
locations. Any location spec works; pass two as arguments::

    python examples/carbon_two_locations.py                  # FR and aws:us-east-1
    python examples/carbon_two_locations.py gcp:europe-west1 US-CA

No GPU, network or ledger is needed.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from greenmaas.accounting import AccountingConfig, describe, price


def synthetic_run() -> pd.DataFrame:
    """Two hours of training steps (~600 W on one GPU) and a 10-minute evaluation (~250 W)."""
    start = pd.Timestamp("2024-05-01T18:00:00Z")
    rng = np.random.default_rng(7)
    rows = []
    t = start
    for step in range(24):  # 24 steps of 5 minutes
        seconds = 300.0
        rows.append(dict(name=f"train step {step}", phase="training", start=t, end=t + pd.Timedelta(seconds=seconds),
                         energy_j=seconds * rng.normal(600, 20), device_kind="gpu", device_seconds=seconds))
        t += pd.Timedelta(seconds=seconds)
    rows.append(dict(name="evaluation", phase="inference", start=t, end=t + pd.Timedelta(minutes=10),
                     energy_j=600 * 250.0, device_kind="gpu", device_seconds=600.0))
    return pd.DataFrame(rows)


def main(argv: list[str]) -> int:
    specs = argv[1:3] if len(argv) >= 3 else ["FR", "aws:us-east-1"]
    spans = synthetic_run()
    # Same tariff shape and GPU price in both places, so only the grid differs in carbon.
    common = dict(tariff="0.30USD/kWh@08-20@mon-fri,0.18USD/kWh", hardware_prices="gpu=2.50USD/h", pue=1.2)
    print(f"{len(spans)} spans, {spans.energy_j.sum() / 3.6e6:.3f} kWh IT energy, PUE {common['pue']}\n")
    header = f"{'location':<20} {'g/kWh':>8} {'carbon g':>10} {'energy USD':>10} {'hardware USD':>12} {'total USD':>9}"
    print(header)
    print("-" * len(header))
    notes = []
    for spec in specs:
        config = AccountingConfig(location=spec, **common)
        priced = price(spans, config)
        facts = describe(config)
        print(f"{spec:<20} {facts['intensity_g_per_kwh']:>8.1f} {priced.carbon_g.sum():>10.1f} "
              f"{priced.energy_cost.sum():>10.3f} {priced.hardware_cost.sum():>12.2f} {priced.cost.sum():>9.2f}")
        year = facts["intensity_year"] or "year not stated"
        notes.append(f"{spec}: {facts['location']}; {facts['intensity_source']}, {year}")
    print()
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
