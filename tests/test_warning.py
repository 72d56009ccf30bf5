"""Early warning and diagnosis (issue 16): features, the failure-mode rule, the predictor, the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from stability.cli import main
from stability.warning import examples as E
from stability.warning import features as F
from stability.warning import model as M

from helpers import tiny


def _metrics(n=31, every=10, logit=None, zloss=None, grad=None, loss=None):
    """A metrics table of n logged rows: flat healthy signals unless a function of the row index is given."""
    i = np.arange(n)
    return pl.DataFrame({
        "step": i * every,
        "loss": [float(loss(j)) if loss else 5.5 - 2.0 * j / n for j in i],
        "z_loss": [float(zloss(j)) if zloss else 30.0 for j in i],
        "max_attn_logit": [float(logit(j)) if logit else 5.0 + j for j in i],
        "attn_entropy_min": [1.0] * n,
        "grad_norm": [None] + [1.0] * (n - 1),
        "grad_rms_mlp0": [None] + [float(grad(j)) if grad else 1e-3 for j in i[1:]],
        "update_rms_mlp0": [None] + [0.3] * (n - 1),
    })


@pytest.mark.parametrize("kwargs, mode", [
    ({"logit": lambda j: 10.0 ** min(1 + j / 3, 6)}, "attention_logit_growth"),
    ({"zloss": lambda j: (math.sqrt(30.0) + 0.2 * j) ** 2}, "output_logit_divergence"),
    ({"grad": lambda j: 1e-9}, "epsilon_collapse"),
    ({}, "other"),
    # both logit signals fire, log Z first: the order, not the first crossing, decides
    ({"logit": lambda j: 10.0 ** min(j / 2, 6), "zloss": lambda j: (math.sqrt(30.0) + 3.0 * (j > 0)) ** 2},
     "attention_logit_growth"),
    # a plain blow-up: the loss leaves its initial value at row 3 and log Z jumps with it: a consequence
    ({"loss": lambda j: 5.5 - 0.1 * j if j < 3 else 12.0, "zloss": lambda j: (math.sqrt(30.0) + 5.0 * (j >= 3)) ** 2},
     "other"),
    # log Z drifts while the loss still improves, and the loss blows up later: the drift preceded it
    ({"loss": lambda j: 5.5 - 0.1 * j if j < 20 else 12.0, "zloss": lambda j: (math.sqrt(30.0) + 0.3 * j) ** 2},
     "output_logit_divergence"),
    # gradients sink below epsilon only once the loss has blown up (a saturated network): not the cause
    ({"loss": lambda j: 5.5 - 0.1 * j if j < 5 else 12.0, "grad": lambda j: 1e-9 if j >= 6 else 1e-3}, "other"),
    # attention logits crossing 1e4 one row after the loss excursion still count (not driven by the loss)
    ({"loss": lambda j: 5.5 if j < 1 else 11.0, "logit": lambda j: 10.0 ** min(1 + 2 * j, 6)},
     "attention_logit_growth"),
])
def test_failure_mode_rule(kwargs, mode):
    m = _metrics(**kwargs)
    assert F.failure_mode(m, eps=1e-8, failed=True) == mode
    assert F.failure_mode(m, eps=1e-8, failed=False) == "none"


def test_one_row_over_threshold_does_not_fire():
    """A single logged spike past 1e4 followed by a bounded logit is not sustained growth."""
    m = _metrics(logit=lambda j: 2e4 if j == 5 else 10.0)
    assert m.height > 6 and F.mechanisms(m, 1e-8)["attention_logit_growth"]["fired_at_step"] is None


def test_features_read_only_the_window():
    """Rows after the first K% of planned steps cannot change a feature or a baseline score."""
    calm = _metrics()
    wild = calm.with_columns(
        pl.when(pl.col("step") > 30).then(1e6).otherwise(pl.col("max_attn_logit")).alias("max_attn_logit"),
        pl.when(pl.col("step") > 30).then(float("nan")).otherwise(pl.col("loss")).alias("loss"))
    for k in (0.05, 0.1):
        a, b = F.features(calm, k, 300, 1e-8), F.features(wild, k, 300, 1e-8)
        assert a.keys() == set(F.FEATURES)
        assert all((math.isnan(a[f]) and math.isnan(b[f])) or a[f] == b[f] for f in F.FEATURES)
        assert F.baselines(calm, k, 300) == F.baselines(wild, k, 300)
    grown = F.features(wild, 0.2, 300, 1e-8)
    assert grown["attn_logit_log10"] == pytest.approx(6.0) and grown["loss_change"] == math.inf
    with pytest.raises(ValueError, match="fraction"):
        F.features(calm, 0.0, 300, 1e-8)


def test_features_are_scale_free():
    """Multiplying the logits, gradients and epsilon by constants leaves the growth features unchanged."""
    m = _metrics(logit=lambda j: 3.0 * 1.5 ** j)
    scaled = m.with_columns(pl.col("max_attn_logit") * 7, pl.col("grad_rms_mlp0") * 100, pl.col("grad_norm") * 100)
    a, b = F.features(m, 0.2, 300, 1e-8), F.features(scaled, 0.2, 300, 1e-6)
    for f in ("attn_logit_growth", "attn_logit_rate", "grad_spike", "grad_trend", "grad_eps_log10", "loss_change"):
        assert a[f] == pytest.approx(b[f]), f


def test_spike_baseline_sees_a_grad_norm_spike():
    m = _metrics().with_columns(pl.when(pl.col("step") == 50).then(50.0).otherwise(pl.col("grad_norm"))
                                .alias("grad_norm"))
    m = m.with_columns(pl.col("grad_norm") + pl.Series(np.r_[0, np.linspace(0, 0.01, m.height - 1)]))
    assert F.baselines(m, 0.2, 300)["spike_z"] >= F.SPIKE_SIGMAS
    assert F.baselines(m, 0.1, 300)["spike_z"] < F.SPIKE_SIGMAS


def _results(tmp_path, n_ok=6, n_bad=3):
    """A results folder: one study table (failures at the two highest LRs) and each run's metrics."""
    rows = []
    for i in range(n_ok + n_bad):
        bad = i >= n_ok
        rid = f"run{i:02d}"
        m = _metrics(logit=(lambda j: 10.0 ** min(1 + j / 3, 6)) if bad else None,
                     loss=(lambda j: 5.5) if bad else None)
        d = tmp_path / "runs" / rid
        d.mkdir(parents=True)
        m.write_parquet(d / "metrics.parquet")
        rows.append({"study": "s", "run_id": rid, "scale": "s0", "variant": "v", "lr": 10.0 ** (i - n_ok),
                     "seed": 0, "init_loss": 5.5, "final_loss": 5.4 if bad else 3.0 + 0.01 * i,
                     "diverged": False, "non_embedding_params": 1000.0, "train.steps": 300, "optim.eps": 1e-8})
    (tmp_path / "studies" / "s").mkdir(parents=True)
    pl.DataFrame(rows).write_parquet(tmp_path / "studies" / "s" / "runs.parquet")
    return tmp_path


