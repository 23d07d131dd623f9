"""Train a tiny GPT-2 with the Hugging Face ``Trainer`` on the CPU and see what each part cost.

The model is built from its config (nothing is downloaded) and trained on random token sequences;
``GreenmaasCallback`` records the training, each epoch, each optimizer step and each evaluation
into the ledger. Afterwards the script prints the energy by span name and by phase, as
``greenmaas report --ledger LEDGER --by name`` would.

    python examples/train_hf.py --ledger hf.db --epochs 2
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import greenmaas
from greenmaas.report import summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ledger", default="greenmaas.db", help="ledger file or SQLAlchemy URL [greenmaas.db]")
    p.add_argument("--epochs", type=int, default=2, help="training epochs [2]")
    p.add_argument("--samples", type=int, default=256, help="training sequences [256]")
    p.add_argument("--batch-size", type=int, default=16, help="training batch size [16]")
    p.add_argument("--layers", type=int, default=2, help="transformer layers [2]")
    p.add_argument("--out", default=None, help="the Trainer's output directory [a temporary one]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, *, sources: Sequence[Any] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tempfile

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from greenmaas.integrations.hf import GreenmaasCallback

    torch.manual_seed(0)
    vocab, length = 128, 32
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=length, n_embd=64, n_layer=args.layers,
                                       n_head=4, bos_token_id=0, eos_token_id=0))
    gen = torch.Generator().manual_seed(0)

    def data(n: int) -> list[dict[str, torch.Tensor]]:
        rows = []
        for _ in range(n):
            ids = torch.randint(0, vocab, (length,), generator=gen)
            rows.append({"input_ids": ids, "labels": ids})
        return rows

    with tempfile.TemporaryDirectory() as tmp, greenmaas.Meter(ledger=args.ledger, sources=sources) as meter:
        training = TrainingArguments(
            output_dir=args.out or tmp, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size, eval_strategy="epoch", save_strategy="no",
            logging_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
        )
        callback = GreenmaasCallback(meter, model="gpt2-tiny")
        trainer = Trainer(model=model, args=training, train_dataset=data(args.samples),
                          eval_dataset=data(max(args.samples // 4, 1)), callbacks=[callback])
        trainer.train()
        train = callback.spans["train"].result
    print(f"training: {train.energy_j:,.1f} ± {train.uncertainty_j or 0.0:,.1f} J in {train.duration_s:,.2f} s "
          f"({train.method})")
    for by in ("name", "phase"):
        print(f"\nby {by}:")
        for row in summary(args.ledger, by=by, accounting=False).rows:
            print(f"  {row['group']:<16} {row['spans']:>6} spans  {row['energy_j'] or 0.0:>12,.1f} J")
    return 0


if __name__ == "__main__":
    sys.exit(main())
