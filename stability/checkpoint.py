"""Checkpoints that survive kills and detect corruption.

Each checkpoint is `ckpt/step-XXXXXXXX.pt` written atomically, with its SHA-256 stored
inside a sidecar `.sha256` written after it. On resume the newest checkpoint whose digest
matches is used; a corrupted one is reported and skipped. The last `keep` are kept.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from .io import atomic_write, write_text


def _path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step-{step:08d}.pt"


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    return sorted(ckpt_dir.glob("step-*.pt"), reverse=True)  # newest first


def save(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getvalue()
    path = _path(ckpt_dir, step)
    atomic_write(path, lambda p: p.write_bytes(blob))
    write_text(path.with_suffix(".sha256"), hashlib.sha256(blob).hexdigest() + "\n")
    for old in list_checkpoints(ckpt_dir)[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)
    return path


def load_latest(ckpt_dir: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest intact checkpoint (or None) and a warning for each one skipped."""
    problems = []
    for path in list_checkpoints(ckpt_dir):
        digest_file = path.with_suffix(".sha256")
        try:
            blob = path.read_bytes()
            expected = digest_file.read_text().strip() if digest_file.is_file() else None
            if expected != hashlib.sha256(blob).hexdigest():
                raise ValueError("checksum mismatch" if expected else "no checksum (write was interrupted)")
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
            for msg in problems:
                warnings.warn(msg, stacklevel=2)
            return state, problems
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, not fatal
            problems.append(f"checkpoint {path} is corrupted ({e}); trying an older one")
    for msg in problems:
        warnings.warn(msg, stacklevel=2)
    return None, problems
