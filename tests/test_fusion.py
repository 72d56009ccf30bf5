"""Planning fused sweeps (stability.fusion) and the `stability train-fused` command: which due
runs group, where `auto` fuses, what a fused job asks its scheduler for, and bad input
refused with exit 2 and one line before anything is written."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import TINY, child_env, tiny
from stability import fusion, resources
from stability.cli import main
from stability.config import ConfigError


def _runs(tmp_path, *overs):
    cfgs = [tiny(tmp_path, **o) for o in overs]
    return {c.run_id(): c for c in cfgs}


def test_plan_groups_only_due_fusable_runs_of_one_shape(tmp_path):
    runs = _runs(tmp_path, {"optim.lr": 1e-2}, {"optim.lr": 3e-2}, {"optim.lr": 1e-1, "seed": 1},
                 {"optim.lr": 1e-2, "model.d_model": 64},  # another shape: alone
                 {"optim.lr": 3e-2, "model.d_model": 64, "optim.algorithm": "adam_atan2"},  # unfusable
                 {"optim.lr": 1e-2, "model.qk_clip": 100.0})  # unfusable (edits weights after the step)
    ids = list(runs)
    assert len(ids) == 6
    groups = fusion.plan(runs, ids, "always")
    assert list(groups.values()) == [sorted(ids[:3])]
    assert list(groups) == [fusion.group_id(ids[:3])]
    # Finished runs never join a group; one due run of a shape is an ordinary run.
    assert fusion.plan(runs, ids[1:3], "always") == {fusion.group_id(ids[1:3]): sorted(ids[1:3])}
    assert fusion.plan(runs, ids[2:], "always") == {}
    assert fusion.plan(runs, ids, "never") == {}
    assert fusion.plan(runs, ids, "auto") == {}  # nothing measured to pay
    assert fusion.plan(runs, ids, "auto", lambda cfg: True) == groups
    with pytest.raises(ConfigError, match="^fuse: expected one of auto, never, always, got 'sometimes'$"):
        fusion.plan(runs, ids, "sometimes")


def test_auto_fuses_only_where_this_device_kind_was_measured_to_pay(tmp_path):
    cpu_slow = {"machine": {"device_kind": "cpu"}, "cases": [{"d_model": 64, "ratio": 0.95}, {"d_model": 256, "ratio": 0.63}]}
    h200 = {"machine": {"device_kind": "NVIDIA H200"}, "cases": [{"d_model": 64, "ratio": 9.0}, {"d_model": 256, "ratio": 3.0}]}
    (tmp_path / "a.json").write_text(json.dumps(cpu_slow))
    (tmp_path / "b.json").write_text(json.dumps(h200))
    (tmp_path / "bad.json").write_text("{not json")
    measured = fusion.load_measurements([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "bad.json",
                                         tmp_path / "missing.json"])
    assert len(measured) == 2
    assert not fusion.pays("cpu", 64, measured)
    assert fusion.pays("NVIDIA H200", 64, measured) and fusion.pays("nvidia h200", 256, measured)
    assert not fusion.pays("NVIDIA A100", 64, measured) and not fusion.pays(None, 64, measured)
    cfg = tiny(tmp_path)
    assert fusion.job_device_kind(cfg, gpu=False, gpu_name="NVIDIA H200") == "cpu"  # device auto, no GPU jobs
    assert fusion.job_device_kind(cfg, gpu=True, gpu_name="NVIDIA H200") == "NVIDIA H200"
    assert fusion.job_device_kind(cfg, gpu=True, gpu_name=None) is None  # unknown: auto does not fuse
    assert fusion.job_device_kind(tiny(tmp_path, **{"train.device": "cpu"}), gpu=True, gpu_name="x") == "cpu"


def test_a_fused_job_is_sized_for_its_members(tmp_path):
    cfgs = [tiny(tmp_path, **{"optim.lr": lr, "train.steps": 20_000}) for lr in (1e-2, 3e-2, 1e-1)]
    one = resources.mem_mb(cfgs[0])
    assert resources.sweep_mem_mb(cfgs) == resources.PROCESS_MB + 3 * (one - resources.PROCESS_MB)
    assert resources.sweep_mem_mb(cfgs[:1]) == one
    alone = resources.runtime_min(cfgs[0], 1, False)
    assert alone > resources.SETUP_MIN + 1
    assert resources.sweep_runtime_min(cfgs, 1, False) == resources.SETUP_MIN + 3 * (alone - resources.SETUP_MIN)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stability", "train-fused", *map(str, args)], capture_output=True,
                          text=True, env=child_env(), timeout=120)


def _sets(over: dict) -> list[str]:
    return [a for k, v in over.items() for a in ("--set", f"{k}={v}")]


@pytest.mark.parametrize("case", ["other_shape", "bad_key", "bad_value", "expect", "no_member", "compile"])
def test_train_fused_refuses_bad_input_with_one_line(tmp_path, case):
    a, b = tmp_path / "a", tmp_path / "b"
    shared = _sets({**TINY, "data.cache_dir": tmp_path / "data"})
    args = {
        "other_shape": [*shared, "--member", a, "--member", b, "--set", "model.d_model=64"],
        "bad_key": [*shared, "--member", a, "--set", "optim.lrr=0.1"],
        "bad_value": [*shared, "--member", a, "--member", b, "--set", "optim.lr=-1"],
        "expect": [*shared, "--member", a, "--expect-run-id", "0123456789ab"],
        "no_member": shared,
        "compile": [*shared, "--set", "train.compile=true", "--member", a, "--member", b, "--set", "seed=1"],
    }[case]
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error") or "error:" in ln]
    assert len(lines) == 1, proc.stderr
    expected = {"other_shape": "model.d_model", "bad_key": "optim.lrr", "bad_value": "optim.lr",
                "expect": "--expect-run-id", "no_member": "--member", "compile": "train.compile"}[case]
    assert expected in lines[0], proc.stderr
    if case != "no_member":  # argparse's own usage line comes first there
        assert proc.stderr.splitlines() == lines
    assert not a.exists() and not b.exists()


def test_train_fused_writes_each_run_and_a_manifest_of_them(tmp_path, capsys):
    outs = [tmp_path / "runs" / n for n in ("a", "b")]
    shared = _sets({**TINY, "train.steps": 10, "data.cache_dir": tmp_path / "data"})
    cfgs = [tiny(tmp_path, **{"train.steps": 10, "optim.lr": lr}) for lr in (1e-2, 3e-2)]
    argv = ["train-fused", "--quiet", "--manifest", str(tmp_path / "m.json"), *shared]
    for out, cfg in zip(outs, cfgs):
        argv += ["--member", str(out), "--expect-run-id", cfg.run_id(), "--set", f"optim.lr={cfg.optim.lr!r}"]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert sorted(manifest["members"]) == sorted(c.run_id() for c in cfgs)
    run_dirs = {c.run_id(): out for c, out in zip(cfgs, outs)}
    assert fusion.trained_in_sweep([tmp_path / "m.json"], run_dirs) == set(run_dirs)
    # A run retrained since (its summary changed) is no longer the fused job's.
    summary = outs[0] / "summary.json"
    summary.write_text(summary.read_text().replace("{", "{ ", 1))
    assert fusion.trained_in_sweep([tmp_path / "m.json"], run_dirs) == {cfgs[1].run_id()}
    assert "finished" in capsys.readouterr().err
