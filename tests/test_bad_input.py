"""Bad input is refused before any training: exit 2, one line naming the field or file, no
traceback, nothing written to --out. Through the CLI (as a subprocess), through Snakemake at
DAG start, and by property-based fuzzing of the config loader and the CLI.

    pytest tests/test_bad_input.py -k cli            # the CLI cases (subprocesses)
    pytest tests/test_bad_input.py -k snakemake      # the workflow-config cases
    pytest tests/test_bad_input.py -k fuzz           # hypothesis

The subprocesses of one module run four at a time (a module-scoped pool, started by the first
test that needs it); each test then checks its own case.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import TINY, child_env
from workflow_copy import copy_repo
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stability import config as C
from stability.cli import main

REPO = Path(__file__).resolve().parents[1]



def set_args(over: dict) -> list[str]:
    out = []
    for k, v in over.items():
        out += ["--set", f"{k}={v}"]
    return out




def run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """subprocess.run in its own session; on timeout the whole group (jobs included) is killed."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{cmd[:4]} timed out after {timeout}s in {cwd}:\n{out[-2000:]}\n{err[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def stability_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "stability", *map(str, args)]


def assert_one_line_error(proc: subprocess.CompletedProcess, prefix: str) -> None:
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {prefix}"), err
    assert proc.stdout == ""


def assert_nothing_written(out: Path) -> None:
    """No run output: not metrics, summary, checkpoints, not even config.yaml or the dir."""
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


class Jobs:
    """Subprocess cases of this module, run concurrently; `jobs[name]` waits for one."""

    def __init__(self, root: Path):
        self.root, self.pool, self.futures = root, ThreadPoolExecutor(4), {}
        self.dirs: dict[str, Path] = {}

    def add(self, name: str, fn, *args) -> None:
        d = self.root / name
        d.mkdir()
        self.dirs[name] = d
        self.futures[name] = self.pool.submit(fn, d, *args)

    def __getitem__(self, name: str):
        return self.futures[name].result()


# ---- CLI: config errors (no torch import needed; fast) --------------------------------------

