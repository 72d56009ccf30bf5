"""Early warning (issue 16): held-out AUROC against three baselines, and planted-failure diagnosis.

    python benchmarks/early_warning.py RESULTS... [--planted DIR] [--json PATH] [--doc PATH]

Every choice below was fixed before any held-out number was computed (the commit adding this
file precedes its first output):

**Examples.** Every finished run of the RESULTS folders (stability.warning.examples), labelled
failed/trained by the analysis's rule; features from the first K = 5, 10, 20% of planned steps.

**Splits.** The predictor (stability.warning.model.fit: logistic regression, C = 1, balanced
class weights, nothing tuned) is refit on each split's training runs at each K.
- scale_largest: test on the largest scale (scale names ordered by median non-embedding
  parameters over all examples), fit on every smaller scale; both datasets pooled.
- scale_upper_third: test on the largest third of the scale names (rounded up), fit on the rest.
- synthetic_to_text, text_to_synthetic: fit on one dataset, test on the other, all scales.
A split whose training runs hold no failure cannot be fit (reported as such); one whose test
runs hold a single class has no AUROC (its false-alarm or hit rate at the threshold is reported).

**Scores and rules.** model: p_fail, flags at p >= 0.5 (stability.warning.model.THRESHOLD).
Baselines (stability.warning.features.baselines), each a score and a fixed rule:
paper_logit (max attention logit at the window's last probe; flags > 1e4, the paper's rule;
runs without attention score lowest), loss_above_init (last loss minus step 0's; flags > 0),
spike_z (OLMo-core style: largest z-score of loss or gradient norm against the previous
128 steps; flags >= 6 sigma).

**Intervals.** AUROC (scikit-learn roc_auc_score) with a 95% percentile bootstrap over the
test runs (2,000 resamples, seed 0, resamples with one class skipped); the model's AUROC
minus each baseline's on the same resamples, with its interval ("better" = the interval
lies above 0).

**Compute saved and false stops** (`train.early_warning: stop`, simulated on finished runs of
the first RESULTS folder, the default study): every run gets a p_fail from a model fit
without its scale (leave-one-scale-out over all scales, all folders' other runs), read at
K = 10%; a flagged run would stop at its decision step (the first logged step at or past K, as
stability.warning.live decides). Saved = the flagged failing runs' FLOPs after the stop over
all failing runs' planned FLOPs (target >= 50%); false stops = flagged trained runs over
trained runs (target <= 5%). Flagged: p_fail >= 0.5 (the default train.early_warning_threshold);
thresholds 0.7 to 0.99 and the shipped model (fit on these runs too: in-sample) are reported
beside it, not chosen from.

**The recommended stop threshold** (added after the first full evaluation, c1f1e33, gave 0.12
false stops at 0.5; the rule was fixed before this benchmark was rerun): each held-out scale's
threshold is `stability.warning.model.stop_threshold` of that fold's training runs alone: p_fail
of those runs read leave-one-scale-out among them, and the smallest threshold (not below 0.5)
that stops at most 2.5% of those that trained (MAX_FALSE_STOPS: half the 5% target, a margin
for the further shift to an unseen scale). Reported beside 0.5; `stability warn-fit` stores the
same rule's value on all its runs in the model file as `stop_threshold`.

**Data** (the rerun): the issue names the leaderboard among the folders; its 585 runs (13
interventions x xs/s0/s1 x 5 LRs x 3 seeds) were finished after the first evaluation and join
the RESULTS list. Nothing else about the splits changed.

**Planted failures** (--planted DIR: trains them there, about 5 minutes on 2 cores; reused
when present). Runs configured to fail in each mode, beside a healthy reference run at the
same scale and seed (the default config at LR 0.01); a planted run failed when the analysis's
rule (sensitivity.with_outcome over its (scale, seed) row with the reference) says so. The
diagnosis names a mode for a run that failed or whose p_fail (shipped model) reaches 0.5;
reported per mode: planted, failed, mode named correctly, and the rule's signature alone.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import emit, machine  # noqa: E402

from stability.analysis.aggregate import read_config, read_summary  # noqa: E402
from stability.analysis.sensitivity import with_outcome  # noqa: E402
from stability.warning import examples as E  # noqa: E402
from stability.warning import features as F  # noqa: E402
from stability.warning import model as M  # noqa: E402

RULES = {"model": M.THRESHOLD, "paper_logit": F.PAPER_LOGIT_RULE, "loss_above_init": 0.0, "spike_z": F.SPIKE_SIGMAS}
STRICT = {"paper_logit": True, "loss_above_init": True, "spike_z": False, "model": False}  # > vs >=
N_BOOT = 2000
LOW = -1e300  # a score a run without the signal gets (ranked lowest)


def _scores(test: pl.DataFrame, p: np.ndarray) -> dict[str, np.ndarray]:
    out = {"model": p}
    for b in F.BASELINES:
        v = test[b].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        out[b] = np.where(np.isnan(v), LOW, np.where(np.isposinf(v), 1e300, v))
    return out


def _flags(name: str, s: np.ndarray) -> np.ndarray:
    return s > RULES[name] if STRICT[name] else s >= RULES[name]


def _auroc_block(y: np.ndarray, scores: dict[str, np.ndarray], seed: int = 0) -> dict:
    from sklearn.metrics import roc_auc_score
    out: dict = {"n": int(len(y)), "n_failed": int(y.sum())}
    for name, s in scores.items():
        f = _flags(name, s)
        out.setdefault("rules", {})[name] = {
            "threshold": RULES[name],
            "hit_rate": float(f[y].mean()) if y.any() else None,
            "false_alarm_rate": float(f[~y].mean()) if (~y).any() else None}
    if y.all() or not y.any():
        out["auroc"] = None
        return out
    from sklearn.metrics import roc_curve
    point = {n: float(roc_auc_score(y, s)) for n, s in scores.items()}
    out["roc"] = {n: dict(zip(("fpr", "tpr"), (a.tolist() for a in roc_curve(y, s)[:2]))) for n, s in scores.items()}
    rng = np.random.default_rng(seed)
    boots: dict[str, list] = {n: [] for n in scores}
    for _ in range(N_BOOT):
        i = rng.integers(0, len(y), len(y))
        if y[i].all() or not y[i].any():
            continue
        for n, s in scores.items():
            boots[n].append(roc_auc_score(y[i], s[i]))
    b = {n: np.array(v) for n, v in boots.items()}
    out["auroc"] = {n: {"auroc": point[n], "lo": float(np.percentile(b[n], 2.5)), "hi": float(np.percentile(b[n], 97.5))}
                    for n in scores}
    out["model_minus"] = {n: {"diff": point["model"] - point[n],
                              "lo": float(np.percentile(b["model"] - b[n], 2.5)),
                              "hi": float(np.percentile(b["model"] - b[n], 97.5))}
                          for n in scores if n != "model"}
    out["n_boot"] = int(len(b["model"]))
    return out


def splits(ex: pl.DataFrame) -> dict[str, tuple[pl.Expr, pl.Expr]]:
    order = E.scale_order(ex)
    upper = order[-math.ceil(len(order) / 3):]
    text = pl.col("dataset").str.starts_with("text")
    return {
        "scale_largest": (pl.col("scale") != order[-1], pl.col("scale") == order[-1]),
        "scale_upper_third": (~pl.col("scale").is_in(upper), pl.col("scale").is_in(upper)),
        "synthetic_to_text": (pl.col("dataset") == "synthetic", text),
        "text_to_synthetic": (text, pl.col("dataset") == "synthetic"),
    }


def evaluate(ex: pl.DataFrame) -> dict:
    order = E.scale_order(ex)
    out = {"scale_order": order, "splits": {}}
    for name, (tr, te) in splits(ex).items():
        for k in sorted(set(ex["k"])):
            at = ex.filter((pl.col("k") - k).abs() < 1e-9)
            train, test = at.filter(tr), at.filter(te)
            row = {"k": k, "train_runs": train.height, "train_failed": int(train["failed"].sum()),
                   "test_scales": sorted(set(test["scale"].to_list())),
                   "test_datasets": sorted(set(test["dataset"].to_list()))}
            try:
                model = M.fit(train, k)
            except ValueError as e:
                row["error"] = str(e)
                out["splits"].setdefault(name, []).append(row)
                continue
            y = test["failed"].cast(pl.Boolean).to_numpy()
            row.update(_auroc_block(y, _scores(test, M.predict(model, test))))
            out["splits"].setdefault(name, []).append(row)
    return out


SWEEP = (0.5, 0.7, 0.9, 0.95, 0.99)  # reported beside the default 0.5, not chosen from them


def _stop_table(d: pl.DataFrame, threshold: float | str) -> dict:
    """Compute saved and false stops when runs with p_fail >= threshold stop at their decision
    step; threshold: a probability, or the name of a per-run threshold column."""
    cut = pl.col(threshold) if isinstance(threshold, str) else pl.lit(threshold)
    d = d.with_columns(flagged=pl.col("p_fail") >= cut)
    fail, ok = d.filter(pl.col("failed")), d.filter(~pl.col("failed"))
    planned = (fail["flops_per_step"] * fail["steps_planned"]).sum()
    saved = fail.filter(pl.col("flagged")).select(
        (pl.col("flops_per_step") * (pl.col("steps_planned") - pl.col("decision_step")).clip(0)).sum()).item()
    return {"threshold": threshold, "failed": fail.height, "flagged_failed": int(fail["flagged"].sum()),
            "compute_saved_fraction": float(saved / planned) if planned else None,
            "trained": ok.height, "false_stops": int(ok["flagged"].sum()),
            "false_stop_fraction": float(ok["flagged"].mean()) if ok.height else None,
            "false_stopped_runs": ok.filter(pl.col("flagged")).select("run_id", "study", "scale", "variant", "lr")
            .to_dicts()}


def compute_saved(ex: pl.DataFrame, default_results: str, k: float = 0.1) -> dict:
    """Leave-one-scale-out p_fail for the default study's runs; a stop at K for flagged runs.

    A flagged run stops at its decision step, the first logged step >= K x steps (as
    train.early_warning: stop decides, stability.warning.live); its FLOPs after it are saved.
    Also with the shipped model (in-sample for these runs: what `stop` would do on them today).
    """
    at = ex.filter((pl.col("k") - k).abs() < 1e-9)
    parts = []
    for scale in E.scale_order(at):
        train, test = at.filter(pl.col("scale") != scale), at.filter(pl.col("scale") == scale)
        test = test.filter(pl.col("results") == default_results)
        if test.is_empty():
            continue
        parts.append(test.with_columns(p_fail=pl.Series(M.predict(M.fit(train, k), test)),
                                       rule_threshold=pl.lit(M.stop_threshold(train, k))))
    d = pl.concat(parts)
    flops, decision = [], []
    for r in d.iter_rows(named=True):
        run_dir = Path(r["results"]) / "runs" / r["run_id"]
        s = read_summary(run_dir / "summary.json")
        c = read_config(run_dir, s)
        flops.append(float(s.get("flops_per_token") or 0) * float(c["train.batch_size"]) * float(c["train.seq_len"]))
        every = int(c.get("train.log_every") or 1)
        decision.append(min(math.ceil(k * r["steps_planned"] / every) * every, r["steps_planned"]))
    d = d.with_columns(flops_per_step=pl.Series(flops), decision_step=pl.Series(decision))
    shipped_model = M.load()
    shipped = d.with_columns(p_fail=pl.Series(M.predict(shipped_model, d)))
    main = _stop_table(d, M.THRESHOLD)
    rule = _stop_table(d, "rule_threshold")
    rule["thresholds"] = {s: float(t) for s, t in d.group_by("scale").agg(pl.col("rule_threshold").first()).iter_rows()}
    return {"k": k, "runs": d.height, **main, "rule": rule,
            "sweep": [_stop_table(d, t) for t in SWEEP],
            "shipped_model": [_stop_table(shipped, t) for t in SWEEP],
            "shipped_stop_threshold": shipped_model.get("stop_threshold"),
            "shipped_at_stop_threshold": _stop_table(shipped, shipped_model["stop_threshold"])
            if shipped_model.get("stop_threshold") is not None else None}


# ---- planted failures ----------------------------------------------------------------------

BASE = {  # config/config.yaml's defaults, so planted runs look like the default study's
    "train.steps": 300, "train.batch_size": 16, "train.seq_len": 128, "train.log_every": 10,
    "train.eval_every": 100, "train.eval_batches": 4, "train.checkpoint_every": 100, "train.probe_step": 30,
    "train.threads": 1, "optim.warmup_steps": 30, "optim.min_lr": 1e-5, "optim.weight_decay": 1e-4,
    "optim.independent_weight_decay": True, "loss.z_loss": 1e-4, "model.qk_layernorm": "per_head",
    "data.source": "synthetic", "data.n_train_tokens": 2_000_000, "data.n_val_tokens": 65_536}
SCALES = {"xs": {"model.d_model": 16, "model.n_layers": 2, "model.head_dim": 16},
          "s0": {"model.d_model": 32, "model.n_layers": 2, "model.head_dim": 16},
          "s1": {"model.d_model": 48, "model.n_layers": 2, "model.head_dim": 16}}
PLANTED = {  # mode: [(scale, seed, overrides)]
    "attention_logit_growth": [("s0", 1, {"model.qk_layernorm": "none", "optim.lr": 0.3}),
                               ("s0", 2, {"model.qk_layernorm": "none", "optim.lr": 0.3}),
                               ("s1", 1, {"model.qk_layernorm": "none", "optim.lr": 0.3}),
                               ("xs", 1, {"model.qk_layernorm": "none", "optim.lr": 1.0})],
    "output_logit_divergence": [("xs", s, {"loss.z_loss": 0.0, "optim.weight_decay": 0.0, "optim.lr": lr,
                                           "train.steps": 2000, "train.eval_every": 500,
                                           "train.checkpoint_every": 500, "train.probe_step": 200,
                                           "optim.warmup_steps": 200})
                                for s, lr in ((1, 0.3), (2, 0.3), (1, 1.0), (2, 1.0))],
    "epsilon_collapse": [("s0", s, {"optim.eps": 0.1, "optim.lr": lr}) for s, lr in ((1, 0.01), (2, 0.01), (1, 0.1), (2, 0.1))],
    "other": [("s0", s, {"optim.lr": lr}) for s, lr in ((1, 3.0), (2, 3.0), (1, 10.0), (2, 10.0))],
}


# Why the planted output-logit-divergence runs do not fail (measured, not assumed). Kept as
# planted, since the issue asks for that case, and counted in the accuracy as they come out.
PLANTED_NOTES = {"output_logit_divergence": (
    "Not plantable as a failure at this scale within ~10 minutes of CPU. These runs (xs, no z-loss, no decay, "
    "2,000 steps at LR 0.3 and 1) all trained, below their reference's loss. Longer designs tried: the default "
    "study's finding-2 design (s0, 8,000 steps of 8 x 64 tokens at LR 0.3, no z-loss, no decay) trained at "
    "all 3 seeds (final loss 3.43-3.77, none failed), with RMS log Z growth of -0.2 to 3.9 nats; at LR 1 "
    "(pilot, seed 1, 190 s) it trained (5.99 -> 4.24) and RMS log Z peaked 1.8 nats above its start; with a "
    "synthetic vocabulary of 2,048 at LR 0.3 (pilot, stopped at step 4,000) the loss stalled (7.90 -> 7.50) "
    "while RMS log Z *fell* (8.0 -> 6.5): a stall, not a log Z drift. The paper's instability builds up over "
    "1e5 steps in bf16 at 2.4M+ parameters (config/logz_long.yaml is the project's long-horizon supplement, "
    "about an hour, not run here).")}


def _train(out: Path, overrides: dict) -> dict:
    from stability.config import load
    from stability.train import train
    cfg = load(overrides={**BASE, "data.cache_dir": str(out.parent.parent / "data"), **overrides})
    return train(cfg, out, quiet=True)


def planted(folder: Path) -> dict:
    from stability.warning.diagnose import diagnose
    shipped = M.load()
    rows, per_mode = [], {}
    for mode, cases in PLANTED.items():
        for i, (scale, seed, over) in enumerate(cases):
            run = folder / "runs" / f"{mode}_{i}"
            ref = folder / "runs" / f"reference_{scale}_{seed}"
            s = _train(run, {**SCALES[scale], "seed": seed, **over})
            r = _train(ref, {**SCALES[scale], "seed": seed, "optim.lr": 0.01})
            pair = pl.DataFrame([{"scale": scale, "variant": mode, "seed": seed, "init_loss": x["init_loss"],
                                  "final_loss": x["final_loss"], "diverged": x["diverged"]} for x in (s, r)],
                                schema={"scale": pl.String, "variant": pl.String, "seed": pl.Int64,
                                        "init_loss": pl.Float64, "final_loss": pl.Float64, "diverged": pl.Boolean})
            failed = bool(with_outcome(pair)["failed"][0])
            d = diagnose(run)
            at_risk = d["p_fail"] is not None and d["p_fail"] >= shipped["threshold"]
            named = d["signature"] if (failed or at_risk) else "none"
            rows.append({"mode": mode, "run": run.name, "scale": scale, "seed": seed, "overrides": over,
                         "failed": failed, "p_fail": d["p_fail"], "named": named, "signature": d["signature"],
                         "final_loss": s["final_loss"], "reference_loss": r["final_loss"], "init_loss": s["init_loss"],
                         "evidence": {m: e["value"] for m, e in d["evidence"].items()}})
            print(f"  planted {mode} #{i}: failed={failed} p_fail={d['p_fail']:.3f} named={named}", file=sys.stderr)
        mine = [r for r in rows if r["mode"] == mode]
        per_mode[mode] = {"planted": len(mine), "failed": sum(r["failed"] for r in mine),
                          "named_correctly": sum(r["named"] == mode for r in mine),
                          "failed_named_correctly": sum(r["failed"] and r["named"] == mode for r in mine),
                          "signature_correct": sum(r["signature"] == mode for r in mine)}
    n = sum(v["planted"] for v in per_mode.values())
    n_failed = sum(v["failed"] for v in per_mode.values())
    return {"per_mode": per_mode, "runs": rows, "notes": PLANTED_NOTES,
            "named_correctly_fraction": sum(v["named_correctly"] for v in per_mode.values()) / n,
            "failed_named_correctly_fraction":
                sum(v["failed_named_correctly"] for v in per_mode.values()) / n_failed if n_failed else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="results folders; the first is the default study (compute saved)")
    ap.add_argument("--planted", type=Path, help="train (or reuse) the planted-failure runs in this folder")
    ap.add_argument("--json", type=Path, help="write the full result here")
    ap.add_argument("--doc", type=Path, help="write docs/early-warning.md from the result")
    args = ap.parse_args(argv)
    print(machine("start"), file=sys.stderr)
    ex = E.build(args.results)
    counts = (ex.group_by("k", "dataset").agg(runs=pl.len(), failed=pl.col("failed").sum()).sort("k", "dataset")
              .to_dicts())
    modes = (ex.filter(pl.col("k") == 0.1).group_by("dataset", "failure_mode").len().sort("dataset", "failure_mode")
             .to_dicts())
    full = {"results": args.results, "examples": counts, "modes": modes, **evaluate(ex),
            "compute_saved": compute_saved(ex, args.results[0])}
    if args.planted:
        full["planted"], full["planted_dir"] = planted(args.planted), str(args.planted)
    full["machine"] = machine("end")
    if args.doc:
        from early_warning_doc import render, roc_figure
        fig = roc_figure(full, args.doc.parent / "early_warning_figures" / "roc.png")
        args.doc.write_text(render(full, fig and fig.relative_to(args.doc.parent)))
    k10 = {n: next((r for r in rows if abs(r["k"] - 0.1) < 1e-9), {}) for n, rows in full["splits"].items()}
    summary = {n: (r.get("auroc") or {}).get("model") for n, r in k10.items()}
    summary["compute_saved"] = full["compute_saved"]["compute_saved_fraction"]
    summary["false_stops"] = full["compute_saved"]["false_stop_fraction"]
    if "planted" in full:
        summary["planted_named"] = full["planted"]["named_correctly_fraction"]
    emit(summary, args.json, full)
    return 0


if __name__ == "__main__":
    sys.exit(main())