def test_examples_labels_are_the_analysis_rule(tmp_path):
    res = _results(tmp_path)
    ex = E.build([res], ks=[0.1, 0.2])
    assert ex.height == 18 and set(ex["k"]) == {0.1, 0.2}
    per_run = ex.filter(pl.col("k") == 0.1).sort("run_id")
    assert per_run["failed"].to_list() == [False] * 6 + [True] * 3  # stalled at 5.4 of 5.5: failed
    assert set(per_run.filter(pl.col("failed"))["failure_mode"]) == {"attention_logit_growth"}
    assert set(per_run.filter(~pl.col("failed"))["failure_mode"]) == {"none"}


def test_model_json_roundtrip_matches_sklearn(tmp_path):
    from sklearn.linear_model import LogisticRegression
    ex = E.build([_results(tmp_path / "r")], ks=[0.1])
    fitted = M.fit(ex, 0.1)
    path = M.save(fitted, tmp_path / "m.json")
    loaded = M.load(path)
    assert json.loads(path.read_text())["format"] == M.FORMAT and loaded == json.loads(json.dumps(fitted))
    p = M.predict(loaded, ex)
    assert p.shape == (ex.height,) and ((p >= 0) & (p <= 1)).all()
    assert (p[ex["failed"].to_numpy()] > 0.5).all() and (p[~ex["failed"].to_numpy()] < 0.5).all()
    # the same standardised design through sklearn gives the same probabilities
    x = M._standardise(M._matrix(ex, loaded["features"]), np.array(loaded["mean"]), np.array(loaded["scale"]))
    clf = LogisticRegression(C=M.C, class_weight="balanced", max_iter=5000).fit(x, ex["failed"].to_numpy())
    assert np.allclose(clf.predict_proba(x)[:, 1], p, atol=1e-6)
    with pytest.raises(ValueError, match="needs both"):
        M.fit(ex.filter(~pl.col("failed")), 0.1)


