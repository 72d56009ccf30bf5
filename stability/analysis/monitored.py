"""`stability analyse-runs DIR [DIR ...]`: a study's analysis on runs the monitor recorded.

Each DIR is a run folder written by `stability.attach.Monitor` (metrics.parquet and
run_card.json). The runs become one study: its size axis the cards' non-embedding
parameters, its LR axis their peak LRs, its variants and seeds theirs. The same code as a
study's then builds the tables (aggregate.aggregate: runs.parquet, curves.parquet;
sensitivity_table; fits.fit_table; forecast.forecast), the figures (figures.py: attention
logit over steps and vs LR, output logits and log Z over steps, the backtest when there
are 4 sizes) plus the logit-vs-size fit with the forecast, and one sentence per LR:

    at 1.0e+09 parameters and LR 0.003, the max attention logit is predicted to reach 4.1e+02
    by step 200 (90% interval 2.0e+02 to 8.3e+02; ...)

The probe step (the step the fits read, `max_attn_logit_at_probe`) is `probe_step`, by
default the last step every run logged that had not diverged. Bad input raises ConfigError
(the CLI: exit 2, one line naming the folder and what was expected).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from ..attach import METRICS, RUN_CARD, run_summary
from ..config import ConfigError
from ..io import atomic_write, write_json, write_parquet, write_text
from .aggregate import aggregate
from .fits import fit_table
from .forecast import forecast, forecast_table
from .sensitivity import sensitivity_table

STUDY = "monitored"
EXPECTED = "a monitored run folder (metrics.parquet and run_card.json, written by stability.attach.Monitor)"
FIGURES = ("attn_logit_vs_step", "attn_logit_vs_lr", "logz_vs_step", "logit_vs_size", "forecast")
_NEEDED = ("step", "loss", "max_attn_logit")


def _load(d: Path) -> tuple[dict, list[dict]]:
    """(run card, metrics rows) of one folder; ConfigError naming it and what is missing."""
    if not d.is_dir():
        raise ConfigError(f"{d}: not a folder; expected {EXPECTED}")
    for f in (METRICS, RUN_CARD):
        if not (d / f).is_file():
            raise ConfigError(f"{d}: no {f}; expected {EXPECTED}")
    try:
        card = json.loads((d / RUN_CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{d}: {RUN_CARD} is not readable JSON ({type(e).__name__}); expected {EXPECTED}") from None
    try:
        df = pl.read_parquet(d / METRICS)
    except Exception as e:  # polars raises its own errors for a damaged file
        raise ConfigError(f"{d}: {METRICS} is not a readable Parquet file ({type(e).__name__}); "
                          f"expected {EXPECTED}") from None
    if not isinstance(card, dict):
        raise ConfigError(f"{d}: {RUN_CARD} is not a JSON object; expected {EXPECTED}")
    for key in ("non_embedding_params", "peak_lr"):
        v = card.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{d}: {RUN_CARD} has {key}={v!r}; expected a positive number "
                              f"(pass {key}= to Monitor when it cannot tell)")
    missing = [c for c in _NEEDED if c not in df.columns]
    if missing:
        why = " (no attention seen: is it computed by F.scaled_dot_product_attention or through the " \
              "observe_attention_logits hook?)" if "max_attn_logit" in missing else ""
        raise ConfigError(f"{d}: {METRICS} lacks column(s) {', '.join(missing)}{why}; expected {EXPECTED}")
    if df.height == 0:
        raise ConfigError(f"{d}: {METRICS} has no rows; expected {EXPECTED} with at least one logged step")
    return card, df.sort("step").to_dicts()


def _run_id(d: Path, card: dict) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(card.get("name") or d.name)).strip("._") or "run"
    return f"{name}-{hashlib.sha256(str(d.resolve()).encode()).hexdigest()[:8]}"


def default_probe_step(runs: Sequence[tuple[dict, list[dict]]]) -> int:
    """The last step every run logged that did not diverge (any run, if all did)."""
    lasts = {}
    for card, rows in runs:
        lasts[id(rows)] = (rows[-1]["step"], run_summary(rows, card)["diverged"])
    ok = [s for s, div in lasts.values() if not div]
    return int(min(ok or [s for s, _ in lasts.values()]))


def parse_target(text: str | None) -> dict[str, float]:
    """"7B=7e9" -> {"7B": 7e9}; "7e9" -> {"7e9": 7e9}; None -> {}. Raises ConfigError."""
    if not text:
        return {}
    name, _, num = text.rpartition("=")
    try:
        value = float(num)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--target: {text!r}; expected [NAME=]PARAMS with PARAMS a positive number, e.g. 7B=7e9")
    return {name or num: value}


def load_study(dirs: Sequence[str | Path], probe_step: int | None = None) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(runs table, curves table, probe step) of the monitored runs in `dirs`, as
    aggregate.aggregate builds a study's (one study `monitored`; `run_dir` added).

    Raises ConfigError: no folder, a folder given twice, a folder that is not a monitored
    run, runs of different data (the cards' `data`), a probe step < 1."""
    if not dirs:
        raise ConfigError("analyse-runs: no run folders given; expected one or more monitored run folders")
    paths = [Path(d) for d in dirs]
    seen: dict[Path, Path] = {}
    for p in paths:
        if p.resolve() in seen:
            raise ConfigError(f"{p}: given twice (also as {seen[p.resolve()]}); expected each run once")
        seen[p.resolve()] = p
    loaded = [_load(p) for p in paths]
    data0 = loaded[0][0].get("data")
    for p, (card, _) in zip(paths, loaded):
        if card.get("data") != data0:
            raise ConfigError(f"{p}: data {card.get('data')!r}, but {paths[0]} has {data0!r}; expected runs on "
                              "one data set (the run cards' `data`)")
    probe = int(probe_step) if probe_step is not None else default_probe_step(loaded)
    if probe < 1:
        raise ConfigError(f"--probe-step: {probe}; expected a step >= 1")
    manifest = []
    with tempfile.TemporaryDirectory(prefix="analyse-runs-") as tmp:
        for p, (card, rows) in zip(paths, loaded):
            rid = _run_id(p, card)
            run = Path(tmp) / rid
            run.mkdir()
            os.symlink((p / METRICS).resolve(), run / METRICS)
            summary = run_summary(rows, {**card, "name": rid}, probe)
            write_json(run / "summary.json", summary)
            manifest.append({"study": STUDY, "run_id": rid, "scale": str(int(card["non_embedding_params"])),
                             "variant": str(card.get("variant") or "default"), "lr": float(card["peak_lr"]),
                             "seed": int(card["seed"]) if isinstance(card.get("seed"), int) else 0,
                             "run_dir": str(p)})
        runs, curves = aggregate(manifest, Path(tmp))
    dirs_df = pl.DataFrame({"run_id": [m["run_id"] for m in manifest], "run_dir": [m["run_dir"] for m in manifest]})
    return runs.join(dirs_df, on="run_id", how="left", maintain_order="left"), curves, probe


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def forecast_sentences(fc: dict, probe: int, lr: float | None = None) -> list[str]:
    """One sentence per (variant, LR) forecast of forecast.json `fc` (only LR `lr` if given)."""
    out = []
    fits = {(f["variant"], f["lr"]): f for f in fc.get("fits") or []}
    several = len({f["variant"] for f in fc.get("forecasts") or []}) > 1
    threshold = fc.get("threshold")
    for f in fc.get("forecasts") or []:
        if lr is not None and not math.isclose(f["lr"], lr, rel_tol=1e-9):
            continue
        fit = fits.get((f["variant"], f["lr"])) or {}
        pred = f.get("predicted")
        if pred is None or not math.isfinite(pred):
            out.append(f"at {f['target_params']:.3g} parameters and LR {f['lr']:g}: no forecast "
                       f"({fit.get('n_sizes', 0)} size(s) with a max logit at step {probe}; a fit needs 2)")
            continue
        lo, hi = (f.get("interval") or [None, None])[:2]
        who = f" ({f['variant']})" if several else ""
        verdict = (f"above the divergence threshold {threshold:.3g}" if f.get("predicted_diverged")
                   else f"below the divergence threshold {threshold:.3g}")
        kind = {1: "a line", 2: "a quadratic"}.get(fit.get("degree"), f"degree {fit.get('degree')}")
        out.append(f"at {f['target_params']:.3g} parameters and LR {f['lr']:g}{who}, the max attention logit is "
                   f"predicted to reach {_fmt(pred)} by step {probe} (90% interval {_fmt(lo)} to {_fmt(hi)}; "
                   f"{kind} in log-log through {fit.get('n_sizes')} sizes, R^2 {_fmt(fit.get('r2'), '.3f')}; "
                   f"{verdict})")
    return out


