import pytest

from stability import config as C
from stability.cli import main


def test_defaults_are_valid_and_hash_is_stable():
    a, b = C.load(), C.load()
    assert a.run_id() == b.run_id() and len(a.run_id()) == 12


def test_overrides_parse_yaml_values():
    cfg = C.load(overrides=["optim.lr=1e-3", "model.qk_layernorm=none", "optim.independent_weight_decay=false"])
    assert cfg.optim.lr == 1e-3 and cfg.model.qk_layernorm == "none" and cfg.optim.independent_weight_decay is False


def test_run_id_changes_with_semantics_not_with_threads():
    base = C.load()
    assert C.load(overrides=["optim.lr=0.5"]).run_id() != base.run_id()
    assert C.load(overrides=["train.threads=4"]).run_id() == base.run_id()
    assert C.load(overrides=["code_version=2"]).run_id() != base.run_id()


@pytest.mark.parametrize("override, field", [
    ("model.head_dim=7", "model.head_dim"),
    ("model.d_model=0", "model.d_model"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=-1", "optim.lr"),
    ("train.steps=0", "train.steps"),
    ("optim.warmup_steps=100000", "optim.warmup_steps"),
    ("optim.eps=-1e-8", "optim.eps"),
    ("loss.z_loss=-1", "loss.z_loss"),
    ("model.qk_layernorm=sometimes", "model.qk_layernorm"),
    ("model.parametrization=ntk", "model.parametrization"),
    ("data.source=s3", "data.source"),
    ("optim.lrr=1", "optim.lrr"),
    ("model.d_model=abc", "model.d_model"),
    ("train.batch_size=2.5", "train.batch_size"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(C.ConfigError) as e:
        C.load(overrides=[override])
    assert str(e.value).startswith(field)


def test_cli_reports_bad_config_in_one_line_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {d_model: [1, 2\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "malformed YAML" in err and str(bad) in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()  # nothing computed, nothing written


def test_diff_from_defaults_round_trips():
    cfg = C.load(overrides=["optim.lr=0.3", "model.n_layers=4", "data.path=x.txt", "data.source=text"])
    again = C.load(overrides=[f"{k}={v}" for k, v in C.diff_from_defaults(cfg).items()])
    assert again.run_id() == cfg.run_id()