def test_warn_fit_cli_and_bad_input(tmp_path, capsys):
    res = _results(tmp_path / "r")
    out = tmp_path / "model.json"
    assert main(["warn-fit", str(res), "--out", str(out), "--k", "0.1"]) == 0
    assert M.load(out)["trained_on"] == {"runs": 9, "failed": 3, "results": [str(res)], "datasets": ["synthetic"]}
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(["warn-fit", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(empty) in err and "studies/*/runs.parquet" in err
    assert main(["diagnose", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(empty) in err and "metrics.parquet" in err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["diagnose", str(res / "runs" / "run00"), "--model", str(tmp_path / "bad.json")]) == 2
    assert "not an early-warning model" in capsys.readouterr().err


def test_diagnose_names_attention_growth_of_a_tiny_run_at_lr_1(tmp_path, capsys):
    """The issue's reference case: no qk-layernorm at LR 1, trained here by the project's own train()."""
    from stability.train import train
    cfg = tiny(tmp_path, **{"model.qk_layernorm": "none", "optim.lr": 1.0})
    train(cfg, tmp_path / "run", quiet=True)
    capsys.readouterr()
    assert main(["diagnose", str(tmp_path / "run"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["failure_mode"] == "attention_logit_growth" and d["failed"] is True
    assert 0.0 <= d["p_fail"] <= 1.0
    assert d["evidence"]["attention_logit_growth"]["value"] >= F.ATTN_LOGIT_MIN
    assert d["loss_excursion_step"] is not None  # the loss blew up too: attention still decides
    assert main(["diagnose", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert "failure mode: attention_logit_growth" in text and "<- decides" in text


# ---- train.early_warning (part 3) ------------------------------------------------------------

def _docs_table(section: str) -> list[set[str]]:
    """The backticked first-cell names of each table under docs/metrics.md's `## {section}` heading."""
    import re
    from pathlib import Path
    body = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    body = body.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    tables, cur = [], None
    for line in body.splitlines():
        if line.startswith("| `"):
            cur = set() if cur is None else cur
            cur |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
        elif cur is not None and not line.startswith("|"):
            tables.append(cur)
            cur = None
    return tables + ([cur] if cur else [])


@pytest.fixture(scope="module")
def warned_runs(tmp_path_factory):
    """The issue's reference run (no qk-layernorm at LR 1) trained with early_warning off,
    report, and stop at threshold 0: {mode: (config, summary, metrics)}."""
    from stability.train import train
    tmp = tmp_path_factory.mktemp("warned")
    out = {}
    for mode in ("off", "report", "stop"):
        over = {"model.qk_layernorm": "none", "optim.lr": 1.0, "train.early_warning": mode,
                "train.divergence_window": 100}  # the detector lets it run on, so only the warning can stop it
        if mode == "stop":
            over["train.early_warning_threshold"] = 0.0
        cfg = tiny(tmp, **over)
        s = train(cfg, tmp / mode, quiet=True)
        out[mode] = (cfg, s, pl.read_parquet(tmp / mode / "metrics.parquet"))
    out["dir"] = tmp
    return out


def test_early_warning_off_writes_what_it_wrote_before(warned_runs, tmp_path):
    """`off` keeps the key out of the config and run id, and adds no column or summary key."""
    from stability.config import load
    from stability.warning.live import COLUMNS, SUMMARY_KEYS
    cfg, s, m = warned_runs["off"]
    plain = tiny(tmp_path, **{"model.qk_layernorm": "none", "optim.lr": 1.0, "train.divergence_window": 100})
    assert cfg.run_id() == plain.run_id() and "early_warning" not in cfg.to_dict()["train"]
    assert not set(COLUMNS) & set(m.columns) and not set(SUMMARY_KEYS) & set(s)
    assert load().run_id() == load(overrides={"train.early_warning": "off"}).run_id()
    ids = {w: load(overrides={"train.early_warning": w}).run_id() for w in ("off", "report", "stop")}
    assert ids["off"] == ids["report"] != ids["stop"]  # report observes only; stop changes the run
    assert load(overrides={"train.early_warning": "report", "train.early_warning_threshold": 0.9}).run_id() \
        == ids["off"]
    assert load(overrides={"train.early_warning": "stop", "train.early_warning_threshold": 0.9}).run_id() \
        != ids["stop"]
    for bad, msg in (({"train.early_warning": "warn"}, "train.early_warning"),
                     ({"train.early_warning": "stop", "train.early_warning_threshold": 1.5}, "probability"),
                     ({"train.early_warning_threshold": 0.3}, "while train.early_warning is off")):
        with pytest.raises(Exception, match=msg):
            load(overrides=bad)


def test_early_warning_report_adds_the_documented_columns(warned_runs):
    cfg_off, s_off, m_off = warned_runs["off"]
    cfg, s, m = warned_runs["report"]
    new_cols, new_keys = set(m.columns) - set(m_off.columns), set(s) - set(s_off)
    assert _docs_table("Early warning") == [new_cols, new_keys]  # docs/metrics.md lists exactly these
    decided = m.filter(pl.col("warning_p_fail").is_not_null())
    assert decided.height and decided["step"].min() == s["warning_step"] >= 0.1 * cfg.train.steps
    assert m.filter(pl.col("step") < s["warning_step"])["warning_p_fail"].null_count() == \
        m.filter(pl.col("step") < s["warning_step"]).height
    assert s["warning_p_fail"] >= 0.5 and s["warning_mode"] == "attention_logit_growth"
    assert s["stopped_by_warning"] is False and s["steps_completed"] == m_off["step"].max()
    # it observes only, which is why it shares off's run id: every other column is bit-identical
    timing = [c for c in m_off.columns if c.endswith("_per_s") or c.endswith("_time_s")]
    assert m.drop(*new_cols, *timing).equals(m_off.drop(*timing))
    assert cfg.run_id() == cfg_off.run_id()


def test_early_warning_stop_is_recorded_and_counted_failed(warned_runs, capsys):
    from stability.analysis.sensitivity import with_outcome
    cfg, s, m = warned_runs["stop"]
    assert s["stopped_by_warning"] is True and s["diverged"] is False and s["stopped_early"] is True
    assert s["steps_completed"] == s["warning_step"] == m["step"].max() < cfg.train.steps
    # a healthy twin (same scale and seed, LR 0.01) trains; the stopped run counts failed beside it
    rows = pl.DataFrame([{"scale": "t", "variant": "v", "seed": 0, "init_loss": s["init_loss"],
                          "final_loss": 1.0, "diverged": False, "stopped_by_warning": x} for x in (True, False)])
    assert with_outcome(rows)["failed"].to_list() == [True, False]
    capsys.readouterr()
    assert main(["diagnose", str(warned_runs["dir"] / "stop"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["failed"] is True and d["status"] == "failed" and d["failure_mode"] == "attention_logit_growth"


def test_stop_threshold_caps_out_of_scale_false_stops():
    """The recommended stop threshold flags at most the allowed share of trained runs, read out of scale."""
    rng = np.random.default_rng(0)
    n = 300
    failed = rng.random(n) < 0.1
    cols = {f: rng.normal(size=n) + (1.5 * failed if i < 3 else 0) for i, f in enumerate(F.FEATURES)}
    ex = pl.DataFrame({"k": [0.1] * n, "scale": rng.choice(["a", "b", "c"], n).tolist(),
                       "failed": failed.tolist(), **cols})
    oos = M.out_of_scale(ex, 0.1)
    assert oos.height == n and oos["p_fail"].null_count() == 0
    trained_p = oos.filter(~pl.col("failed"))["p_fail"].to_numpy()
    for cap in (0.0, 0.025, 0.1):
        t = M.stop_threshold(ex, 0.1, cap)
        assert M.THRESHOLD <= t <= 1.0 and (trained_p >= t).mean() <= cap
        if t > M.THRESHOLD:  # the smallest such: one step lower would flag one trained run more
            assert (trained_p >= np.nextafter(t, 0)).mean() > cap
    assert M.stop_threshold(ex, 0.1, 1.0) == M.THRESHOLD


def test_diagnose_does_not_call_a_lone_run_trained(tmp_path, capsys):
    """A run outside any study that did not diverge may still have stalled (judged against its LR
    grid): `not_judged`, never `trained`; a run trained with the warning on is read at its own threshold."""
    from stability.train import train
    cfg = tiny(tmp_path, **{"optim.lr": 0.01, "train.early_warning": "report", "train.early_warning_threshold": 0.9})
    train(cfg, tmp_path / "run", quiet=True)
    capsys.readouterr()
    assert main(["diagnose", str(tmp_path / "run"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["status"] == "not_judged" and d["failed"] is None and d["label_source"] == "run summary"
    assert d["threshold"] == 0.9
    assert all(e["fired_at_step"] is None or isinstance(e["fired_at_step"], int) for e in d["evidence"].values())
    assert main(["diagnose", str(tmp_path / "run")]) == 0
    assert "judged against its LR grid" in capsys.readouterr().out


def test_a_refit_model_drives_the_warning(tmp_path, capsys):
    """`train.early_warning_model` points report/stop (and diagnose) at a warn-fit file; its content,
    not its path, enters a stop run's id; a bad file or one set while off is refused before compute."""
    import shutil

    from stability.config import ConfigError, load
    from stability.train import train
    from stability.warning.live import model_fingerprint
    res = _results(tmp_path / "r")
    mine = tmp_path / "mine.json"
    assert main(["warn-fit", str(res), "--out", str(mine)]) == 0
    cfg = tiny(tmp_path, **{"optim.lr": 0.01, "train.early_warning": "report", "train.early_warning_model": str(mine)})
    s = train(cfg, tmp_path / "run", quiet=True)
    assert s["warning_model"] == model_fingerprint(mine) != model_fingerprint()
    capsys.readouterr()
    assert main(["diagnose", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["p_fail"] == pytest.approx(s["warning_p_fail"])
    copy = shutil.copy(mine, tmp_path / "copy.json")
    ids = {name: load(overrides={"train.early_warning": w, "train.early_warning_model": p}).run_id()
           for name, w, p in (("report", "report", str(mine)), ("stop_mine", "stop", str(mine)),
                              ("stop_copy", "stop", str(copy)), ("stop_shipped", "stop", ""))}
    assert ids["report"] == load().run_id() and ids["stop_mine"] == ids["stop_copy"] != ids["stop_shipped"]
    for over, msg in (({"train.early_warning_model": str(mine)}, "while train.early_warning is off"),
                      ({"train.early_warning": "stop", "train.early_warning_model": str(tmp_path / "no.json")},
                       "no such model file")):
        with pytest.raises(ConfigError, match=msg):
            load(overrides=over)


def test_a_resumed_run_keeps_its_warning_decision(tmp_path):
    """Killed after the decision (step 10) and resumed from its step-40 checkpoint, a `report` run
    writes the decision the uninterrupted run writes."""
    from helpers import crash_at
    from stability.train import train
    cfg = tiny(tmp_path, **{"train.early_warning": "report"})
    full = train(cfg, tmp_path / "full", quiet=True)
    with crash_at(45), pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tmp_path / "resumed", quiet=True)
    resumed = train(cfg, tmp_path / "resumed", quiet=True)
    assert resumed["resumed_from_step"] == 40 and full["warning_step"] == 10
    for key in ("warning_step", "warning_p_fail", "warning_mode"):
        assert resumed[key] == full[key], key
    a, b = (pl.read_parquet(tmp_path / d / "metrics.parquet") for d in ("full", "resumed"))
    assert a["warning_mode"].to_list() == b["warning_mode"].to_list()
