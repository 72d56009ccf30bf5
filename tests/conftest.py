"""Shared pytest fixtures (keep this small; put topic helpers in their own modules)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where Snakefile, config/ and stability/ live)."""
    return REPO_ROOT


@pytest.fixture(scope="session", autouse=True)
def quick_slurm_probe(tmp_path_factory):
    """Every Snakemake process imports its SLURM executor plugin, which runs `scontrol show
    config` at import; where slurm-wlm is installed and no controller is up (every test but
    the SLURM ones, which start one), that call waits 9 s before failing. A shim on PATH gives
    it 2 s (a live controller answers in milliseconds) and passes every other call through."""
    import os
    import shutil
    real = shutil.which("scontrol")
    if real is None:
        yield
        return
    shim = tmp_path_factory.mktemp("scontrol-shim")
    (shim / "scontrol").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = show ] && [ "$2" = config ]; then exec timeout 2 {real} "$@"; fi\n'
        f'exec {real} "$@"\n')
    (shim / "scontrol").chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = os.pathsep.join((str(shim), old))
    yield
    os.environ["PATH"] = old
