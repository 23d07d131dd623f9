"""The Lightning integration: a real ``Trainer`` on the CPU (a one-layer model, a few batches)
recording into a real ledger.

Time is a :class:`FakeClock` that the module's own step methods move on (a different duration per
loop), and the device draws a constant 250 W, so every span's true energy is 250 W × the steps it
contains × their time, counted here from the loader sizes.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
lightning = pytest.importorskip("greenmaas.integrations.lightning", exc_type=ImportError)

from greenmaas.analysis import read_ledger  # noqa: E402
from greenmaas.integrations.lightning import GreenmaasCallback  # noqa: E402
from greenmaas.meter import Meter  # noqa: E402
from greenmaas.testing import FakeClock, StaticSource  # noqa: E402

pl = lightning._pl
# Lightning's own use of a torch API torch has deprecated; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*")
POWER_W = 250.0
SECONDS = {"train": 0.010, "val": 0.004, "test": 0.003, "predict": 0.002}


class Tiny(pl.LightningModule):
    def __init__(self, clock, fail_at=None):
        super().__init__()
        self.clock = clock
        self.lin = torch.nn.Linear(4, 1)
        self.calls = {k: 0 for k in SECONDS}
        self.fail_at = fail_at

    def _work(self, loop, batch):
        self.calls[loop] += 1
        if loop == "train" and self.calls["train"] == self.fail_at:
            raise RuntimeError("the batch was bad")
        self.clock.advance(SECONDS[loop])
        x, y = batch
        return torch.nn.functional.mse_loss(self.lin(x), y)

    def training_step(self, batch, batch_idx):
        return self._work("train", batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._work("val", batch))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self._work("test", batch))

    def predict_step(self, batch, batch_idx):
        return self._work("predict", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture
def rig(tmp_path):
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: POWER_W * t}})
    meter = Meter(sources=[src], ledger=str(tmp_path / "greenmaas.db"), clock=clock, background=False,
                  accounting=False, rollup=False, handle_signals=False)
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(12, 4, generator=gen), torch.randn(12, 1, generator=gen))

    class Rig:
        pass

    r = Rig()
    r.clock, r.meter, r.ledger = clock, meter, str(tmp_path / "greenmaas.db")
    r.loader = lambda batch_size: torch.utils.data.DataLoader(data, batch_size=batch_size)
    r.trainer = lambda cb, **kw: pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[cb], default_root_dir=str(tmp_path), **kw,
    )
    r.spans = lambda: read_ledger(r.ledger).set_index("span_id", drop=False)
    return r


def _energy(spans, **where):
    sel = spans
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return sel.sort_values("start")["energy_j"].tolist()


def test_fit_test_and_predict_are_recorded(rig):
    model = Tiny(rig.clock)
    cb = GreenmaasCallback(rig.meter)
    with rig.meter:
        trainer = rig.trainer(cb, max_epochs=2, num_sanity_val_steps=1)
        trainer.fit(model, rig.loader(4), rig.loader(6))
        trainer.test(model, rig.loader(6), verbose=False)
        trainer.predict(model, rig.loader(6))
    # 12 samples: 3 training batches of 4 an epoch; 2 batches of 6 per validation, test, predict;
    # one sanity-check validation batch before training.
    assert model.calls == {"train": 6, "val": 1 + 2 * 2, "test": 2, "predict": 2}
    spans = rig.spans()
    assert (spans["status"] == "ok").all()
    assert set(spans["model"]) == {"Tiny"}

    assert _energy(spans, name="training_step") == pytest.approx([POWER_W * SECONDS["train"]] * 6)
    assert _energy(spans, kind="epoch") == pytest.approx([POWER_W * (3 * SECONDS["train"] + 2 * SECONDS["val"])] * 2)
    assert _energy(spans, name="validation") == pytest.approx([POWER_W * 2 * SECONDS["val"]] * 2)
    assert _energy(spans, name="sanity_check") == pytest.approx([POWER_W * SECONDS["val"]])
    assert _energy(spans, name="validation_step") == pytest.approx([POWER_W * SECONDS["val"]] * 5)
    fit_j = POWER_W * (6 * SECONDS["train"] + 5 * SECONDS["val"])
    assert _energy(spans, kind="fit") == pytest.approx([fit_j])
    assert _energy(spans, name="test") == pytest.approx([POWER_W * 2 * SECONDS["test"]])
    assert _energy(spans, name="predict") == pytest.approx([POWER_W * 2 * SECONDS["predict"]])
    assert _energy(spans, name="predict_step") == pytest.approx([POWER_W * SECONDS["predict"]] * 2)

    # Phases: all of fit (validation included) is training; test and predict are inference.
    phases = spans.groupby("phase")["self_energy_j"].sum()
    assert phases["training"] == pytest.approx(fit_j)
    assert phases["inference"] == pytest.approx(POWER_W * 2 * (SECONDS["test"] + SECONDS["predict"]))
    # Nesting: steps in their epoch, validation inside the epoch it ran in, epochs in fit.
    name = spans["name"].to_dict()
    for _, s in spans[spans["name"] == "training_step"].iterrows():
        assert name[s["parent_id"]] == f"epoch-{s['attrs']['epoch']}"
    assert {name[p] for p in spans.loc[spans["name"] == "validation", "parent_id"]} == {"epoch-0", "epoch-1"}
    assert {name[p] for p in spans.loc[spans["kind"] == "epoch", "parent_id"]} == {"fit"}
    assert cb.spans["loop"].name == "predict"
    assert cb.spans["loop"].result.energy_j == pytest.approx(POWER_W * 2 * SECONDS["predict"])


def test_validate_of_your_own_is_inference_and_batches_can_be_left_out(rig):
    model = Tiny(rig.clock)
    with rig.meter:
        rig.trainer(GreenmaasCallback(rig.meter, model="tiny-regressor", batches=False)).validate(model, rig.loader(4))
    spans = rig.spans()
    assert list(spans["name"]) == ["validation"]
    row = spans.iloc[0]
    assert (row["kind"], row["phase"], row["model"]) == ("validate", "inference", "tiny-regressor")
    assert row["energy_j"] == pytest.approx(POWER_W * 3 * SECONDS["val"])


def test_an_exception_closes_the_open_spans(rig):
    model = Tiny(rig.clock, fail_at=5)
    with rig.meter:
        with pytest.raises(RuntimeError, match="the batch was bad"):
            rig.trainer(GreenmaasCallback(rig.meter), max_epochs=2, num_sanity_val_steps=0).fit(
                model, rig.loader(4), rig.loader(6))
        with rig.meter.measure("after", phase="other") as after:
            rig.clock.advance(0.5)
    assert after.parent is None
    spans = rig.spans()
    assert sorted(spans.loc[spans["status"] == "error", "name"]) == ["epoch-1", "fit", "training_step"]
    assert spans["self_energy_j"].sum() == pytest.approx(POWER_W * (4 * SECONDS["train"] + 2 * SECONDS["val"] + 0.5))


def test_the_example_runs_and_reports(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GREENMAAS_LOCATION", "FR")
    import importlib.util
    from pathlib import Path

    from greenmaas.clock import SystemClock

    path = Path(__file__).resolve().parents[2] / "examples" / "train_lightning.py"
    spec = importlib.util.spec_from_file_location("example_train_lightning", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    ledger = tmp_path / "lightning.db"
    # A device whose energy follows the real clock: the example's timing is real, its power fixed.
    sources = [StaticSource(SystemClock(), {"gpu:0": {"energy_j": lambda t: POWER_W * t}})]
    argv = ["--ledger", str(ledger), "--samples", "64", "--batch-size", "32", "--epochs", "1", "--hidden", "8"]
    assert example.main(argv, sources=sources) == 0
    out = capsys.readouterr().out
    assert "fit:" in out and "training_step" in out and "predict_step" in out
    spans = read_ledger(str(ledger))
    counts = spans["name"].value_counts().to_dict()
    assert counts["training_step"] == 2 and counts["test_step"] == 2 and counts["predict_step"] == 2
    (fit,) = spans[spans["name"] == "fit"].itertuples()
    # Reads are stamped around each read, not at it: the books hold to well under a percent.
    assert fit.energy_j == pytest.approx(POWER_W * fit.duration_s, rel=1e-2)
