"""Docs stay true: every run-config key is documented, and docs/metrics.md lists exactly the
metrics columns and summary keys a run writes."""
import re
from pathlib import Path

import polars as pl
import pytest

from helpers import tiny
from stability.config import KEY_TYPES, RunConfig, flatten
from stability.train import train

ROOT = Path(__file__).resolve().parents[1]


def test_every_run_config_key_is_in_docs_config():
    text = (ROOT / "docs" / "config.md").read_text()
    keys = {*flatten(RunConfig().to_dict()), *KEY_TYPES}  # KEY_TYPES: the keys interventions add too
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"undocumented keys: {missing}"


def test_rule_graph_in_docs_is_current():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "snakemake", "--rulegraph", "mermaid-js", "--quiet"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    edges = sorted(line.strip() for line in out.splitlines() if "-->" in line)
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert edges and all(e in doc for e in edges)


def _documented(section: str, n_layers: int) -> set[str]:
    """The backticked names in the first cell of each table row under docs/metrics.md's
    `## {section}` heading, with `attn_logit_l{i}` expanded to one name per layer."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    body = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in body.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    for per_layer in [n for n in names if n.endswith("_l{i}")]:
        names = names - {per_layer} | {per_layer.replace("{i}", str(i)) for i in range(n_layers)}
    return names


# Columns only a run with an attention-logit intervention writes (docs/metrics.md says so).
CAPPED_ONLY = {"attn_logit_raw_l0", "attn_logit_raw_l1", "max_attn_logit_raw"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished two-layer run: (its metrics frame, its summary dict)."""
    tmp = tmp_path_factory.mktemp("docs_run")
    summary = train(tiny(tmp, **{"model.n_layers": 2, "train.steps": 10, "train.eval_every": 10}), tmp / "run",
                    quiet=True)
    return pl.read_parquet(tmp / "run" / "metrics.parquet"), summary


def test_docs_metrics_lists_exactly_the_metrics_columns_a_run_writes(tiny_run, tmp_path):
    metrics, _ = tiny_run
    assert _documented("Per logged step", n_layers=2) - CAPPED_ONLY == set(metrics.columns)
    capped = tiny(tmp_path, **{"model.n_layers": 2, "train.steps": 5, "train.eval_every": 5, "model.attn_softcap": 5.0})
    train(capped, tmp_path / "capped", quiet=True)
    assert _documented("Per logged step", n_layers=2) == set(pl.read_parquet(tmp_path / "capped" / "metrics.parquet").columns)


def test_docs_metrics_lists_exactly_the_summary_keys_a_run_writes(tiny_run):
    _, summary = tiny_run
    assert _documented("Per run", n_layers=2) == set(summary)
