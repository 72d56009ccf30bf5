"""Issue 12, kind 1: every value a config can hold reaches the run exactly as written, through
every path (a YAML file, `--set`, a workflow job), and scientific notation is a number
everywhere (YAML 1.2, `stability.yamlio`).

    pytest tests/test_config_roundtrip.py                  # fast: functions and the CLI in-process
    pytest tests/test_config_roundtrip.py -m slow          # one real Snakemake job chain
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import child_env
from stability import config as C
from stability import yamlio
from stability.analysis.aggregate import read_config
from stability.cli import main
from stability.grid import data_set_args, expand, load_workflow, set_args, shell_set_args
from workflow_copy import copy_repo, snakemake

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

# The cases and their neighbours: comments, mappings, numbers, booleans, nulls.
TRICKY = ["S/Book #1/book.txt", "d/Ch 1: intro.txt", "2024", "yes", "no", "on", "null", "~", "", "1.0", "1e-3",
          "0x10", "010", "1:20", "2024-01-01", "True", ".inf", "nan", " padded ", "'quoted'", '"dq"', "[1, 2]",
          "{a: 1}", "- item", "#", "a=b", "&anchor", "*alias", "!tag", "%", "@", "`", "|", ">", "a\nb", "tab\tin",
          "caf\u00e9", "\u65e5\u672c", "\u2028", "\ufeff", "-x", "--set"]


# ---- the dialect: YAML 1.2 scalars ---------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("1e-3", 1e-3), ("4e4", 40000.0), ("1e2", 100.0), ("2.0e+6", 2e6), ("-.5", -0.5), (".5e1", 5.0),
    ("010", 10), ("0x10", 16), ("0o17", 15), ("true", True), ("False", False), ("null", None), ("~", None),
    ("yes", "yes"), ("on", "on"), ("1:20", "1:20"), ("2024-01-01", "2024-01-01"), ("1_000", "1_000"),
])
def test_one_dialect_reads_scalars_as_yaml_1_2(text, value):
    assert yamlio.scalar(text) == value and type(yamlio.scalar(text)) is type(value)
    assert yamlio.load(f"k: {text}")["k"] == value  # a file reads the same as a --set value


@given(st.one_of(st.sampled_from(TRICKY), st.text()))
def test_dumper_quotes_what_either_dialect_would_misread(s):
    text = yamlio.dump({"k": s})
    assert yamlio.load(text)["k"] == s and yaml.safe_load(text)["k"] == s


# ---- scientific notation: a number in every place ------------------------------------------

def test_scientific_notation_in_a_run_config_file(tmp_path):
    (tmp_path / "run.yaml").write_text("optim:\n  lr: 1e-3\n  min_lr: 1e-6\n  warmup_steps: 1e1\n"
                                       "data:\n  n_train_tokens: 4e4\ntrain:\n  steps: 1e2\n")
    cfg = C.load(tmp_path / "run.yaml")
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.data.n_train_tokens, cfg.train.steps) == (1e-3, 1e-6, 40000, 100)
    assert type(cfg.data.n_train_tokens) is int


def test_scientific_notation_in_set_values():
    cfg = C.load(overrides=["train.steps=1e2", "data.n_train_tokens=4e4", "optim.lr=1e-3", "data.n_val_tokens=2.0e+4"])
    assert (cfg.train.steps, cfg.data.n_train_tokens, cfg.optim.lr, cfg.data.n_val_tokens) == (100, 40000, 1e-3, 20000)


@pytest.mark.parametrize("where", ["yaml", "set"])
@pytest.mark.parametrize("text, reason", [("4.5e0", "not a whole number"), ("1e30", "write it in digits")])
def test_an_integer_field_refuses_a_non_integral_or_inexact_number(tmp_path, where, text, reason):
    with pytest.raises(C.ConfigError) as e:
        if where == "yaml":
            (tmp_path / "run.yaml").write_text(f"train:\n  steps: {text}\n")
            C.load(tmp_path / "run.yaml")
        else:
            C.load(overrides=[f"train.steps={text}"])
    assert str(e.value).startswith("train.steps: expected an integer") and reason in str(e.value)


SCI_WORKFLOW = """
defaults: {optim.min_lr: 1e-6, data.n_train_tokens: 4e4, data.n_val_tokens: 4e3, train.steps: 1e2,
           optim.warmup_steps: 1e1, train.seq_len: 32, train.batch_size: 4}
