"""Faults, concurrency, divergence and determinism (docs/reliability.md).

    pytest tests/test_reliability.py -k kill          # kill -9 mid-run / mid-write
    pytest tests/test_reliability.py -k corrupt       # damaged checkpoints
    pytest tests/test_reliability.py -k concurrent    # two writers on one --out / one workdir
    pytest tests/test_reliability.py -k diverg        # NaN/Inf is data, not a crash
    pytest tests/test_reliability.py -k determin      # same config + seed = same metrics (CPU)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from workflow_copy import copy_repo

from helpers import TINY, child_env, crash_at, tiny
from stability.io import atomic_write, file_lock
from stability.train import train

REPO = Path(__file__).resolve().parents[1]



# ---- helpers -----------------------------------------------------------------------------------



def start(cmd: list, cwd: Path, **kw) -> subprocess.Popen:
    """A child in its own session (so a kill reaches everything it started)."""
    return subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL the child and everything in its session (no cleanup handlers run)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
    proc.communicate(timeout=60)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill9(proc)
        raise AssertionError(f"{proc.args[:5]} did not finish in {timeout}s") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def train_cmd(out: Path, over: dict) -> list:
    args = [sys.executable, "-m", "stability", "train", "--out", out, "--quiet"]
    for k, v in over.items():
        args += ["--set", f"{k}={v}"]
    return args


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def metrics(run: Path) -> pl.DataFrame:
    return pl.read_parquet(run / "metrics.parquet").drop("tokens_per_s")


def intact_checkpoints(run: Path) -> list[int]:
    """Steps of the checkpoints whose digest file exists and matches (a loader would accept them)."""
    steps = []
    for pt in sorted((run / "ckpt").glob("step-*.pt")):
        sha = pt.with_suffix(".sha256")
        if sha.is_file() and sha.read_text().strip() == hashlib.sha256(pt.read_bytes()).hexdigest():
            steps.append(int(pt.stem.split("-")[1]))
    return steps


def assert_visible_files_complete(run: Path) -> None:
    """After a kill: every file a tool would look at is complete; temp files are hidden."""
    assert not (run / "summary.json").exists()  # a killed run is never marked finished
    visible = {p.relative_to(run).as_posix() for p in run.rglob("*") if not p.name.startswith(".")}
    allowed = {"config.yaml", "metrics.parquet", "ckpt"}
    for name in visible:
        assert name in allowed or (name.startswith("ckpt/step-") and name.endswith((".pt", ".sha256"))), name
    if (run / "metrics.parquet").exists():
        df = pl.read_parquet(run / "metrics.parquet")  # never a torn parquet file
        assert df["step"].to_list() == sorted(df["step"].to_list()) and df["step"][0] == 0
    for pt in (run / "ckpt").glob("step-*.pt"):
        if pt.with_suffix(".sha256").exists():  # the digest is written after the checkpoint
            assert int(pt.stem.split("-")[1]) in intact_checkpoints(run), pt


def json_strict(path: Path) -> dict:
    def no_constants(name):
        raise AssertionError(f"{path} holds the non-JSON literal {name}")
    return json.loads(path.read_text(), parse_constant=no_constants)


# ---- kill -9 during training ------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_mid_run_twice_then_rerun_matches_an_uninterrupted_run(tmp_path):
    over = {**TINY, "train.steps": 160, "train.eval_every": 40, "data.cache_dir": tmp_path / "data"}
    ref = start(train_cmd(tmp_path / "ref", over), tmp_path)  # runs alongside the victim
    run = tmp_path / "victim"

    seen = 0
    for round_ in range(2):  # kill once after the first checkpoint, again after a newer one
        victim = start(train_cmd(run, over), tmp_path)
        after = seen
        seen = wait_for(lambda: max([s for s in intact_checkpoints(run) if s > after], default=0),
                        240, f"a checkpoint after step {after} (round {round_})", victim)
        kill9(victim)
        assert victim.returncode == -signal.SIGKILL, (victim.returncode, victim.stderr)
        assert_visible_files_complete(run)
        assert intact_checkpoints(run), "a kill lost every checkpoint"

    resumed = finish(start(train_cmd(run, over), tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert finish(ref).returncode == 0
    s = json_strict(run / "summary.json")
    assert s["resumed_from_step"] is not None and s["resumed_from_step"] >= 20 and s["steps_completed"] == 160
    assert metrics(run).equals(metrics(tmp_path / "ref"))  # bit-identical on CPU
    assert not list((run / "ckpt").glob("step-*")), "a finished run keeps no checkpoints"


# ---- kill -9 during a write ---------------------------------------------------------------------

SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from stability.io import atomic_write

    dest, payload = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()

    def slow(tmp):
        with open(tmp, "wb") as fh:
            for i in range(0, len(payload), 64):
                fh.write(payload[i:i + 64])
                fh.flush()
                if i == 64:
                    print("half-written", flush=True)
                time.sleep(0.02)
            time.sleep(600)  # killed before it ever finishes

    atomic_write(dest, slow)
""")


