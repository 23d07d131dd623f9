"""PyTorch Lightning: a ``Callback`` that records fit, validation, test and prediction into the
ledger.

::

    from greenmaas.integrations.lightning import GreenmaasCallback

    with greenmaas.Meter(ledger="greenmaas.db") as meter:
        trainer = L.Trainer(max_epochs=3, callbacks=[GreenmaasCallback(meter)])
        trainer.fit(model, train_loader, val_loader)
        trainer.test(model, test_loader)

Works with ``lightning.pytorch`` (the ``lightning`` package) where it is installed, else with
``pytorch_lightning``; a trainer of one does not run callbacks of the other, so the callback
subclasses whichever this module found (:data:`FRAMEWORK`).

Spans (each tagged with the model — default the LightningModule's class name — and a phase):

=========================  ============  =======================================================
span name                  kind          from … to
=========================  ============  =======================================================
``fit``                    ``fit``       ``on_fit_start`` … ``on_fit_end``
``epoch-<i>``              ``epoch``     ``on_train_epoch_start`` … ``on_train_epoch_end``
``training_step``          ``step``      ``on_train_batch_start`` … ``on_train_batch_end``
``validation``             ``validate``  ``on_validation_start`` … ``on_validation_end``
``sanity_check``           ``validate``  the validation batches Lightning runs before training
``test``, ``predict``      same          ``on_test_start`` … ``on_test_end``, and so on
``validation_step``, …     ``step``      each batch of those loops (``test_step``,
                                         ``predict_step``)
=========================  ============  =======================================================

Phases: everything ``fit`` runs is ``training`` — validation included, as part of what training
cost; a ``trainer.validate()``, ``test()`` or ``predict()`` of your own is ``inference``. Batch
spans carry ``attrs={"batch_idx": i}``, with ``"epoch"`` during ``fit`` and ``"dataloader_idx"``
where there are several loaders. Validation that runs inside a training epoch nests in that epoch's span.

With several processes per host, only the local main process records (``local_main_only=True``):
its meter measures every device of the host, and data-parallel ranks step together. A loop that
raises closes its open spans with status ``error`` (``on_exception``). Measuring never stops
training: a span that cannot be opened is logged once to the ``greenmaas`` logger.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as _pl  # type: ignore[import-not-found]

    FRAMEWORK = "lightning.pytorch"
except ImportError:  # the standalone package
    import pytorch_lightning as _pl  # type: ignore[no-redef]

    FRAMEWORK = "pytorch_lightning"

from ..meter import Meter
from ..spans import Span
from ._callbacks import SpanStack

__all__ = ["GreenmaasCallback", "FRAMEWORK"]

# Lightning's loops: (stage name for hooks, span name and kind of the loop, batch span name)
_LOOPS = {
    "validation": ("validate", "validation_step"),
    "test": ("test", "test_step"),
    "predict": ("predict", "predict_step"),
}


class GreenmaasCallback(_pl.Callback):
    """Records a Lightning ``Trainer``'s stages, epochs and batches as spans.

    ``meter``: default the current meter (:func:`greenmaas.get_meter`), looked up at each span.
    ``model``: the model tag; default the LightningModule's class name. ``batches=False``
    records no per-batch spans. ``local_main_only``: record only where ``trainer.local_rank`` is 0.

    :attr:`spans` gives the most recent span closed under each of ``"fit"``, ``"epoch"``,
    ``"batch"`` and ``"loop"`` (validation, test or prediction), whose ``result`` is its energy.
    """

    def __init__(
        self,
        meter: Meter | None = None,
        *,
        model: str | None = None,
        batches: bool = True,
        local_main_only: bool = True,
    ) -> None:
        super().__init__()
        self.meter = meter
        self.model = model
        self.batches = batches
        self.local_main_only = local_main_only
        self._stack = SpanStack("lightning", meter)

    @property
    def spans(self) -> dict[str, Span]:
        return self._stack.last

    # ------------------------------------------------------------------ helpers

    def _active(self, trainer: Any) -> bool:
        return not self.local_main_only or int(getattr(trainer, "local_rank", 0) or 0) == 0

    def _model_name(self, pl_module: Any) -> str:
        return self.model if self.model is not None else type(pl_module).__name__

    @staticmethod
    def _fitting(trainer: Any) -> bool:
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        return str(getattr(fn, "value", fn)) == "fit"

    def _phase(self, trainer: Any) -> str:
        return "training" if self._fitting(trainer) else "inference"

    def _open(self, key: str, name: str, kind: str, trainer: Any, pl_module: Any, attrs: dict | None = None) -> None:
        if self._active(trainer):
            self._stack.open(key, name, kind=kind, phase=self._phase(trainer), model=self._model_name(pl_module),
                             attrs=attrs)

    def _close(self, key: str, trainer: Any) -> None:
        if self._active(trainer):
            self._stack.close(key)

    def _loop_start(self, loop: str, trainer: Any, pl_module: Any) -> None:
        kind, _ = _LOOPS[loop]
        name = "sanity_check" if loop == "validation" and getattr(trainer, "sanity_checking", False) else loop
        self._open("loop", name, kind, trainer, pl_module)

    def _batch_start(self, loop: str, trainer: Any, pl_module: Any, batch_idx: int, dataloader_idx: int) -> None:
        if not self.batches:
            return
        attrs: dict[str, Any] = {"batch_idx": int(batch_idx)}
        if self._fitting(trainer):
            attrs["epoch"] = int(trainer.current_epoch)
        if dataloader_idx:
            attrs["dataloader_idx"] = int(dataloader_idx)
        self._open("batch", _LOOPS[loop][1] if loop in _LOOPS else "training_step", "step", trainer, pl_module, attrs)

    # ------------------------------------------------------------------ fit

    def on_fit_start(self, trainer, pl_module):
        if self._active(trainer):
            self._stack.close_all("error")  # spans of a stage that raised without on_exception
        self._open("fit", "fit", "fit", trainer, pl_module, {"max_epochs": trainer.max_epochs})

    def on_fit_end(self, trainer, pl_module):
        self._close("fit", trainer)

    def on_train_epoch_start(self, trainer, pl_module):
        epoch = int(trainer.current_epoch)
        self._open("epoch", f"epoch-{epoch}", "epoch", trainer, pl_module, {"epoch": epoch})

    def on_train_epoch_end(self, trainer, pl_module):
        self._close("epoch", trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch_start("train", trainer, pl_module, batch_idx, 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.batches:
            self._close("batch", trainer)

    # ------------------------------------------------------------------ validation, test, predict

    def on_validation_start(self, trainer, pl_module):
        self._loop_start("validation", trainer, pl_module)

    def on_validation_end(self, trainer, pl_module):
        self._close("loop", trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._batch_start("validation", trainer, pl_module, batch_idx, dataloader_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.batches:
            self._close("batch", trainer)

    def on_test_start(self, trainer, pl_module):
        self._loop_start("test", trainer, pl_module)

    def on_test_end(self, trainer, pl_module):
        self._close("loop", trainer)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._batch_start("test", trainer, pl_module, batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.batches:
            self._close("batch", trainer)

    def on_predict_start(self, trainer, pl_module):
        self._loop_start("predict", trainer, pl_module)

    def on_predict_end(self, trainer, pl_module):
        self._close("loop", trainer)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._batch_start("predict", trainer, pl_module, batch_idx, dataloader_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.batches:
            self._close("batch", trainer)

    # ------------------------------------------------------------------ failure

    def on_exception(self, trainer, pl_module, exception):
        if self._active(trainer):
            status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "error"
            self._stack.close_all(status)

    def close(self) -> None:
        """Close the spans still open (status ``error``)."""
        self._stack.close_all("error")