# (id, --set overrides on top of TINY, the field the one-line error must start with)
BAD_SETS = [
    ("unknown-top-key", {"foo": 1}, "foo: unknown key"),
    ("unknown-nested-key", {"optim.lrr": 1}, "optim.lrr: unknown key"),
    ("section-not-mapping", {"model": 3}, "model: expected a mapping"),
    ("not-a-section", {"seed": 1, "seed.x": 3}, "seed.x: seed is not a section"),
    ("type-int-from-text", {"model.d_model": "abc"}, "model.d_model: expected an integer"),
    ("type-int-from-fraction", {"train.batch_size": 2.5}, "train.batch_size: expected an integer"),
    ("type-int-from-bool", {"train.steps": "true"}, "train.steps: expected an integer"),
    ("type-float-from-text", {"optim.lr": "fast"}, "optim.lr: expected a number"),
    ("type-float-from-list", {"optim.lr": "[1]"}, "optim.lr: expected a number"),
    ("type-float-huge-int", {"optim.lr": "1" + "0" * 400}, "optim.lr: expected a finite number"),
    ("type-bool-from-text", {"train.compile": "maybe"}, "train.compile: expected true or false"),
    ("type-enum-from-int", {"model.qk_layernorm": 1}, "model.qk_layernorm: expected one of"),
    ("bad-date-scalar", {"seed": "2001-13-45"}, "seed: expected an integer"),
    ("zero-d_model", {"model.d_model": 0}, "model.d_model: expected a positive integer"),
    ("negative-n_layers", {"model.n_layers": -1}, "model.n_layers: expected an integer >= 0"),
    ("zero-head_dim", {"model.head_dim": 0}, "model.head_dim: expected a positive integer"),
    ("zero-mlp_ratio", {"model.mlp_ratio": 0}, "model.mlp_ratio: expected a positive integer"),
    ("zero-batch", {"train.batch_size": 0}, "train.batch_size: expected a positive integer"),
    ("negative-seq_len", {"train.seq_len": -4}, "train.seq_len: expected a positive integer"),
    ("negative-vocab", {"model.vocab_size": -1}, "model.vocab_size"),
    ("head_dim-not-dividing", {"model.head_dim": 24}, "model.head_dim: expected a divisor of model.d_model=32"),
    ("head_dim-odd", {"model.d_model": 30, "model.head_dim": 15}, "model.head_dim: expected an even number"),
    ("zero-lr", {"optim.lr": 0}, "optim.lr: expected a positive number"),
    ("negative-lr", {"optim.lr": -1e-3}, "optim.lr: expected a positive number"),
    ("nan-lr", {"optim.lr": "nan"}, "optim.lr: expected a finite number"),
    ("inf-lr", {"optim.lr": ".inf"}, "optim.lr: expected a finite number"),
    ("zero-steps", {"train.steps": 0, "optim.warmup_steps": 0}, "train.steps: expected a positive integer"),
    ("negative-steps", {"train.steps": -5}, "train.steps: expected a positive integer"),
    ("warmup-over-steps", {"optim.warmup_steps": 61}, "optim.warmup_steps: expected at most train.steps=60"),
    ("negative-eps", {"optim.eps": -1e-8}, "optim.eps: expected a positive number"),
    ("negative-z_loss", {"loss.z_loss": -1e-4}, "loss.z_loss: expected a number >= 0"),
    ("negative-layernorm_eps", {"model.layernorm_eps": -1e-6}, "model.layernorm_eps"),
    ("beta-one", {"optim.beta2": 1.0}, "optim.beta2: expected a number in [0, 1)"),
    ("unknown-qk_layernorm", {"model.qk_layernorm": "sometimes"}, "model.qk_layernorm: expected one of"),
    ("unknown-parametrization", {"model.parametrization": "ntk"}, "model.parametrization: expected one of"),
    ("unknown-data-source", {"data.source": "s3"}, "data.source: expected one of"),
    ("text-without-path", {"data.source": "text"}, "data.path: expected a file or directory"),
    # issue 12, kind 1: numbers in scientific notation are read, and refused only with the reason
    ("int-from-fractional-sci", {"train.steps": "4.5e0"}, "train.steps: expected an integer, got '4.5e0' (not a whole number)"),
    ("int-from-inexact-sci", {"data.n_train_tokens": "1e30"}, "data.n_train_tokens: expected an integer, got '1e30' (write it in digits"),
    ("bool-from-yes", {"train.compile": "yes"}, "train.compile: expected true or false, got 'yes'"),
    # issue 12, kind 4: values that make the arithmetic undefined (were trained into NaN)
    ("zero-eps", {"optim.eps": 0}, "optim.eps: expected a positive number >= 1.2e-38"),
    ("eps-zero-in-float32", {"optim.eps": "1e-300"}, "optim.eps: expected a positive number >= 1.2e-38"),
    ("layernorm_eps-zero-in-float32", {"model.layernorm_eps": "1e-300"}, "model.layernorm_eps: expected a positive number >= 1.2e-38"),
    ("min_lr-above-lr", {"optim.lr": 1e-3, "optim.min_lr": 1e-2}, "optim.min_lr: expected at most optim.lr=0.001"),
    ("negative-qk_kappa", {"model.qk_kappa": -1}, "model.qk_kappa: expected 0 (off) or a positive number"),
    ("negative-grad_clip", {"optim.grad_clip": -1}, "optim.grad_clip: expected 0 (off) or a positive number"),
    # numpy refuses negative seeds and torch ones beyond 2**64: both used to be tracebacks
    ("negative-seed", {"seed": -1}, "seed: expected an integer in [0, 2**63), got -1"),
    ("huge-seed", {"seed": 2**70}, "seed: expected an integer in [0, 2**63)"),
    ("negative-data_seed", {"data.data_seed": -5}, "data.data_seed: expected an integer in [0, 2**63), got -5"),
]

# (id, config file bytes, expected message after "error: bad.yaml: ")
BAD_FILES = [
    ("malformed-yaml", b"model: {d_model: [1, 2\n", "malformed YAML (line 2"),
    ("tab-indented-yaml", b"model:\n\td_model: 3\n", "malformed YAML"),
    ("top-level-list", b"- model\n- optim\n", "expected a mapping of config sections"),
    ("top-level-scalar", b"42\n", "expected a mapping of config sections"),
    ("not-utf8", b"model:\n  d_model: \xff\xfe\n", "expected a UTF-8 YAML file"),
    ("bad-timestamp", b"seed: !!timestamp 2001-13-45\n", "malformed YAML"),  # untagged: text (YAML 1.2)
    ("bad-int-tag", b"seed: !!int xyz\n", "malformed YAML"),
    ("python-tag", b"seed: !!python/object:os.system ls\n", "malformed YAML"),
]

