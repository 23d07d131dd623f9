"""Serving with dynamic batching: the energy of each request, from the batches that served it.

A producer sends requests at random times; each asks for a random number of output tokens. A
batcher collects up to ``--max-batch`` requests, or what arrived within ``--max-wait-ms`` of the
first, and runs a small PyTorch decoder over them, one step per output token of the longest
request. Each batch is one ``meter.batch(...)`` whose energy is split between its requests in
proportion to their output tokens; a request's energy is the sum of its shares.

At the end it prints the first requests' energy and checks the books per device: the requests'
energy plus idle energy equals what the device consumed (to 1e-6, else the exit status is 1).
Afterwards: ``greenmaas report --ledger PATH --by request`` (or ``--by model``, ``--by tenant``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch

import greenmaas
from greenmaas.ledger.store import resolve_target
from greenmaas.spans import Span

MODEL = "tiny-decoder"
TENANTS = ("acme", "globex", "initech")
#: Relative tolerance of the books: requests + idle against the device total.
TOLERANCE = 1e-6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ledger", default=None,
                   help="ledger file or SQLAlchemy URL [$GREENMAAS_LEDGER, else greenmaas.db]")
    p.add_argument("--no-ledger", action="store_true", help="record nothing, print only")
    p.add_argument("--requests", type=int, default=200, help="requests to send [200]")
    p.add_argument("--rate", type=float, default=100.0, help="mean arrival rate, requests per second [100]")
    p.add_argument("--max-batch", type=int, default=16, help="largest batch [16]")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="longest wait to fill a batch [10]")
    p.add_argument("--max-tokens", type=int, default=48, help="most output tokens a request asks for [48]")
    p.add_argument("--hidden", type=int, default=256, help="decoder width [256]")
    p.add_argument("--show", type=int, default=10, help="requests listed at the end [10]")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.ledger = str(resolve_target(args.ledger))  # as the CLI: --ledger, $GREENMAAS_LEDGER, greenmaas.db
    return args


class TinyDecoder(torch.nn.Module):
    """A GRU cell with an input and an output layer: one call is one decoding step."""

    def __init__(self, vocab: int = 256, hidden: int = 256) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.cell = torch.nn.GRUCell(hidden, hidden)
        self.out = torch.nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.cell(self.embed(tokens), state)
        return self.out(state).argmax(-1), state


@torch.no_grad()
def generate(model: TinyDecoder, prompts: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding of ``steps`` tokens for a batch of one-token prompts."""
    state = torch.zeros(prompts.shape[0], model.cell.hidden_size)
    tokens, out = prompts, []
    for _ in range(steps):
        tokens, state = model(tokens, state)
        out.append(tokens)
    return torch.stack(out, dim=1)


@dataclass
class _Pending:
    span: Span
    prompt: int
    tokens_out: int
    future: asyncio.Future


async def serve(meter: Any, args: argparse.Namespace) -> list[Span]:
    """Run the producer, the handlers and the batcher; return the request spans in order."""
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    model = TinyDecoder(hidden=args.hidden).eval()
    queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    batches: list[int] = []

    async def handle(i: int, arrival_s: float, tenant: str, tokens_in: int, tokens_out: int) -> Span:
        await asyncio.sleep(arrival_s)
        async with meter.request(
            f"req-{i:04d}", tenant=tenant, model=MODEL, tokens_in=tokens_in, tokens_out=tokens_out
        ) as span:
            fut = loop.create_future()
            await queue.put(_Pending(span, rng.randrange(256), tokens_out, fut))
            await fut
        return span

    async def batcher() -> None:
        while True:
            first = await queue.get()
            if first is None:
                return
            items, done = [first], False
            deadline = loop.time() + args.max_wait_ms / 1000.0
            while len(items) < args.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), left)
                except asyncio.TimeoutError:
                    break
                if item is None:
                    done = True
                    break
                items.append(item)
            steps = max(p.tokens_out for p in items)
            prompts = torch.tensor([p.prompt for p in items])
            with meter.batch([p.span for p in items], weights=[p.tokens_out for p in items], model=MODEL):
                # In a worker thread, so arrivals keep being accepted while the batch runs.
                out = await asyncio.to_thread(generate, model, prompts, steps)
            batches.append(len(items))
            for p, row in zip(items, out):
                p.future.set_result(row[: p.tokens_out])
            if done:
                return

    arrivals, t = [], 0.0
    for _ in range(args.requests):
        t += rng.expovariate(args.rate)
        arrivals.append(t)
    worker = asyncio.create_task(batcher())
    handlers = [
        asyncio.create_task(
            handle(i, a, rng.choice(TENANTS), rng.randint(4, 64), rng.randint(1, args.max_tokens))
        )
        for i, a in enumerate(arrivals)
    ]
    spans = await asyncio.gather(*handlers)
    await queue.put(None)
    await worker
    if batches:
        print(f"{len(spans)} requests in {len(batches)} batches (mean size {sum(batches) / len(batches):.1f})")
    return list(spans)


