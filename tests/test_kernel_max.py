"""Max logits from the attention kernel (stability.kernel_max), on CPU: where it is chosen and
refused, and its plumbing into the model, the metrics rows and the summary.

flex_attention returns max scores on CUDA only, so here a math stand-in replaces the kernel
call (`kernel_max.row_max_scores`: row i's max over j <= i of scale * <q_i, k_j>, fp32) and the
fp32 probe is the oracle. tests/test_gpu.py checks the real kernel against the probe on CUDA.
"""
from __future__ import annotations

import pytest
import torch

from helpers import tiny
from stability import config as C
from stability import kernel_max
from stability import train as train_mod
from stability.cli import main
from stability.config import ModelConfig
from stability.model import MAX_ONLY, Transformer, causal_mask

pl = pytest.importorskip("polars")


def math_row_max(q, k, v, scale):
    """What flex_attention's max_scores hold, from the math: (B, H, T) fp32."""
    z = (q.float() @ k.float().transpose(-2, -1)) * scale
    return z.masked_fill(~causal_mask(q.shape[-2], q.device), float("-inf")).amax(-1)


@pytest.fixture
def stand_in(monkeypatch):
    """The kernel replaced by the math above and reported supported; the inputs it saw."""
    seen = []

    def fake(q, k, v, scale):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled(q.device.type), torch.is_grad_enabled()))
        return math_row_max(q, k, v, scale)

    monkeypatch.setattr(kernel_max, "row_max_scores", fake)
    monkeypatch.setattr(kernel_max, "unsupported", lambda device: None)
    return seen


# ---- where it is chosen and refused ------------------------------------------------------------

def test_the_kernel_is_refused_on_cpu_and_auto_falls_back_to_the_probe():
    reason = kernel_max.unsupported(torch.device("cpu"))
    assert reason is not None and "CUDA only" in reason
    assert kernel_max.resolve(C.load(), torch.device("cpu")) == "probe"
    with pytest.raises(C.ConfigError) as e:
        kernel_max.resolve(C.load(overrides=["train.max_logit_source=kernel"]), torch.device("cpu"))
    msg = str(e.value)
    assert msg.startswith("train.max_logit_source: 'kernel' needs") and "CUDA only" in msg and "\n" not in msg


def test_torch_itself_refuses_max_scores_on_cpu():
    # The fact the CPU fallback rests on: if a later torch returns them on CPU, use it there too.
    if kernel_max.aux_request() is None:
        pytest.skip(f"torch {torch.__version__} has no AuxRequest")
    from torch.nn.attention.flex_attention import flex_attention
    q = torch.randn(1, 1, 16, 8)
    with pytest.raises(NotImplementedError, match="max scores"):
        flex_attention(q, q, q, return_aux=kernel_max.aux_request()(max_scores=True))


def test_a_torch_without_aux_request_is_unsupported_and_auto_uses_the_probe(monkeypatch):
    monkeypatch.setattr(kernel_max, "aux_request", lambda: None)
    reason = kernel_max.unsupported(torch.device("cuda"))  # asked before any CUDA call
    assert "has no flex_attention AuxRequest" in reason
    assert kernel_max.resolve(C.load(), torch.device("cuda")) == "probe"


def test_an_explicit_kernel_on_cpu_exits_2_in_one_line_before_compute(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train", "--out", str(out), "--set", "train.max_logit_source=kernel", "--set", "train.device=cpu",
            "--set", f"data.cache_dir={tmp_path / 'data'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train.max_logit_source: 'kernel' needs" in err and "Traceback" not in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "data").exists()  # no data made, nothing written


@pytest.mark.parametrize("value", ["fast", "Kernel", "1"])
def test_a_bad_value_names_the_field_and_what_was_expected(value):
    with pytest.raises(C.ConfigError) as e:
        C.load(overrides=[f"train.max_logit_source={value}"])
    assert str(e.value).startswith("train.max_logit_source: expected one of 'auto', 'probe', 'kernel'")


def test_kernel_is_refused_where_an_intervention_changes_the_logits():
    with pytest.raises(C.ConfigError) as e:
        C.load(overrides=["train.max_logit_source=kernel", "model.attn_softcap=50"])
    assert str(e.value).startswith("train.max_logit_source: expected 'auto' or 'probe' while model.attn_softcap")
    # auto resolves to the probe there, even where the kernel could run
    capped = C.load(overrides=["model.attn_softcap=50"])
    assert kernel_max.resolve(capped, torch.device("cuda")) == "probe"


def test_auto_keeps_every_run_id_and_a_set_source_is_another_run():
    base = C.load()
    assert C.load(overrides=["train.max_logit_source=auto"]).run_id() == base.run_id()
    assert "max_logit_source" not in C.dump_yaml(C.load(overrides=["train.max_logit_source=auto"]))
    ids = {C.load(overrides=[f"train.max_logit_source={s}"]).run_id() for s in ("probe", "kernel")}
    assert len(ids) == 2 and base.run_id() not in ids


def test_a_fused_sweep_refuses_the_kernel():
    from stability.fused import check_fusable
    cfgs = [C.load(overrides=["train.max_logit_source=kernel", f"optim.lr={lr}"]) for lr in (1e-3, 1e-2)]
    with pytest.raises(C.ConfigError, match="^train.max_logit_source: 'kernel' is not supported in a fused sweep"):
        check_fusable(cfgs)