# Well-formed files with a bad field (issue 12): (id, config file bytes, the one line's prefix)
BAD_FILE_FIELDS = [
    ("str-field-given-int", b"data:\n  path: 2024\n", "data.path: expected a string, got 2024 (quote it in YAML"),
    ("int-field-given-fraction-sci", b"train:\n  steps: 4.5e0\n", "train.steps: expected an integer, got 4.5 (not a whole number)"),
    ("eps-zero", b"optim:\n  eps: 0.0\n", "optim.eps: expected a positive number >= 1.2e-38"),
    ("bool-field-given-yes", b"train:\n  compile: yes\n", "train.compile: expected true or false, got 'yes'"),
]

# Configs whose loss is already non-finite at initialisation, before any update: the config's
# float32 arithmetic overflows. Refused with exit 2 (were recorded as "diverged at step 5").
# (id, --set overrides on top of TINY, the one line's prefix)
BAD_INIT = [
    ("rope_base-overflows", {"model.rope_base": "1e-300"}, "model: at initialisation, before any update, the cross-entropy is nan"),
    ("qk_kappa-overflows", {"model.qk_kappa": "1e38"}, "model: at initialisation, before any update"),
    ("z_loss-overflows", {"loss.z_loss": "1e38"}, "loss.z_loss: at initialisation, before any update, the objective"),
]

# (id, extra CLI arguments, expected prefix)
BAD_ARGS = [
    ("missing-config-file", ["--config", "missing.yaml"], "missing.yaml: config file not found"),
    ("set-without-equals", ["--set", "optim.lr"], "--set 'optim.lr': expected key=value"),
    ("set-empty-key-part", ["--set", "optim..lr=1"], "optim..lr: expected a dotted key"),
]

# Data files that are wrong (data.source=text): (kind, the field the line starts with, what it must say)
BAD_DATA = [
    ("missing", "data.path", "does not exist"),
    ("empty", "data.path", "contains no text"),
    ("blank", "data.path", "contains no text"),
    ("not-utf8", "data.path", "is not valid UTF-8 (byte 3)"),
    ("too-short", "data.path", "need at least"),
    ("empty-dir", "data.path", "no .txt, .jsonl or .parquet files"),
    ("jsonl-no-field", "data.text_field", "'text' not in {path} (fields: body)"),
    ("jsonl-not-json", "data.path", "line 1: expected a JSON object"),
    ("jsonl-number", "data.text_field", "'text' in {path} line 2 is a number (12345), expected a string"),
    ("parquet-int-column", "data.text_field", "column 'text' of {path} is Int64, expected strings"),
    ("fifo", "data.path", "{path} is not a regular file"),  # reading it would block forever
]


def _write_data(d: Path, kind: str) -> Path:
    p = d / "corpus.txt"
    if kind == "missing":
        return d / "missing.txt"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "blank":
        p.write_text("\n\n   \n\n\n\t\n")
    elif kind == "not-utf8":
        p.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 200)
    elif kind == "too-short":
        p.write_text("a few words\n")
    elif kind == "empty-dir":
        p = d / "corpus"
        p.mkdir()
        (p / "notes.md").write_text("not a .txt/.jsonl/.parquet\n")
    elif kind == "jsonl-no-field":
        p = d / "corpus.jsonl"
        p.write_text('{"body": "hello"}\n')
    elif kind == "jsonl-not-json":
        p = d / "corpus.jsonl"
        p.write_text("hello\n")
    elif kind == "jsonl-number":  # used to become the training text "12345"
        p = d / "corpus.jsonl"
        p.write_text('{"text": "hello"}\n{"text": 12345}\n')
    elif kind == "parquet-int-column":  # used to be trained on as digits
        import polars as pl
        p = d / "corpus.parquet"
        pl.DataFrame({"text": [1, 2, 3]}).write_parquet(p)
    elif kind == "fifo":
        os.mkfifo(p)
    return p


