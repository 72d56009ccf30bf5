"""The Python half of scripts/gpu-check.sh: machine facts, the gpu.yaml training slice, and
the one JSON summary. The shell script owns the order, the timeouts and the environment;
each subcommand here is one section's work or the final summary, and imports only the
standard library at module level (torch and the package where a section needs them), so
the summary is written even where torch or polars is broken.

    python benchmarks/gpu_check.py machine OUT/machine.json
    python benchmarks/gpu_check.py train-slice OUT [--cpu]
    python benchmarks/gpu_check.py summarize OUT
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The gpu.yaml slice section 4 trains through the CLI: one scale, one LR, one variant of
# the attn_logit_growth study, on the repo's own text. 300 steps x 64 x 512 tokens at g3
# (19M non-embedding parameters) is ~10M tokens: tens of seconds on an H200.
SLICE = {"study": "attn_logit_growth", "scale": "g3", "lr": 1e-2, "variant": "qk_ln", "steps": 300}
# A few seconds on a 2-core CPU: proves the plumbing, measures nothing about GPUs.
CPU_SLICE_OVERRIDES = {
    "model.d_model": 64, "model.n_layers": 2, "model.head_dim": 32, "train.batch_size": 8, "train.seq_len": 64,
    "train.device": "cpu", "train.precision": "auto", "train.log_every": 10, "train.probe_every": 20,
    "train.eval_every": 40, "train.eval_batches": 2, "train.checkpoint_every": 20,
}
CPU_SLICE_STEPS = 40


# ---- machine ------------------------------------------------------------------------------

def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict:
    """What ran the check: GPU (nvidia-smi and torch's view), driver, torch, CUDA, Python."""
    info: dict = {"hostname": platform.node(), "python": platform.python_version(), "platform": platform.platform(),
                  "cpu_count": os.cpu_count()}
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm",
                "--format=csv,noheader"])
    info["nvidia_smi"] = [dict(zip(("name", "driver", "memory_total", "power_limit", "sm_clock_max"),
                                   (v.strip() for v in line.split(","))))
                          for line in smi.splitlines()] if smi else None
    head = _run(["git", "-C", str(REPO), "rev-parse", "HEAD"])  # no .git in a bare copy of the tree
    info["git_commit"] = head or os.environ.get("STABILITY_GPU_CHECK_COMMIT")
    info["git_dirty"] = bool(_run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])) if head else None
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - a broken torch is a fact to record, not a crash
        info["torch_error"] = repr(e)
        return info
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                cuda_available=torch.cuda.is_available(),
                float32_matmul_precision=torch.get_float32_matmul_precision())
    if torch.cuda.is_available():
        devs = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devs.append({"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": p.total_memory / 2**30,
                         "multiprocessors": p.multi_processor_count})
        info["cuda_devices"] = devs
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    # Triton (torch.compile's GPU backend) builds its launcher stubs with the system C compiler.
    info["c_compiler"] = shutil.which("cc") or shutil.which("gcc")
    for mod in ("numpy", "polars", "yaml", "pytest", "triton"):
        try:
            info[f"{mod}_version"] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            info[f"{mod}_version"] = f"unavailable: {type(e).__name__}"
    return info


# ---- the gpu.yaml slice ---------------------------------------------------------------------

def write_corpus(path: Path) -> dict:
    """The repo's own text (every tracked-looking .md and .py file, sorted) as one UTF-8 file,
    documents separated by two blank lines (data.py's text-source document boundary). The
    device has no network; this text is on every checkout."""
    files = sorted(p for pattern in ("*.md", "docs/*.md", "benchmarks/*.md", "stability/**/*.py",
                                     "benchmarks/*.py", "tests/*.py", "scripts/*.py")
                   for p in REPO.glob(pattern) if p.is_file())
    texts = [p.read_text(encoding="utf-8") for p in files]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n\n".join(texts), encoding="utf-8")
    return {"files": len(files), "bytes": path.stat().st_size}


def slice_overrides(text: Path, cache: Path, cpu: bool) -> dict:
    """`--set` values for the slice: gpu.yaml's defaults, its g3 scale and the study's
    variant, then local text instead of C4 and a short schedule with gpu.yaml's warm-up
    fraction (500 of 5000 steps)."""
    import yaml
    gpu = yaml.safe_load((REPO / "config" / "gpu.yaml").read_text())
    sets = dict(gpu["defaults"])
    sets.update({f"model.{k}": v for k, v in gpu["scales"][SLICE["scale"]].items()})
    sets.update(gpu["studies"][SLICE["study"]]["variants"][SLICE["variant"]] or {})
    steps = CPU_SLICE_STEPS if cpu else SLICE["steps"]
    warm = round(steps * gpu["defaults"]["optim.warmup_steps"] / gpu["defaults"]["train.steps"])
    sets.update({"optim.lr": SLICE["lr"], "train.steps": steps, "optim.warmup_steps": warm,
                 "train.checkpoint_every": 100,  # one mid-run checkpoint save on the device
                 "data.source": "text", "data.path": str(text), "data.tokenizer": "bytes",
                 "data.cache_dir": str(cache)})
    if cpu:
        sets.update(CPU_SLICE_OVERRIDES)
    return sets


