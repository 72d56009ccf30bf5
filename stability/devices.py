"""Pick a free GPU on a workstation with lock files.

``snakemake --cores all --resources gpu=N`` runs at most N GPU jobs at once but does
not tell a job *which* GPU to use (it never sets ``CUDA_VISIBLE_DEVICES``).  Each
training job therefore pins itself: :func:`claim_gpu` takes an exclusive, non-blocking
``fcntl.flock`` on ``<lock_dir>/gpu<idx>.lock`` for the first device nobody holds,
sets ``CUDA_VISIBLE_DEVICES`` to that device while held, and releases it on exit.

The kernel drops a flock when its holder dies (crash, ``kill -9``, OOM), so a dead
job can never leave a GPU "claimed" -- unlike pid files, there is nothing stale to
clean up.  Lock files are left in place; their content (pid, host) is informational.

Usage (before anything initialises CUDA -- the device is chosen through the env var)::

    with claim_gpu() as dev:          # "0", "1", ... or None when there is no GPU
        device = "cuda" if dev is not None else "cpu"
        train(...)

Under SLURM, the job's own allocation is already isolated (SLURM sets
``CUDA_VISIBLE_DEVICES`` per job and, with cgroups, renumbers the devices from 0), so
the default lock directory is made per job (``.../slurm-<SLURM_JOB_ID>``): jobs on the
same node never wait for each other's locks.

Environment:
  ``STABILITY_FAKE_GPUS``     comma-separated device ids to pretend exist (tests);
                              an empty string means "no GPUs".
  ``STABILITY_GPU_LOCK_DIR``  where the lock files live (default
                              ``<tempdir>/stability-gpu-locks``).  All jobs that
                              share GPUs must use the same directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .io import lock_fd, unlock_fd

__all__ = ["visible_devices", "default_lock_dir", "claim_gpu", "DEFAULT_TIMEOUT_S"]

FAKE_ENV = "STABILITY_FAKE_GPUS"
LOCK_DIR_ENV = "STABILITY_GPU_LOCK_DIR"
DEFAULT_TIMEOUT_S = 600.0
POLL_S = 0.2


def _split_ids(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def visible_devices() -> list[str]:
    """Device ids this process may use, as strings suitable for CUDA_VISIBLE_DEVICES.

    Order of precedence: ``STABILITY_FAKE_GPUS`` (tests), ``CUDA_VISIBLE_DEVICES``
    (as set by the user or SLURM; ``""`` or ``-1`` mean none), else
    ``torch.cuda.device_count()`` (torch imported lazily), else ``[]``.
    """
    fake = os.environ.get(FAKE_ENV)
    if fake is not None:
        return _split_ids(fake)
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = _split_ids(cvd)
        # CUDA stops at the first invalid id; "-1" is the usual way to hide all GPUs
        if ids and ids[0].startswith("-"):
            return []
        return ids
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # no torch, broken driver, ...
        return []
    return [str(i) for i in range(count)]


def default_lock_dir() -> Path:
    """``$STABILITY_GPU_LOCK_DIR``, else ``<tempdir>/stability-gpu-locks``.

    Inside a SLURM job (``SLURM_JOB_ID`` set) the default gets a per-job
    subdirectory: SLURM already gives every job its own GPUs.
    """
    env = os.environ.get(LOCK_DIR_ENV)
    if env:
        return Path(env)
    base = Path(tempfile.gettempdir()) / "stability-gpu-locks"
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        return base / f"slurm-{job}"
    return base


def _lock_name(device: str) -> str:
    # plain indices give gpu0.lock; UUIDs / MIG ids are made filename-safe
    return "gpu" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + ".lock"


def _make_lock_dir(lock_dir: Path) -> None:
    created = not lock_dir.exists()
    lock_dir.mkdir(parents=True, exist_ok=True)
    if created:
        # shared by every user of the machine: world-writable + sticky, like /tmp
        with contextlib.suppress(OSError):
            os.chmod(lock_dir, 0o1777)


def _try_lock(path: Path) -> int | None:
    """Flock ``path`` exclusively without blocking (``io.lock_fd``); the fd, or None if held."""
    fd = lock_fd(path, blocking=False)
    if fd is None:
        return None
    with contextlib.suppress(OSError):  # every user of the machine shares these files
        os.fchmod(fd, 0o666)
    with contextlib.suppress(OSError):  # informational only
        os.ftruncate(fd, 0)
        os.write(fd, f"pid={os.getpid()} host={socket.gethostname()} t={time.time():.0f}\n".encode())
    return fd


@contextlib.contextmanager
def claim_gpu(
    lock_dir: Path | str | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    poll_s: float = POLL_S,
) -> Iterator[str | None]:
    """Hold one free GPU for the duration of the ``with`` block.

    Yields the device id (a string such as ``"1"``) after setting
    ``os.environ["CUDA_VISIBLE_DEVICES"]`` to it -- so inside the block the process
    sees exactly one GPU, ``cuda:0``.  The previous value is restored on exit.
    Yields ``None`` (and changes nothing) when :func:`visible_devices` is empty.

    When every device is held by another process, polls every ``poll_s`` seconds
    until ``timeout_s`` (``None``: forever) and then raises ``TimeoutError``.
    The lock is released on exit, and by the kernel if the process dies.
    """
    devices = visible_devices()
    if not devices:
        yield None
        return
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    _make_lock_dir(lock_dir)

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    fd: int | None = None
    device: str | None = None
    while True:
        for dev in devices:
            fd = _try_lock(lock_dir / _lock_name(dev))
            if fd is not None:
                device = dev
                break
        if device is not None:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                f"no free GPU among {devices} after {timeout_s:g} s: every "
                f"{lock_dir}/gpu*.lock is held by another process "
                f"(see the pid in each file; set {LOCK_DIR_ENV} to use another lock directory)"
            )
        time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))

    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    try:
        yield device
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
        unlock_fd(fd)