def _bad_set_case(d: Path, over: dict):
    return run(stability_cmd("train", "--out", d / "run", *set_args({**TINY, **over})), cwd=d)


def _bad_file_case(d: Path, content: bytes):
    (d / "bad.yaml").write_bytes(content)
    return run(stability_cmd("train", "--config", "bad.yaml", "--out", d / "run"), cwd=d)


def _init_case(d: Path, over: dict):
    return run(stability_cmd("train", "--out", d / "run", *set_args({**TINY, **over, "data.cache_dir": d / "cache"})), cwd=d)


def _bad_args_case(d: Path, args: list[str]):
    return run(stability_cmd("train", "--out", d / "run", *args), cwd=d)


def _bad_data_case(d: Path, kind: str):
    path = _write_data(d, kind)
    over = {**TINY, "data.source": "text", "data.path": path, "data.cache_dir": d / "cache"}
    return path, run(stability_cmd("train", "--out", d / "run", *set_args(over)), cwd=d)


def _newline_key_case(d: Path):
    (d / "bad.yaml").write_text('"evil\\nkey": 1\n')
    return run(stability_cmd("train", "--config", "bad.yaml", "--out", d / "run"), cwd=d)


def _expect_run_id_case(d: Path):
    return run(stability_cmd("train", "--out", d / "run", "--expect-run-id", "000000000000",
                             *set_args({**TINY, "data.cache_dir": d / "cache"})), cwd=d)


def _out_is_a_file_case(d: Path):
    (d / "run").write_text("precious\n")
    over = set_args({**TINY, "data.cache_dir": "cache"})
    return (run(stability_cmd("train", "--out", "run", *over), cwd=d),
            run(stability_cmd("train", "--out", "run/sub", *over), cwd=d))


# ---- Snakemake: a bad workflow config fails at DAG start, before any job ---------------------

SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


def _study(cfg) -> dict:
    return cfg["studies"]["attn_logit_growth"]


BAD_WORKFLOWS = [
    ("unknown-scale", lambda c: _study(c).update(scales=["s0", "s9"]),
     "invalid config: studies.attn_logit_growth.scales: unknown scale 's9'"),
    ("unknown-reference", lambda c: _study(c).update(reference="nope"),
     "invalid config: studies.attn_logit_growth.reference: unknown variant 'nope'"),
    ("bad-run-key", lambda c: _study(c).update(overrides={"optim.lrr": 0.1}),
     "optim.lrr: unknown key"),
    ("bad-run-value", lambda c: c["defaults"].update({"train.steps": 0}),
     "train.steps: expected a positive integer, got 0"),
    ("bad-variant-value", lambda c: _study(c)["variants"].update(bad={"model.qk_layernorm": "sometimes"}),
     "variant=bad, lr=0.01): model.qk_layernorm: expected one of"),
    ("eps-zero-in-variant", lambda c: _study(c)["variants"].update(eps0={"optim.eps": 0.0}),
     "variant=eps0, lr=0.01): optim.eps: expected a positive number >= 1.2e-38"),
    ("schema-negative-lr", lambda c: _study(c).update(lrs=[-1]),
     "invalid config: studies.attn_logit_growth.lrs.0: -1 is less than or equal to the minimum of 0"),
    ("schema-unknown-top-key", lambda c: c.update(scale={}),
     "invalid config: top level: Additional properties are not allowed ('scale' was unexpected)"),
    ("missing-supplement", lambda c: c.update(findings_supplements=["config/nope.yaml"]),
     "invalid config: findings_supplements[0]: expected the path of a workflow config file, got 'config/nope.yaml'"),
]




def snakemake_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--cores", "1", *map(str, args)]


def _workflow_case(d: Path, content: str, dry_run: bool):
    repo = copy_repo(d)
    (d / "bad.yaml").write_text(content)
    return repo, run(snakemake_cmd(*(["-n"] if dry_run else []), "--configfile", "bad.yaml"), cwd=repo, timeout=180)


def _mutated_smoke(mutate) -> str:
    cfg = copy.deepcopy(SMOKE)
    mutate(cfg)
    return yaml.safe_dump(cfg)


