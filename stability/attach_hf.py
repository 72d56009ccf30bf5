"""The monitor as a Hugging Face `TrainerCallback` (needs `pip install -e '.[hf]'`).

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[MonitorCallback("runs/gpt2-d64", data="my-corpus")])

Each optimizer step is one monitor step (`state.global_step + 1`), gradient accumulation
included: the gradients read are the accumulated ones, before the Trainer clips them. The
run card takes the peak LR from `args.learning_rate` and the seed from `args.seed`;
evaluation losses (`eval_loss`) go to the latest logged row's `val_loss`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .attach import DEFAULT_EVERY, Monitor


class MonitorCallback(TrainerCallback):
    """A TrainerCallback running stability.attach.Monitor into the folder `out`.

    every, data and any other keyword go to Monitor (see its docstring); peak_lr and seed
    default to the TrainingArguments'. Only the main process (rank 0) writes. Raises what
    Monitor raises, at the start of training."""

    def __init__(self, out: str | Path, every: int = DEFAULT_EVERY, data: str = "unnamed", **monitor_kw: Any):
        self.out, self.every, self.data, self.kw = Path(out), every, data, monitor_kw
        self.monitor: Monitor | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not state.is_world_process_zero or self.monitor is not None:
            return
        kw = {"peak_lr": args.learning_rate, "seed": args.seed, "resume": state.global_step > 0, **self.kw}
        self.monitor = Monitor(model, optimizer, self.out, every=self.every, data=self.data, **kw)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.begin_step(state.global_step + 1)

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is not None and self.monitor._open:
            self.monitor.end_step()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.monitor is not None and metrics and metrics.get("eval_loss") is not None:
            self.monitor.log_eval(metrics["eval_loss"])

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.close()
