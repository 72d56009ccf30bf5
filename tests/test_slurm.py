"""Workflows through a real (one-node, localhost) SLURM cluster.

Run with:  pytest -m slurm tests/test_slurm.py     (root + apt-get, or SLURM installed)
The cluster comes from scripts/slurm-up.sh; the profile is tests/profiles/slurm-local.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import (  # noqa: F401  (slurm_cluster is a fixture)
    copy_workflow,
    read_json,
    run_snakemake,
    running_jobs,
    slurm_cluster,
    slurm_log_tails,
    slurm_logs,
    snakemake_cmd,
    snakemake_env,
)

pytestmark = pytest.mark.slurm

TRAIN_RULE = "train"
SMOKE_CONFIG = "config/smoke.yaml"


def _job_id(value) -> int:
    """A SLURM job id as written by a job (str or int); must be a positive integer."""
    job_id = int(str(value).strip())
    assert job_id > 0, value
    return job_id


def test_tiny_workflow_runs_through_sbatch(slurm_cluster, tmp_path):
    """Two chained rules, each submitted with sbatch: their outputs record $SLURM_JOB_ID."""
    (tmp_path / "Snakefile").write_text(textwrap.dedent("""
        localrules: all

        rule all:
            input: "second.txt"

        rule first:
            output: "first.txt"
            shell: "echo ${{SLURM_JOB_ID:-none}} > {output}"

        rule second:
            input: "first.txt"
            output: "second.txt"
            shell: "echo ${{SLURM_JOB_ID:-none}} $SLURM_JOB_PARTITION > {output}"
    """))
    run_snakemake(tmp_path, timeout=300)

    first = _job_id((tmp_path / "first.txt").read_text())
    second_id, partition = (tmp_path / "second.txt").read_text().split()
    second = _job_id(second_id)
    assert first != second, "each rule must be its own SLURM job"
    assert partition == slurm_cluster
    # per-job SLURM logs, named by job id (kept: slurm-keep-successful-logs)
    for rule, job_id in (("first", first), ("second", second)):
        logs = slurm_logs(tmp_path, rule)
        assert [p.stem for p in logs] == [str(job_id)], (rule, logs)


def test_cancelled_job_is_retried(slurm_cluster, tmp_path):
    """scancel a running job: with squeue as status command snakemake still sees it fail
    (CANCELLED) and, with `retries` from the profile, resubmits it as a new SLURM job."""
    (tmp_path / "Snakefile").write_text(textwrap.dedent("""
        rule slow:
            output: "done.txt"
            resources: attempt=lambda wc, attempt: attempt
            shell:
                "echo $SLURM_JOB_ID >> started.txt; "
                "if [ {resources.attempt} -eq 1 ]; then sleep 300; fi; "
                "echo {resources.attempt} $SLURM_JOB_ID > {output}"
    """))
    log_path = tmp_path / "snakemake.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(snakemake_cmd(), cwd=tmp_path, env=snakemake_env(),
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        started = tmp_path / "started.txt"
        deadline = time.monotonic() + 120
        while not (started.exists() and started.read_text().strip()):
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
        first = started.read_text().split()[0]
        subprocess.run(["scancel", first], check=True, timeout=30)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
    assert rc == 0, f"{log_path.read_text()[-6000:]}\n{slurm_log_tails(tmp_path)}"
    attempt, job_id = (tmp_path / "done.txt").read_text().split()
    assert attempt == "2"
    assert _job_id(job_id) != _job_id(first)
    assert started.read_text().split() == [first, job_id]


def _require_workflow(work: Path) -> None:
    missing = [p for p in ("Snakefile", SMOKE_CONFIG) if not (work / p).exists()]
    if missing:
        pytest.fail(f"the workflow is not in place yet: missing {missing}", pytrace=False)


def _results_root(work: Path, config: Path) -> Path:
    """The config's `results:` directory (e.g. results/smoke), inside the copy."""
    cfg = yaml.safe_load(config.read_text()) or {}
    return work / cfg.get("results", "results")


# The smoke study has a couple of hundred tiny training runs; one SLURM job each costs
# ~10 s of overhead apiece (a snakemake start-up inside every job), so they go in
# batches: `--groups train=... --group-components` puts SMOKE_BATCH runs in one SLURM
# job, and `--cores` caps a batch's request at this node's CPUs (runs beyond it are
# stacked in series inside the job).
SMOKE_BATCH = 16


