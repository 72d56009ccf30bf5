"""A model from outside the project, trained on real text at several widths with the monitor
attached, then `stability analyse-runs` on the ladder (docs/monitor.md, "analyse-runs").

GPT-2 from a transformers config (no download; `pip install -e '.[hf]'`), byte-level tokens
of a local UTF-8 text file (e.g. the King James Bible, docs/real-text.md), AdamW with a
linear warm-up, one folder per (width, LR) under OUT/runs, the analysis in OUT/analysis.

    .venv/bin/python scripts/byom_ladder.py /tmp/kjv.txt results/byom-ladder \
        [--widths 32 64 128] [--lrs 0.003 0.03] [--steps 400] [--target 100M=1e8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stability.attach import Monitor  # noqa: E402
from stability.cli import main as cli  # noqa: E402


def gpt2(width: int, layers: int, seq: int):
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=width, n_head=max(width // 32, 2), vocab_size=256,
                                      n_positions=seq, bos_token_id=0, eos_token_id=0, attn_implementation="sdpa",
                                      loss_type="ForCausalLM", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def train_one(tokens: np.ndarray, out: Path, width: int, lr: float, a) -> float:
    torch.manual_seed(a.seed)
    model = gpt2(width, a.layers, a.seq)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warmup))
    mon = Monitor(model, opt, out, every=a.every, data=a.text.name, seed=a.seed, overwrite=True)
    rng = np.random.default_rng(a.seed)  # the same batches for every width and LR
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        starts = rng.integers(0, len(tokens) - a.seq - 1, a.batch)
        x = torch.from_numpy(np.stack([tokens[s:s + a.seq] for s in starts]).astype(np.int64))
        with mon.step(step):
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        sched.step()
    s = mon.close()
    print(f"{out.name}: {s['non_embedding_params']} non-embedding params, loss {s['init_loss']:.2f} -> "
          f"{s['final_loss']:.2f}, max attention logit {s['max_attn_logit']:.3g}, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("text", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 3e-2])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--target", default="100M=1e8")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    tokens = np.frombuffer(a.text.read_bytes(), dtype=np.uint8)
    dirs = []
    for width in a.widths:
        for lr in a.lrs:
            d = a.out / "runs" / f"gpt2-d{width}-lr{lr:g}"
            train_one(tokens, d, width, lr, a)
            dirs.append(str(d))
    return cli(["analyse-runs", *dirs, "--out", str(a.out / "analysis"), "--target", a.target])


if __name__ == "__main__":
    sys.exit(main())
