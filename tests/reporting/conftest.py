"""A ledger recorded by the real meter on a simulated two-GPU machine: training epochs with
steps, then inference requests from two tenants, with known power. Time is a FakeClock driven by
hand, so the ledger is the same on every machine."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from greenmaas.meter import Meter
from greenmaas.testing import FakeClock, StaticSource

IDLE_W = 60.0
TRAIN_W = 400.0
INFER_W = 250.0
DT = 0.1


@dataclass
class Recorded:
    path: str
    requests: dict[str, float]  # request id -> energy the meter gave it (J)
    training_j: float
    training_wall_s: float


def _power(busy: list[tuple[float, float, float]]):
    def watts(t: float) -> float:
        return sum(w for a, b, w in busy if a <= t < b) + IDLE_W

    return watts


def record_demo(path, *, epochs=3, steps=5, requests=24, location="FR", series_csv=None) -> Recorded:
    """Record the run into ``path`` and return what the meter said about it."""
    import greenmaas.accounting as accounting

    clock = FakeClock()
    busy: list[tuple[float, float, float]] = []
    gpu0, gpu1 = _power(busy), _power([])

    def energy0(t, _p=gpu0):
        # cumulative energy of a piecewise-constant power, integrated exactly
        total = IDLE_W * t
        for a, b, w in busy:
            total += w * max(0.0, min(t, b) - a)
        return total

    src = StaticSource(clock, {"gpu:0": {"energy_j": energy0, "power_w": gpu0},
                               "gpu:1": {"energy_j": lambda t: IDLE_W * 0.5 * t}})
    overrides = {"location": location}
    if series_csv is not None:
        overrides = {"series": str(series_csv)}
    config = accounting.AccountingConfig.from_env(environ={}, **_parsed(overrides))
    meter = Meter(sources=[src], ledger=str(path), clock=clock, background=False, accounting=config,
                  sample_interval_s=0.2, period_s=DT)
    meter.start()

    def run_for(seconds):
        for _ in range(int(round(seconds / DT))):
            clock.advance(DT)
            meter.tick()

    run_for(1.0)
    t_train = clock.monotonic()
    spans = []
    for e in range(epochs):
        with meter.measure(f"epoch-{e}", model="mlp", phase="training", kind="epoch") as ep:
            for s in range(steps):
                t0 = clock.monotonic()
                busy.append((t0, t0 + 0.4, TRAIN_W))
                with meter.measure("step", model="mlp", phase="training"):
                    run_for(0.4)
                run_for(0.1)
        spans.append(ep)
    train_wall = clock.monotonic() - t_train
    run_for(1.0)
    reqs = []
    for i in range(requests):
        length = 0.2 + 0.1 * (i % 5)
        t0 = clock.monotonic()
        busy.append((t0, t0 + length, INFER_W))
        with meter.request(f"req-{i:03d}", tenant=("acme", "globex")[i % 2], model="llama", phase="inference",
                           tokens_in=20, tokens_out=10 + 5 * (i % 5)) as r:
            run_for(length)
        reqs.append(r)
        run_for(0.1)
    run_for(1.0)
    meter.stop()
    return Recorded(str(path), {r.request_id: r.result.energy_j for r in reqs},
                    sum(s.result.energy_j for s in spans), train_wall)


def _parsed(overrides):
    from greenmaas.accounting.config import parse_setting

    return {k: parse_setting(k, v) for k, v in overrides.items()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Recorded:
    return record_demo(tmp_path_factory.mktemp("demo") / "demo.db")
