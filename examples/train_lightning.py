"""Fit, test and predict with a small Lightning model on the CPU and see what each part cost.

``GreenmaasCallback`` records the fit, each epoch, each training and validation batch, the test
and the prediction into the ledger. Afterwards the script prints the energy by span name and by
phase, as ``greenmaas report --ledger LEDGER --by name`` would.

    python examples/train_lightning.py --ledger lightning.db --epochs 3
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import greenmaas
from greenmaas.report import summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ledger", default="greenmaas.db", help="ledger file or SQLAlchemy URL [greenmaas.db]")
    p.add_argument("--epochs", type=int, default=3, help="training epochs [3]")
    p.add_argument("--samples", type=int, default=2048, help="synthetic samples [2048]")
    p.add_argument("--batch-size", type=int, default=64, help="batch size [64]")
    p.add_argument("--hidden", type=int, default=256, help="hidden width [256]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, *, sources: Sequence[Any] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from greenmaas.integrations.lightning import GreenmaasCallback
    from greenmaas.integrations.lightning import _pl as pl

    class Regressor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(16, args.hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(args.hidden, 1))

        def _loss(self, batch: Any) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self._loss(batch)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", self._loss(batch))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.log("test_loss", self._loss(batch))

        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(batch[0])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 16, generator=gen)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)

    with greenmaas.Meter(ledger=args.ledger, sources=sources) as meter:
        callback = GreenmaasCallback(meter, model="regressor")
        trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[callback])
        model = Regressor()
        trainer.fit(model, loader, loader)
        trainer.test(model, loader, verbose=False)
        trainer.predict(model, loader)
        fit = callback.spans["fit"].result
    print(f"fit: {fit.energy_j:,.1f} ± {fit.uncertainty_j or 0.0:,.1f} J in {fit.duration_s:,.2f} s ({fit.method})")
    for by in ("name", "phase"):
        print(f"\nby {by}:")
        for row in summary(args.ledger, by=by, accounting=False).rows:
            print(f"  {row['group']:<16} {row['spans']:>6} spans  {row['energy_j'] or 0.0:>12,.1f} J")
    return 0


if __name__ == "__main__":
    sys.exit(main())
