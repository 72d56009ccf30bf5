"""A one-node SLURM cluster on localhost for tests (scripts/slurm-up.sh), and helpers.

Import the fixture into a test module with ``from slurm_cluster import slurm_cluster``
(tests/ is on sys.path under pytest's default rootdir-based import mode).

The cluster needs root and apt-get (Debian/Ubuntu); elsewhere the fixture skips.
It is left running if it was already up before the session, and stopped
(scripts/slurm-down.sh) at the end of the session if this fixture started it.
Set STABILITY_SLURM_KEEP=1 to leave it running anyway (faster reruns).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
UP = REPO_ROOT / "scripts" / "slurm-up.sh"
DOWN = REPO_ROOT / "scripts" / "slurm-down.sh"
LOCAL_PROFILE = REPO_ROOT / "tests" / "profiles" / "slurm-local"

# What the repository copy for an end-to-end run leaves out.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "results", ".snakemake", "__pycache__", ".pytest_cache",
    ".hypothesis", "*.egg-info", "build", "dist", "report.html",
)


def _controller_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "is UP" in out.stdout


def skip_reason() -> str | None:
    """Why a local SLURM cluster cannot be started here, or None if it can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "the local SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (scripts/slurm-up.sh installs packages and starts daemons)"
    have_slurm = all(shutil.which(t) for t in ("sbatch", "slurmctld", "slurmd", "munged"))
    if not have_slurm and shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is unavailable to install slurm-wlm + munge"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start (or reuse) the one-node cluster; yields the partition name ('debug')."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    was_up = _controller_up()
    proc = subprocess.run(["bash", str(UP)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/slurm-up.sh failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    yield "debug"
    if not was_up and os.environ.get("STABILITY_SLURM_KEEP") != "1":
        subprocess.run(["bash", str(DOWN)], capture_output=True, text=True, timeout=120)


def snakemake_env(*pythonpath: Path) -> dict[str, str]:
    """Environment for a snakemake run: the venv's bin/ on PATH (the `stability` CLI,
    snakemake itself), the given dirs on PYTHONPATH; jobs inherit it (sbatch --export=ALL)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(p) for p in pythonpath] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.pop("SLURM_JOB_ID", None)  # in case the tests themselves run inside a SLURM job
    return env


def snakemake_cmd(*args: str, profile: Path = LOCAL_PROFILE) -> list[str]:
    """`python -m snakemake` through the local SLURM profile.  `--workflow-profile none`
    keeps profiles/default (loaded automatically as the workflow profile, which would
    override --profile's default-resources, retries, ...) out of the way."""
    return [sys.executable, "-m", "snakemake", "--profile", str(profile), "--workflow-profile", "none", *args]


def run_snakemake(workdir: Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
    """Run snakemake through the local SLURM cluster in `workdir`; fail with the log tail."""
    proc = subprocess.run(
        snakemake_cmd(*args), cwd=workdir, env=env or snakemake_env(workdir),
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(args)} failed (exit {proc.returncode}) in {workdir}:\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}\n{slurm_log_tails(workdir)}",
            pytrace=False,
        )
    return proc


def slurm_log_tails(workdir: Path, n_chars: int = 1500) -> str:
    """The end of every per-job SLURM log, for failure messages."""
    logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    return "\n".join(f"--- {p.relative_to(workdir)}\n{p.read_text(errors='replace')[-n_chars:]}" for p in logs)


def slurm_logs(workdir: Path, rule: str | None = None) -> list[Path]:
    """Per-job logs .snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log (kept because
    the local profile sets slurm-keep-successful-logs)."""
    root = workdir / ".snakemake" / "slurm_logs"
    if rule is not None:
        root = root / f"rule_{rule}"
    return sorted(root.rglob("*.log")) if root.exists() else []


def copy_workflow(dest: Path) -> Path:
    """Copy the repository (Snakefile, rules/, workflow/, config/, stability/, ...) without
    .git, .venv, results or snakemake state, so a run there cannot touch the checkout."""
    shutil.copytree(REPO_ROOT, dest, ignore=COPY_IGNORE, dirs_exist_ok=True)
    return dest


def running_jobs() -> list[tuple[str, str]]:
    """(job id, comment) of this cluster's running jobs; comments look like
    'rule_<rule>_wildcards_<wildcards>' for snakemake's jobs."""
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [tuple(line.split("|", 1)) for line in out.splitlines() if "|" in line]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