@dataclass
class Books:
    """One device's reconciliation: request energy + idle against the device total."""

    device: str
    method: str
    requests_j: float
    idle_j: float
    total_j: float

    @property
    def error(self) -> float:
        """Relative difference between requests + idle and the device total."""
        return abs(self.requests_j + self.idle_j - self.total_j) / max(abs(self.total_j), 1e-12)

    @property
    def ok(self) -> bool:
        return self.error <= TOLERANCE


def reconcile(totals: dict[str, dict[str, float]], requests: Sequence[Span], methods: dict[str, str]) -> list[Books]:
    """Per device, the requests' energy (each request includes its batch shares) plus idle
    energy, against the device's total, from a stopped meter's ``totals``."""
    out = []
    for dev, t in sorted(totals.items()):
        req = sum(s.result.by_device_j.get(dev, 0.0) for s in requests)
        out.append(Books(dev, methods.get(dev, "?"), req, t["idle_j"], t["total_j"]))
    return out


def main(argv: list[str] | None = None, *, sources: Sequence[Any] | None = None) -> int:
    """Serve, stop the meter, print and check the books. ``sources``: default auto-detected."""
    args = parse_args(argv)
    meter = greenmaas.Meter(ledger=False if args.no_ledger else args.ledger, sources=sources)
    meter.start()
    try:
        spans = asyncio.run(serve(meter, args))
    finally:
        meter.stop()
    methods = {d.id: d.method for d in meter.sampler.devices}

    print(f"\nFirst {min(args.show, len(spans))} requests:")
    header = ("request", "tenant", "tok in", "tok out", "latency s", "energy J", "J/token")
    print("  {:10s} {:8s} {:>6s} {:>7s} {:>9s} {:>9s} {:>8s}".format(*header))
    for s in spans[: args.show]:
        r = s.result
        print(
            f"  {s.request_id:10s} {s.tenant:8s} {s.tokens_in:6d} {s.tokens_out:7d} "
            f"{r.duration_s:9.3f} {r.energy_j:9.3f} {r.energy_j / s.tokens_out:8.4f}"
        )

    books = reconcile(meter.totals, spans, methods)
    print("\nBooks per device (requests + idle = device total):")
    for b in books:
        mark = "ok" if b.ok else "MISMATCH"
        print(
            f"  {b.device:8s} requests {b.requests_j:10.3f} J + idle {b.idle_j:9.3f} J = "
            f"{b.requests_j + b.idle_j:10.3f} J; device {b.total_j:10.3f} J ({b.method})  "
            f"rel. diff {b.error:.1e} {mark}"
        )
    if any(m == "estimate" for m in methods.values()):
        print("  (estimate: no energy counter here; CPU power is modelled from utilisation and TDP)")
    if not books:
        print("no device was measured", file=sys.stderr)
        return 1
    if not all(b.ok for b in books):
        print(f"the books do not balance to {TOLERANCE:g}", file=sys.stderr)
        return 1
    if not args.no_ledger:
        print(f"\nRecorded in {args.ledger}. Try:\n  greenmaas report --ledger {args.ledger} --by request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