def _grid_case(d: Path):
    (d / "bad.yaml").write_text(_mutated_smoke(lambda c: _study(c).update(scales=["s9"])))
    return run(stability_cmd("grid", "bad.yaml"), cwd=d)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    j = Jobs(tmp_path_factory.mktemp("bad-input"))
    # Slowest first (they import torch or start Snakemake), so the pool stays busy.
    for name, mutate, _ in BAD_WORKFLOWS:
        j.add(f"wf-{name}", _workflow_case, _mutated_smoke(mutate), True)
    j.add("wf-no-dry-run", _workflow_case,
          _mutated_smoke(lambda c: _study(c).update(overrides={"train.steps": -3})), False)
    j.add("wf-malformed", _workflow_case, "studies: {x: [\n", True)
    j.add("grid", _grid_case)
    for kind, *_ in BAD_DATA:
        j.add(f"data-{kind}", _bad_data_case, kind)
    for name, over, _ in BAD_INIT:
        j.add(f"init-{name}", _init_case, over)
    j.add("expect-run-id", _expect_run_id_case)
    j.add("out-is-a-file", _out_is_a_file_case)
    for name, over, _ in BAD_SETS:
        j.add(f"set-{name}", _bad_set_case, over)
    for name, content, _ in BAD_FILES:
        j.add(f"file-{name}", _bad_file_case, content)
    for name, content, _ in BAD_FILE_FIELDS:
        j.add(f"field-{name}", _bad_file_case, content)
    for name, args, _ in BAD_ARGS:
        j.add(f"args-{name}", _bad_args_case, args)
    j.add("newline-key", _newline_key_case)
    yield j
    j.pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("prefix", [c[2] for c in BAD_SETS], ids=[c[0] for c in BAD_SETS])
def test_cli_bad_set_value(jobs, request, prefix):
    name = "set-" + request.node.callspec.id
    assert_one_line_error(jobs[name], prefix)
    assert_nothing_written(jobs.dirs[name] / "run")
    assert sorted(p.name for p in jobs.dirs[name].iterdir()) == []  # not even a data cache


