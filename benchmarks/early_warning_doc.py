"""Render docs/early-warning.md from benchmarks/early_warning.py's result (its --json output).

    python benchmarks/early_warning_doc.py RESULT.json docs/early-warning.md

(`early_warning.py ... --doc docs/early-warning.md` calls `render` directly.)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stability.warning import features as F  # noqa: E402
from stability.warning import model as M  # noqa: E402

NAMES = {"model": "predictor", "paper_logit": "max logit > 1e4", "loss_above_init": "loss above initial",
         "spike_z": "spike z >= 6 (OLMo-core style)"}


def _iv(d: dict | None, key: str = "auroc") -> str:
    return "—" if not d else f"{d[key]:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"


def _rate(x) -> str:
    return "—" if x is None else f"{x:.3f}"  # three places: 0.055 must not read as the 0.05 target


def _k10(r: dict, split: str) -> dict:
    return next((x for x in r["splits"].get(split, []) if abs(x["k"] - 0.1) < 1e-9), {})


def _beats_all(row: dict) -> bool:
    return bool(row.get("model_minus")) and all(v["lo"] > 0 for v in row["model_minus"].values())


def _targets(r: dict) -> list[str]:
    """The issue's targets, each with what this run measured and met / missed, in words."""
    yes = {True: "met", False: "**missed**"}
    out = ["## Targets at a glance", "", "| target (issue 16) | measured | |", "|---|---|---|"]
    for split, what in (("scale_largest", "held-out largest scale"),
                        ("scale_upper_third", "held-out upper third of scales (the same bar on a larger test set; "
                         "not one of the issue's)")):
        row = _k10(r, split)
        a = (row.get("auroc") or {}).get("model")
        if not a:
            continue
        worst = min(row["model_minus"].items(), key=lambda kv: kv[1]["lo"])
        out.append(f"| AUROC >= 0.9, {what}, K = 10% ({row['n_failed']} failed of {row['n']} test runs) | "
                   f"{_iv(a)} | {yes[a['auroc'] >= 0.9]} |")
        out.append(f"| ... and better than every baseline (each paired difference's interval above 0) | weakest: "
                   f"{NAMES[worst[0]]}, {_iv(worst[1], 'diff')} | {yes[_beats_all(row)]} |")
    c = r["compute_saved"]
    ops = [("0.5 (default)", c)] + ([("recommended (per fold)", c["rule"])] if c.get("rule") else []) \
        + [(f"{t['threshold']:g}", t) for t in c.get("sweep", [])[1:]]
    for name, t in ops[:2]:
        out.append(f"| stop at {name}: compute saved >= 0.50 | {_rate(t['compute_saved_fraction'])} | "
                   f"{yes[(t['compute_saved_fraction'] or 0) >= 0.5]} |")
        out.append(f"| stop at {name}: false stops <= 0.05 | {_rate(t['false_stop_fraction'])} | "
                   f"{yes[(t['false_stop_fraction'] or 0) <= 0.05]} |")
    if "planted" in r:
        f = r["planted"]["named_correctly_fraction"]
        out.append(f"| planted failures named correctly >= 0.80 | {f:.2f} | {yes[f >= 0.8]} |")
    both = [n for n, t in ops if (t["compute_saved_fraction"] or 0) >= 0.5 and (t["false_stop_fraction"] or 1) <= 0.05]
    out += ["", ("Held out, " + (f"the stop thresholds {', '.join(both)} met both stop targets." if both else
                                 "no stop threshold tried (0.5, the recommended one, "
                                 + ", ".join(n for n, _ in ops[2:]) + ") met both stop targets at once: "
                                 "fewer false stops cost saved compute.")), ""]
    up = _k10(r, "scale_upper_third")
    if up.get("model_minus"):
        d = up["model_minus"]["loss_above_init"]
        verdict = ("beats" if d["lo"] > 0 else "is worse than" if d["hi"] < 0 else "is not told apart from")
        out += [f"On the upper third of scales at K = 10% the predictor {verdict} the trivial rule *loss above "
                f"initial* (difference {_iv(d, 'diff')}); see the K = 5% rows too. With {_k10(r, 'scale_largest').get('n_failed', 0)} "
                "failed runs in the largest scale's test set, its intervals are too coarse to rank the scores there.", ""]
    out += ["Transfer across data is not measured: no real-text run failed, so synthetic -> text scores false "
            "alarms only and text -> synthetic cannot be fit.", ""]
    return out


def _rule_text() -> str:
    doc = F.__doc__
    return doc[doc.index("**Failure-mode rule**"):].strip()


