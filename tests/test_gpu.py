"""What the CUDA path must prove: bf16 runs log exact fp32 max attention logits, the attention
kernel's max scores (stability.kernel_max) equal the fp32 probe's max logits, and a CUDA run
resumes from its checkpoint with the same metrics (within two uninterrupted runs' spread).

Every test is marked `gpu` and skips with a reason where torch sees no CUDA device.
`STABILITY_GPU_TESTS_ON_CPU=1` runs the same checks on CPU under bf16 autocast at smaller
sizes (CPU autocast applies the same casting rules), to check the tests themselves on a
machine without a GPU; it proves nothing about CUDA kernels. scripts/gpu-check.sh runs this
file and copies the numbers each test records (`record_property`) into its summary.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

pl = pytest.importorskip("polars", reason="stability.train writes metrics with polars")

from helpers import crash_at, tiny  # noqa: E402
from stability import data as data_mod  # noqa: E402
from stability import kernel_max  # noqa: E402
from stability import model as model_mod  # noqa: E402
from stability import train as train_mod  # noqa: E402
from stability.model import MAX_ONLY, Transformer  # noqa: E402
from stability.monitor import output_stats  # noqa: E402

pytestmark = pytest.mark.gpu

# bf16 keeps 8 significant bits (unit roundoff 2^-8 = 0.39%). A bf16 forward rounds the
# output of every Linear, so q and k, and hence the logits, differ from an fp32 forward of
# the same weights by a few roundoffs: at most 0.4% measured on CPU bf16 autocast at both
# test sizes (logits growing to ~780). 2% leaves a 5x margin and still fails a probe that
# measures something else (another layer, no causal mask, a wrong scale, weights tens of
# updates away); the probe's own precision is held to 1e-5 by the float64 test.
BF16_VS_FP32_REL_TOL = 0.02
# The probe itself is fp32 (autocast off): against a float64 recompute from the same q and
# k only fp32 rounding of a head_dim-term dot product remains (~1e-7 relative). TF32 or
# bf16 matmuls would show as ~1e-3 and fail this.
PROBE_VS_FLOAT64_REL_TOL = 1e-5
# CUDA's fused attention and embedding backward kernels accumulate with atomics, so two
# identical CUDA runs can differ in the last bits; a resume that lost optimizer state or
# the detector would differ by far more (Adam's first step after a reset is ~sign(g)).
RESUME_REL_TOL = 1e-2
# Where two uninterrupted runs already differ (nondeterministic kernels, amplified by logit
# growth), the resumed run is one more draw of the same process: it may differ from the first
# run by a few times what the second does (3x: a max over steps of one pair is a noisy spread).
RESUME_SPREAD_FACTOR = 3.0


def _max_rel_diff(a, b) -> tuple[float, str | None]:
    """Largest |a - b| / max(|a|, 1e-6) over every cell of two metrics tables (same columns and
    steps; a null must face a null), and its column."""
    assert a.columns == b.columns and a["step"].to_list() == b["step"].to_list()
    worst, worst_col = 0.0, None
    for col in a.columns:
        for u, v in zip(a[col].to_list(), b[col].to_list()):
            if u is None or v is None:
                assert u is None and v is None, col
                continue
            err = abs(u - v) / max(abs(u), 1e-6)
            if err > worst:
                worst, worst_col = err, col
    return worst, worst_col


@pytest.fixture
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("STABILITY_GPU_TESTS_ON_CPU") == "1":
        return torch.device("cpu")
    pytest.skip("needs CUDA: torch.cuda.is_available() is False "
                "(STABILITY_GPU_TESTS_ON_CPU=1 runs these checks on CPU bf16 autocast)")


def run_cfg(tmp_path, device: torch.device, **over):
    """A run big enough on CUDA for bf16 rounding and logit growth to show (d=256, 4 layers,
    256 tokens), the TINY-sized one on CPU; bf16 autocast on either device."""
    size = ({"model.d_model": 256, "model.n_layers": 4, "model.head_dim": 64, "train.seq_len": 256,
             "train.batch_size": 32, "train.steps": 50, "train.log_every": 10, "data.n_train_tokens": 400_000,
             "data.n_val_tokens": 20_000, "optim.warmup_steps": 10}
            if device.type == "cuda" else
            {"model.d_model": 64, "model.n_layers": 2, "model.head_dim": 32, "train.seq_len": 64,
             "train.batch_size": 8, "train.steps": 60, "train.log_every": 10, "optim.warmup_steps": 10})
    return tiny(tmp_path, **{**size, "train.device": device.type, "train.precision": "bf16",
                             "train.threads": 0, **over})


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.mark.parametrize("qk_layernorm,softcap", [("none", 0.0), ("per_head", 0.0), ("none", 2.0)],
                         ids=["none", "per_head", "none-softcap"])
def test_probe_logits_are_exact_fp32_under_bf16_autocast(device, tmp_path, monkeypatch, record_property, qk_layernorm,
                                                         softcap):
    # with model.attn_softcap the probe logs what the softmax saw, c tanh(z / c), and the raw z
    cfg = run_cfg(tmp_path, device, **{"model.qk_layernorm": qk_layernorm, "model.attn_softcap": softcap})
    tokens = data_mod.load(cfg)
    torch.manual_seed(0)
    model = Transformer(cfg.model, tokens.vocab_size, cfg.train.seq_len).to(device)
    seen = []
    real = model_mod.probe_stats

    def spy(q, k, scale, *seam):
        stats = real(q, k, scale, *seam)
        seen.append((q, k, scale, stats))
        return stats

    monkeypatch.setattr(model_mod, "probe_stats", spy)
    x, y = data_mod.train_batch(tokens, 1, cfg.train.batch_size, cfg.train.seq_len, cfg.seed)
    with torch.no_grad(), train_mod.autocast_for(cfg, device):
        logits, probes = model(x.to(device), probe=True)
        st = output_stats(logits, y.to(device))
    assert logits.dtype == torch.bfloat16  # autocast was on: the head ran in bf16
    assert st["ce"].dtype == torch.float32  # the loss is fp32 all the same
    assert len(seen) == cfg.model.n_layers
    worst = 0.0
    for q, k, scale, stats in seen:
        if qk_layernorm == "none":
            assert q.dtype == torch.bfloat16  # the probe sees the bf16 q the kernel sees
        T = q.shape[-2]
        z = (q.double() @ k.double().transpose(-2, -1)) * scale
        future = ~torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        if softcap:
            assert _rel(float(stats.max_logit_raw), float(z.masked_fill(future, float("-inf")).amax())) <= PROBE_VS_FLOAT64_REL_TOL
            z = softcap * torch.tanh(z / softcap)  # capped before the mask, as the model does
        z = z.masked_fill(future, float("-inf"))
        ref_max = float(z.amax())
        ref_entropy = float(torch.special.entr(z.softmax(-1)).sum(-1).mean())
        assert stats.max_logit.dtype == torch.float32
        worst = max(worst, _rel(float(stats.max_logit), ref_max))
        assert float(stats.entropy) == pytest.approx(ref_entropy, rel=1e-4)
    record_property("probe_vs_float64_max_rel_err", worst)
    record_property("tolerance", PROBE_VS_FLOAT64_REL_TOL)
    assert worst <= PROBE_VS_FLOAT64_REL_TOL


@pytest.mark.parametrize("qk_layernorm", ["none", "per_head"])
def test_bf16_run_logs_max_logits_that_match_an_fp32_recompute(device, tmp_path, monkeypatch, record_property,
                                                              qk_layernorm):
    # A high LR without qk-layernorm makes the logits grow (finding 1), so the comparison
    # covers large logits, not only the O(1) ones at initialisation.
    cfg = run_cfg(tmp_path, device, **{"model.qk_layernorm": qk_layernorm, "optim.lr": 0.03,
                                       "train.stop_on_divergence": False})
    snapshots = {}
    real = train_mod.train_step

    def spy(model, forward, optimizer, cfg_, dev, x, y, step, log_now, probe_now):
        if probe_now:  # the weights and batch this step's probe sees
            snapshots[step] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, x.clone())
        return real(model, forward, optimizer, cfg_, dev, x, y, step, log_now, probe_now)

    monkeypatch.setattr(train_mod, "train_step", spy)
    summary = train_mod.train(cfg, tmp_path / "run", quiet=True)
    rows = {r["step"]: r for r in pl.read_parquet(tmp_path / "run" / "metrics.parquet").iter_rows(named=True)}
    assert sorted(snapshots) == [s for s in sorted(rows) if s > 0]  # every logged step probed
    if device.type == "cuda":
        assert summary["device"] == torch.cuda.get_device_name()

    fp32 = Transformer(cfg.model, data_mod.load(cfg).vocab_size, cfg.train.seq_len).to(device)
    errors, logged_max = [], []
    for step, (state, x) in sorted(snapshots.items()):
        fp32.load_state_dict(state)
        with torch.no_grad():  # no autocast: every matmul in fp32
            _, probes = fp32(x.to(device), probe=True)
        for i, p in enumerate(probes):
            logged = rows[step][f"attn_logit_l{i}"]
            assert math.isfinite(logged), (step, i)
            errors.append(_rel(logged, float(p.max_logit)))
        logged_max.append(rows[step]["max_attn_logit"])
    worst = max(errors)
    record_property("bf16_vs_fp32_max_rel_err", worst)
    record_property("bf16_vs_fp32_median_rel_err", sorted(errors)[len(errors) // 2])
    record_property("tolerance", BF16_VS_FP32_REL_TOL)
    record_property("max_attn_logit_first_logged", logged_max[0])
    record_property("max_attn_logit_last_logged", logged_max[-1])
    record_property("steps_compared", len(snapshots))
    assert worst <= BF16_VS_FP32_REL_TOL
    if qk_layernorm == "none":  # the logits did grow: large ones were compared, not only O(1) ones
        assert logged_max[-1] >= 2 * logged_max[0]


def test_run_resumes_from_its_checkpoint_with_the_same_metrics(device, tmp_path, record_property):
    cfg = run_cfg(tmp_path, device, **{"train.steps": 60, "train.log_every": 5, "train.checkpoint_every": 20})
    full = train_mod.train(cfg, tmp_path / "full", quiet=True)
    with crash_at(45), pytest.raises(RuntimeError, match="simulated crash"):
        train_mod.train(cfg, tmp_path / "resumed", quiet=True)
    resumed = train_mod.train(cfg, tmp_path / "resumed", quiet=True)
    assert resumed["resumed_from_step"] == 40
    assert resumed["diverged"] == full["diverged"]

    train_mod.train(cfg, tmp_path / "again", quiet=True)  # the run-to-run spread, uninterrupted

    def metrics(name):
        return pl.read_parquet(tmp_path / name / "metrics.parquet").drop("tokens_per_s")
    a, b = metrics("full"), metrics("resumed")
    worst, worst_col = _max_rel_diff(a, b)
    spread, spread_col = _max_rel_diff(a, metrics("again"))
    tolerance = max(RESUME_REL_TOL, RESUME_SPREAD_FACTOR * spread)
    record_property("bitwise_equal", a.equals(b))
    record_property("max_rel_diff", worst)
    record_property("max_rel_diff_column", worst_col)
    record_property("uninterrupted_spread", spread)
    record_property("uninterrupted_spread_column", spread_col)
    record_property("tolerance", tolerance)
    assert worst <= tolerance, (worst_col, worst, spread)


def _kernel_or_skip(device: torch.device) -> None:
    reason = kernel_max.unsupported(device)
    if reason is not None:  # on CPU (STABILITY_GPU_TESTS_ON_CPU=1) or a torch without AuxRequest
        pytest.skip(f"no kernel max scores here: {reason}")


@pytest.mark.parametrize("precision,qk_layernorm", [("bf16", "none"), ("bf16", "per_head"), ("fp32", "none")])
def test_kernel_max_scores_equal_the_fp32_probe(device, tmp_path, record_property, precision, qk_layernorm):
    # The oracle: the fp32 probe of the same forward (same weights, batch and autocast). Weights
    # scaled x3 so the logits are tens, as in a run whose logits grew, not only O(1).
    _kernel_or_skip(device)
    cfg = run_cfg(tmp_path, device, **{"model.qk_layernorm": qk_layernorm, "train.precision": precision})
    tokens = data_mod.load(cfg)
    torch.manual_seed(0)
    model = Transformer(cfg.model, tokens.vocab_size, cfg.train.seq_len).to(device)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    x, _ = data_mod.train_batch(tokens, 1, cfg.train.batch_size, cfg.train.seq_len, cfg.seed)
    with torch.no_grad(), train_mod.autocast_for(cfg, device):
        plain, _ = model(x.to(device))
        out, kernel = model(x.to(device), probe=MAX_ONLY)
        _, probe = model(x.to(device), probe=True)
    errors = [_rel(float(k.max_logit), float(p.max_logit)) for k, p in zip(kernel, probe)]
    assert all(k.entropy is None for k in kernel) and len(errors) == cfg.model.n_layers
    record_property("kernel_vs_probe_max_rel_err", max(errors))
    record_property("tolerance", kernel_max.KERNEL_VS_PROBE_REL_TOL)
    record_property("max_attn_logit", max(float(p.max_logit) for p in probe))
    assert max(errors) <= kernel_max.KERNEL_VS_PROBE_REL_TOL
    assert torch.equal(out, plain)  # measured beside the attention: the forward is unchanged


def test_a_kernel_run_logs_every_steps_max_logit_as_the_probe_would(device, tmp_path, monkeypatch, record_property):
    # Max logits at every logged step from the kernel (probes every 25 steps only), each equal to
    # the fp32 probe recomputed from the step's weights and batch under the run's bf16 autocast.
    _kernel_or_skip(device)
    cfg = run_cfg(tmp_path, device, **{"model.qk_layernorm": "none", "optim.lr": 0.03, "train.log_every": 5,
                                       "train.probe_every": 25, "train.max_logit_source": "kernel",
                                       "train.stop_on_divergence": False})
    snapshots = {}
    real = train_mod.train_step

    def spy(model, forward, optimizer, cfg_, dev, x, y, step, log_now, probe_now):
        if probe_now == MAX_ONLY:
            snapshots[step] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, x.clone())
        return real(model, forward, optimizer, cfg_, dev, x, y, step, log_now, probe_now)

    monkeypatch.setattr(train_mod, "train_step", spy)
    summary = train_mod.train(cfg, tmp_path / "run", quiet=True)
    assert summary["max_logit_source"] == "kernel"
    rows = {r["step"]: r for r in pl.read_parquet(tmp_path / "run" / "metrics.parquet").iter_rows(named=True)}
    assert all(r["max_attn_logit"] is not None for r in rows.values())
    assert sorted(snapshots) == [s for s in sorted(rows) if s > 0 and s % 25]
    oracle = Transformer(cfg.model, data_mod.load(cfg).vocab_size, cfg.train.seq_len).to(device)
    errors = []
    for step, (state, x) in sorted(snapshots.items()):
        oracle.load_state_dict(state)
        with torch.no_grad(), train_mod.autocast_for(cfg, device):
            _, probes = oracle(x.to(device), probe=True)
        errors += [_rel(rows[step][f"attn_logit_l{i}"], float(p.max_logit)) for i, p in enumerate(probes)]
    record_property("kernel_run_vs_probe_max_rel_err", max(errors))
    record_property("tolerance", kernel_max.KERNEL_VS_PROBE_REL_TOL)
    record_property("steps_compared", len(snapshots))
    assert max(errors) <= kernel_max.KERNEL_VS_PROBE_REL_TOL