@pytest.mark.parametrize("message", [c[2] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_cli_bad_config_file(jobs, request, message):
    name = "file-" + request.node.callspec.id
    assert_one_line_error(jobs[name], f"bad.yaml: {message}")
    assert_nothing_written(jobs.dirs[name] / "run")


@pytest.mark.parametrize("prefix", [c[2] for c in BAD_FILE_FIELDS], ids=[c[0] for c in BAD_FILE_FIELDS])
def test_cli_bad_field_in_a_config_file(jobs, request, prefix):
    name = "field-" + request.node.callspec.id
    assert_one_line_error(jobs[name], prefix)
    assert_nothing_written(jobs.dirs[name] / "run")


@pytest.mark.parametrize("prefix", [c[2] for c in BAD_INIT], ids=[c[0] for c in BAD_INIT])
def test_cli_non_finite_at_init_is_an_error_not_a_divergence(jobs, request, prefix):
    """A NaN the config's own arithmetic makes before any update is exit 2 with one line,
    never a run recorded as diverged; --out is left as it was (absent)."""
    name = "init-" + request.node.callspec.id
    proc = jobs[name]
    assert_one_line_error(proc, prefix)
    assert "not a training divergence" in proc.stderr
    assert_nothing_written(jobs.dirs[name] / "run")


@pytest.mark.parametrize("prefix", [c[2] for c in BAD_ARGS], ids=[c[0] for c in BAD_ARGS])
def test_cli_bad_arguments(jobs, request, prefix):
    name = "args-" + request.node.callspec.id
    assert_one_line_error(jobs[name], prefix)
    assert_nothing_written(jobs.dirs[name] / "run")


def test_cli_config_yaml_errors_name_the_field(tmp_path):
    """Errors inside a well-formed file name the dotted field, as --set errors do."""
    (tmp_path / "bad.yaml").write_text("model:\n  dmodel: 32\n")
    proc = run(stability_cmd("train", "--config", "bad.yaml", "--out", tmp_path / "run"), cwd=tmp_path)
    assert_one_line_error(proc, "model.dmodel: unknown key")
    assert_nothing_written(tmp_path / "run")


def test_cli_a_key_with_a_newline_is_still_one_line(jobs):
    assert_one_line_error(jobs["newline-key"], "evil key: unknown key")


# ---- CLI: errors found by train() before it writes (these import torch) ----------------------

def test_cli_wrong_expected_run_id_writes_nothing(jobs):
    assert_one_line_error(jobs["expect-run-id"], "--expect-run-id: the config resolves to run")
    assert_nothing_written(jobs.dirs["expect-run-id"] / "run")


def test_cli_out_that_is_a_file_is_refused(jobs):
    is_file, under_file = jobs["out-is-a-file"]
    assert_one_line_error(is_file, "--out: run exists and is not a directory")
    assert (jobs.dirs["out-is-a-file"] / "run").read_text() == "precious\n"
    assert_one_line_error(under_file, "--out: cannot create run/sub")


@pytest.mark.parametrize("field, message", [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA])
def test_cli_bad_data_file_writes_nothing(jobs, request, field, message):
    kind = request.node.callspec.id
    path, proc = jobs[f"data-{kind}"]
    assert_one_line_error(proc, f"{field}: ")
    assert message.format(path=path) in proc.stderr and str(path) in proc.stderr, proc.stderr
    d = jobs.dirs[f"data-{kind}"]
    assert_nothing_written(d / "run")  # not even config.yaml: the dir can be reused once the data is fixed
    assert not list((d / "cache").glob("*/meta.json")) and not list((d / "cache").glob("*/*.bin"))


@pytest.mark.parametrize("message", [c[2] for c in BAD_WORKFLOWS], ids=[c[0] for c in BAD_WORKFLOWS])
def test_snakemake_bad_workflow_config_fails_at_dag_start(jobs, request, message):
    repo, proc = jobs["wf-" + request.node.callspec.id]
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log
    assert message in log, log
    # one line, ours; Snakemake's own "Using workflow specific profile ..." line may precede it
    ours = [ln for ln in log.splitlines() if not ln.startswith("Using workflow specific profile")]
    assert len(ours) == 1 and ours[0].startswith("error: invalid config: "), log
    assert "Building DAG of jobs" not in log and "Job stats" not in log, log  # refused before the DAG
    assert not (repo / "results").exists()


def test_snakemake_bad_config_runs_no_job_without_dry_run(jobs):
    repo, proc = jobs["wf-no-dry-run"]
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "train.steps: expected a positive integer, got -3" in log, log
    assert "Building DAG of jobs" not in log, log
    assert not (repo / "results").exists()  # no job ran, not even a log dir was made


def test_snakemake_malformed_config_file(jobs):
    """Snakemake parses --configfile itself, before the Snakefile: its one-line message does
    not name the file or line (a Snakemake limitation; `stability grid FILE` does)."""
    repo, proc = jobs["wf-malformed"]
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Config file is not valid JSON or YAML" in log, log
    assert "Traceback (most recent call last)" not in log, log
    assert not (repo / "results").exists()


def test_stability_grid_names_the_bad_study(jobs):
    assert_one_line_error(jobs["grid"], "studies.attn_logit_growth.scales: unknown scale 's9'")


# ---- property-based: random mutations only ever raise ConfigError ----------------------------

VALID = C.merge(C.RunConfig().to_dict(), {**TINY, "data.cache_dir": "/nonexistent/cache"})
C.from_dict(VALID)  # the base of every mutation is valid

LITERALS = ["none", "per_head", "full", "standard", "mup_simple", "mup_full", "synthetic", "text", "huggingface",
            "auto", "cpu", "cuda", "fp32", "bf16", "bytes", "bpe", "matrices", "all"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70), st.integers(), st.floats(), st.floats(-2, 2),
    st.sampled_from([10**400, -10**400, 2**63, 1e300]),
    st.text(max_size=12), st.sampled_from(LITERALS),
    st.sampled_from(["1e-3", "nan", "-inf", "0", "-1", "1_000", "0x10", "2001-13-45", "[", "{a: 1}", "~"]),
)
garbage = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.none(), st.booleans()), inner, max_size=3)),
    max_leaves=8)
key_names = st.one_of(st.sampled_from(sorted(C.KEY_TYPES)), st.text(max_size=10),
                      st.sampled_from(["model", "optim", "train", "data", "loss", "model.x", ".", "a..b"]))


