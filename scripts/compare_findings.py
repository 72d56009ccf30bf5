"""Print a markdown table of each study's finding verdicts in two results folders.

    .venv/bin/python scripts/compare_findings.py results results/text

docs/real-text.md quotes its output (synthetic default against real text).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stability.findings_doc import TITLES, verdict  # noqa: E402


def verdicts(results: Path) -> dict[tuple[int, str], str]:
    out = {}
    for f in sorted(results.glob("studies/*/claims.json")):
        for c in json.loads(f.read_text())["claims"]:
            out[(int(c["finding"]), f.parent.name)] = c.get("outcome") or "not run"
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    a, b = (Path(p) for p in argv)
    for p in (a, b):
        if not (p / "studies").is_dir():
            print(f"error: {p}: no studies/ folder (expected a results folder of a finished study)", file=sys.stderr)
            return 2
    va, vb = verdicts(a), verdicts(b)
    print(f"| finding | study | {a} | {b} |\n|---|---|---|---|")
    for key in sorted(set(va) | set(vb)):
        f, study = key
        cells = [v[key] if key in v else "not run" for v in (va, vb)]
        print(f"| {f}. {TITLES.get(f, '')} | {study} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
