"""The monitor as a Lightning `Callback` (needs `pip install -e '.[lightning]'`).

    trainer = L.Trainer(max_steps=1000, callbacks=[MonitorCallback("runs/d64", data="my-corpus")])

Each optimizer step (`trainer.global_step + 1`) is one monitor step, gradient accumulation
included (the step opens at its first micro-batch and closes once the optimizer stepped).
The model watched is the LightningModule, the optimizer the trainer's first. Forward and
backward may run inside `optimizer.step(closure)`, as Lightning's automatic optimization
does: the monitor keeps watching until the backward has run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone `pytorch_lightning` package
    from pytorch_lightning.callbacks import Callback

from .attach import DEFAULT_EVERY, Monitor


class MonitorCallback(Callback):
    """A Lightning Callback running stability.attach.Monitor into the folder `out`.

    every, data and any other keyword go to Monitor (see its docstring); the peak LR defaults
    to the optimizer's (the largest `initial_lr`, else `lr`, of its param groups). Only the
    global rank 0 writes. Raises what Monitor raises, when training starts."""

    def __init__(self, out: str | Path, every: int = DEFAULT_EVERY, data: str = "unnamed", **monitor_kw: Any):
        self.out, self.every, self.data, self.kw = Path(out), every, data, monitor_kw
        self.monitor: Monitor | None = None
        self._step: int | None = None

    def on_train_start(self, trainer, pl_module):
        if trainer.global_rank != 0 or self.monitor is not None:
            return
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        kw = {"resume": trainer.global_step > 0, **self.kw}
        self.monitor = Monitor(pl_module, optimizer, self.out, every=self.every, data=self.data, **kw)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.monitor is not None and self._step is None:
            self._step = trainer.global_step + 1
            self.monitor.begin_step(self._step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.monitor is not None and self._step is not None and trainer.global_step >= self._step:
            self.monitor.end_step()  # the optimizer stepped: the step is complete
            self._step = None

    def on_validation_epoch_end(self, trainer, pl_module):
        loss = trainer.callback_metrics.get("val_loss")
        if self.monitor is not None and loss is not None:
            self.monitor.log_eval(float(loss))

    def on_train_end(self, trainer, pl_module):
        if self.monitor is not None:
            self.monitor.close()
            self._step = None
