"""Quickstart: the energy of a small PyTorch training run and of a few inference calls.

Run it with ``make demo`` or ``python examples/quickstart.py --ledger greenmaas.db``; afterwards
``greenmaas report --ledger greenmaas.db --by model`` (or ``--by phase``) reads what it recorded.

It trains an MLP classifier on synthetic data for a few epochs, with every forward call, every
optimizer step and every epoch recorded as a span, then runs the classifier and a second model
(an embedder) for inference. Energy comes from whatever this machine offers (NVML for NVIDIA GPUs,
RAPL for CPUs, else an *estimate* from CPU utilisation), found automatically.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import greenmaas
from greenmaas.integrations.torch import epochs, track_module, track_optimizer
from greenmaas.ledger.store import resolve_target
from greenmaas.sources.base import COUNTER, ESTIMATE, METHOD_UNCERTAINTY, POWER

CLASSIFIER = "mlp-classifier"
EMBEDDER = "embedder"

METHOD_WORDS = {
    COUNTER: "measured by a hardware energy counter",
    POWER: "measured from power samples",
    ESTIMATE: "ESTIMATED from CPU utilisation and a TDP model, not measured",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ledger", default=None,
                   help="ledger file or SQLAlchemy URL [$GREENMAAS_LEDGER, else greenmaas.db]")
    p.add_argument("--no-ledger", action="store_true", help="record nothing, print only")
    p.add_argument("--epochs", type=int, default=3, help="training epochs [3]")
    p.add_argument("--samples", type=int, default=16384, help="synthetic training samples [16384]")
    p.add_argument("--batch-size", type=int, default=256, help="training batch size [256]")
    p.add_argument("--hidden", type=int, default=512, help="hidden width of the classifier [512]")
    p.add_argument(
        "--epoch-seconds",
        type=float,
        default=3.0,
        help="train each epoch for this long, cycling through the data, so the demo takes the same "
        "time on any machine; 0: one pass over the data per epoch [3]",
    )
    p.add_argument("--inference-calls", type=int, default=20, help="inference calls per model [20]")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.ledger = str(resolve_target(args.ledger))  # as the CLI: --ledger, $GREENMAAS_LEDGER, greenmaas.db
    return args


def make_data(n: int, features: int, classes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian clusters, one per class: the loss keeps falling for a few epochs."""
    centres = torch.randn(classes, features, generator=gen) * 0.25
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centres[y] + torch.randn(n, features, generator=gen)
    return x, y


