"""The monitor for any PyTorch loop (stability.attach): exact attention logits on models from
outside the project (GPT-2 and Llama from transformers configs, a nanoGPT-style module by
hand and through SDPA) and on the project's own Transformer, the output and optimizer
signals against the project's definitions, the files, and the Trainer adapter."""
from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch
import torch.nn.functional as F

from stability import attach, sizes
from stability.attach import Monitor, attention_stats, count_params, observe_qk, resolve_groups
from stability.config import ModelConfig
from stability.model import Transformer, probe_stats
from stability.monitor import grad_stats, output_stats, update_stats

from byom_helpers import (SEQ, VOCAB, NanoGPT, batch, capture_inputs, causal, ref_gpt2_layer, ref_llama_layer,
                          tiny_gpt2, tiny_llama)

pytest.importorskip("transformers")  # in the dev extra; skipped only on a bare core install

RTOL = 1e-3  # the bound on |monitor - exact fp32 recompute| / |exact|


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def one_step(model, mon, x, loss_fn):
    """One monitored step; the optimizer has LR 0, so the weights the recompute reads after
    it are the ones the forward used."""
    opt = mon.optimizer
    with mon.step():
        loss = loss_fn(model, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return mon.rows[-1]


# ---- exact max logits on four kinds of model ---------------------------------------------

def test_gpt2_max_logit_exact(tmp_path):
    torch.manual_seed(0)
    model = tiny_gpt2(d=48, heads=4)
    with torch.no_grad():  # larger logits than at init, so a relative error means something
        for blk in model.transformer.h:
            blk.attn.c_attn.weight.mul_(20)  # GPT-2 initialises with std 0.02
    mon = Monitor(model, torch.optim.AdamW(model.parameters(), 0.0), tmp_path / "gpt2", every=1)
    store, handles = capture_inputs([b.attn for b in model.transformer.h])
    x = batch(1)
    row = one_step(model, mon, x, lambda m, x: m(input_ids=x, labels=x).loss)
    for h in handles:
        h.remove()
    refs = [ref_gpt2_layer(model.transformer.h[i].attn, args[0] if args else kw["hidden_states"])
            for i, args, kw in store]
    assert len(refs) == 2 and max(refs) > 5
    for i, ref in enumerate(refs):
        assert rel(row[f"attn_logit_l{i}"], ref) <= RTOL, (i, row[f"attn_logit_l{i}"], ref)
    assert row["max_attn_logit"] == max(row["attn_logit_l0"], row["attn_logit_l1"])
    # the output: the loss the model returns is the cross-entropy the monitor saw
    assert rel(row["loss"], float(model(input_ids=x, labels=x).loss.detach())) <= 1e-5
    assert math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0


def test_llama_max_logit_exact_after_rope_gqa_and_padding(tmp_path):
    """RoPE, grouped-query attention (4 query heads over 2 key heads) and a padding mask:
    the monitor sees what SDPA gets, so its maxima match a recompute after RoPE."""
    torch.manual_seed(1)
    model = tiny_llama(d=32, heads=4, kv_heads=2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(10)  # Llama initialises with std 0.02
            layer.self_attn.k_proj.weight.mul_(10)
    mon = Monitor(model, torch.optim.AdamW(model.parameters(), 0.0), tmp_path / "llama", every=1)
    x = batch(2)
    pad = torch.ones_like(x, dtype=torch.bool)
    pad[0, -5:] = False  # right padding in one sequence: its last 5 keys are masked
    store, handles = capture_inputs([layer.self_attn for layer in model.model.layers])
    labels = x.masked_fill(~pad, -100)
    row = one_step(model, mon, x, lambda m, x: m(input_ids=x, attention_mask=pad.long(), labels=labels).loss)
    for h in handles:
        h.remove()
    refs = []
    for i, args, kw in store:
        h = args[0] if args else kw["hidden_states"]
        cos, sin = kw["position_embeddings"] if "position_embeddings" in kw else args[1]
        refs.append(ref_llama_layer(model.model.layers[i].self_attn, h, cos, sin, key_valid=pad))
    assert len(refs) == 2
    for i, ref in enumerate(refs):
        assert rel(row[f"attn_logit_l{i}"], ref) <= RTOL, (i, row[f"attn_logit_l{i}"], ref)
    assert max(refs) > 5
    # every query row keeps an unmasked key (right padding): the entropy is a finite mean
    assert math.isfinite(row["attn_entropy_min"]) and row["attn_entropy_min"] > 0
    # gated MLP: mlp0 holds block 0's gate and up projections; k0 its key projection
    groups = resolve_groups(model, None)
    assert groups["mlp0"] == ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"]
    assert groups["k0"] == ["model.layers.0.self_attn.k_proj.weight"]
    assert all(math.isfinite(row[c]) for c in ("grad_rms_k0", "update_rms_k0", "grad_rms_mlp0"))


@pytest.mark.parametrize("flash", [False, True], ids=["by-hand-hook", "sdpa"])
def test_nanogpt_max_logit_exact(tmp_path, flash):
    torch.manual_seed(2)
    model = NanoGPT(d=32, heads=4, flash=flash)
    with torch.no_grad():
        for blk in model.transformer.h:
            blk.attn.c_attn.weight.mul_(5)
    mon = Monitor(model, torch.optim.AdamW(model.parameters(), 0.0), tmp_path / "nano", every=1)
    store, handles = capture_inputs([b.attn for b in model.transformer.h])
    x = batch(3)
    row = one_step(model, mon, x, lambda m, x: m(x[:, :-1], x[:, 1:])[1])
    for h in handles:
        h.remove()
    refs = [ref_gpt2_layer(model.transformer.h[i].attn, args[0]) for i, args, _ in store]
    for i, ref in enumerate(refs):
        assert rel(row[f"attn_logit_l{i}"], ref) <= RTOL, (i, row[f"attn_logit_l{i}"], ref)
    # by hand the hook sees logits, not q and k: their RMS is unknown, not made up
    assert math.isnan(row["q_rms_l0"]) != flash
    # tied head: not counted; non-embedding = blocks + final LayerNorm
    total, non_emb = count_params(model)
    assert non_emb == total - VOCAB * 32 - SEQ * 32


def test_project_transformer_matches_its_own_probe_and_monitor(tmp_path):
    """On the project's model every shared column equals what the project's own code
    computes in the same step: its probe pass (exact fp32 logits), output_stats,
    grad_stats before clipping, update_stats after the step; and its size counts."""
    torch.manual_seed(3)
    cfg = ModelConfig(d_model=32, n_layers=2, head_dim=16, qk_layernorm="none")
    model = Transformer(cfg, VOCAB, SEQ)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    mon = Monitor(model, opt, tmp_path / "proj", every=2)
    assert mon.card["non_embedding_params"] == sizes.non_embedding_params(cfg)
    assert mon.card["params"] == sizes.n_params(cfg, VOCAB)
    checked = 0
    for step in range(1, 6):
        x = batch(step)
        with mon.step(step) as logging:
            logits, probes = model(x, probe=True)
            st = output_stats(logits, x)
            mon.observe_output(logits, x)
            st["ce"].backward()
            ref_grads = grad_stats(model)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)  # the monitor reads before clipping
            opt.step()
            ref_updates = update_stats(model, opt)
            opt.zero_grad(set_to_none=True)
        if not logging:
            continue
        row = mon.rows[-1]
        checked += 1
        for i, p in enumerate(probes):
            assert rel(row[f"attn_logit_l{i}"], float(p.max_logit)) <= 1e-6
        assert rel(row["attn_entropy_min"], min(float(p.entropy) for p in probes)) <= 1e-5
        for k in ("loss", "z_loss", "logz_mean", "output_logit_mean"):
            assert rel(row[k], float(st[k if k != "loss" else "ce"].detach())) <= 1e-5, k
        for k, v in {**ref_grads, **ref_updates}.items():
            assert rel(row[k], v) <= 1e-5, (k, row[k], v)
    assert checked == 3  # steps 1 (the first), 2 and 4


# ---- attention_stats itself --------------------------------------------------------------

def _brute(q, k, scale, allowed, bias=None):
    z = (q.double() @ k.double().transpose(-2, -1)) * scale
    if bias is not None:
        z = z + bias.double()
    z = z.masked_fill(~allowed, float("-inf"))
    p = z.softmax(-1)
    ok = allowed.any(-1).expand(z.shape[:-1])
    ent = torch.special.entr(p).sum(-1)[ok].mean()
    return float(z.amax()), float(ent)


def test_attention_stats_masks_gqa_and_chunks(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 6, 8, generator=g) * 3, torch.randn(2, 2, 9, 8, generator=g) * 3
    kk = k.repeat_interleave(2, dim=1)
    s = 0.3
    # is_causal with L != S: aligned top-left, as torch's SDPA
    top_left = torch.ones(6, 9, dtype=torch.bool).tril()
    # boolean mask, per batch: second sequence's last 3 keys masked
    bmask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    bmask[1, ..., -3:] = False
    # float mask: a bias (ALiBi-like) plus Hugging Face's finfo.min for masked keys
    bias = -0.5 * torch.arange(9.0).expand(6, 9).clone()
    fmask = bias.masked_fill(~top_left, torch.finfo(torch.float32).min)
    cases = [
        (dict(is_causal=True), top_left, None),
        (dict(attn_mask=bmask), bmask, None),
        (dict(attn_mask=bmask, is_causal=True), bmask & top_left, None),
        (dict(attn_mask=fmask), top_left, bias),
    ]
    for chunk in (attach._CHUNK, 40):  # 40 logits per chunk: one head's rows at a time
        monkeypatch.setattr(attach, "_CHUNK", chunk)
        for kw, allowed, b in cases:
            st = attention_stats(q, k, scale=s, enable_gqa=True, **kw)
            mx, ent = _brute(q, kk, s, allowed, b)
            assert rel(float(st.max_logit), mx) <= 1e-6, kw
            assert rel(float(st.entropy), ent) <= 1e-5, kw
    # default scale 1/sqrt(E), and the project's probe on the same q, k
    ref = probe_stats(q, kk[..., :6, :], 8 ** -0.5)
    st = attention_stats(q, kk[..., :6, :], is_causal=True)
    assert rel(float(st.max_logit), float(ref.max_logit)) <= 1e-6
    assert rel(float(st.entropy), float(ref.entropy)) <= 1e-6
    with pytest.raises(ValueError, match="multiple"):
        attention_stats(q, torch.randn(2, 3, 9, 8))


def test_observe_qk_and_bf16_inputs(tmp_path):
    """observe_qk records a layer beside a kernel the monitor does not see; bf16 q and k
    are upcast, so the logged value is the exact fp32 logit of the bf16 inputs."""
    torch.manual_seed(4)
    lin = torch.nn.Linear(8, 8)
    mon = Monitor(lin, None, tmp_path / "qk", every=1)
    q, k = (torch.randn(1, 2, 5, 4) * 4).bfloat16(), (torch.randn(1, 2, 5, 4) * 4).bfloat16()
    observe_qk(q, k)  # outside a step: nothing
    with mon.step(1):
        observe_qk(q, k, is_causal=True)
        lin(torch.randn(3, 8)).sum().backward()
    row = mon.rows[-1]
    exact = _brute(q.float(), k.float(), 0.5, causal(5))[0]
    assert rel(row["attn_logit_l0"], exact) <= 1e-6
    assert math.isnan(row["update_rms"]) and math.isnan(row["loss"])  # no optimizer, no output seen


# ---- loop behaviour and files ------------------------------------------------------------

def test_grad_accumulation_and_checkpointing_count_once(tmp_path):
    """Two micro-batches per step: the gradient read is the accumulated one (the hook fires
    per micro-batch, the last wins), the layers are numbered per forward pass, and an
    activation-checkpointing recompute in backward adds no layer."""
    torch.manual_seed(5)
    model = tiny_gpt2(d=32)
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = Monitor(model, opt, tmp_path / "acc", every=1)
    with mon.step(1):
        for mb in (batch(1, B=4), batch(2, B=4)):
            (model(input_ids=mb, labels=mb).loss / 2).backward()
        total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))
        opt.step()
    row = mon.rows[-1]
    assert rel(row["grad_norm"], total) <= 1e-5
    assert sorted(k for k in row if k.startswith("attn_logit_l")) == ["attn_logit_l0", "attn_logit_l1"]
    assert math.isnan(row["update_rms"])  # SGD has no Adam moments: NaN, not a made-up number
    assert row["tokens"] == 2 * 4 * (SEQ - 1)  # the targets the cross-entropy saw