def roc_figure(r: dict, path: Path) -> Path | None:
    """ROC curves at K = 10% of every split with an AUROC, one panel per split, as PNG; None without any."""
    import altair as alt
    rows = []
    for split, entries in r["splits"].items():
        for e in entries:
            if abs(e["k"] - 0.1) > 1e-9 or not e.get("roc"):
                continue
            for s, c in e["roc"].items():
                a = e["auroc"][s]["auroc"]
                rows += [{"split": split, "score": f"{NAMES[s]} ({a:.2f})", "fpr": x, "tpr": y, "i": i}
                         for i, (x, y) in enumerate(zip(c["fpr"], c["tpr"]))]
    if not rows:
        return None
    chart = (alt.Chart(alt.Data(values=rows))
             .mark_line(point=True)
             .encode(x=alt.X("fpr:Q", title="false-alarm rate"), y=alt.Y("tpr:Q", title="hit rate"),
                     color=alt.Color("score:N", title="score (AUROC)", legend=alt.Legend(labelLimit=400)), order="i:Q")
             .properties(width=260, height=220)
             .facet(facet=alt.Facet("split:N", title="held-out split, K = 10%"), columns=2)
             .resolve_scale(color="independent"))
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(str(path), format="png", scale_factor=1.5)
    return path


def render(r: dict, figure: Path | None = None) -> str:
    cmd = ("python benchmarks/early_warning.py " + " ".join(r["results"])
           + (f" --planted {r['planted_dir']}" if r.get("planted_dir") else "")
           + " --json benchmarks/results/early_warning.json --doc docs/early-warning.md")
    out = ["# Early warning and diagnosis", "",
           "Generated by `benchmarks/early_warning.py` from finished runs; do not edit by hand. Regenerate with:", "",
           f"```sh\n{cmd}\n```", "",
           "Issue 16: say from a run's first K% of steps whether it will fail (the analysis's rule: "
           "diverged, no finite loss, or stalled; `stability.analysis.sensitivity`), and why. "
           "The predictor is a logistic regression on "
           f"{len(F.FEATURES)} scale-free signals of the window (`stability/warning/features.py`), "
           "fit by `stability warn-fit RESULTS... --out FILE` and stored as JSON coefficients; "
           "`stability diagnose RUN_DIR [--json]` prints the failure mode with its evidence and `p_fail`. "
           "Splits, thresholds, baselines and intervals were fixed in the benchmark's docstring before any "
           "held-out number was computed; the numbers below are what they gave, targets met or not.", "",
           "**Changes since the first evaluation** (commit c1f1e33, which gave at K = 10% an upper-third AUROC "
           "of 0.765 [0.608, 0.906], and 0.12 false stops with 0.75 of failing compute saved at 0.5): the "
           "leaderboard's runs, which the issue names and which were not finished then, joined the data, and "
           "the shipped model was refit on all the folders below (`stability warn-fit`); the recommended stop "
           "threshold (below) was added because that evaluation missed the false-stop target. Features, "
           "labels, the model, splits, baselines and intervals are unchanged; the training data are not, so "
           "the two evaluations are not like for like.", "",
           *_targets(r),
           "## Data", "", "| K | dataset | runs | failed |", "|---|---|---|---|"]
    out += [f"| {100 * e['k']:g}% | {e['dataset']} | {e['runs']} | {e['failed']} |" for e in r["examples"]]
    out += ["", "Failure modes of the failed runs (K = 10% rows; the rule below, from every logged step):", "",
            "| dataset | mode | runs |", "|---|---|---|"]
    out += [f"| {m['dataset']} | {m['failure_mode']} | {m['len']} |" for m in r["modes"]]
    out += ["", f"Scales, smallest to largest by median non-embedding parameters: {', '.join(r['scale_order'])}.",
            "", "## Held-out AUROC (95% bootstrap interval) against each baseline", "",
            "`model - baseline` is the paired AUROC difference on the same resamples; the predictor beats a "
            "baseline where that interval lies above 0. Hit / false alarm: the fraction of failed / trained "
            "test runs each fixed rule flags (predictor: p_fail >= 0.5).", "",
            "The scores behind each AUROC (`stability/warning/features.py`): *predictor*, p_fail; *max logit > 1e4*, "
            "the max attention logit at the window's last probe (the paper's rule flags above 1e4); *loss above "
            "initial*, the window's last training loss minus step 0's (flags above 0, so a score can rank well "
            "while its rule flags nothing); *spike z*, the largest z-score of the loss or gradient norm against "
            f"the previous 128 steps (flags at 6). The predictor's {len(F.FEATURES)} inputs: "
            + ", ".join(f"`{f}`" for f in F.FEATURES) + ".", ""]
    if figure:
        out += [f"![ROC curves at K = 10%]({figure})", ""]
    for name, rows in r["splits"].items():
        out += [f"### {name}", ""]
        for row in rows:
            head = (f"**K = {100 * row['k']:g}%**: fit on {row['train_runs']} runs ({row['train_failed']} failed); "
                    f"test {row.get('n', 0)} runs ({row.get('n_failed', 0)} failed), scales "
                    f"{', '.join(row['test_scales'])}, data {', '.join(row['test_datasets'])}.")
            if "error" in row:
                out += [head + f" Not estimable: {row['error']}.", ""]
                continue
            if not row.get("auroc"):
                head += " No AUROC: the test runs hold one class."
            out += [head, "", "| score | AUROC | model - baseline | hit rate | false-alarm rate |", "|---|---|---|---|---|"]
            for s, label in NAMES.items():
                a = (row.get("auroc") or {}).get(s)
                dlt = (row.get("model_minus") or {}).get(s)
                rule = row["rules"][s]
                out.append(f"| {label} | {_iv(a)} | {_iv(dlt, 'diff') if dlt else '—'} | "
                           f"{_rate(rule['hit_rate'])} | {_rate(rule['false_alarm_rate'])} |")
            out.append("")
    c = r["compute_saved"]
    if r.get("provenance"):
        out += [f"**Provenance of this page.** {r['provenance']}", ""]
    out += ["## Stopping doomed runs in training: `train.early_warning`", "",
            "`train.early_warning: off | report | stop` and `train.early_warning_threshold` (default 0.5) "
            "(docs/config.md; `stability/warning/live.py`, one call per logged step from the training loop). "
            "At the first logged step at or past K = 10% of `train.steps`, the shipped model's p_fail is "
            "computed from the rows logged so far, exactly as from a finished run's first K. `report` writes "
            "`warning_p_fail` and `warning_mode` into metrics.parquet (from that row on) and the decision into "
            "summary.json (docs/metrics.md); `stop` also ends a run with p_fail at or above the threshold there, "
            "recorded `stopped_by_warning: true` (not `diverged`), which the analysis counts as failed "
            "(`sensitivity.with_outcome`). `off`, the built-in default, computes and writes nothing. The default "
            "study runs `report`: it only observes (every column `off` writes is bit-identical), so it shares "
            "`off`'s run id and no verdict depends on the predictor. `stop` is part of the run id, with the "
            "threshold and the model file's hash.", ""]
    out += ["## Stopping doomed runs (simulated on the default study)", "",
            f"`train.early_warning: stop` simulated on the default study's finished runs: every run scored by a "
            f"model fit without its scale (leave-one-scale-out), read at K = {100 * c['k']:g}% and stopped at its "
            "decision step (the first logged step at or past K) when p_fail reaches the threshold "
            "(`train.early_warning_threshold`, default 0.5):", "",
            f"- failing runs stopped: {c['flagged_failed']} of {c['failed']}; their compute saved: "
            f"**{_rate(c['compute_saved_fraction'])}** of all failing runs' planned FLOPs (target >= 0.50)",
            f"- false stops: {c['false_stops']} of {c['trained']} runs that trained, "
            f"**{_rate(c['false_stop_fraction'])}** (target <= 0.05)", ""]
    if c.get("rule"):
        q = c["rule"]
        ts = ", ".join(f"{s} {t:.3g}" for s, t in sorted(q["thresholds"].items()))
        out += ["At the **recommended stop threshold** (`stop_threshold`: each held-out scale's own, chosen by "
                "a rule on that fold's training runs only: read out of scale among them, the smallest threshold "
                "not below 0.5 that stops at most 2.5% of those that trained; added after the first evaluation "
                f"missed the false-stop target, fixed before this run). Thresholds per held-out scale: {ts}.", "",
                f"- failing runs stopped: {q['flagged_failed']} of {q['failed']}; compute saved: "
                f"**{_rate(q['compute_saved_fraction'])}** (target >= 0.50)",
                f"- false stops: {q['false_stops']} of {q['trained']}, **{_rate(q['false_stop_fraction'])}** "
                "(target <= 0.05)", ""]
        if c.get("shipped_stop_threshold") is not None:
            s = c["shipped_at_stop_threshold"]
            out += [f"The shipped model's `stop_threshold` (the same rule on all its runs): "
                    f"**{c['shipped_stop_threshold']:.3g}**; set `train.early_warning_threshold` to it for `stop` where a "
                    "false stop costs more than a failing run's compute. "
                    f"On these runs (in-sample, optimistic) it saves {_rate(s['compute_saved_fraction'])} with "
                    f"{s['false_stops']} of {s['trained']} false stops.", ""]
    live_path = Path(__file__).resolve().parent / "results" / "early_warning_live.json"
    if live_path.is_file():
        v = json.loads(live_path.read_text())
        out += [f"**The simulation is what `stop` does** (`benchmarks/early_warning_live.py`, "
                f"benchmarks/results/early_warning_live.json): the {v['runs']} runs of the default study's "
                f"`{v['study']}` retrained with `stop` at threshold 0 (each stops at its decision step) decided "
                f"live at the same step with p_fail equal to the shipped model's on the finished run's first K "
                f"(largest difference {v['max_abs_p_fail_difference']:.2g} over {v['compared']} runs).", ""]
    if c.get("sweep"):
        out += ["Other thresholds, reported, not chosen from (picking one here would tune on the runs it is "
                "scored on). *Shipped model*: the model `stop` reads today, fit on these very runs among others "
                "(in-sample, so optimistic).", "",
                "| threshold | failing runs stopped | compute saved | false stops | shipped model: saved | shipped model: false stops |",
                "|---|---|---|---|---|---|"]
        for a, b in zip(c["sweep"], c["shipped_model"]):
            out.append(f"| {a['threshold']:g} | {a['flagged_failed']} of {a['failed']} | {_rate(a['compute_saved_fraction'])} | "
                       f"{a['false_stops']} of {a['trained']} ({_rate(a['false_stop_fraction'])}) | "
                       f"{_rate(b['compute_saved_fraction'])} | {b['false_stops']} of {b['trained']} "
                       f"({_rate(b['false_stop_fraction'])}) |")
        out.append("")
    if "planted" in r:
        p = r["planted"]
        out += ["## Diagnosis on planted failures", "",
                "Runs configured to fail in each mode (`PLANTED` in the benchmark), each beside a healthy "
                "reference (same scale and seed, LR 0.01) that decides, by the analysis's rule, whether it failed. "
                "A mode is named for a run that failed or whose p_fail (shipped model) reaches 0.5; "
                "*signature* is the rule's answer from the signals alone.", "",
                "| planted mode | runs | failed | named correctly | of the failed, named correctly | signature correct |",
                "|---|---|---|---|---|---|"]
        out += [f"| {m} | {v['planted']} | {v['failed']} | {v['named_correctly']} | "
                f"{v.get('failed_named_correctly', '—')} of {v['failed']} | {v['signature_correct']} |"
                for m, v in p["per_mode"].items()]
        fr = p.get("failed_named_correctly_fraction")
        out += ["", f"Named correctly overall: {p['named_correctly_fraction']:.2f} of all planted runs (target >= 0.80)"
                + (f"; {fr:.2f} of the planted runs that failed." if fr is not None else "."), ""]
        alarms = [x for x in p["runs"] if not x["failed"] and x["p_fail"] is not None and x["p_fail"] >= 0.5]
        if alarms:
            out += [f"Planted runs that trained (beside their reference) yet got p_fail >= 0.5: "
                    + ", ".join(f"{x['run']} ({x['p_fail']:.2f}, named {x['named']})" for x in alarms)
                    + ". They are false alarms of the predictor; the count above names a mode for them by the rule "
                    "fixed beforehand (failed or p_fail >= 0.5), so one that matches its planted mode counts as "
                    "correct.", ""]
        out += [f"*{m}*: {note}" for m, note in (p.get("notes") or {}).items()] + ["",
                "| run | failed | p_fail | named | final / reference / initial loss |", "|---|---|---|---|---|"]
        out += [f"| {x['run']} ({x['scale']}, {', '.join(f'{k}={v}' for k, v in x['overrides'].items())}) | "
                f"{x['failed']} | {x['p_fail']:.3f} | {x['named']} | "
                f"{x['final_loss']:.3f} / {x['reference_loss']:.3f} / {x['init_loss']:.3f} |" for x in p["runs"]]
        out.append("")
    out += ["## The rules, as the code states them", "", _rule_text(), "",
            f"Predictor: {M.__doc__.strip()}", "", f"Machine: {r.get('machine', '')}", ""]
    return "\n".join(out)


if __name__ == "__main__":
    result, doc = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    fig = roc_figure(result, doc.parent / "early_warning_figures" / "roc.png")
    doc.write_text(render(result, fig and fig.relative_to(doc.parent)))
