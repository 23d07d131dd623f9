"""A small DistributedDataParallel training run, measured by greenmaas on every rank.

Start it with torchrun (gloo on the CPU, no GPU needed)::

    python -m torch.distributed.run --standalone --nproc-per-node 2 examples/train_ddp.py --ledger ddp.db

Every rank opens its own ``Meter`` on the one ledger (a SQLite file here; a PostgreSQL URL for
ranks on several hosts). Each run records its rank, local rank, world size and the job's id
(``config["distributed"]``); each rank measures only its own GPU, and the host's devices (CPU,
DRAM) are measured by local rank 0 alone, so the job counts every device once. Afterwards:
``greenmaas runs --ledger ddp.db`` and ``greenmaas report --ledger ddp.db --by run``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import greenmaas
from greenmaas.integrations.torch import epochs, track_module, track_optimizer
from greenmaas.ledger.store import resolve_target


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ledger", default=None, help="ledger file or URL [$GREENMAAS_LEDGER, else greenmaas.db]")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="steps per epoch [20]")
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    args.ledger = str(resolve_target(args.ledger))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "RANK" not in os.environ:
        print("start me with torchrun: python -m torch.distributed.run --nproc-per-node 2 "
              "examples/train_ddp.py --ledger ddp.db", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(rank)
    try:
        with greenmaas.Meter(ledger=args.ledger, handle_signals=False) as meter:
            with track_module(model, name="ddp-mlp", meter=meter), track_optimizer(opt, model="ddp-mlp", meter=meter):
                for _ in epochs(args.epochs, model="ddp-mlp", meter=meter):
                    for _ in range(args.steps):
                        x = torch.randn(args.batch, 32, generator=gen)
                        y = torch.randint(0, 4, (args.batch,), generator=gen)
                        opt.zero_grad()
                        torch.nn.functional.cross_entropy(model(x), y).backward()
                        opt.step()
            where = meter.rank
        print(f"rank {rank}: run {meter.run_id} ({where})", flush=True)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