def test_files_card_summary_and_columns(tmp_path, repo_root):
    from byom_helpers import train_hf
    out = tmp_path / "run"
    mon = train_hf(tiny_gpt2(d=32), out, steps=12, lr=1e-2, every=5, data="counting", seed=7)
    df = pl.read_parquet(out / "metrics.parquet")
    assert df["step"].to_list() == [1, 5, 10]
    card = json.loads((out / "run_card.json").read_text())
    assert card["format"] == attach.CARD_FORMAT and card["data"] == "counting" and card["peak_lr"] == 1e-2
    assert card["non_embedding_params"] == count_params(mon.model)[1] < card["params"]
    assert card["groups"]["k0"]["matched"] == []  # GPT-2's fused qkv: no key matrix of its own
    summary = json.loads((out / "summary.json").read_text())
    assert summary["init_loss"] == pytest.approx(df["loss"][0]) and summary["steps_completed"] == 10
    assert summary["max_attn_logit"] == pytest.approx(df["max_attn_logit"].max())
    assert summary["config"]["optim.lr"] == 1e-2 and summary["diverged"] is False
    # every per-step column of the project's runs that a monitored run can have (docs/metrics.md)
    documented = {"step", "tokens", "lr", "loss", "z_loss", "logz_mean", "output_logit_mean", "attn_logit_l0",
                  "max_attn_logit", "attn_entropy_min", "q_rms_l0", "k_rms_l0", "grad_norm", "grad_rms",
                  "grad_rms_mlp0", "grad_rms_k0", "update_rms", "update_rms_mlp0", "update_rms_k0", "param_rms",
                  "val_loss", "tokens_per_s"}
    doc = (repo_root / "docs" / "metrics.md").read_text()
    assert all(f"`{c}`" in doc or c == "attn_logit_l0" for c in documented)
    assert documented <= set(df.columns)
    assert df["loss"][-1] < df["loss"][0]  # it learned: the monitor does not disturb training
    # an occupied folder is refused unless asked
    with pytest.raises(FileExistsError, match="overwrite=True"):
        Monitor(mon.model, None, out)
    resumed = Monitor(mon.model, None, out, resume=True)
    assert [r["step"] for r in resumed.rows] == [1, 5, 10]
    with resumed.step(6):
        pass
    # redone steps replace the old rows; the first step after resuming is logged
    assert [r["step"] for r in resumed.rows] == [1, 5, 6]
    resumed.close()


