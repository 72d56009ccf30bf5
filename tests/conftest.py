"""Shared pytest fixtures (keep this small; put topic helpers in their own modules)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where Snakefile, config/ and stability/ live)."""
    return REPO_ROOT


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """os.environ for child processes, with the repo importable and the venv's bin/ first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return env
