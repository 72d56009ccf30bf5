"""A/B of three ideas for the d=128 project step that docs/performance.md reports as not adopted.

Each variant is the project's own train_step on the project model (d=128, 4 layers,
head_dim 32, batch 16 x 128, one thread, CPU clock), changed in one place:

* layout          per-head qk-LayerNorm and RoPE on the (B, T, H, hd) view, before the
                  transpose SDPA wants: no transposed copies of q and k.
* fused           layout + one (3d x d) q/k/v projection instead of three.
* *_compile       torch.compile of the model (inductor), compiled before timing.

Rounds alternate the variants; each figure is the median over 5 rounds of the middle of
3 steps. The loss after 3 steps is printed to show the variants compute the same thing.

    python benchmarks/step_variants.py base layout fused base_compile layout_compile
"""
import sys, time, types, torch, torch.nn as nn, torch.nn.functional as F
from pathlib import Path
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent)); sys.path.insert(0, str(HERE))
torch.set_num_threads(1)
import throughput as tp
from stability import model as M
from stability.train import train_step
from stability.optim import build_optimizer
from stability import data as data_mod

d, L, hd = 128, 4, 32
cfg = tp.make_cfg(d, L, hd, 1000, 0.01)
tokens = tp.bench_tokens()
torch.manual_seed(0)
init = M.Transformer(cfg.model, tp.VOCAB, 128).state_dict()

def _attend_bthd(self, q, k, v, cos, sin, probe):
    """per-head qk-LN and RoPE on (B, T, H, hd) views, then SDPA: no transposed copies."""
    B, T, H, hd = q.shape
    q, k = self.q_norm(q), self.k_norm(k)
    c = torch.complex(cos[:T], sin[:T]).unsqueeze(1)  # (T, 1, hd/2)
    q, k = (torch.view_as_real(torch.view_as_complex(t.unflatten(-1, (-1, 2))) * c).flatten(-2) for t in (q, k))
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    stats = M.probe_stats(q.detach(), k.detach(), self.scale) if probe else None
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
    return self.o_proj(y.transpose(1, 2).reshape(B, T, H * hd)), stats


def fwd_layout(self, x, cos, sin, probe=False):
    shape = (*x.shape[:2], self.n_heads, self.head_dim)
    return _attend_bthd(self, self.q_proj(x).view(shape), self.k_proj(x).view(shape), self.v_proj(x).view(shape),
                        cos, sin, probe)


def fused(self, x, cos, sin, probe=False):
    q, k, v = F.linear(x, self.qkv_w).view(*x.shape[:2], 3, self.n_heads, self.head_dim).unbind(2)
    return _attend_bthd(self, q, k, v, cos, sin, probe)


def build(kind):
    torch.manual_seed(0)
    m = M.Transformer(cfg.model, tp.VOCAB, 128); m.load_state_dict(init)
    if kind in ("layout", "layout_compile"):
        for b in m.blocks: b.attn.forward = types.MethodType(fwd_layout, b.attn)
    if kind == "fused":
        for b in m.blocks:
            a = b.attn
            a.qkv_w = nn.Parameter(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach().clone())
            del a.q_proj, a.k_proj, a.v_proj
            a.forward = types.MethodType(fused, a)
    opt = build_optimizer(m, cfg.optim)
    fwd = torch.compile(m) if "compile" in kind else m
    return m, fwd, opt

kinds = sys.argv[1:] or ["base", "layout", "fused"]
res = {}
built = {k: build(k) for k in kinds}
losses = {}
for k in kinds:  # warm up (and compile)
    m, fwd, opt = built[k]
    for i in range(1, 4):
        x, y = data_mod.train_batch(tokens, i, 16, 128, 0)
        ce, _ = train_step(m, fwd, opt, cfg, torch.device("cpu"), x, y, i, False, False)
    losses[k] = float(ce)
times = {k: [] for k in kinds}
step = 4
for r in range(5):
    for k in kinds:
        m, fwd, opt = built[k]
        ts = []
        for i in range(step, step + 3):
            x, y = data_mod.train_batch(tokens, i, 16, 128, 0)
            t0 = time.process_time()
            ce, _ = train_step(m, fwd, opt, cfg, torch.device("cpu"), x, y, i, False, False)
            ts.append(time.process_time() - t0)
        times[k].append(sorted(ts)[1])
    step += 3
base = sorted(times[kinds[0]])[2]
for k in kinds:
    med = sorted(times[k])[2]
    print(f"{k:16s} {med*1e3:7.1f} ms  x{base/med:.3f} vs {kinds[0]}  loss@3 {losses[k]:.6f}")