def test_bad_arguments(tmp_path):
    model = NanoGPT()
    with pytest.raises(ValueError, match="matches no matrix"):
        Monitor(model, None, tmp_path / "a", groups={"qkv": r"nothing_like_this"})
    with pytest.raises(ValueError, match="every"):
        Monitor(model, None, tmp_path / "b", every=0)
    mon = Monitor(model, None, tmp_path / "c", groups={"qkv": r"c_attn\.weight$"})
    assert list(mon.groups) == ["qkv"] and len(mon.groups["qkv"]) == 2
    mon.begin_step(1)
    with pytest.raises(RuntimeError, match="not ended"):
        mon.begin_step(2)
    mon.end_step()
    with pytest.raises(RuntimeError, match="no open step"):
        mon.end_step()
    mon.close()


def test_exception_inside_a_step_leaves_nothing_hooked(tmp_path):
    model = NanoGPT(flash=True)
    mon = Monitor(model, None, tmp_path / "e", every=1)
    with pytest.raises(ZeroDivisionError):
        with mon.step(1):
            model(batch(1)[:, :SEQ])
            1 / 0
    assert mon.rows == [] and attach._ACTIVE == []
    q = torch.randn(1, 1, 4, 4)
    F.scaled_dot_product_attention(q, q, q)  # no mode left on the stack
    mon.close()


