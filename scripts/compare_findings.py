"""Print a markdown table of every registry finding's outcome and effect interval per study,
in two results folders side by side (a finding neither ran reads `not run`).

    .venv/bin/python scripts/compare_findings.py results results/text

docs/real-text.md quotes its output (synthetic default against real text): a verdict that
differs between the two is read from the intervals printed beside it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stability.analysis.findings import REGISTRY  # noqa: E402
from stability.findings_doc import TITLES, cell, effect_text, seeds_text, verdict  # noqa: E402


def claims(results: Path) -> dict[tuple[int, str], dict]:
    """(finding, study) -> its claim record, for every study under results/studies/."""
    out = {}
    for f in sorted(results.glob("studies/*/claims.json")):
        for c in json.loads(f.read_text())["claims"]:
            out[(int(c["finding"]), f.parent.name)] = c
    return out


def table(a: Path, b: Path) -> list[str]:
    ca, cb = claims(a), claims(b)
    lines = [f"| finding | study | {a} | {b} | effect, {a} | effect, {b} | seeds |",
             "|---|---|---|---|---|---|---|"]
    keys = set(ca) | set(cb)
    for n in sorted(set(REGISTRY) | {f for f, _ in keys}):
        studies = sorted(st for f, st in keys if f == n) or ["—"]
        for study in studies:
            pair = [c.get((n, study)) for c in (ca, cb)]
            seeds = " / ".join(seeds_text(p) if p else "—" for p in pair)
            cells = [f"{n}. {TITLES.get(n, '')}", study, *(verdict(p) if p else "not run" for p in pair),
                     *(effect_text(p) if p else "—" for p in pair), seeds]
            lines.append("| " + " | ".join(cell(x) for x in cells) + " |")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    a, b = (Path(p) for p in argv)
    for p in (a, b):
        if not (p / "studies").is_dir():
            print(f"error: {p}: no studies/ folder (expected a results folder of a finished study)", file=sys.stderr)
            return 2
    print("\n".join(table(a, b)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