def _parquet_bytes(tmp_path: Path, n: int) -> bytes:
    p = tmp_path / f"src-{n}.bin"
    pl.DataFrame({"step": list(range(n)), "loss": [float(i) for i in range(n)]}).write_parquet(p)
    return p.read_bytes()


@pytest.mark.parametrize("name", ["metrics.parquet", "summary.json", "ckpt/step-00000040.pt"])
@pytest.mark.parametrize("old", [False, True], ids=["no-old-file", "old-file"])
def test_kill_9_during_atomic_write_never_exposes_a_partial_file(tmp_path, name, old):
    d = tmp_path / "run"
    dest = d / name
    dest.parent.mkdir(parents=True)
    old_bytes = _parquet_bytes(tmp_path, 5) if name.endswith(".parquet") else b'{"old": true}\n' * 3
    new_bytes = _parquet_bytes(tmp_path, 5000) if name.endswith(".parquet") else b'{"new": true}\n' * 400
    if old:
        dest.write_bytes(old_bytes)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(new_bytes)
    (tmp_path / "writer.py").write_text(SLOW_WRITER)

    writer = start([sys.executable, tmp_path / "writer.py", dest, payload], tmp_path)
    assert writer.stdout.readline().strip() == "half-written", writer.stderr.read()
    tmps = list(dest.parent.glob(f".{dest.name}.*.tmp"))
    assert len(tmps) == 1 and 0 < tmps[0].stat().st_size < len(new_bytes)  # caught mid-write
    kill9(writer)

    if old:
        assert dest.read_bytes() == old_bytes  # the old complete file, untouched
    else:
        assert not dest.exists()
    # What tools see: only complete files under the real names; the torn temp file is hidden.
    pattern = "*" + dest.suffix
    assert [p.name for p in dest.parent.glob(pattern)] == ([dest.name] if old else [])
    assert all(p.name.startswith(".") and p.name.endswith(".tmp")
               for p in dest.parent.iterdir() if p.name != dest.name)
    if old and name.endswith(".parquet"):
        assert pl.read_parquet(d / "*.parquet").height == 5
    # The next write succeeds over it, and leaves no temp file of its own.
    atomic_write(dest, lambda p: p.write_bytes(new_bytes))
    assert dest.read_bytes() == new_bytes
    assert len(list(dest.parent.glob(".*.tmp"))) == 1  # only the killed writer's leftover


def test_an_exception_inside_a_write_leaves_no_temp_file(tmp_path):
    dest = tmp_path / "metrics.parquet"
    dest.write_bytes(b"old")

    def boom(p):
        p.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(dest, boom)
    assert dest.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.parquet"]