# ---- Hugging Face Trainer ----------------------------------------------------------------

def test_trainer_callback(tmp_path):
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    from stability.attach_hf import MonitorCallback

    torch.manual_seed(6)
    model = tiny_gpt2(d=32)
    data = [{"input_ids": x, "labels": x} for x in batch(0, B=48)]
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=6, per_device_train_batch_size=8,
                             learning_rate=3e-3, logging_steps=2, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True, max_grad_norm=0.5, dataloader_num_workers=0)
    cb = MonitorCallback(tmp_path / "mon", every=2, data="counting")
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
    trainer.train()
    df = pl.read_parquet(tmp_path / "mon" / "metrics.parquet")
    assert df["step"].to_list() == [1, 2, 4, 6]
    assert df["max_attn_logit"].is_finite().all() and df["update_rms"].is_finite().all()
    # the Trainer's own grad_norm (before clipping) at its logging steps equals ours
    theirs = {h["step"]: h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h}
    ours = dict(zip(df["step"].to_list(), df["grad_norm"].to_list()))
    assert set(theirs) == {2, 4, 6}
    for s, g in theirs.items():
        assert rel(ours[s], float(g)) <= 1e-4, (s, ours[s], g)
    card = json.loads((tmp_path / "mon" / "run_card.json").read_text())
    assert card["peak_lr"] == 3e-3 and card["seed"] == args.seed
    assert (tmp_path / "mon" / "summary.json").is_file()


