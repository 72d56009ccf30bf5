"""Shared pytest fixtures (keep this small; put topic helpers in their own modules)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where Snakefile, config/ and stability/ live)."""
    return REPO_ROOT
