"""What every CPU benchmark script ends with: the machine it ran on, the full result written
to --json, and one JSON line printed last (so a caller can read the result from stdout)."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine(when: str = "start") -> str:
    """One line: architecture, CPU model, logical CPUs and the 1-minute load average now
    (`when` says whether that is at the benchmark's start or end)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: the platform module's name will do
        pass
    return f"{platform.machine()} {cpu}, {os.cpu_count()} logical CPUs, load avg {os.getloadavg()[0]:.1f} at {when}"


def emit(summary: dict[str, Any], json_path: Path | None, full: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `full` (default: `summary`) to json_path as indented JSON (parents created) when
    a path is given, print `summary` as the last line on stdout, and return it."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary if full is None else full, indent=2) + "\n")
    print(json.dumps(summary))
    return summary
