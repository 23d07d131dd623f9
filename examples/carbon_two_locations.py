"""Measure a short training loop once, then price the same ledger in two locations.

A small logistic regression trains on the CPU (plain numpy) for a couple of seconds, each epoch
measured with ``meter.measure(..., model=..., phase="training")`` into a ledger. Energy is the
recorded fact; the report API then prices that same energy — carbon, electricity and hardware
time — as if it had run in each of two locations, without running anything again::

    python examples/carbon_two_locations.py                          # FR and aws:us-east-1
    python examples/carbon_two_locations.py gcp:europe-west1 US-CA --ledger runs.db

The command line does the same: ``greenmaas report --ledger PATH --location FR --price ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

import greenmaas
from greenmaas.ledger import ENV_LEDGER
from greenmaas.modelcard import format_amount
from greenmaas.report import summary

MODEL = "logreg-demo"
# The same prices in both places, so that only the grid differs in carbon.
PRICES = {
    "tariff": "0.30USD/kWh@08-20@mon-fri,0.18USD/kWh",
    "hardware_prices": "gpu=2.50USD/h,cpu=0.10USD/h",
    "pue": "1.2",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("locations", nargs="*", default=["FR", "aws:us-east-1"],
                   help="two location specs [FR aws:us-east-1]")
    p.add_argument("--ledger", default=None,
                   help="ledger file [$GREENMAAS_LEDGER, else a new temporary file]")
    p.add_argument("--epochs", type=int, default=4, help="training epochs [4]")
    p.add_argument("--epoch-seconds", type=float, default=0.5, help="training time per epoch [0.5]")
    p.add_argument("--samples", type=int, default=20000, help="synthetic training samples [20000]")
    args = p.parse_args(argv)
    if len(args.locations) != 2:
        p.error("give two locations, e.g. FR aws:us-east-1")
    return args


def train(meter: greenmaas.Meter, args: argparse.Namespace) -> None:
    """Gradient descent on a synthetic classification task, one measured span per epoch."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, 64))
    y = (x @ rng.normal(size=64) > 0).astype(np.float64)
    w = np.zeros(64)
    for epoch in range(args.epochs):
        with meter.measure(f"epoch {epoch}", model=MODEL, phase="training", items=args.samples):
            t0 = time.perf_counter()
            while True:
                p = 1.0 / (1.0 + np.exp(-(x @ w)))
                w -= 0.1 * x.T @ (p - y) / len(y)
                if time.perf_counter() - t0 >= args.epoch_seconds:
                    break
        accuracy = float(((x @ w > 0) == (y > 0.5)).mean())
        print(f"  epoch {epoch}: accuracy {accuracy:.1%}")


def main(argv: list[str] | None = None, *, sources=None) -> int:
    args = parse_args(argv)
    ledger = (args.ledger or os.environ.get(ENV_LEDGER)
              or os.path.join(tempfile.mkdtemp(prefix="greenmaas-"), "greenmaas.db"))

    print(f"Training {MODEL} on the CPU, measured into {ledger}")
    # accounting=False: nothing is priced at record time; the reports below price the energy.
    with greenmaas.Meter(ledger=ledger, sources=sources, accounting=False) as meter:
        train(meter, args)

    print("\nThe same energy, priced in two locations without re-running")
    print(f"(same prices in both: {'; '.join(f'{k} {v}' for k, v in PRICES.items())}):\n")
    header = (f"{'location':<18} {'g/kWh':>7} {'energy (J)':>11} {'carbon (g)':>11} "
              f"{'electricity':>12} {'hardware':>10} {'total':>10}")
    print(header)
    print("-" * len(header))
    facts = []
    for spec in args.locations:
        report = summary(ledger, by="model", model=MODEL, accounting={"location": spec, **PRICES})
        (row,) = report.rows
        src = report.sources[0]
        print(f"{spec:<18} {src['intensity_g_per_kwh']:>7.1f} {row['energy_j']:>11.1f} "
              f"{format_amount(row['carbon_g']):>11} {format_amount(row['energy_cost']):>12} "
              f"{format_amount(row['hardware_cost']):>10} {format_amount(row['cost']):>10} {row['currency']}")
        year = src["intensity_year"] or "year not stated"
        facts.append(f"  {spec}: {src['location']} — {src['intensity_source']}, {year}")
        method = ", ".join(f"{m['method']} (±{m['uncertainty']:.0%})" if m["uncertainty"] else m["method"]
                           for m in report.methods)
    print("\nIntensity sources:")
    print("\n".join(facts))
    print(f"Measurement method: {method}")
    print(f"\nFrom the command line:\n  greenmaas report --ledger {ledger} --location {args.locations[0]} "
          f"--price '{PRICES['tariff']}' --pue {PRICES['pue']} --format markdown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
