"""The transformers integration: a real ``Trainer`` on a tiny GPT-2 built from its config (no
download), on the CPU, recording into a real ledger.

Time is a :class:`FakeClock` that the model's own forward passes move on (10 ms per training
forward, 4 ms per evaluation forward), and the device draws a constant 250 W, so every span's
true energy is 250 W × the forwards it contains × their time: counted here, independently of
greenmaas, from the dataset sizes and checked against the forwards the hook saw.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from greenmaas.analysis import read_ledger  # noqa: E402
from greenmaas.integrations.hf import GreenmaasCallback  # noqa: E402
from greenmaas.meter import Meter  # noqa: E402
from greenmaas.testing import FakeClock, StaticSource  # noqa: E402

POWER_W = 250.0
TRAIN_S = 0.010
EVAL_S = 0.004


class Rig:
    """A tiny GPT-2, a fake clock its forwards advance, a meter on a fake 250 W device."""

    def __init__(self, tmp_path, *, fail_at: int | None = None):
        self.clock = FakeClock()
        self.ledger = tmp_path / "greenmaas.db"
        src = StaticSource(self.clock, {"gpu:0": {"energy_j": lambda t: POWER_W * t}})
        self.meter = Meter(sources=[src], ledger=str(self.ledger), clock=self.clock, background=False,
                           accounting=False, rollup=False, handle_signals=False)
        torch.manual_seed(0)
        config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                         bos_token_id=0, eos_token_id=0)
        self.model = transformers.GPT2LMHeadModel(config)
        self.forwards = {"train": 0, "eval": 0}
        self.fail_at = fail_at
        self.model.register_forward_pre_hook(self._advance)
        self.gen = torch.Generator().manual_seed(0)
        self.out = str(tmp_path / "out")

    def _advance(self, module, args):
        kind = "train" if torch.is_grad_enabled() else "eval"
        self.forwards[kind] += 1
        if kind == "train" and self.fail_at is not None and self.forwards["train"] == self.fail_at:
            raise RuntimeError("the batch was bad")
        self.clock.advance(TRAIN_S if kind == "train" else EVAL_S)

    def data(self, n):
        rows = []
        for _ in range(n):
            ids = torch.randint(0, 32, (8,), generator=self.gen)
            rows.append({"input_ids": ids, "labels": ids})
        return rows

    def trainer(self, callback, **args):
        defaults = dict(output_dir=self.out, per_device_train_batch_size=4, per_device_eval_batch_size=3,
                        num_train_epochs=2, save_strategy="no", logging_strategy="no", report_to="none",
                        use_cpu=True, disable_tqdm=True, seed=0)
        defaults.update(args)
        return transformers.Trainer(model=self.model, args=transformers.TrainingArguments(**defaults),
                                    train_dataset=self.data(12), eval_dataset=self.data(6), callbacks=[callback])

    def spans(self):
        df = read_ledger(str(self.ledger))
        return df.set_index("span_id", drop=False)


def _parent_name(spans, row):
    return spans.loc[row["parent_id"], "name"] if row["parent_id"] in spans.index else None


def test_trainer_records_training_epochs_steps_and_evaluation(tmp_path):
    rig = Rig(tmp_path)
    cb = GreenmaasCallback(rig.meter)
    with rig.meter:
        rig.trainer(cb, eval_strategy="epoch").train()
    # 12 samples in batches of 4: 3 steps an epoch; 6 eval samples in batches of 3: 2 batches.
    assert rig.forwards == {"train": 6, "eval": 4}
    spans = rig.spans()
    assert set(spans["model"]) == {"GPT2LMHeadModel"}
    assert (spans["status"] == "ok").all()

    steps = spans[spans["kind"] == "step"].sort_values("start")
    assert list(steps["name"]) == ["training_step"] * 6
    assert [a["global_step"] for a in steps["attrs"]] == [1, 2, 3, 4, 5, 6]
    assert [a["epoch"] for a in steps["attrs"]] == [0, 0, 0, 1, 1, 1]
    assert steps["energy_j"].tolist() == pytest.approx([POWER_W * TRAIN_S] * 6)
    assert set(steps["phase"]) == {"training"}

    epochs = spans[spans["kind"] == "epoch"].sort_values("start")
    assert list(epochs["name"]) == ["epoch-0", "epoch-1"]
    assert epochs["energy_j"].tolist() == pytest.approx([POWER_W * 3 * TRAIN_S] * 2)
    for _, s in steps.iterrows():
        assert _parent_name(spans, s) == f"epoch-{s['attrs']['epoch']}"

    evals = spans[spans["kind"] == "evaluate"].sort_values("start")
    assert list(evals["name"]) == ["evaluate", "evaluate"]
    assert set(evals["phase"]) == {"training"}  # evaluation run by train() is part of training
    assert evals["energy_j"].tolist() == pytest.approx([POWER_W * 2 * EVAL_S] * 2)
    assert {_parent_name(spans, s) for _, s in evals.iterrows()} == {"train"}

    (train,) = spans[spans["kind"] == "train"].itertuples()
    assert train.energy_j == pytest.approx(POWER_W * (6 * TRAIN_S + 4 * EVAL_S))
    assert train.attrs == {"max_steps": 6, "num_train_epochs": 2.0}
    # Nothing counted twice: the spans' own energy adds up to the training's.
    assert spans["self_energy_j"].sum() == pytest.approx(train.energy_j)
    assert cb.spans["train"].result.energy_j == pytest.approx(train.energy_j)


def test_gradient_accumulation_and_evaluation_every_few_steps(tmp_path):
    rig = Rig(tmp_path)
    with rig.meter:
        rig.trainer(GreenmaasCallback(rig.meter, model="gpt2-tiny"), per_device_train_batch_size=2,
                    gradient_accumulation_steps=2, num_train_epochs=1, eval_strategy="steps", eval_steps=2).train()
    # 12 samples in micro-batches of 2: 6 forwards, 3 optimizer steps; evaluation after step 2
    # and, as transformers does at the last step, after step 3.
    assert rig.forwards == {"train": 6, "eval": 4}
    spans = rig.spans()
    assert set(spans["model"]) == {"gpt2-tiny"}
    steps = spans[spans["kind"] == "step"].sort_values("start")
    assert len(steps) == 3
    assert steps["energy_j"].tolist() == pytest.approx([POWER_W * 2 * TRAIN_S] * 3)  # both micro-batches
    evals = spans[spans["kind"] == "evaluate"].sort_values("start")
    assert evals["energy_j"].tolist() == pytest.approx([POWER_W * 2 * EVAL_S] * 2)
    assert {spans.loc[p, "name"] for p in evals["parent_id"]} == {"epoch-0"}  # mid-epoch: inside it
    step_ends = sorted(steps["end"])
    first = evals.iloc[0]
    assert step_ends[1] <= first["start"] and first["end"] <= step_ends[2]


def test_evaluate_and_predict_of_your_own_are_inference(tmp_path):
    rig = Rig(tmp_path)
    with rig.meter:
        trainer = rig.trainer(GreenmaasCallback(rig.meter))
        with rig.meter.measure("held-out", phase="inference"):
            trainer.evaluate()
        trainer.predict(rig.data(9))
    assert rig.forwards == {"train": 0, "eval": 5}
    spans = rig.spans()
    (evaluation,) = spans[spans["name"] == "evaluate"].itertuples()
    (prediction,) = spans[spans["name"] == "predict"].itertuples()
    assert (evaluation.kind, evaluation.phase) == ("evaluate", "inference")
    assert (prediction.kind, prediction.phase) == ("predict", "inference")
    # transformers announces no start for these loops: each span opens after its first batch.
    assert evaluation.energy_j == pytest.approx(POWER_W * (2 - 1) * EVAL_S)
    assert prediction.energy_j == pytest.approx(POWER_W * (3 - 1) * EVAL_S)
    # ... and an enclosing span of your own gets the whole loop.
    (held_out,) = spans[spans["name"] == "held-out"].itertuples()
    assert held_out.energy_j == pytest.approx(POWER_W * 2 * EVAL_S)
    assert spans.loc[evaluation.parent_id, "name"] == "held-out"


def test_a_training_that_raises_leaves_no_span_open(tmp_path):
    rig = Rig(tmp_path, fail_at=5)
    cb = GreenmaasCallback(rig.meter)
    with rig.meter:
        trainer = rig.trainer(cb)
        with pytest.raises(RuntimeError, match="the batch was bad"):
            trainer.train()
        cb.close()
        with rig.meter.measure("after", phase="other") as after:
            rig.clock.advance(0.5)
    assert after.parent is None  # the failed training's spans are no longer current
    spans = rig.spans()
    failed = spans[spans["status"] == "error"]
    assert sorted(failed["name"]) == ["epoch-1", "train", "training_step"]
    assert spans.loc[spans["name"] == "train", "energy_j"].item() == pytest.approx(POWER_W * 4 * TRAIN_S)
    assert spans["self_energy_j"].sum() == pytest.approx(POWER_W * (4 * TRAIN_S + 0.5))


def test_no_report_to_registration_is_possible():
    """The module doc says transformers has no registry for third-party ``report_to`` names."""
    from transformers.integrations import integration_utils

    assert "greenmaas" not in integration_utils.INTEGRATION_TO_CALLBACK
    with pytest.raises(ValueError, match="greenmaas is not supported"):
        integration_utils.get_reporting_integration_callbacks(["greenmaas"])


def test_the_example_runs_and_reports(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GREENMAAS_LOCATION", "FR")
    import importlib.util
    from pathlib import Path

    from greenmaas.clock import SystemClock

    path = Path(__file__).resolve().parents[2] / "examples" / "train_hf.py"
    spec = importlib.util.spec_from_file_location("example_train_hf", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    ledger = tmp_path / "hf.db"
    # A device whose energy follows the real clock: the example's timing is real, its power fixed.
    sources = [StaticSource(SystemClock(), {"gpu:0": {"energy_j": lambda t: POWER_W * t}})]
    argv = ["--ledger", str(ledger), "--samples", "8", "--batch-size", "4", "--epochs", "1", "--layers", "1",
            "--out", str(tmp_path / "out")]
    assert example.main(argv, sources=sources) == 0
    out = capsys.readouterr().out
    assert "training:" in out and "training_step" in out and "evaluate" in out
    spans = read_ledger(str(ledger))
    assert sorted(spans["name"]) == ["epoch-0", "evaluate", "train", "training_step", "training_step"]
    (train,) = spans[spans["name"] == "train"].itertuples()
    # Reads are stamped around each read, not at it: the books hold to well under a percent.
    assert train.energy_j == pytest.approx(POWER_W * train.duration_s, rel=1e-2)