scales:
  t: {d_model: 1.6e1, n_layers: 1, head_dim: 8}
analysis: {logit_threshold: 1e4}
studies:
  s:
    scales: [t]
    lrs: [1e-3, 1e-2]
    seeds: [0, 1e0]
"""


def test_scientific_notation_in_a_workflow_config(tmp_path):
    """lrs, defaults, scales and analysis options: numbers for the JSON schema and the grid alike."""
    from snakemake.utils import validate
    (tmp_path / "wf.yaml").write_text(SCI_WORKFLOW)
    wf = load_workflow([tmp_path / "wf.yaml"])
    validate(wf, str(SCHEMA))  # raised "'1e-3' is not of type 'number'" under YAML 1.1
    assert wf["analysis"]["logit_threshold"] == 1e4
    points = expand(wf)["s"].points
    assert sorted({p.lr for p in points}) == [1e-3, 1e-2] and {p.seed for p in points} == {0, 1}
    cfg = points[0].config
    assert (cfg.model.d_model, cfg.data.n_train_tokens, cfg.train.steps, cfg.optim.min_lr) == (16, 40000, 100, 1e-6)


def test_stability_grid_reads_scientific_notation(tmp_path, capsys):
    (tmp_path / "wf.yaml").write_text(SCI_WORKFLOW)
    assert main(["grid", str(tmp_path / "wf.yaml")]) == 0
    assert "s: 4 grid points, 4 runs" in capsys.readouterr().out


def test_a_fractional_seed_is_refused_not_truncated(tmp_path):
    (tmp_path / "wf.yaml").write_text(SCI_WORKFLOW.replace("[0, 1e0]", "[0, 0.5]"))
    with pytest.raises(C.ConfigError, match=r"seed: expected an integer, got 0.5"):
        expand(load_workflow([tmp_path / "wf.yaml"]))


def test_snakemake_config_overrides_still_apply(tmp_path):
    (tmp_path / "wf.yaml").write_text(SCI_WORKFLOW)
    wf = load_workflow([tmp_path / "wf.yaml"], {"code_version": 2, "analysis": {"caveat": "x"}})
    assert wf["code_version"] == 2 and wf["analysis"] == {"logit_threshold": 1e4, "caveat": "x"}


# ---- strings: kept as written ----------------------------------------------------------------

@pytest.mark.parametrize("value", TRICKY)
def test_set_keeps_a_string_field_as_written(value):
    cfg = C.load(overrides=[f"data.path={value}", f"data.hf_config={value}", f"data.text_field={value}"])
    assert cfg.data.path == cfg.data.hf_config == cfg.data.text_field == value


@pytest.mark.parametrize("text, shown", [("path: 2024", "2024"), ("path: yes", None), ("hf_config: 1.0", "1.0"),
                                         ("path: 'S/Book #1/book.txt'", None)])
def test_a_yaml_file_keeps_quoted_text_and_names_unquoted_numbers(tmp_path, text, shown):
    (tmp_path / "run.yaml").write_text(f"data:\n  {text}\n")
    if shown is None:  # YAML 1.2: `yes` is text; a quoted path is text
        assert C.load(tmp_path / "run.yaml").data.path == yamlio.load(text)["path"]
    else:
        with pytest.raises(C.ConfigError) as e:
            C.load(tmp_path / "run.yaml")
        assert f"expected a string, got {shown} (quote it in YAML" in str(e.value)


def test_text_no_command_line_can_carry_is_refused():
    for bad in ("a\x00b", "a\ud800b"):
        with pytest.raises(C.ConfigError, match="data.path: expected text without NUL"):
            C.from_dict({"data": {"path": bad}})


def test_a_value_json_cannot_hold_is_refused_not_stringified(tmp_path):
    (tmp_path / "run.yaml").write_text("data:\n  path: !!binary aGVsbG8=\n")
    with pytest.raises(C.ConfigError, match="expected plain nested mappings"):
        C.load(tmp_path / "run.yaml", ["seed=1"])  # old: path became the text "b'hello'"


# ---- the property: workflow -> job -> resolved config --------------------------------------

texts = st.one_of(st.sampled_from(TRICKY),
                  st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
                  st.tuples(st.integers(0, 10**6), st.sampled_from(["", " #x", ": y", ".txt", "e5", "\n"])).map(
                      lambda t: f"{t[0]}{t[1]}"))
pos = st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False)
nonneg = st.one_of(st.just(0.0), st.just(-0.0), pos)


@pytest.fixture
def fake_jobs(monkeypatch):
    """`stability train` / `prepare-data` as the job runs them, minus the compute."""
    import stability.data
    import stability.train
    seen = []
    monkeypatch.setattr(stability.train, "train", lambda cfg, out, expect_run_id=None, quiet=False: (
        seen.append((cfg, expect_run_id)) or {"run_id": cfg.run_id(), "diverged": False, "final_loss": 1.0,
                                              "max_attn_logit": 1.0}))
    monkeypatch.setattr(stability.data, "prepare", lambda cfg: seen.append((cfg, None)) or "prepared")
    return seen


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=texts, text_field=texts, hf_config=texts, split=texts, results=texts, lr=pos, wd=nonneg,
       kappa=nonneg, margin=pos, data_seed=st.integers(0, 2**63 - 1))
@example(path="S/Book #1/book.txt", text_field="yes", hf_config="1.0", split="d/Ch 1: intro.txt", results="2024",
         lr=1e-3, wd=0.0, kappa=-0.0, margin=1.0, data_seed=0)
def test_values_survive_workflow_to_job_to_resolved_config(tmp_path, fake_jobs, path, text_field, hf_config, split,
                                                           results, lr, wd, kappa, margin, data_seed):
    defaults = {"data.path": path, "data.text_field": text_field, "data.hf_config": hf_config,
                "data.hf_split": split, "data.data_seed": data_seed, "optim.weight_decay": wd,
                "model.qk_kappa": kappa, "train.divergence_margin": margin, "optim.min_lr": 0.0}
    workflow = {"defaults": defaults, "scales": {"t": {"d_model": 16, "n_layers": 1, "head_dim": 8}},
                "studies": {"s": {"scales": ["t"], "lrs": [lr]}}}
    wf_file = tmp_path / "wf.yaml"
    wf_file.write_text(yamlio.dump(workflow))  # the user's YAML, quoted as YAML needs
    (point,) = expand(load_workflow([wf_file]))["s"].points
    planned = point.config
    assert planned.data.path == path and planned.data.hf_config == hf_config and planned.optim.lr == lr

    # the train job: rules/common.smk's train_args, split by the shell, read by the CLI
    cache = f"{results}/data"
    cmd = shell_set_args(set_args(planned) + [f"data.cache_dir={cache}"])
    assert main(["train", "--out", str(tmp_path / "run"), "--expect-run-id", point.run_id, "--quiet",
                 *shlex.split(cmd)]) == 0
    job_cfg, expected_id = fake_jobs[-1]
    want = C.merge(planned.to_dict(), {"data.cache_dir": cache})
    assert job_cfg.run_id() == expected_id == point.run_id
    typed = lambda d: {k: (type(v), v) for k, v in C.flatten(d).items()}  # True is not 1, 1.0 is not 1
    assert typed(job_cfg.to_dict()) == typed(want)

    # the data job: data_args
    assert main(["prepare-data", *shlex.split(shell_set_args(data_set_args(planned) + [f"data.cache_dir={cache}"]))]) == 0
    data_cfg = fake_jobs[-1][0]
    assert data_cfg.data_id() == planned.data_id() and data_cfg.data.path == path

    # the resolved config.yaml the job writes, read back by resume; the aggregator reads the
    # copy in summary.json, and config.yaml only for runs finished before summaries held one
    resolved = tmp_path / "config.yaml"
    resolved.write_text(C.dump_yaml(job_cfg))
    assert C.load(resolved).to_dict() == want
    summary = json.loads(json.dumps({"config": C.flatten(job_cfg.to_dict())}))
    assert typed(read_config(tmp_path, summary)) == typed(read_config(tmp_path, {})) == typed(want)


# ---- one real job chain through Snakemake -----------------------------------------------------

@pytest.mark.slow
def test_snakemake_jobs_receive_the_values_as_written(tmp_path):
    """The issue's case: a corpus under `Book #1/Ch 1: intro/`, text fields `yes` and `1.0`,
    LRs in scientific notation. Planned, prepared and trained by Snakemake; the run's own
    config.yaml holds exactly what the workflow config said (old: `prepare_data` failed with
    `data.path: .../Book does not exist`, and the schema refused `1e-2`)."""
    repo = copy_repo(tmp_path / "repo")
    corpus = tmp_path / "Book #1" / "Ch 1: intro" / "2024"
    corpus.parent.mkdir(parents=True)
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 400)
    defaults = {"data.source": "text", "data.path": str(corpus), "data.text_field": "yes", "data.hf_config": "1.0",
                "train.steps": 6, "train.batch_size": 2, "train.seq_len": 16, "train.log_every": 3,
                "train.eval_every": 3, "train.eval_batches": 1, "train.checkpoint_every": 3, "train.probe_step": 3,
                "optim.warmup_steps": 1}
    wf = {"results": "results", "findings_doc": "results/findings.md", "defaults": defaults,
          "scales": {"t": {"d_model": 16, "n_layers": 1, "head_dim": 8}},
          "studies": {"s": {"scales": ["t"], "lrs": [1e-2]}}}
    text = yamlio.dump(wf, sort_keys=False).replace("0.01", "1e-2")  # as a user writes it
    assert "1e-2" in text and yaml.safe_load(text)["studies"]["s"]["lrs"] == ["1e-2"]  # YAML 1.1's reading
    (repo / "wf.yaml").write_text(text)
    (point,) = expand(load_workflow([repo / "wf.yaml"]))["s"].points
    summary = f"results/runs/{point.run_id}/summary.json"
    proc = snakemake(repo, summary, "--cores", "1", "--configfile", "wf.yaml", check=False, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    resolved = C.load(repo / "results" / "runs" / point.run_id / "config.yaml")
    assert (resolved.data.path, resolved.data.text_field, resolved.data.hf_config, resolved.optim.lr) == (
        str(corpus), "yes", "1.0", 1e-2)
    assert json.loads((repo / summary).read_text())["run_id"] == point.run_id


def test_cli_prepare_data_reads_a_path_with_a_comment_mark(tmp_path):
    """`--set data.path=S/Book #1/book.txt` as a user types it (old: `S/Book does not exist`)."""
    book = tmp_path / "Book #1" / "book.txt"
    book.parent.mkdir()
    book.write_text("It was the best of times, it was the worst of times. " * 200)
    proc = subprocess.run([sys.executable, "-m", "stability", "prepare-data", "--set", "data.source=text",
                           "--set", f"data.path={book}", "--set", "train.seq_len=32",
                           "--set", f"data.cache_dir={tmp_path / 'cache'}"],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (Path(proc.stdout.strip()) / "meta.json").is_file()