def logit_vs_size(fc: dict, probe: int):
    """The logit-vs-size fit per LR (log-log; points: each run's max logit at the probe step,
    crosses for failed runs) extended to the forecast targets, each with its interval."""
    import altair as alt

    from ..figures import NoData, OKABE_ITO, _chart_data, fmt_params
    pts, lines, preds = [], [], []
    for f in fc.get("fits") or []:
        label = f"{f['lr']:g}" + (f" ({f['variant']})" if len({g['variant'] for g in fc['fits']}) > 1 else "")
        for p in f.get("points") or []:
            if p.get("logit") is not None and p["logit"] > 0:
                pts.append({"lr": label, "params": p["params"], "logit": p["logit"],
                            "outcome": "failed" if p.get("failed") else "trained"})
        if f.get("coef"):
            sizes = [p["params"] for p in f["points"]] + [t["target_params"] for t in fc.get("forecasts") or []
                                                          if t["lr"] == f["lr"] and t["variant"] == f["variant"]]
            grid = np.logspace(math.log10(min(sizes)), math.log10(max(sizes)), 30)
            lines += [{"lr": label, "params": float(g), "logit": float(10 ** np.polyval(f["coef"], math.log10(g)))}
                      for g in grid]
    for t in fc.get("forecasts") or []:
        if t.get("predicted") is not None and math.isfinite(t["predicted"]):
            lo, hi = t["interval"]
            label = f"{t['lr']:g}" + (f" ({t['variant']})" if len({g['variant'] for g in fc['fits']}) > 1 else "")
            preds.append({"lr": label, "params": t["target_params"], "logit": t["predicted"], "lo": lo, "hi": hi,
                          "target": f"{t['target']} ({fmt_params(t['target_params'])} params)"})
    if not pts:
        raise NoData("no positive max attention logit at the probe step")
    domain = sorted({p["lr"] for p in pts}, key=lambda s: float(s.split()[0]))
    colour = alt.Color("lr:N", title="Peak LR", sort=domain, scale=alt.Scale(domain=domain, range=OKABE_ITO))
    x = alt.X("params:Q", title="Non-embedding parameters", scale=alt.Scale(type="log"), axis=alt.Axis(format=".2~s"))
    y = alt.Y("logit:Q", title=f"Max attention logit at step {probe}", scale=alt.Scale(type="log"))
    layers = [alt.Chart(_chart_data(pl.DataFrame(pts))).mark_point(size=60, filled=True).encode(
        x=x, y=y, color=colour, shape=alt.Shape("outcome:N", title="Run", scale=alt.Scale(
            domain=["trained", "failed"], range=["circle", "cross"])), tooltip=["lr", "params", "logit", "outcome"])]
    if lines:
        layers.append(alt.Chart(_chart_data(pl.DataFrame(lines))).mark_line(strokeDash=[5, 3]).encode(
            x=x, y=y, color=colour, detail="lr:N"))
    if preds:
        df = _chart_data(pl.DataFrame(preds))
        layers.append(alt.Chart(df).mark_rule(strokeWidth=2).encode(x=x, y="lo:Q", y2="hi:Q", color=colour))
        layers.append(alt.Chart(df).mark_point(size=120, shape="diamond", filled=True).encode(
            x=x, y=y, color=colour, tooltip=["target", "lr", "logit", "lo", "hi"]))
    title = alt.Title("Max attention logit vs model size, fitted and extrapolated",
                      subtitle=["Points: each run at the probe step (cross: failed); dashed: the fit in log-log; "
                                "diamond and bar: the forecast and its 90% bootstrap interval"])
    return alt.layer(*layers).properties(width=420, height=280, title=title)