# ---- docs/monitor.md ---------------------------------------------------------------------

def test_monitor_doc_example_runs_as_written(repo_root, tmp_path, monkeypatch, capsys):
    """docs/monitor.md's first python block, as it stands: a tiny model, 100 steps, the
    monitor attached, writing into ./monitor-demo/; then the files the page describes."""
    import re as re_mod
    text = (repo_root / "docs" / "monitor.md").read_text()
    code = re_mod.search(r"```python\n(.*?)```", text, re_mod.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/monitor.md", "exec"), {"__name__": "__doc_example__"})
    printed = capsys.readouterr().out
    m = re_mod.search(r"max attention logit (\S+), loss (\S+) -> (\S+)", printed)
    assert m and float(m.group(3)) < float(m.group(2))
    demo = tmp_path / "monitor-demo"
    df = pl.read_parquet(demo / "metrics.parquet")
    assert df["step"].to_list() == [1] + list(range(10, 101, 10))
    assert df["attn_logit_l1"].is_finite().all() and df["update_rms_mlp0"].is_finite().all()
    summary = json.loads((demo / "summary.json").read_text())
    assert f"{summary['max_attn_logit']:.2f}" == m.group(1)
    card = json.loads((demo / "run_card.json").read_text())
    assert card["groups"]["mlp0"]["matched"] == ["blocks.0.mlp.fc1.weight"]


def test_public_names_are_lazy():
    import subprocess
    import sys

    import stability
    from helpers import child_env
    assert stability.Monitor is Monitor and stability.observe_qk is observe_qk
    code = "import sys, stability; assert 'torch' not in sys.modules; print(stability.__version__)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=child_env())
    with pytest.raises(AttributeError):
        stability.NoSuchThing


def test_run_summary_marks_divergence_and_reads_the_probe_step():
    """The project's divergence rule over a monitored run's rows: a non-finite loss diverges
    the run (no final loss); the probe value is the last logged at or before probe_step."""
    from stability.attach import run_summary
    card = {"name": "r", "every": 10, "peak_lr": 0.1, "data": "d", "params": 10, "non_embedding_params": 5}
    rows = [{"step": s, "loss": loss, "grad_norm": 1.0, "max_attn_logit": logit}
            for s, loss, logit in ((1, 4.0, 1.0), (10, 3.0, 5.0), (20, 2.5, 50.0), (30, float("nan"), None))]
    s = run_summary(rows, card, probe_step=25)
    assert s["diverged"] is True and s["diverged_step"] == 30 and s["diverged_reason"] == "non-finite loss"
    assert s["init_loss"] == 4.0 and not math.isfinite(s["final_loss"] if s["final_loss"] is not None else math.nan)
    assert s["max_attn_logit_at_probe"] == 50.0 and s["max_attn_logit"] == 50.0
    ok = run_summary(rows[:3], card)
    assert ok["diverged"] is False and ok["probe_step"] == 20 and ok["final_loss"] == pytest.approx(2.5)
    assert ok["config"]["optim.lr"] == 0.1 and ok["config"]["train.probe_step"] == 20
    with pytest.raises(ValueError):
        run_summary([], card)