TENANTS = ("acme", "globex")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    features, classes = 64, 10
    x, y = make_data(args.samples, features, classes, gen)

    classifier = torch.nn.Sequential(
        torch.nn.Linear(features, args.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(args.hidden, args.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(args.hidden, classes),
    )
    embedder = torch.nn.Sequential(torch.nn.Linear(features, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 128))
    opt = torch.optim.SGD(classifier.parameters(), lr=0.05, momentum=0.9)

    meter = greenmaas.Meter(ledger=False if args.no_ledger else args.ledger)
    with meter:
        _describe_devices(meter)
        # Spans open on the current meter (the ``with meter`` above); no need to pass it.
        with track_module(classifier, name=CLASSIFIER) as fwd, track_optimizer(opt, model=CLASSIFIER):
            print(f"\nTraining {CLASSIFIER} ({sum(p.numel() for p in classifier.parameters()):,} parameters)")
            epoch_spans = []
            for i in epochs(args.epochs, model=CLASSIFIER):
                span = greenmaas.current_span()
                loss, acc, seen = _train_one_epoch(classifier, opt, x, y, args, gen)
                epoch_spans.append((i, span, loss, acc, seen))
            for i, span, loss, acc, seen in epoch_spans:
                r = span.result
                print(
                    f"  epoch {i}: {seen:7d} samples  loss {loss:.3f}  acc {acc:5.1%}  "
                    f"{r.duration_s:5.2f} s  {r.energy_j:8.1f} J  ({r.method})"
                )

            print("\nInference")
            classifier.eval()
            with track_module(embedder, name=EMBEDDER) as emb:
                batch = x[:2048]
                by_model: dict[str, list] = {CLASSIFIER: [], EMBEDDER: []}
                # Each call is a request from one of two tenants (pseudonymised in the ledger),
                # so `greenmaas report --by request` and `--by tenant` answer for this run too.
                with torch.no_grad():
                    for name, model, handle in ((CLASSIFIER, classifier, fwd), (EMBEDDER, embedder, emb)):
                        for i in range(args.inference_calls):
                            rid = f"{name}-req-{i:03d}"
                            with meter.request(rid, tenant=TENANTS[i % 2], model=name, items=batch.shape[0]):
                                model(batch)
                            by_model[name].append(handle.last_span)
        for name, spans in by_model.items():
            results = [s.result for s in spans if s is not None]
            energy = sum(r.energy_j for r in results)
            dur = sum(r.duration_s for r in results)
            print(f"  {name:15s} {len(results)} calls of {batch.shape[0]} samples  {dur:5.2f} s  {energy:8.1f} J")

    _print_totals(meter, None if args.no_ledger else args.ledger)
    return 0


def _train_one_epoch(model, opt, x, y, args, gen) -> tuple[float, float, int]:
    """One pass over the data, or passes until ``--epoch-seconds`` have gone by."""
    model.train()
    t0 = time.perf_counter()
    total_loss, correct, seen = 0.0, 0, 0
    while True:
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], args.batch_size):
            idx = order[start : start + args.batch_size]
            xb, yb = x[idx], y[idx]
            opt.zero_grad()
            out = model(xb)
            loss = torch.nn.functional.cross_entropy(out, yb)
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(idx)
            if args.epoch_seconds > 0 and time.perf_counter() - t0 >= args.epoch_seconds:
                return total_loss / seen, correct / seen, seen
        if args.epoch_seconds <= 0:
            return total_loss / seen, correct / seen, seen


def _describe_devices(meter: greenmaas.Meter) -> None:
    print("Devices measured:")
    for d in meter.sampler.devices:
        print(f"  {d.id:8s} {d.name}: {METHOD_WORDS.get(d.method, d.method)}")
        if d.note:
            print(f"           note: {d.note}")
    for u in meter.unused:
        print(f"  (not used: {u.source}: {u.reason})")


def _print_totals(meter: greenmaas.Meter, ledger: str | None) -> None:
    print("\nRun totals per device (spans + idle = total):")
    methods = {d.id: d.method for d in meter.sampler.devices}
    ok = True
    for dev, t in sorted(meter.totals.items()):
        spans_j, idle_j, total_j = t["attributed_j"], t["idle_j"], t["total_j"]
        ok &= abs(spans_j + idle_j - total_j) <= 1e-6 * max(1.0, abs(total_j))
        method = methods.get(dev, "?")
        unc = METHOD_UNCERTAINTY.get(method)
        unc_txt = f", ±{unc:.0%}" if unc else ""
        print(
            f"  {dev:8s} spans {spans_j:9.1f} J + idle {idle_j:8.1f} J = {spans_j + idle_j:9.1f} J"
            f"  (device total {total_j:9.1f} J; {method}{unc_txt})"
        )
    if any(m == ESTIMATE for m in methods.values()):
        print(
            "\n  These figures are ESTIMATES: no energy counter was found on this machine, so the CPU's\n"
            "  power is modelled from its utilisation and TDP. On a machine with NVIDIA GPUs (NVML) or\n"
            "  Intel/AMD RAPL the same code measures instead."
        )
    if not ok:
        print("  WARNING: spans + idle do not add up to the device total", file=sys.stderr)
    if ledger is not None:
        print(f"\nRecorded in {ledger}. Try:\n  greenmaas report --ledger {ledger} --by model")


if __name__ == "__main__":
    sys.exit(main())
