"""Docs stay true: every run-config key and every metrics column is documented."""
from pathlib import Path

from stability.config import RunConfig, flatten

ROOT = Path(__file__).resolve().parents[1]


def test_every_run_config_key_is_in_docs_config():
    text = (ROOT / "docs" / "config.md").read_text()
    missing = [k for k in flatten(RunConfig().to_dict()) if f"`{k}`" not in text]
    assert not missing, f"undocumented keys: {missing}"


def test_rule_graph_in_docs_is_current():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "snakemake", "--rulegraph", "mermaid-js", "--quiet"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    edges = sorted(line.strip() for line in out.splitlines() if "-->" in line)
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert edges and all(e in doc for e in edges)
