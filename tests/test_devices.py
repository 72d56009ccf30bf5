"""stability.devices: the flock-based GPU picker, exercised with fake GPUs."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import child_env
from stability import devices

# A holder process: claims a GPU, prints it, holds it until a line arrives on stdin.
HOLDER = r"""
import sys
from stability.devices import claim_gpu
timeout = float(sys.argv[1])
try:
    with claim_gpu(timeout_s=timeout, poll_s=0.05) as dev:
        import os
        assert dev is None or os.environ["CUDA_VISIBLE_DEVICES"] == dev
        print(f"GOT {dev}", flush=True)
        sys.stdin.readline()
except TimeoutError:
    print("TIMEOUT", flush=True)
"""


@pytest.fixture
def gpu_env(tmp_path) -> dict[str, str]:
    env = child_env()
    env["STABILITY_FAKE_GPUS"] = "0,1"
    env["STABILITY_GPU_LOCK_DIR"] = str(tmp_path / "locks")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


class Holder:
    def __init__(self, env: dict[str, str], timeout_s: float = 5.0):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(timeout_s)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def line(self, wait_s: float) -> str | None:
        """The next stdout line, or None if none arrives within wait_s."""
        ready, _, _ = select.select([self.proc.stdout], [], [], wait_s)
        if not ready:
            return None
        return self.proc.stdout.readline().strip()

    def device(self, wait_s: float = 5.0) -> str:
        got = self.line(wait_s)
        assert got is not None and got.startswith("GOT "), got
        return got.split(" ", 1)[1]

    def release(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.wait(5) == 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def holders(gpu_env):
    started: list[Holder] = []

    def start(timeout_s: float = 5.0) -> Holder:
        h = Holder(gpu_env, timeout_s)
        started.append(h)
        return h

    yield start
    for h in started:
        h.close()


def test_two_processes_get_different_devices(holders, tmp_path):
    a, b = holders(), holders()
    assert {a.device(), b.device()} == {"0", "1"}
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["gpu0.lock", "gpu1.lock"]


def test_third_process_waits_until_one_is_released(holders):
    a, b = holders(), holders()
    dev_a, dev_b = a.device(), b.device()
    c = holders(timeout_s=10)
    assert c.line(0.5) is None, "third claim must block while both GPUs are held"
    b.release()
    assert c.device() == dev_b
    assert dev_a != dev_b


def test_killed_holder_frees_its_device(holders):
    a, b = holders(), holders()
    dev_a, _ = a.device(), b.device()
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(5)
    c = holders()
    assert c.device(wait_s=3) == dev_a


def test_timeout_when_all_busy(holders, monkeypatch, gpu_env):
    a, b = holders(), holders()
    a.device(), b.device()
    monkeypatch.setenv("STABILITY_FAKE_GPUS", "0,1")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="no free GPU"):
        with devices.claim_gpu(Path(gpu_env["STABILITY_GPU_LOCK_DIR"]), timeout_s=0.3, poll_s=0.05):
            pass
    assert time.monotonic() - t0 < 2


def test_no_gpus_yields_none(monkeypatch, tmp_path):
    monkeypatch.setenv("STABILITY_FAKE_GPUS", "")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with devices.claim_gpu(tmp_path / "locks") as dev:
        assert dev is None
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert not (tmp_path / "locks").exists()


def test_in_process_sets_and_restores_env(monkeypatch, tmp_path):
    monkeypatch.setenv("STABILITY_FAKE_GPUS", "3,5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with devices.claim_gpu(tmp_path) as first:
        assert first == "3" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
        # a second claim in the same process is a separate open file: next device
        with devices.claim_gpu(tmp_path) as second:
            assert second == "5" and os.environ["CUDA_VISIBLE_DEVICES"] == "5"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
    with devices.claim_gpu(tmp_path) as again:  # released: first device free again
        assert again == "3"


@pytest.mark.parametrize(
    ("fake", "cvd", "expected"),
    [
        ("0,1,2", "7", ["0", "1", "2"]),
        ("", "7", []),
        (None, "2, 3", ["2", "3"]),
        (None, "-1", []),
        (None, "", []),
        (None, "GPU-1a2b,GPU-3c4d", ["GPU-1a2b", "GPU-3c4d"]),
    ],
)
def test_visible_devices_precedence(monkeypatch, fake, cvd, expected):
    if fake is None:
        monkeypatch.delenv("STABILITY_FAKE_GPUS", raising=False)
    else:
        monkeypatch.setenv("STABILITY_FAKE_GPUS", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cvd)
    assert devices.visible_devices() == expected


def test_lock_names_are_filename_safe():
    assert devices._lock_name("0") == "gpu0.lock"
    assert devices._lock_name("MIG-GPU/1/2") == "gpuMIG-GPU_1_2.lock"


def test_default_lock_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("STABILITY_GPU_LOCK_DIR", str(tmp_path))
    assert devices.default_lock_dir() == tmp_path
    monkeypatch.delenv("STABILITY_GPU_LOCK_DIR")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    base = devices.default_lock_dir()
    assert base.name == "stability-gpu-locks"
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert devices.default_lock_dir() == base / "slurm-42"
