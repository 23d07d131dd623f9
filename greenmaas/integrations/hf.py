"""Hugging Face ``transformers``: a ``TrainerCallback`` that records training into the ledger.

::

    from greenmaas.integrations.hf import GreenmaasCallback

    with greenmaas.Meter(ledger="greenmaas.db") as meter:
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                          callbacks=[GreenmaasCallback(meter)])
        trainer.train()

Spans (each tagged with the model and a phase, nested as the work is):

========================  =============  ==========  ===========================================
span name                 kind           phase       from … to
========================  =============  ==========  ===========================================
``train``                 ``train``      training    ``on_train_begin`` … ``on_train_end``
``epoch-<i>``             ``epoch``      training    ``on_epoch_begin`` … ``on_epoch_end``
``training_step``         ``step``       training    ``on_step_begin`` … ``on_step_end``: one
                                                     optimizer step, all its gradient
                                                     accumulation micro-batches included
``evaluate``              ``evaluate``   training    evaluation run by ``train()``: from the
                                                     event that asked for it (``on_step_end`` or
                                                     ``on_epoch_end`` with ``should_evaluate``, or
                                                     ``eval_on_start``) … ``on_evaluate``
``evaluate``/``predict``  same           inference   a ``trainer.evaluate()`` or
                                                     ``trainer.predict()`` of your own
========================  =============  ==========  ===========================================

Evaluation run by ``train()`` counts as training: it is part of what the training cost. Steps
carry ``attrs={"global_step": n, "epoch": i}``; epochs ``{"epoch": i}``. Logging and
checkpointing between steps are the ``train`` span's own energy; nothing is lost, since every
joule of the run goes to some span or to idle.

transformers announces the end of an evaluation or prediction loop that you call yourself, not
its start: such a span opens when its first batch has run (``on_prediction_step``), so the first
batch's energy goes to the enclosing span (or to idle). For an exact figure, enclose the call in a
span of your own: ``with meter.measure("eval", phase="inference"): trainer.evaluate()``.

``report_to``: transformers 5 resolves the names ``TrainingArguments(report_to=...)`` accepts
from a fixed table (``INTEGRATION_TO_CALLBACK`` in ``transformers.integrations.integration_utils``)
and rejects any other name; it offers no way for a third-party library to register one. Pass the
callback instead: ``Trainer(callbacks=[GreenmaasCallback()])``. It works alongside any
``report_to`` integration (MLflow's included; see :mod:`greenmaas.integrations.mlflow`).

With several processes per host (``torchrun``), only the local main process records
(``local_main_only=True``): its meter measures every device of the host, and data-parallel ranks
step together, so its spans cover the work of all of them.

Measuring never stops training: a span that cannot be opened is logged (once, to the
``greenmaas`` logger) and the step runs unmeasured. transformers tells callbacks nothing when
``train()`` raises: the spans it had open stay open (and current) until the next ``train()`` or
:meth:`GreenmaasCallback.close`, which close them with status ``error``.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ..meter import Meter
from ..spans import Span
from ._callbacks import SpanStack

__all__ = ["GreenmaasCallback"]

_LOOP = "loop"  # the key of evaluation and prediction loop spans


class GreenmaasCallback(TrainerCallback):
    """Records a ``Trainer``'s training, epochs, optimizer steps and evaluations as spans.

    ``meter``: default the current meter (:func:`greenmaas.get_meter`), looked up at each span.
    ``model``: the model tag; default the model's ``config.name_or_path``, else its class name.
    ``steps=False`` records no per-step spans (epochs and evaluations only).
    ``local_main_only``: record only in the local main process (see the module doc).

    :attr:`spans` gives the most recent span closed under each of ``"train"``, ``"epoch"``,
    ``"step"`` and ``"loop"`` (evaluation or prediction), whose ``result`` is its energy.
    """

    def __init__(
        self,
        meter: Meter | None = None,
        *,
        model: str | None = None,
        steps: bool = True,
        local_main_only: bool = True,
    ) -> None:
        self.meter = meter
        self.model = model
        self.steps = steps
        self.local_main_only = local_main_only
        self._stack = SpanStack("transformers", meter)
        self._names: dict[int, str] = {}
        self._epoch = 0
        self._late_loop = False  # the open loop span was opened at its first batch

    @property
    def spans(self) -> dict[str, Span]:
        return self._stack.last

    # ------------------------------------------------------------------ helpers

    def _active(self, state: Any) -> bool:
        return not self.local_main_only or bool(getattr(state, "is_local_process_zero", True))

    def _model_name(self, model: Any) -> str | None:
        if self.model is not None:
            return self.model
        if model is None:
            return None
        name = self._names.get(id(model))
        if name is None:
            config = getattr(model, "config", None)
            name = str(getattr(config, "name_or_path", "") or "") or type(model).__name__
            self._names[id(model)] = name
        return name

    def _open_loop(self, name: str, kwargs: dict[str, Any], *, late: bool = False) -> None:
        training = self._stack.is_open("train")
        self._stack.close(_LOOP, status="error")  # a loop asked for that never ran
        self._stack.open(
            _LOOP, name, kind=name, phase="training" if training else "inference",
            model=self._model_name(kwargs.get("model")),
        )
        self._late_loop = late

    def _close_loop(self, which: str) -> None:
        span = self._stack.top(_LOOP)
        if span is not None and self._late_loop and span.name != which:
            # Opened at its first batch, before transformers said which loop this is (evaluate
            # and predict share one loop and one per-batch event); nothing has read the span's
            # name yet (its record is built after it closes), so it is named here.
            span.name = span.kind = which
        self._stack.close(_LOOP)
        self._late_loop = False

    # ------------------------------------------------------------------ training

    def on_train_begin(self, args, state, control, **kwargs):
        if not self._active(state):
            return
        self._stack.close_all("error")  # spans of a train() that raised
        self._epoch = int(float(state.epoch or 0.0) + 1e-6)
        self._stack.open(
            "train", "train", kind="train", phase="training", model=self._model_name(kwargs.get("model")),
            attrs={"max_steps": int(state.max_steps or 0), "num_train_epochs": float(args.num_train_epochs)},
        )
        if getattr(args, "eval_on_start", False):
            self._open_loop("evaluate", kwargs)

    def on_epoch_begin(self, args, state, control, **kwargs):
        if not self._active(state):
            return
        self._stack.close(_LOOP, status="error")
        self._epoch = int(float(state.epoch or 0.0) + 1e-6)
        self._stack.open(
            "epoch", f"epoch-{self._epoch}", kind="epoch", phase="training",
            model=self._model_name(kwargs.get("model")), attrs={"epoch": self._epoch},
        )

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.steps or not self._active(state):
            return
        self._stack.close(_LOOP, status="error")
        self._stack.open(
            "step", "training_step", kind="step", phase="training", model=self._model_name(kwargs.get("model")),
            attrs={"global_step": int(state.global_step) + 1, "epoch": self._epoch},
        )

    def on_step_end(self, args, state, control, **kwargs):
        if not self._active(state):
            return
        self._stack.close("step")
        if control.should_evaluate:
            self._open_loop("evaluate", kwargs)

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self._active(state):
            return
        self._stack.close("epoch")
        if control.should_evaluate:
            self._open_loop("evaluate", kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if not self._active(state):
            return
        self._stack.close("train")

    # ------------------------------------------------------------------ evaluation, prediction

    def on_prediction_step(self, args, state, control, **kwargs):
        if not self._active(state) or self._stack.is_open(_LOOP):
            return
        self._open_loop("evaluate", kwargs, late=True)
        span = self._stack.top(_LOOP)
        if span is not None:
            span.attrs["opened"] = "after its first batch"

    def on_evaluate(self, args, state, control, **kwargs):
        if self._active(state):
            self._close_loop("evaluate")

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        if self._active(state):
            self._close_loop("predict")

    def close(self) -> None:
        """Close the spans still open (status ``error``): after a ``train()`` that raised."""
        self._stack.close_all("error")