# ---- corrupted checkpoints ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """An uninterrupted reference run, and a run that crashed at step 45 (checkpoints 20, 40)."""
    root = tmp_path_factory.mktemp("corrupt")
    cfg = tiny(root)
    train(cfg, root / "ref", quiet=True)
    with crash_at(45), pytest.raises(RuntimeError):
        train(cfg, root / "crashed", quiet=True)
    assert intact_checkpoints(root / "crashed") == [20, 40]
    return cfg, root


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip_middle(p: Path):
    b = bytearray(p.read_bytes())
    mid = len(b) // 2
    b[mid:mid + 64] = bytes(x ^ 0xFF for x in b[mid:mid + 64])
    p.write_bytes(bytes(b))


def _garbage_with_matching_digest(p: Path):
    junk = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(p.stat().st_size // 32 + 1))
    p.write_bytes(junk)
    p.with_suffix(".sha256").write_text(hashlib.sha256(junk).hexdigest() + "\n")


CORRUPTIONS = {
    "truncated": lambda ck: _truncate(ck / "step-00000040.pt"),
    "bytes-flipped": lambda ck: _flip_middle(ck / "step-00000040.pt"),
    "empty": lambda ck: (ck / "step-00000040.pt").write_bytes(b""),
    "digest-garbled": lambda ck: (ck / "step-00000040.sha256").write_text("0" * 64 + "\n"),
    "digest-missing": lambda ck: (ck / "step-00000040.sha256").unlink(),  # killed between the two writes
    "garbage-with-valid-digest": lambda ck: _garbage_with_matching_digest(ck / "step-00000040.pt"),
    "both-corrupted": lambda ck: (_truncate(ck / "step-00000040.pt"), _flip_middle(ck / "step-00000020.pt")),
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_corrupted_checkpoint_is_skipped_and_the_run_still_matches(crashed, tmp_path, capsys, how):
    cfg, root = crashed
    run = tmp_path / "run"
    shutil.copytree(root / "crashed", run)
    CORRUPTIONS[how](run / "ckpt")
    s = train(cfg, run, quiet=True)
    err = capsys.readouterr().err  # one "warning: ..." line per skipped checkpoint, nothing else
    assert err.startswith("warning: checkpoint") and "step-00000040.pt is corrupted" in err, err
    assert len(err.splitlines()) == (2 if how == "both-corrupted" else 1), err
    if how == "both-corrupted":
        assert s["resumed_from_step"] is None and "step-00000020.pt is corrupted" in err  # restarted
    else:
        assert s["resumed_from_step"] == 20  # the previous, intact one
    assert s["steps_completed"] == 60 and not s["diverged"]
    assert metrics(run).equals(metrics(root / "ref"))


# ---- concurrency ------------------------------------------------------------------------------------

def test_concurrent_second_train_on_the_same_out_is_refused(tmp_path):
    over = {**TINY, "train.steps": 5000, "optim.warmup_steps": 5, "train.checkpoint_every": 1000,
            "data.cache_dir": tmp_path / "data"}
    run = tmp_path / "run"
    first = start(train_cmd(run, over), tmp_path)
    try:
        wait_for(lambda: (run / "config.yaml").exists(), 240, "the first run to take the lock", first)
        before = (run / "config.yaml").stat().st_ino
        second = finish(start(train_cmd(run, over), tmp_path), timeout=240)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.splitlines()
        assert len(lines) == 1 and lines[0] == f"error: --out: {run} is being written by another process", second.stderr
        assert first.poll() is None, "the first run must be unaffected"
        assert (run / "config.yaml").stat().st_ino == before  # the refused run wrote nothing
    finally:
        kill9(first)


def test_concurrent_lock_of_a_killed_holder_is_released(tmp_path):
    """flock, not a pid file: a holder killed with -9 leaves no stale lock."""
    lock = tmp_path / ".lock"
    holder = start([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from stability.io import file_lock
        with file_lock({str(lock)!r}, blocking=False) as got:
            print("held" if got else "refused", flush=True)
            time.sleep(600)
    """)], tmp_path)
    assert holder.stdout.readline().strip() == "held", holder.stderr.read()
    with file_lock(lock, blocking=False) as got:
        assert got is False
    kill9(holder)
    with file_lock(lock, blocking=False) as got:
        assert got is True


@pytest.mark.slow
def test_concurrent_second_snakemake_in_the_same_workdir_is_refused(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config/smoke.yaml"]
    first = start(cmd, repo)
    try:
        locks = repo / ".snakemake" / "locks"
        wait_for(lambda: locks.is_dir() and any(locks.iterdir()), 240, "the first snakemake to lock", first)
        second = finish(start(cmd, repo), timeout=240)
        log = second.stdout + second.stderr
        assert second.returncode != 0, log
        # Snakemake checks for incomplete outputs (the first run's running job) before it tries
        # the lock, so either message refuses the second run; neither deletes anything.
        assert "Directory cannot be locked" in log or "IncompleteFilesException" in log, log
        third = finish(start(cmd + ["--rerun-incomplete"], repo), timeout=240)
        log = third.stdout + third.stderr
        assert third.returncode != 0 and "Directory cannot be locked" in log, log
        assert first.poll() is None, "the first snakemake must be unaffected"
    finally:
        kill9(first)


# ---- divergence is data -------------------------------------------------------------------------------

def test_divergence_with_lr_1e6_exits_zero_and_records_it(tmp_path):
    """Both modes at once: stop on divergence (the default) and run through NaN to the end."""
    base = {**TINY, "optim.lr": 1e6, "optim.grad_clip": 0, "model.qk_layernorm": "none", "optim.warmup_steps": 0,
            "loss.z_loss": 0, "data.cache_dir": tmp_path / "data"}
    procs = {stop: start(train_cmd(tmp_path / f"stop-{stop}", {**base, "train.stop_on_divergence": str(stop).lower()}),
                         tmp_path) for stop in (True, False)}
    for stop, proc in procs.items():
        run = tmp_path / f"stop-{stop}"
        proc = finish(proc)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr and "diverged at step" in proc.stderr
        s = json_strict(run / "summary.json")  # valid JSON: no NaN / Infinity literals
        assert s["diverged"] is True and s["diverged_step"] is not None and s["diverged_reason"]
        assert s["steps_completed"] < 60 if stop else s["steps_completed"] == 60
        df = pl.read_parquet(run / "metrics.parquet")
        assert df.height > 1
        if not stop:  # NaN in the loss, the gradients and the attention logits, all the way through
            last = df.row(-1, named=True)
            for col in ("loss", "grad_norm", "attn_logit_l0", "logz_mean"):
                assert last[col] is None or last[col] != last[col] or abs(last[col]) == float("inf"), (col, last[col])
            assert s["final_loss"] is None and s["final_train_loss"] is None
        for key in ("init_loss", "max_attn_logit"):
            assert s[key] is None or isinstance(s[key], float)
        assert not list((run / "ckpt").glob("step-*"))


# ---- determinism -------------------------------------------------------------------------------------

def test_determinism_same_config_and_seed_give_identical_metrics_on_cpu(tmp_path):
    cfg = tiny(tmp_path, **{"train.steps": 30, "train.eval_every": 15})
    a = train(cfg, tmp_path / "a", quiet=True)
    b = train(cfg, tmp_path / "b", quiet=True)
    assert metrics(tmp_path / "a").equals(metrics(tmp_path / "b"))
    volatile = {"wall_time_s", "tokens_per_s"}
    assert {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}
    other = train(tiny(tmp_path, **{"train.steps": 30, "train.eval_every": 15, "seed": 1}), tmp_path / "c", quiet=True)
    assert not metrics(tmp_path / "c").equals(metrics(tmp_path / "a"))  # the comparison can fail
    assert other["run_id"] != a["run_id"]