def train_slice(out: Path, work: Path, cpu: bool) -> dict:
    """Train the slice through the CLI (`python -m stability train`), copy its config,
    metrics and summary under out/train/, and return what the summary reports."""
    dest = out / "train"
    dest.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(work / "corpus.txt")
    sets = slice_overrides(work / "corpus.txt", work / "data", cpu)
    cmd = [sys.executable, "-m", "stability", "train", "--out", str(work / "run")]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    (dest / "command.txt").write_text(" ".join(cmd) + "\n")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO)  # stdout/stderr go to the section's log
    wall = time.perf_counter() - t0
    for name in ("config.yaml", "metrics.parquet", "summary.json"):
        if (work / "run" / name).is_file():
            shutil.copy2(work / "run" / name, dest / name)
    result = {"slice": {**SLICE, "steps": sets["train.steps"],
                        **{k: sets[k] for k in ("model.d_model", "model.n_layers", "model.head_dim",
                                                "train.batch_size", "train.seq_len", "train.precision")}},
              "corpus": corpus, "returncode": proc.returncode,
              "wall_s": wall, "device_mode": "cpu" if cpu else "cuda"}
    summary_path = work / "run" / "summary.json"
    if proc.returncode == 0 and summary_path.is_file():
        s = json.loads(summary_path.read_text())
        result.update({k: s.get(k) for k in ("run_id", "device", "diverged", "diverged_step", "diverged_reason",
                                             "init_loss", "final_loss", "final_train_loss", "max_attn_logit",
                                             "steps_completed", "wall_time_s", "tokens_per_s", "max_logit_source", "params",
                                             "non_embedding_params", "flops_per_token")})
        result["tokens_per_s_logged_median"] = _logged_tokens_per_s(work / "run" / "metrics.parquet")
    (dest / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)
    return result


