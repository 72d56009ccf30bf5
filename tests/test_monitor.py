"""Tests for stability/monitor.py: probe groups resolved from the model, and the run summary."""
import math

import pytest
import torch

from stability.config import ModelConfig, load
from stability.model import Transformer
from stability.monitor import DivergenceDetector, grad_stats, probe_params, summarize


def model(n_layers: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(d_model=16, n_layers=n_layers, head_dim=8), vocab_size=20, max_seq_len=8)


def backward(m: Transformer) -> None:
    logits, _ = m(torch.randint(0, 20, (2, 8)))
    logits.float().pow(2).mean().backward()


def test_probe_groups_are_block_0s_first_mlp_matrix_and_key_projection():
    m = model(2)
    groups = probe_params(m)
    assert groups["mlp0"] is m.blocks[0].mlp.fc1.weight
    assert groups["k0"] is m.blocks[0].attn.k_proj.weight


def test_a_probe_group_the_model_lacks_is_an_error_naming_it():
    m = model(1)
    mlp = m.blocks[0].mlp
    mlp.fc_in = mlp.fc1  # a layer renamed in model.py without updating PROBE_GROUPS
    del mlp.fc1
    with pytest.raises(ValueError, match=r"PROBE_GROUPS\['mlp0'\].*blocks\.0\.mlp\.fc1\.weight"):
        grad_stats(m)


def test_a_zero_layer_model_has_no_probe_groups_so_their_columns_are_nan():
    m = model(0)
    assert probe_params(m) == {"mlp0": None, "k0": None}
    backward(m)
    row = grad_stats(m)
    assert math.isfinite(row["grad_rms"]) and row["grad_rms"] > 0
    assert math.isnan(row["grad_rms_mlp0"]) and math.isnan(row["grad_rms_k0"])


def test_summary_window_means_and_probe_step_by_hand():
    cfg = load(overrides={"train.steps": 20, "train.log_every": 5, "train.grad_stats_window": 10, "optim.warmup_steps": 5,
                          "train.probe_step": 12})
    nan = float("nan")
    rows = [  # step 0 is never in a window; step 20's NaN is skipped
        {"step": 0, "loss": 3.0, "z_loss": 100.0, "grad_rms_mlp0": None, "max_attn_logit": 1.0},
        {"step": 5, "loss": 2.9, "z_loss": 9.0, "grad_rms_mlp0": 1.0, "max_attn_logit": 2.0},
        {"step": 10, "loss": 2.8, "z_loss": 4.0, "grad_rms_mlp0": 2.0, "max_attn_logit": 7.0},
        {"step": 15, "loss": 2.7, "z_loss": 16.0, "grad_rms_mlp0": 3.0, "max_attn_logit": None},
        {"step": 20, "loss": nan, "z_loss": 36.0, "grad_rms_mlp0": nan, "max_attn_logit": nan},
    ]
    detector = DivergenceDetector(init_loss=3.0, margin=1.0, window=3)
    s = summarize(rows, cfg, detector, final_loss=nan)
    assert s["init_loss"] == 3.0 and s["final_loss"] is None and s["final_train_loss"] is None
    assert s["grad_rms_final"] == 3.0  # steps 15 and 20 are in (10, 20]; 20's NaN is dropped
    assert s["logz_rms_final"] == math.sqrt((16.0 + 36.0) / 2)
    assert s["max_attn_logit"] == 7.0  # the largest finite value logged
    assert s["max_attn_logit_at_probe"] == 7.0  # step 10, the last <= 12 with a value
    assert s["probe_step"] == 12 and s["diverged"] is False
    assert s["update_rms_final"] is None  # never logged