def analyse_runs(dirs: Sequence[str | Path], out: str | Path, target: dict[str, float] | None = None,
                 lr: float | None = None, probe_step: int | None = None,
                 formats: Sequence[str] = ("png", "html")) -> dict[str, Any]:
    """Write the study's tables, figures and forecast for the monitored runs in `dirs` into
    `out` and return {"sentences", "probe_step", "paths", "n_runs", "sizes"}.

    out/: runs.parquet, curves.parquet, sensitivity.parquet, fits.parquet, forecast.json,
    forecast.csv, forecast.txt (the sentences) and figures/<name>.<format>. target: {name:
    non-embedding params} to forecast (default: one more step of the size ladder). lr:
    forecast sentences for this peak LR only. Raises ConfigError as load_study, for an `lr`
    no run has, or an unknown format."""
    from .. import figures
    bad = [f for f in formats if f not in ("png", "svg", "html")]
    if bad:
        raise ConfigError(f"--formats: {','.join(bad)}; expected some of png, svg, html")
    runs, curves, probe = load_study(dirs, probe_step)
    lrs = sorted(set(runs["lr"].to_list()))
    if lr is not None and not any(math.isclose(lr, x, rel_tol=1e-9) for x in lrs):
        raise ConfigError(f"--lr: {lr:g} is not a peak LR of these runs; expected one of {', '.join(f'{x:g}' for x in lrs)}")
    options: dict[str, Any] = {"forecast": True}
    if target:
        options["forecast_targets"] = dict(target)
    info = {"name": STUDY, "findings": [], "options": options}
    sens = sensitivity_table(runs)
    fits = fit_table(runs, sens, options, study=STUDY)
    fc = forecast(runs, info)
    out = Path(out)
    paths = {
        "runs": write_parquet(out / "runs.parquet", runs),
        "curves": write_parquet(out / "curves.parquet", curves),
        "sensitivity": write_parquet(out / "sensitivity.parquet", sens),
        "fits": write_parquet(out / "fits.parquet", fits),
        "forecast": write_json(out / "forecast.json", fc),
        "forecast_table": atomic_write(out / "forecast.csv", lambda p: forecast_table(fc).write_csv(p)),
    }
    sentences = forecast_sentences(fc, probe, lr)
    sizes = sorted(set(runs["non_embedding_params"].drop_nulls().to_list()))
    if len(sizes) < 2:
        sentences.append(f"only {len(sizes)} model size: no logit-vs-size fit (it needs 2 sizes, a backtest 4)")
    paths["sentences"] = write_text(out / "forecast.txt", "".join(s + "\n" for s in sentences))
    tables = {"runs": runs, "curves": curves, "sensitivity": sens, "forecast": fc}
    for name in FIGURES:
        if name == "forecast" and fc.get("backtest_status") != "ok":
            continue  # the backtest needs 4 sizes; with fewer its figure would only say so
        if name == "logit_vs_size":
            try:
                chart = logit_vs_size(fc, probe)
            except figures.NoData as e:
                chart = figures.placeholder(name, str(e))
        else:
            chart = figures.build(name, tables)
        paths[f"figure:{name}"] = figures.save_chart(
            chart, {fmt: out / "figures" / f"{name}.{fmt}" for fmt in formats})
    return {"sentences": sentences, "probe_step": probe, "paths": paths, "n_runs": runs.height, "sizes": sizes}
