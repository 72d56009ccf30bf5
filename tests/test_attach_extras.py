"""The monitor's optional adapters and sinks with the real libraries (each an optional extra,
skipped where it is not installed): Lightning (`.[lightning]`), TensorBoard event files
(`.[tensorboard]`) and Weights & Biases in offline mode (`.[wandb]`)."""
from __future__ import annotations

import json
import math
import re

import polars as pl
import pytest
import torch
import torch.nn.functional as F

from stability.attach import Monitor

from byom_helpers import SEQ, VOCAB, NanoGPT, batch


def _loop(mon, model, opt, steps):
    for step in range(1, steps + 1):
        x = batch(step)
        with mon.step(step):
            model(x[:, :-1], x[:, 1:])[1].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)


def test_lightning_callback(tmp_path):
    L = pytest.importorskip("lightning")
    from torch.utils.data import DataLoader, TensorDataset

    from stability.attach_lightning import MonitorCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = NanoGPT(flash=True)
            self.norms = {}

        def training_step(self, x, i):
            (x,) = x
            logits, _ = self.net(x[:, :-1])
            return F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))

        def on_before_optimizer_step(self, optimizer):  # accumulated, before Lightning clips
            self.norms[self.trainer.global_step + 1] = math.sqrt(
                sum(float(p.grad.pow(2).sum()) for p in self.parameters() if p.grad is not None))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-3)

    torch.manual_seed(8)
    data = DataLoader(TensorDataset(batch(0, B=96)), batch_size=8)
    module = Module()
    trainer = L.Trainer(max_steps=6, accelerator="cpu", accumulate_grad_batches=2, gradient_clip_val=0.1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[MonitorCallback(tmp_path / "pl", every=2)])
    trainer.fit(module, data)
    df = pl.read_parquet(tmp_path / "pl" / "metrics.parquet")
    assert df["step"].to_list() == [1, 2, 4, 6]
    # forward and backward ran inside optimizer.step(closure): attention was still seen
    assert df["attn_logit_l1"].is_finite().all() and df["loss"].is_finite().all()
    assert df["tokens"].to_list() == [s * 2 * 8 * (SEQ - 1) for s in (1, 2, 4, 6)]  # two micro-batches a step
    for s, g in zip(df["step"], df["grad_norm"]):
        assert abs(g - module.norms[s]) <= 1e-4 * module.norms[s], (s, g, module.norms[s])
    assert json.loads((tmp_path / "pl" / "run_card.json").read_text())["peak_lr"] == 3e-3


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(9)
    model = NanoGPT(flash=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = Monitor(model, opt, tmp_path / "tb-run", every=3, tensorboard=True)
    _loop(mon, model, opt, 7)
    mon.close()
    acc = EventAccumulator(str(tmp_path / "tb-run" / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"stability/max_attn_logit", "stability/grad_norm", "stability/logz_mean"} <= set(tags)
    events = acc.Scalars("stability/max_attn_logit")
    df = pl.read_parquet(tmp_path / "tb-run" / "metrics.parquet")
    assert [e.step for e in events] == df["step"].to_list() == [1, 3, 6]
    assert [e.value for e in events] == pytest.approx(df["max_attn_logit"].to_list(), rel=1e-6)


def test_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    torch.manual_seed(10)
    model = NanoGPT(flash=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = Monitor(model, opt, tmp_path / "wb-run", every=2, wandb=True, data="counting")
    _loop(mon, model, opt, 4)
    mon.close()  # finishes the run it started
    wandb.teardown()  # and the service process writes out the run's log before it exits
    runs = list((tmp_path / "wb-run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # the offline run's transaction log (what `wandb sync` uploads) holds every logged row:
    # each history item is the key followed by its value's JSON
    log = next(runs[0].glob("*.wandb")).read_bytes()
    assert log.startswith(b":W&B")
    df = pl.read_parquet(tmp_path / "wb-run" / "metrics.parquet")
    assert df["step"].to_list() == [1, 2, 4]
    for key in ("max_attn_logit", "grad_norm", "update_rms_mlp0"):
        for v in df[key]:
            assert re.search(re.escape(f"stability/{key}".encode()) + rb"[\s\S]{1,4}" + re.escape(json.dumps(v).encode()),
                             log), (key, v)
    assert b"counting" in log  # the run card went in as the run's config