def _paths(d: dict, prefix=()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += _paths(v, prefix + (k,))
    return out


def _containers(d: dict, prefix=()) -> list[tuple]:
    out = [prefix]
    for k, v in d.items():
        if isinstance(v, dict):
            out += _containers(v, prefix + (k,))
    return out


def _at(d: dict, path: tuple):
    for k in path:
        d = d[k]
    return d


@st.composite
def mutated_configs(draw) -> dict:
    cfg = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "insert", "replace", "replace", "swap"]))
        paths = _paths(cfg)
        if op == "drop" and paths:
            path = draw(st.sampled_from(paths))
            del _at(cfg, path[:-1])[path[-1]]
        elif op == "insert":
            parent = _at(cfg, draw(st.sampled_from(_containers(cfg))))
            parent[draw(st.one_of(st.text(max_size=10), st.integers(), st.none()))] = draw(garbage)
        elif op == "replace" and paths:
            path = draw(st.sampled_from(paths))
            _at(cfg, path[:-1])[path[-1]] = draw(garbage)
        elif op == "swap" and len(paths) > 1:  # another field's (well-typed) value
            a, b = draw(st.sampled_from(paths)), draw(st.sampled_from(paths))
            _at(cfg, a[:-1])[a[-1]] = copy.deepcopy(_at(cfg, b))
    return cfg


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@FUZZ
@given(mutated_configs())
def test_fuzz_from_dict_raises_only_config_error(data):
    try:
        cfg = C.from_dict(data)
    except C.ConfigError as e:
        assert str(e).strip()
        return
    # Accepted: it must be genuinely valid and survive the round trip train() relies on
    # (config.yaml is re-read on resume to check the run id).
    m, o = cfg.model, cfg.optim
    assert m.d_model % m.head_dim == 0 and o.lr > 0 and o.warmup_steps <= cfg.train.steps
    assert C.from_dict(yaml.safe_load(C.dump_yaml(cfg))).run_id() == cfg.run_id()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(st.one_of(mutated_configs().map(lambda d: yaml.safe_dump(d).encode()),
                 st.text(max_size=200).map(str.encode),
                 st.binary(max_size=100),
                 st.lists(st.sampled_from(["model:", "  d_model: 3", "optim: {lr: [", "- a", "\t", "&x a: *x",
                                           "seed: 2001-02-30", "? [a]", ": 1", "!!binary x", "%YAML 9.9", "---"]),
                          max_size=6).map(lambda ls: "\n".join(ls).encode())),
       st.lists(st.tuples(key_names, scalars.map(str)), max_size=3))
def test_fuzz_load_file_and_overrides_raise_only_config_error(fuzz_dir, content, overrides):
    path = fuzz_dir / "cfg.yaml"
    path.write_bytes(content)
    try:
        C.load(path, [f"{k}={v}" for k, v in overrides])
    except C.ConfigError as e:
        assert str(e).strip()


@pytest.fixture
def fake_train(monkeypatch):
    """main() without the compute: a config that validates is 'trained' instantly."""
    import stability.train
    calls = []

    def train(cfg, out, expect_run_id=None, quiet=False):
        calls.append(cfg)
        return {"run_id": cfg.run_id(), "diverged": False, "diverged_step": None, "diverged_reason": None,
                "final_loss": 1.0, "max_attn_logit": 1.0}

    monkeypatch.setattr(stability.train, "train", train)
    return calls


def _flat_sets(d: dict) -> list[str]:
    return [f"--set={k}={v}" for k, v in C.flatten(d).items()]


@FUZZ
@given(st.one_of(mutated_configs().map(_flat_sets),
                 st.lists(st.tuples(key_names, st.one_of(scalars.map(str), st.text(max_size=15))).map(
                     lambda kv: f"--set={kv[0]}={kv[1]}"), max_size=4),
                 st.lists(st.text(max_size=15).map(lambda s: f"--set={s}"), max_size=3)))
def test_fuzz_cli_main_never_prints_a_traceback(fake_train, sets):
    err = io.StringIO()
    n_before = len(fake_train)
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["train", "--out", "/nonexistent/never-written", "--quiet", *sets])
    text = err.getvalue()
    assert "Traceback" not in text
    if rc == 2:
        assert len(text.splitlines()) == 1 and text.startswith("error: "), text
        assert len(fake_train) == n_before  # refused before training
    else:
        assert rc == 0 and len(fake_train) == n_before + 1, text