def _logged_tokens_per_s(path: Path) -> float | None:
    """Median tokens/s of the logged windows after the first (which holds CUDA warm-up)."""
    try:
        import polars as pl
        vals = pl.read_parquet(path)["tokens_per_s"].drop_nulls().to_list()
    except Exception:  # noqa: BLE001 - a number we cannot read is reported as missing
        return None
    vals = sorted(vals[1:]) if len(vals) > 1 else vals
    return vals[len(vals) // 2] if vals else None


# ---- summary ------------------------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _junit(path: Path) -> dict | None:
    """Each test's outcome, time and recorded properties from pytest's JUnit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    tests = []
    for case in root.iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome, message = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag], el.get("message")
        props = {}
        for p in case.iter("property"):
            v = p.get("value")
            try:  # record_property writes str(value): Python's True/False/None, numbers as text
                v = json.loads({"True": "true", "False": "false", "None": "null"}.get(v, v))
            except (TypeError, ValueError):
                pass
            props[p.get("name")] = v
        tests.append({"name": case.get("name"), "outcome": outcome, "message": message,
                      "time_s": float(case.get("time") or 0), "properties": props})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": tests}


def _section_status(sec: dict, junit: dict | None = None) -> str:
    """ok / failed (exit code) / timeout / skipped: reason; pytest all-skipped is a skip."""
    if sec.get("status", "").startswith("skipped") or sec.get("status") == "not built":
        return sec["status"]
    if sec.get("status") == "timeout":
        return "timeout"
    if junit is not None:
        c = junit["counts"]
        if c["failed"] or c["error"]:
            return f"failed: {c['failed'] + c['error']} of {sum(c.values())} tests"
        if c["skipped"] and not c["passed"]:
            reasons = sorted({t["message"] or "" for t in junit["tests"] if t["outcome"] == "skipped"})
            return "skipped: " + "; ".join(reasons)
    return "ok" if sec.get("rc") == 0 else f"failed: exit {sec.get('rc')}"


# The gpu tests' record_property names that summary.json's logit_check collects.
LOGIT_CHECK_PROPERTIES = {"bf16_vs_fp32_max_rel_err", "probe_vs_float64_max_rel_err", "kernel_vs_probe_max_rel_err",
                          "kernel_run_vs_probe_max_rel_err"}
ORDER = ("setup", "machine", "gpu_tests", "throughput", "train_slice", "throughput_compile", "fused_sweep")
THROUGHPUT_KEYS = ("device_name", "d_model", "n_layers", "head_dim", "vocab", "batch_size", "seq_len", "params",
                   "non_embedding_params", "flops_per_token", "tokens_per_s", "step_s", "achieved_tflops",
                   "mfu_vs_datasheet", "mfu_vs_matmul", "datasheet_peak_tflops", "matmul_peak_tflops",
                   "matmul_dtype", "log_step_s", "log_probe_step_s", "log_kernel_step_s", "monitoring_overhead", "compile_s", "compile_vs_eager_first_loss",
                   "max_memory_allocated_gib")


def summarize(out: Path) -> dict:
    """Collect every section's record (sections/*.json, written by the shell script) and
    its result files into out/summary.json."""
    sections = {}
    for p in sorted((out / "sections").glob("*.json"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem)):
        sec = _read_json(p) or {"status": "failed: unreadable section record"}
        sections[sec.get("name", p.stem)] = sec
    meta = _read_json(out / "run.json") or {}
    summary: dict = {"what": "scripts/gpu-check.sh: the checks of the stability project that need a GPU",
                     "mode": meta.get("mode"), "started": meta.get("started"),
                     "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     "budget_s": meta.get("budget_s"), "machine": _read_json(out / "machine.json")}

    junit = _junit(out / "gpu_tests.xml") if sections.get("gpu_tests", {}).get("rc") is not None else None
    for name, sec in sections.items():
        sec["status"] = _section_status(sec, junit if name == "gpu_tests" else None)
    if junit is not None:
        sections.setdefault("gpu_tests", {})["tests"] = junit
        checks = [t for t in junit["tests"] if LOGIT_CHECK_PROPERTIES & set(t["properties"])]
        summary["logit_check"] = {
            "what": "bf16 runs' logged max attention logits (fp32 probe) against an fp32 recompute from the "
                    "same weights and batch, the probe against a float64 recompute from the same q, k, and the "
                    "attention kernel's max scores (stability.kernel_max) against the fp32 probe",
            "status": ("ok" if checks and all(t["outcome"] == "passed" for t in checks)
                       else "skipped" if checks and all(t["outcome"] == "skipped" for t in checks)
                       else "failed" if checks else "not run"),
            "tests": {t["name"]: {"outcome": t["outcome"], **t["properties"]} for t in checks}}
    ran = {n for n, s in sections.items() if s.get("rc") is not None}  # not a leftover of an earlier run into OUT
    for name, file in (("throughput", "throughput.json"), ("throughput_compile", "throughput_compile.json")):
        r = _read_json(out / file) if name in ran else None
        if r is not None:
            sections[name]["result"] = {k: r[k] for k in THROUGHPUT_KEYS if k in r}
    r = sections.get("throughput", {}).get("result")
    if r is not None and "monitoring_overhead" in r:
        mo = r["monitoring_overhead"]
        summary["monitoring_overhead"] = {
            "what": "monitoring cost over the plain step at log_every / probe_every, max logits from the probe "
                    "on probe steps only, from the probe at every logging step, and from the attention kernel at "
                    "every logging step (benchmarks/gpu_throughput.py)",
            **{k: mo.get(k) for k in ("log_every", "probe_every", "overhead", "probe_every_log_step", "kernel",
                                      "kernel_unsupported", "kernel_target", "kernel_meets_target")}}
    r = _read_json(out / "train" / "result.json") if "train_slice" in ran else None
    if r is not None:
        sections["train_slice"]["result"] = r
    fused = _read_json(out / "fused_sweep.json") if "fused_sweep" in ran else None
    summary["fused_sweep"] = fused if fused is not None else sections.get("fused_sweep", {}).get("status", "not built")
    summary["sections"] = sections
    summary["wall_s"] = sum(s.get("wall_s") or 0 for s in sections.values())
    failing = [n for n, s in sections.items() if not (s["status"] == "ok" or s["status"].startswith("skipped")
                                                       or s["status"] == "not built")]
    summary["failed_sections"] = failing
    summary["ok"] = not failing and summary["mode"] == "gpu"
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("machine", help="write the machine's facts as JSON")
    s.add_argument("path", type=Path)
    s = sub.add_parser("train-slice", help="train the gpu.yaml slice on local text through the CLI")
    s.add_argument("out", type=Path)
    s.add_argument("--work", type=Path, required=True, help="scratch folder (token cache, checkpoints)")
    s.add_argument("--cpu", action="store_true", help="tiny CPU sizes: a plumbing check")
    s = sub.add_parser("summarize", help="write OUT/summary.json from the section records")
    s.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "machine":
        info = machine()
        args.path.write_text(json.dumps(info, indent=2) + "\n")
        print(json.dumps(info))
    elif args.cmd == "train-slice":
        print(json.dumps(train_slice(args.out, args.work, args.cpu)))
    else:
        s = summarize(args.out)
        for name, sec in s["sections"].items():
            print(f"{name:20s} {sec['status']:40s} {sec.get('wall_s') or 0:7.1f} s")
        print(f"fused_sweep: {s['fused_sweep'] if isinstance(s['fused_sweep'], str) else 'see summary.json'}")
        print(f"summary: {args.out / 'summary.json'} (ok={s['ok']}, mode={s['mode']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
