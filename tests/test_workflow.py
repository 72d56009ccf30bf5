"""The smoke study end to end through Snakemake, then what a rerun plans."""
from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from workflow_copy import copy_repo, planned_jobs, snakemake
from stability.analysis.verdict import OUTCOMES

pytestmark = pytest.mark.slow
SMOKE = ["--configfile", "config/smoke.yaml"]


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("wf") / "repo")
    snakemake(repo, "--cores", "2", *SMOKE)
    return repo


def test_smoke_study_produces_every_output(smoke_repo):
    res = smoke_repo / "results" / "smoke"
    growth = res / "studies" / "attn_logit_growth"
    runs = pl.read_parquet(growth / "runs.parquet")
    assert runs.height == 12 and {"scale", "variant", "lr", "seed", "optim.lr", "final_loss", "diverged"} <= set(runs.columns)
    sens = pl.read_parquet(growth / "sensitivity.parquet")
    assert sens.height == 6  # 3 scales x 2 variants
    assert (sens["sensitivity"] >= 0).all()
    claims = json.loads((growth / "claims.json").read_text())
    items = claims["claims"] if isinstance(claims, dict) else claims
    assert {c["finding"] for c in items} == {1, 8}
    assert all(c["outcome"] in OUTCOMES and "measured" in c for c in items)
    forecast = json.loads((growth / "forecast.json").read_text())
    assert "backtest" in json.dumps(forecast)
    for fig in (growth / "figures").glob("*.png"):
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 2000
    assert (growth / "figures" / "forecast.html").is_file() and (growth / "figures" / "forecast.svg").is_file()
    findings = (res / "findings.md").read_text()
    assert "## 1. Attention-logit growth" in findings and "## 2. Output-logit divergence" in findings
    board = pl.read_parquet(growth / "leaderboard" / "leaderboard.parquet")
    assert board.height == 6 and set(board["variant"]) == {"qk_ln", "no_qk_ln"}
    assert set(board.explode("run_ids")["run_ids"]) == set(runs["run_id"])  # every number traceable to its runs
    page = (res / "leaderboard.md").read_text()
    assert "## Ranking at the largest scale (s2)" in page and "](leaderboard_figures/ranking.png)" in page
    assert (res / "leaderboard_figures" / "ranking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finished_study_plans_nothing(smoke_repo):
    assert planned_jobs(snakemake(smoke_repo, "-n", "--cores", "2", *SMOKE)) == {}


def test_editing_a_package_comment_retrains_nothing(smoke_repo):
    model = smoke_repo / "stability" / "model.py"
    original = model.read_text()
    model.write_text(original.replace('"""A decoder-only', '"""(edited) A decoder-only', 1))
    try:
        assert planned_jobs(snakemake(smoke_repo, "-n", "--cores", "2", *SMOKE)) == {}
    finally:
        model.write_text(original)


def test_changing_one_lr_replans_only_that_study(smoke_repo, tmp_path):
    cfg = yaml.safe_load((smoke_repo / "config" / "smoke.yaml").read_text())
    cfg["studies"]["output_logit_divergence"]["lrs"] = [1.0e-2, 2.0e-1]
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    proc = snakemake(smoke_repo, "-n", "--cores", "2", "--configfile", str(edited))
    jobs = planned_jobs(proc)
    # Two new runs (both variants at the new LR), then that study's downstream only.
    assert jobs["train"] == 2
    assert jobs["aggregate"] == 1 and jobs["analyse"] == 1
    assert jobs["figure"] == 2  # lr_vs_loss and logz_vs_step of output_logit_divergence
    assert jobs.get("prepare_data", 0) == 0
    outputs = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip().startswith("output:")]
    assert outputs and not any("studies/attn_logit_growth" in ln for ln in outputs)


def test_code_version_retrains_everything(smoke_repo):
    jobs = planned_jobs(snakemake(smoke_repo, "-n", "--cores", "2", *SMOKE, "--config", "code_version=2"))
    assert jobs["train"] == 14


def test_the_early_warning_report_observes_only(smoke_repo, tmp_path):
    """smoke.yaml runs `train.early_warning: report`: every run carries its decision, and turning
    the report off or moving its threshold retrains nothing, while `stop` (it changes what a run
    computes) retrains every run."""
    res = smoke_repo / "results" / "smoke"
    summaries = [json.loads(p.read_text()) for p in (res / "runs").glob("*/summary.json")]
    assert summaries and all("warning_p_fail" in s and s["stopped_by_warning"] is False for s in summaries)
    cfg = yaml.safe_load((smoke_repo / "config" / "smoke.yaml").read_text())
    for setting, trains in (({"train.early_warning": "off"}, 0),
                            ({"train.early_warning_threshold": 0.9}, 0),
                            ({"train.early_warning": "stop"}, 14)):
        edited = tmp_path / "edited.yaml"
        edited.write_text(yaml.safe_dump({**cfg, "defaults": {**cfg["defaults"], **setting}}))
        jobs = planned_jobs(snakemake(smoke_repo, "-n", "--cores", "2", "--configfile", str(edited)))
        assert jobs.get("train", 0) == trains, (setting, jobs)
