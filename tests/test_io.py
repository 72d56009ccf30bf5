"""Tests for `../stability/io.py`: file modes from the umask, the JSON policy, atomicity, locks."""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from helpers import tiny
from stability import checkpoint, devices, io
from stability.analysis.claims import write_claims
from stability.train import train

UMASKS = {0o022: (0o644, 0o755), 0o002: (0o664, 0o775), 0o077: (0o600, 0o700)}


@pytest.fixture(params=sorted(UMASKS), ids=lambda m: f"umask-{m:03o}")
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_run_outputs_get_the_mode_of_the_umask(tmp_path, umask):
    file_mode, dir_mode = UMASKS[umask]
    cfg = tiny(tmp_path, **{"train.steps": 10, "train.eval_every": 10})
    train(cfg, tmp_path / "run", quiet=True)
    for name in ("summary.json", "metrics.parquet", "config.yaml"):
        assert mode(tmp_path / "run" / name) == file_mode, name
    (cache,) = (tmp_path / "data").glob("[!.]*")  # the token cache folder, not its lock
    assert mode(cache) == dir_mode
    assert {p.name: mode(p) for p in cache.iterdir()} == dict.fromkeys(("meta.json", "train.bin", "val.bin"), file_mode)
    ckpt = checkpoint.save(tmp_path / "ckpt", 5, {"step": 5})
    assert mode(ckpt) == mode(ckpt.with_suffix(".sha256")) == file_mode


def test_analysis_outputs_get_the_mode_of_the_umask(tmp_path, umask):
    file_mode, _ = UMASKS[umask]
    claims = write_claims([{"finding": 1, "outcome": "reproduced"}], tmp_path / "study" / "claims.json", "s")
    table = io.write_parquet(tmp_path / "study" / "runs.parquet", pl.DataFrame({"lr": [0.1]}))
    with io.file_lock(tmp_path / "study" / ".lock"):
        pass
    assert [mode(p) for p in (claims, table, tmp_path / "study" / ".lock")] == [file_mode] * 3


def test_nan_and_inf_are_written_as_null(tmp_path):
    obj = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": (np.float32("nan"), np.float64(2.0), np.int64(3)),
           "d": {"e": float("nan")}, 7: Path("x/y")}
    text = io.write_json(tmp_path / "s.json", obj).read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [None, None, 1.5], "c": [None, 2.0, 3], "d": {"e": None}, "7": "x/y"}


def test_a_failed_write_leaves_the_old_file_intact(tmp_path):
    dest = io.write_json(tmp_path / "summary.json", {"old": True})
    before = dest.read_bytes()
    with pytest.raises(TypeError):  # a set is not JSON: refused before anything is written
        io.write_json(dest, {"new": {1, 2}})

    def half(p):
        p.write_text('{"new": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(dest, half)
    assert dest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind


def test_the_gpu_picker_locks_through_io(tmp_path, monkeypatch):
    assert devices.lock_fd is io.lock_fd and devices.unlock_fd is io.unlock_fd  # one flock implementation
    monkeypatch.setenv("STABILITY_FAKE_GPUS", "0,1")
    with io.file_lock(tmp_path / "gpu0.lock"):  # held through io: the picker must skip device 0
        with devices.claim_gpu(tmp_path, timeout_s=1) as dev:
            assert dev == "1"
            with io.file_lock(tmp_path / "gpu1.lock", blocking=False) as got:
                assert got is False