# ---- the plumbing, with the math stand-in --------------------------------------------------

@pytest.mark.parametrize("qk_layernorm", ["none", "per_head"])
@pytest.mark.parametrize("bf16", [False, True])
def test_max_only_pass_gives_the_probes_max_logits_and_the_same_forward(stand_in, monkeypatch, qk_layernorm, bf16):
    from stability import model as model_mod
    probe_saw, real = [], model_mod.probe_stats
    monkeypatch.setattr(model_mod, "probe_stats", lambda q, k, *a: probe_saw.append((q.dtype, k.dtype)) or real(q, k, *a))
    torch.manual_seed(0)
    m = Transformer(ModelConfig(d_model=32, n_layers=3, head_dim=8, qk_layernorm=qk_layernorm), 50, 24)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3)  # logits of tens, not O(1)
    x = torch.randint(0, 50, (2, 24))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        plain, none = m(x)
        out_max, kernel = m(x, probe=MAX_ONLY)
        out_probe, probe = m(x, probe=True)
    assert none is None and torch.equal(out_max, plain) and torch.equal(out_probe, plain)  # measured beside
    assert len(kernel) == 3 and all(p.entropy is None and p.q_rms is None for p in kernel)
    for got, want in zip(kernel, probe):
        assert got.max_logit.dtype == torch.float32
        assert float(got.max_logit) == pytest.approx(float(want.max_logit), rel=kernel_max.KERNEL_VS_PROBE_REL_TOL)
    assert max(float(p.max_logit) for p in probe) > 5
    # the kernel saw q and k in the dtype the probe reads them in, with autocast off and no grad
    assert [(q, k, q, False, False) for q, k in probe_saw] == stand_in
    assert len(stand_in) == 3
    if qk_layernorm == "none":  # q and k straight from the Linear: bf16 under autocast
        assert stand_in[0][0] == (torch.bfloat16 if bf16 else torch.float32)


def test_a_kernel_run_logs_max_logits_at_every_logged_step_and_trains_as_a_probe_run(stand_in, tmp_path):
    common = {"model.n_layers": 2, "model.qk_layernorm": "none", "optim.lr": 0.05, "train.steps": 40,
              "train.log_every": 5, "train.eval_every": 40, "train.stop_on_divergence": False}
    runs = {}
    for name, over in (("kernel", {"train.max_logit_source": "kernel", "train.probe_every": 20}),
                       ("sparse", {"train.max_logit_source": "probe", "train.probe_every": 20}),
                       ("oracle", {"train.max_logit_source": "probe"})):  # the fp32 probe at every logged step
        summary = train_mod.train(tiny(tmp_path, **common, **over), tmp_path / name, quiet=True)
        runs[name] = (pl.read_parquet(tmp_path / name / "metrics.parquet"), summary)
    (k, ks), (s, _), (o, os_) = runs["kernel"], runs["sparse"], runs["oracle"]
    assert ks["max_logit_source"] == "kernel" and os_["max_logit_source"] == "probe"
    logged = [step for step in k["step"].to_list() if step > 0]
    assert len(stand_in) == 2 * sum(step % 20 != 0 for step in logged)  # two layers on each non-probe logging step
    # The kernel is measured beside the attention: the run trains exactly as the probe runs do.
    assert k["loss"].to_list() == s["loss"].to_list() == o["loss"].to_list()
    # A max logit at every logged step, equal to the probe's; entropy and q/k RMS on probe steps only.
    for col in ("max_attn_logit", "attn_logit_l0", "attn_logit_l1"):
        assert k[col].null_count() == 0
        for got, want in zip(k[col].to_list(), o[col].to_list()):
            assert got == pytest.approx(want, rel=kernel_max.KERNEL_VS_PROBE_REL_TOL)
    probed = k.filter(pl.col("attn_entropy_min").is_not_null())["step"].to_list()
    assert probed == [0, 20, 40]
    assert s["max_attn_logit"].null_count() == len(logged) + 1 - 3  # the sparse probe run: probe steps only
    assert max(k["max_attn_logit"].to_list()) > 2 * k["max_attn_logit"][0]  # large logits compared too


def test_auto_on_cpu_writes_what_it_wrote_before(tmp_path):
    # the default config on CPU: probe at every logged step, the summary says so
    summary = train_mod.train(tiny(tmp_path, **{"train.steps": 10, "train.eval_every": 10}), tmp_path / "r", quiet=True)
    rows = pl.read_parquet(tmp_path / "r" / "metrics.parquet")
    assert summary["max_logit_source"] == "probe"
    assert rows["attn_entropy_min"].null_count() == 0 and rows["max_attn_logit"].null_count() == 0


def test_a_block_seam_passes_the_max_only_pass_on(stand_in):
    # OLMo 2's reordered block replaces Block.forward and hands `probe` to the attention unchanged
    torch.manual_seed(0)
    cfg = C.load(overrides={"model.d_model": 32, "model.n_layers": 2, "model.head_dim": 8,
                            "model.norm_order": "reordered"}).model
    m = Transformer(cfg, 50, 16)
    x = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        _, kernel = m(x, probe=MAX_ONLY)
        _, probe = m(x, probe=True)
    assert len(stand_in) == 2
    assert [float(p.max_logit) for p in kernel] == pytest.approx([float(p.max_logit) for p in probe], rel=1e-6)
