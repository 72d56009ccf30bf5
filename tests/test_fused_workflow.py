"""Fused sweeps through the real workflow (rules/train.smk) on a tiny 3-LR grid: forced fusion
writes the runs the per-run path writes, a finished fused sweep plans nothing under any
`fuse` mode, changing one LR trains exactly that run, a killed fused job resumes each member
from its own checkpoint, and `fuse: auto` on CPU plans exactly the per-run jobs."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from helpers import RTOL, child_env, max_rel_diff, same_summary
from stability.grid import expand, load_workflow, runs_by_id
from workflow_copy import copy_repo, planned_jobs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

GRID = {
    "results": "results/fz", "code_version": 1, "train_threads": 1,
    "defaults": {"train.steps": 30, "train.batch_size": 4, "train.seq_len": 16, "train.log_every": 5,
                 "train.eval_every": 10, "train.eval_batches": 1, "train.checkpoint_every": 10,
                 "train.probe_step": 20, "optim.warmup_steps": 3, "data.n_train_tokens": 20_000,
                 "data.n_val_tokens": 2_000},
    "scales": {"s0": {"d_model": 16, "n_layers": 1, "head_dim": 8}},
    # two variants of different shape: two fused groups, so each job must train its own members
    "studies": {"fz": {"findings": [1], "scales": ["s0"], "lrs": [1.0e-2, 3.0e-2, 1.0e-1],
                       "variants": {"qk_ln": {}, "no_qk_ln": {"model.qk_layernorm": "none"}}}},
}

# Makes every Python process of the workflow raise at one training step (as helpers.crash_at
# does in-process), so a fused job dies after its members' checkpoints before that step.
CRASH_HOOK = """\
import os
if os.environ.get("FZ_CRASH_AT"):
    import stability.data as _d
    _real, _at = _d.train_batch, int(os.environ["FZ_CRASH_AT"])
    def _crashing(data, s, *a, **k):
        if s == _at:
            raise RuntimeError("simulated crash")
        return _real(data, s, *a, **k)
    _d.train_batch = _crashing
"""


def _write_grid(path: Path, grid: dict) -> Path:
    path.write_text(yaml.safe_dump(grid))
    return path


def _run_ids(config: Path) -> list[str]:
    return sorted(runs_by_id(expand(load_workflow([config], {}))))


def _smk(repo: Path, config: Path, *args: str, targets: list[str] = (), env: dict | None = None,
         check: bool = True):
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", "1", "--configfile", str(config), *args]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600, env=env or child_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _targets(config: Path, run_ids: list[str]) -> list[str]:
    results = yaml.safe_load(config.read_text())["results"]
    return [f"{results}/runs/{r}/{f}" for r in run_ids for f in ("summary.json", "metrics.parquet")]


def _fused_rules(jobs: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in jobs.items() if k.startswith("train_fused_")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The grid trained twice: one job per run (fuse=never) and as one fused job (fuse=always)."""
    root = tmp_path_factory.mktemp("fz")
    config = _write_grid(root / "grid.yaml", GRID)
    ids = _run_ids(config)
    out = {"config": config, "ids": ids}
    for mode in ("never", "always"):
        repo = copy_repo(root / mode)
        proc = _smk(repo, config, "--config", f"fuse={mode}", targets=_targets(config, ids))
        out[mode] = repo
        out[f"{mode}_jobs"] = planned_jobs(proc)
    return out


def _run_dir(repo: Path, run_id: str) -> Path:
    return repo / "results" / "fz" / "runs" / run_id


def _assert_same_runs(repo: Path, ref: Path, ids: list[str], resumed: bool = False) -> dict[str, float]:
    """Each run of `repo` equals the one of `ref` (summary, metrics within RTOL, config), and
    left no checkpoint; with `resumed`, their summaries may differ in resumed_from_step."""
    worst: dict[str, float] = {}
    for r in ids:
        a, b = _run_dir(repo, r), _run_dir(ref, r)
        sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
        if resumed:
            sa.pop("resumed_from_step"), sb.pop("resumed_from_step")
        same_summary(sa, sb)
        for col, rel in max_rel_diff(pl.read_parquet(a / "metrics.parquet"), pl.read_parquet(b / "metrics.parquet")).items():
            worst[col] = max(worst.get(col, 0.0), rel)
        assert (a / "config.yaml").read_text() == (b / "config.yaml").read_text()
        assert not list((a / "ckpt").glob("*.pt"))
    assert max(worst.values()) <= RTOL, worst
    return worst


def test_forced_fusion_writes_the_runs_the_per_run_path_writes(trained):
    ids = trained["ids"]
    assert len(ids) == 6
    assert trained["never_jobs"] == {"prepare_data": 1, "train": 6}
    fused = _fused_rules(trained["always_jobs"])
    assert list(fused.values()) == [1, 1] and "train" not in trained["always_jobs"]
    worst = _assert_same_runs(trained["always"], trained["never"], ids)
    print("largest relative difference per column:", worst)
    runs = runs_by_id(expand(load_workflow([str(trained["config"])])))
    groups = []
    for manifest in (trained["always"] / "results" / "fz" / "fused").glob("*.json"):
        members = json.loads(manifest.read_text())["members"]
        assert len({runs[r].model.qk_layernorm for r in members}) == 1  # each job trained its own group
        groups.append(sorted(members))
    assert sorted(r for g in groups for r in g) == sorted(ids) and len(groups) == 2