@pytest.mark.slow
def test_smoke_study_through_slurm(slurm_cluster, tmp_path):
    """The real workflow on config/smoke.yaml, every non-local job through SLURM."""
    work = copy_workflow(tmp_path / "repo")
    _require_workflow(work)
    run_snakemake(
        work, "--configfile", SMOKE_CONFIG,
        "--groups", f"{TRAIN_RULE}=train_batch", "--group-components", f"train_batch={SMOKE_BATCH}",
        "--cores", str(os.cpu_count() or 1),
        timeout=3600,
    )

    results = _results_root(work, work / SMOKE_CONFIG)
    claims = sorted(results.glob("studies/*/claims.json"))
    assert claims, f"no {results}/studies/*/claims.json"
    for path in claims:
        read_json(path)  # valid JSON
    summaries = sorted(results.glob("runs/*/summary.json"))
    assert summaries, f"no {results}/runs/*/summary.json"
    for path in summaries:
        summary = read_json(path)
        assert "slurm_job_id" in summary, f"{path} has no slurm_job_id: training ran outside SLURM?"
        _job_id(summary["slurm_job_id"])
    batches = sorted((work / ".snakemake" / "slurm_logs").glob("group_train_batch*/**/*.log"))
    assert batches, "no SLURM logs of the batched training jobs"


# --- kill a training job mid-run: snakemake retries it and training resumes ---------

KILL_STEPS = 3000  # long enough that the job is still running after its first checkpoint
KILL_CHECKPOINT_EVERY = 20


def _single_run_config(work: Path) -> Path:
    """config/smoke.yaml cut down to one long training run with frequent checkpoints."""
    cfg = yaml.safe_load((work / SMOKE_CONFIG).read_text())
    name, study = next(iter(cfg["studies"].items()))
    study = dict(study)
    for key in ("scales", "lrs", "seeds"):
        if study.get(key):
            study[key] = list(study[key])[:1]
    variants = study.get("variants") or {}
    if variants:
        ref = study.get("reference") or next(iter(variants))
        study["variants"] = {ref: variants[ref]}
        study["reference"] = ref
    study["overrides"] = {
        **(study.get("overrides") or {}),
        "train.steps": KILL_STEPS,
        "train.checkpoint_every": KILL_CHECKPOINT_EVERY,
    }
    cfg["studies"] = {name: study}
    path = work / "config" / "kill-test.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _first_checkpoint(results: Path) -> Path | None:
    # stability.checkpoint writes ckpt/step-XXXXXXXX.pt, then its .sha256 (complete)
    for pattern in ("runs/*/ckpt/step-*.sha256", "runs/*/checkpoint*"):
        found = sorted(results.glob(pattern))
        if found:
            return found[0]
    return None


def _run_dir(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == "ckpt" else checkpoint.parent


@pytest.mark.slow
def test_killed_training_job_resumes_through_slurm(slurm_cluster, tmp_path):
    """scancel a training job after its first checkpoint: snakemake (retries: 2 in the
    profile) resubmits it, and the new job resumes from the checkpoint."""
    work = copy_workflow(tmp_path / "repo")
    _require_workflow(work)
    config = _single_run_config(work)
    results = _results_root(work, config)
    log_path = tmp_path / "snakemake.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            snakemake_cmd("--configfile", str(config.relative_to(work)), "--until", TRAIN_RULE),
            cwd=work, env=snakemake_env(work), stdout=log, stderr=subprocess.STDOUT, text=True,
        )
    try:
        deadline = time.monotonic() + 600
        checkpoint = None
        while checkpoint is None:
            if proc.poll() is not None:
                pytest.fail(f"snakemake ended (exit {proc.returncode}) before any checkpoint appeared:\n"
                            f"{log_path.read_text()[-6000:]}", pytrace=False)
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.2)
            checkpoint = _first_checkpoint(results)
        run_dir = _run_dir(checkpoint)
        run_id = run_dir.name

        train_jobs = [(jid, comment) for jid, comment in running_jobs()
                      if comment.startswith(f"rule_{TRAIN_RULE}")]
        matching = [jid for jid, comment in train_jobs if run_id in comment] or [jid for jid, _ in train_jobs]
        assert matching, f"no running {TRAIN_RULE} job to cancel (finished too fast? raise KILL_STEPS)"
        killed = matching[0]
        subprocess.run(["scancel", killed], check=True, timeout=30)
        assert not (run_dir / "summary.json").exists(), "the run finished before it was cancelled"

        rc = proc.wait(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
    log_text = log_path.read_text()
    assert rc == 0, f"snakemake failed after the cancel:\n{log_text[-6000:]}\n{slurm_log_tails(work)}"
    summary = read_json(run_dir / "summary.json")
    assert summary.get("resumed_from_step", 0) > 0, summary
    assert _job_id(summary["slurm_job_id"]) != int(killed), "the summary must come from the retried job"
    assert summary.get("steps_completed", KILL_STEPS) == KILL_STEPS
