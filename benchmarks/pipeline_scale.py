"""How the workflow scales to a 10,000-run grid: Snakemake dry-run time and aggregation time.

1. Copies Snakefile, rules/, workflow/ and stability/ into a temp directory and writes a
   synthetic workflow config there: one study of 10 scales x 20 LRs x 10 variants x 5 seeds
   = 10,000 runs (sizes configurable).
2. Times the grid expansion in-process (what rules/common.smk does at parse time), the
   same plus every run id and manifest row in a fresh process (no warm caches), then
   `snakemake -n --quiet all --cores 1` on a fresh directory (nothing trained: every job is
   planned; target <= 30 s). With --profile, reruns it under cProfile and prints where the
   time goes (our input functions / params lambdas vs Snakemake itself).
3. Writes 10,000 fake finished runs (results/runs/<id>/{config.yaml, summary.json,
   metrics.parquet} with the real run ids, configs and metric columns), then times
   stability.analysis.aggregate: build_runs, build_curves and the two parquet writes, i.e.
   write_study_tables (target <= 10 s); optionally a second dry run with every run
   finished (the "nothing to train" DAG a user sees after a study).
   Everything lives in a temp dir on /dev/shm when possible (--tmpdir): the metrics files
   are read back from the page cache, as right after a study; a cold read is slower.

    python benchmarks/pipeline_scale.py            # 10,000 runs (~2-3 min on 2 cores)
    python benchmarks/pipeline_scale.py --quick    # 2,000 runs
    python benchmarks/pipeline_scale.py --profile  # + cProfile of the dry run
    python benchmarks/pipeline_scale.py --finished-dryrun   # + a dry run of the finished study

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _report import emit, machine  # noqa: E402
from stability.analysis import aggregate as agg  # noqa: E402
from stability.io import write_parquet  # noqa: E402
from stability.config import dump_yaml, flatten  # noqa: E402
from stability.grid import expand  # noqa: E402
from stability import sizes  # noqa: E402
from stability.resources import vocab_estimate  # noqa: E402

VARIANTS = {
    "all_on": {},
    "no_qk_ln": {"model.qk_layernorm": "none"},
    "no_z_loss": {"loss.z_loss": 0.0},
    "no_wd": {"optim.weight_decay": 0.0},
    "no_warmup": {"optim.warmup_steps": 0},
    "eps_1e-3": {"optim.eps": 1.0e-3},
    "coupled_wd": {"optim.independent_weight_decay": False, "optim.weight_decay": 0.1},
    "mup_simple": {"model.parametrization": "mup_simple"},
    "qk_full": {"model.qk_layernorm": "full"},
    "kappa_30": {"model.qk_layernorm": "none", "model.qk_kappa": 30.0},
}


def workflow_config(n_scales: int, n_lrs: int, n_variants: int, n_seeds: int) -> dict:
    scales = {f"s{i}": {"d_model": 32 * (i + 1), "n_layers": 2 + i // 3, "head_dim": 16} for i in range(n_scales)}
    lrs = [float(f"{x:.3g}") for x in np.logspace(-4, 0, n_lrs)]
    names = list(VARIANTS)[:n_variants]
    while len(names) < n_variants:  # more variants than the named ones: vary the epsilon
        names.append(f"eps_{len(names)}")
    variants = {n: VARIANTS.get(n, {"optim.eps": 10.0 ** -(len(n))}) for n in names}
    return {
        "results": "results",
        "code_version": 1,
        "findings_doc": "results/findings.md",
        "train_threads": 1,
        "defaults": {"train.steps": 300, "train.batch_size": 16, "train.seq_len": 128, "train.log_every": 10,
                     "train.eval_every": 100, "optim.warmup_steps": 30, "data.n_train_tokens": 2_000_000,
                     "data.n_val_tokens": 65_536},
        "scales": scales,
        "analysis": {"logit_threshold": 1.0e4},
        "studies": {"big": {"findings": [1, 8, 10, 11], "scales": list(scales), "lrs": lrs,
                            "seeds": list(range(n_seeds)), "variants": variants, "reference": "all_on"}},
    }


def copy_workflow(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copy2(REPO / "Snakefile", dst / "Snakefile")
    for d in ("rules", "workflow", "stability"):
        shutil.copytree(REPO / d, dst / d, ignore=ignore)


def snakemake_cmd(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--snakefile", str(workdir / "Snakefile"),
            "--directory", str(workdir), "--quiet", "all"]


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def time_dry_run(workdir: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the snakemake process, its output)."""
    c0, t0 = _children_cpu(), time.perf_counter()
    p = subprocess.run(snakemake_cmd(workdir), capture_output=True, text=True, cwd=workdir)
    dt, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if p.returncode != 0:
        raise SystemExit(f"snakemake -n failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return dt, cpu, (p.stdout + p.stderr)


def profile_dry_run(workdir: Path, out: Path, top: int) -> tuple[float, str]:
    """The same dry run under cProfile (in a subprocess); returns (wall, report text)."""
    prof = out / "dryrun.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "snakemake"] + snakemake_cmd(workdir)[3:]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"profiled snakemake -n failed:\n{p.stderr[-3000:]}")
    st = pstats.Stats(str(prof))
    buf = io.StringIO()
    st.stream = buf
    st.sort_stats("cumulative").print_stats(top)
    st.sort_stats("tottime").print_stats(top)
    # Our own code called from the Snakefile / rules (paths inside the copied workflow).
    buf.write("\n--- functions defined in the workflow (Snakefile, rules/*.smk, stability/) by cumulative time ---\n")
    st.sort_stats("cumulative").print_stats(str(workdir).replace("\\", "/"), top)
    return dt, buf.getvalue()


# ---- run ids in a fresh process -------------------------------------------------------------

_FINGERPRINT = """
import hashlib, sys, time, yaml
sys.path.insert(0, sys.argv[1])
import stability.grid as g
assert g.__file__.startswith(sys.argv[1]), g.__file__
cfg = yaml.safe_load(open(sys.argv[2]))
t0 = time.perf_counter()
studies = g.expand(cfg)
runs = g.runs_by_id(studies)
ids = [sorted(st.run_ids) for st in studies.values()]
man = [pt.manifest_row() for st in studies.values() for pt in st.points]
t1 = time.perf_counter()
h = hashlib.sha256()
for rid, c in sorted(runs.items()):
    h.update(f"{rid} {c.data_id()} {g.set_args(c)}\\n".encode())
print(h.hexdigest(), len(runs), round(t1 - t0, 3))
"""


def fingerprint(package_root: Path, config: Path) -> tuple[str, int, float]:
    """(hash of every run id, data id and --set list; run count; expand+ids+manifest seconds),
    in a fresh process: the cost the Snakefile pays at parse time, no warm caches."""
    p = subprocess.run([sys.executable, "-c", _FINGERPRINT, str(package_root), str(config)],
                       capture_output=True, text=True, check=True)
    h, n, t = p.stdout.split()
    return h, int(n), float(t)


def fake_metrics(n_layers: int, steps: int, log_every: int, rng: np.random.Generator) -> pl.DataFrame:
    """One run's metrics.parquet with train.py's columns (values only need to look plausible)."""
    step = np.r_[0, np.arange(log_every, steps + 1, log_every)]
    n = len(step)
    cols: dict = {"step": step, "tokens": step * 2048, "lr": np.linspace(0, 1e-2, n), "loss": 5.5 - np.log1p(step) * 0.4,
                  "z_loss": rng.random(n)}
    for i in range(n_layers):
        cols[f"attn_logit_l{i}"] = rng.random(n) * 10
    cols.update({"max_attn_logit": rng.random(n) * 10, "attn_entropy_min": rng.random(n), "q_rms_l0": rng.random(n),
                 "k_rms_l0": rng.random(n), "logz_mean": rng.random(n), "output_logit_mean": rng.random(n)})
    g = rng.random(n)
    g[0] = np.nan
    for c in ("grad_norm", "grad_rms", "grad_rms_mlp0", "grad_rms_k0", "update_rms", "param_rms", "update_rms_mlp0",
              "update_rms_k0", "tokens_per_s"):
        cols[c] = g
    val = [None] * n
    val[0], val[-1] = 5.5, 3.0
    df = pl.DataFrame(cols).with_columns(pl.Series("val_loss", val, dtype=pl.Float64))
    order = [c for c in df.columns if c != "tokens_per_s"] + ["tokens_per_s"]
    return df.select(order).with_columns([pl.when(pl.col("step") == 0).then(None).otherwise(pl.col(c)).alias(c)
                                          for c in ("grad_norm", "grad_rms", "tokens_per_s")])


def write_fake_runs(studies, results: Path, seed: int = 0) -> dict:
    """Every run of the study as if trained: config.yaml, summary.json, metrics.parquet.

    metrics.parquet is written once per model depth and copied (distinct files, identical
    bytes): the aggregation cost is reading, not the values.
    """
    rng = np.random.default_rng(seed)
    dumper = getattr(yaml, "CSafeDumper", None)
    # byte-identical to stability.config.dump_yaml (checked on the default study), 3x faster
    dump = (lambda c: yaml.dump(c.to_dict(), Dumper=dumper, sort_keys=False)) if dumper else dump_yaml
    runs = {}
    for st in studies.values():
        for p in st.points:
            runs.setdefault(p.run_id, p.config)
    templates: dict[int, Path] = {}
    tpl_dir = results / "_templates"
    tpl_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for run_id, cfg in runs.items():
        d = results / "runs" / run_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.yaml").write_text(dump(cfg))
        L = cfg.model.n_layers
        if L not in templates:
            templates[L] = tpl_dir / f"metrics_l{L}.parquet"
            fake_metrics(L, cfg.train.steps, cfg.train.log_every, rng).write_parquet(templates[L])
        shutil.copyfile(templates[L], d / "metrics.parquet")
        vocab = vocab_estimate(cfg)
        diverged = bool(rng.random() < 0.3)
        done = int(rng.integers(20, cfg.train.steps)) if diverged else cfg.train.steps
        summary = {
            "run_id": run_id, "init_loss": 5.55, "final_loss": float(3 + rng.random()), "final_train_loss": 3.1,
            "diverged": diverged, "diverged_step": done if diverged else None,
            "diverged_reason": "loss above init_loss + 1.0 for 3 checks" if diverged else None,
            "max_attn_logit": float(rng.random() * 100), "probe_step": 100, "max_attn_logit_at_probe": 12.0,
            "grad_rms_final": 1e-3, "update_rms_final": 0.5, "grad_rms_all_final": 1e-3, "logz_final": 0.1,
            "params": sizes.n_params(cfg.model, vocab), "non_embedding_params": sizes.non_embedding_params(cfg.model),
            "flops_per_token": sizes.flops_per_token(cfg.model, vocab, cfg.train.seq_len),
            "steps_completed": done, "steps_planned": cfg.train.steps, "stopped_early": done < cfg.train.steps,
            "resumed_from_step": None, "wall_time_s": 60.0, "tokens_per_s": 10000.0, "device": "cpu", "threads": 1,
            "entropy_floor": 2.0, "data_id": cfg.data_id(), "slurm_job_id": None,
            "versions": {"stability": "0.1.0", "torch": "2.13.0", "python": platform.python_version(),
                         "numpy": np.__version__, "polars": pl.__version__},
            "config": flatten(cfg.to_dict()),
        }
        (d / "summary.json").write_text(json.dumps(summary))
    # The token cache the train jobs depend on, older than every run (else mtime reruns them).
    old = time.time() - 3600
    for cfg in {c.data_id(): c for c in runs.values()}.values():
        meta = results / "data" / cfg.data_id() / "meta.json"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text("{}")
        os.utime(meta, (old, old))
    shutil.rmtree(tpl_dir)
    return {"runs": len(runs), "write_s": time.perf_counter() - t0}


def scratch_dir(wanted: Path | None) -> str | None:
    """A RAM-backed directory when there is one with room (the fake study is ~200 MB in
    ~40,000 files; creating and deleting them on a slow virtual disk dominates otherwise)."""
    if wanted is not None:
        return str(wanted)
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * 2**30:
            return str(shm)
    except OSError:
        pass
    return None


def timed(fn, *a):
    """(result, wall seconds); the CPU seconds (all threads) go to timed.cpu."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*a)
    timed.cpu = time.process_time() - c0
    return out, time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2,000 runs (10 scales x 20 LRs x 10 variants x 1 seed)")
    p.add_argument("--grid", default=None, help="scales,lrs,variants,seeds (default 10,20,10,5)")
    p.add_argument("--profile", action="store_true", help="also run the dry run under cProfile and print the top functions")
    p.add_argument("--profile-out", type=Path, default=None, help="write the cProfile report here")
    p.add_argument("--finished-dryrun", action="store_true",
                   help="also time a dry run after every run is finished (the 'nothing to train' DAG)")
    p.add_argument("--keep", type=Path, default=None, help="build in this directory and keep it (default: a temp dir)")
    p.add_argument("--tmpdir", type=Path, default=None,
                   help="where the temp dir goes (default /dev/shm when it has 2 GB free, else the system temp dir: "
                        "deleting 40,000 files took 2.5 minutes on this machine's disk)")
    p.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    args = p.parse_args(argv)
    grid = args.grid or ("10,20,10,1" if args.quick else "10,20,10,5")
    n_scales, n_lrs, n_variants, n_seeds = (int(v) for v in grid.split(","))

    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="pipeline_scale.", dir=scratch_dir(args.tmpdir))) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"grid": {"scales": n_scales, "lrs": n_lrs, "variants": n_variants, "seeds": n_seeds}}
    try:
        copy_workflow(work)
        cfg = workflow_config(n_scales, n_lrs, n_variants, n_seeds)
        (work / "config").mkdir(exist_ok=True)
        (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

        # In-process pieces of what the Snakefile does at parse time, and the aggregate rule's params.
        studies, t_expand = timed(expand, cfg)
        cpu_expand = timed.cpu
        st = studies["big"]
        _, t_ids = timed(lambda: st.run_ids)
        manifest, t_manifest = timed(lambda: [pt.manifest_row() for pt in st.points])
        out.update(runs=len(st.points), unique_runs=len(st.run_ids), grid_expand_s=t_expand, grid_expand_cpu_s=cpu_expand,
                   study_run_ids_s=t_ids, manifest_rows_s=t_manifest)
        print(f"grid: {len(st.points)} points, {out['unique_runs']} unique runs; expand {t_expand:.2f} s "
              f"({cpu_expand:.2f} s CPU), "
              f"Study.run_ids {t_ids:.2f} s, manifest rows {t_manifest:.2f} s (in-process)", flush=True)

        dt, cpu, log = time_dry_run(work)
        out.update(dryrun_s=dt, dryrun_cpu_s=cpu)
        jobs_line = next((ln for ln in log.splitlines() if ln.strip().startswith("total")), "")
        out["dryrun_jobs"] = jobs_line.split()[-1] if jobs_line else None
        print(f"snakemake -n (nothing trained): {dt:.1f} s wall, {cpu:.1f} s CPU, {out['dryrun_jobs']} jobs", flush=True)

        fp = fingerprint(work, work / "config" / "config.yaml")
        out.update(expand_ids_manifest_fresh_s=fp[2], fingerprint=fp[0][:16])
        print(f"expand + run ids + manifest rows in a fresh process: {fp[2]:.2f} s ({fp[1]} runs; "
              f"run ids/data ids/--set lists hash {fp[0][:16]})", flush=True)

        if args.profile:
            pdt, report = profile_dry_run(work, work, 30)
            out["dryrun_profiled_s"] = pdt
            if args.profile_out:
                args.profile_out.parent.mkdir(parents=True, exist_ok=True)
                args.profile_out.write_text(report)
            print(f"\n--- cProfile of snakemake -n ({pdt:.1f} s under the profiler) ---\n{report}", flush=True)

        info = write_fake_runs(studies, work / "results")
        out["fake_runs_write_s"] = info["write_s"]
        print(f"wrote {info['runs']} fake runs in {info['write_s']:.1f} s", flush=True)
        runs_dir = work / "results" / "runs"
        runs_df, t_runs = timed(agg.build_runs, manifest, runs_dir)
        c_runs = timed.cpu
        curves_df, t_curves = timed(agg.build_curves, manifest, runs_dir)
        c_curves = timed.cpu
        study_dir = work / "results" / "studies" / "big"
        _, t_write = timed(lambda: (write_parquet(study_dir / "runs.parquet", runs_df),
                                    write_parquet(study_dir / "curves.parquet", curves_df)))
        c_write = timed.cpu
        out.update(build_runs_s=t_runs, build_curves_s=t_curves, write_parquet_s=t_write,
                   aggregate_s=t_runs + t_curves + t_write, aggregate_cpu_s=c_runs + c_curves + c_write,
                   build_runs_cpu_s=c_runs, build_curves_cpu_s=c_curves,
                   runs_rows=runs_df.height, runs_cols=runs_df.width, curves_rows=curves_df.height)
        print(f"aggregate (what the aggregate rule runs): build_runs {t_runs:.2f} s ({runs_df.height} x {runs_df.width}), "
              f"build_curves {t_curves:.2f} s ({curves_df.height} rows), two parquet writes {t_write:.2f} s "
              f"-> {out['aggregate_s']:.2f} s wall, {out['aggregate_cpu_s']:.2f} s CPU (all threads)", flush=True)

        if args.finished_dryrun:
            # The finished study: train outputs exist and are newer than their inputs.
            dt2, cpu2, log2 = time_dry_run(work)
            out.update(dryrun_finished_s=dt2, dryrun_finished_cpu_s=cpu2)
            jl = next((ln for ln in log2.splitlines() if ln.strip().startswith("total")), "")
            out["dryrun_finished_jobs"] = jl.split()[-1] if jl else None
            print(f"snakemake -n (every run finished): {dt2:.1f} s wall, {cpu2:.1f} s CPU, "
                  f"{out['dryrun_finished_jobs']} jobs", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    out.update(dryrun_target_s=30, aggregate_target_s=10, wall_s=time.perf_counter() - t_start,
               machine=machine("end"),
               snakemake=subprocess.run([sys.executable, "-m", "snakemake", "--version"], capture_output=True,
                                        text=True).stdout.strip())
    out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}
    return emit(out, args.json)


if __name__ == "__main__":
    main()