def test_a_finished_fused_sweep_plans_nothing(trained):
    """Snakemake recorded the fused job's params for its members' files: a later plan must not
    see a params change (which would retrain every member one by one). With nothing due, every
    `fuse` mode plans the same (no group), so the default stands for all."""
    proc = _smk(trained["always"], trained["config"], "-n",
                targets=_targets(trained["config"], trained["ids"]))
    assert planned_jobs(proc) == {}, proc.stdout[-2000:]


def test_changing_one_lr_trains_exactly_that_run(trained, tmp_path):
    grid = json.loads(json.dumps(GRID))
    grid["studies"]["fz"]["lrs"] = [1.0e-2, 3.0e-2, 2.0e-1]
    edited = _write_grid(tmp_path / "edited.yaml", grid)
    new_ids = _run_ids(edited)
    new = set(new_ids) - set(trained["ids"])
    proc = _smk(trained["always"], edited, "-n", "--config", "fuse=always", targets=_targets(edited, new_ids))
    assert len(new) == 2 and planned_jobs(proc) == {"train": 2}  # one per variant: two groups of one
    assert all(re.search(rf"output: .*runs/{r}/summary.json", proc.stdout) for r in new)
    # Two new LRs are two due runs per shape: one fused job of each variant's two, nothing else.
    grid["studies"]["fz"]["lrs"] = [1.0e-2, 2.0e-1, 5.0e-1]
    two = _write_grid(tmp_path / "two.yaml", grid)
    two_ids = _run_ids(two)
    proc = _smk(trained["always"], two, "-n", "--config", "fuse=always", targets=_targets(two, two_ids))
    jobs = planned_jobs(proc)
    assert list(_fused_rules(jobs).values()) == [1, 1] and set(jobs) == set(_fused_rules(jobs))
    due = sorted(set(two_ids) - set(trained["ids"]))
    assert len(due) == 4 and all(f"runs/{r}/summary.json" in proc.stdout for r in due)


def test_a_killed_fused_job_resumes_per_member(trained, tmp_path):
    repo = copy_repo(tmp_path / "repo")
    config, ids = trained["config"], trained["ids"]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASH_HOOK)
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
    env["FZ_CRASH_AT"] = "25"
    proc = _smk(repo, config, "--config", "fuse=always", targets=_targets(config, ids), env=env,
                check=False)
    assert proc.returncode != 0
    assert "simulated crash" in "".join(p.read_text() for p in (repo / "results" / "fz" / "logs" / "train").glob("fused-*.log"))
    for r in ids:
        d = _run_dir(repo, r)
        assert not (d / "summary.json").exists()
        assert (d / "ckpt" / "step-00000020.pt").is_file()
    # Members resume from their own checkpoints: one lost its checkpoints and starts over.
    shutil.rmtree(_run_dir(repo, ids[0]) / "ckpt")
    proc = _smk(repo, config, "--config", "fuse=always", targets=_targets(config, ids))
    assert list(_fused_rules(planned_jobs(proc)).values()) == [1, 1]
    resumed = [json.loads((_run_dir(repo, r) / "summary.json").read_text())["resumed_from_step"] for r in ids]
    assert resumed == [None] + [20] * 5
    _assert_same_runs(repo, trained["never"], ids, resumed=True)


def _normalised_plan(proc: subprocess.CompletedProcess, repo: Path) -> list[str]:
    """A dry run's jobs, without timestamps and paths, each line's items sorted (Snakemake
    prints sets, whose order varies run to run)."""
    out = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("[") or re.match(r"\s*(Date|Workflow ID|Snakefile|.*directory|Config file|Config MD5|Command)",
                                            line) or "snakemake/__main__.py" in line:
            continue
        line = line.replace(str(repo), "")
        out.append(",".join(sorted(t.strip() for t in re.split(r"[,;:] ", line))))
    return sorted(out)


def test_fuse_auto_on_cpu_plans_todays_jobs(tmp_path):
    """The smoke study's dry run: `fuse: auto` (with this CPU's measurement) plans exactly the
    jobs of `fuse: never`, the per-run path (one `train` job per run, as before fusing existed);
    a measurement saying CPU fusing pays would fuse; a bad value exits 2."""
    repo = copy_repo(tmp_path / "repo")
    smoke = repo / "config" / "smoke.yaml"
    cpu_json = REPO / "benchmarks" / "results" / "fused_sweep_cpu.json"
    plans, jobs = {}, {}
    for mode, extra in (("never", []), ("auto", [f"fuse_benchmarks=[{json.dumps(str(cpu_json))}]"])):
        proc = _smk(repo, smoke, "-n", "--config", f"fuse={mode}", *extra)
        plans[mode], jobs[mode] = _normalised_plan(proc, repo), planned_jobs(proc)
    assert plans["auto"] == plans["never"]
    assert jobs["auto"]["train"] == 14 and not _fused_rules(jobs["auto"])
    pays = tmp_path / "pays.json"
    pays.write_text(json.dumps({"machine": {"device_kind": "cpu"}, "cases": [{"d_model": 16, "ratio": 2.0}]}))
    jobs = planned_jobs(_smk(repo, smoke, "-n", "--config", "fuse=auto", f"fuse_benchmarks=[{json.dumps(str(pays))}]"))
    assert _fused_rules(jobs) and jobs.get("train", 0) < 14
    bad = _smk(repo, smoke, "-n", "--config", "fuse=sometimes", check=False)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert [ln for ln in bad.stderr.splitlines() if not ln.startswith("Using workflow specific profile")] == [
        "error: invalid config: fuse: 'sometimes' is not one of ['auto', 'never', 'always']"]
