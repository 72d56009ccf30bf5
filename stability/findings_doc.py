"""docs/findings.md: each paper finding beside what this reproduction measured.

Everything in the document comes from the studies' claims.json (numbers computed from the
runs) and the figure paths; nothing is typed in by hand.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from .analysis.findings import REGISTRY
from .analysis.io import atomic_write, read_json
from .config import ConfigError
from .figure_names import FIGURES_BY_FINDING, figures_for

TITLES = {n: f.title for n, f in REGISTRY.items()}
MAX_TABLE_ROWS = 24


# ---- supplements: studies from other config files, shown when their results exist -----------

def load_supplements(paths: list[str]) -> dict[str, dict]:
    """`findings_supplements` -> {config path: {results, studies, command}}.

    A supplement is a study too long for the default run (finding 2 over 1e5 steps) that a
    user runs with its own --configfile; the findings page then shows it beside the default
    studies. Bad entries fail here, before any job runs."""
    out = {}
    for i, path in enumerate(paths or []):
        where = f"findings_supplements[{i}]"
        if not isinstance(path, str) or not Path(path).is_file():
            raise ConfigError(f"{where}: expected the path of a workflow config file, got {path!r} (no such file)")
        try:
            cfg = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: {path} is not valid YAML ({e})") from None
        studies = cfg.get("studies") if isinstance(cfg, dict) else None
        if not isinstance(studies, dict) or not studies:
            raise ConfigError(f"{where}: {path} defines no `studies`")
        out[path] = {"results": str(cfg.get("results", "results")), "studies": list(studies),
                     "command": f"snakemake --cores 2 --configfile {path}"}
    return out


def supplement_claims(supplements: dict[str, dict]) -> list[str]:
    """The supplements' claims.json files that exist now (the findings rule's optional inputs)."""
    return [f for s in supplements.values() for st in s["studies"]
            if Path(f := f"{s['results']}/studies/{st}/claims.json").is_file()]


def supplement_figures(supplements: dict[str, dict]) -> list[str]:
    return sorted(str(p) for s in supplements.values() for st in s["studies"]
                  for p in Path(f"{s['results']}/studies/{st}/figures").glob("*.png"))


def supplement_sources(supplements: dict[str, dict]) -> dict[str, str]:
    """study name -> the command that produces it."""
    return {st: s["command"] for s in supplements.values() for st in s["studies"]}


def verdict(claim: dict) -> str:
    return claim.get("outcome") or "not run"


def fmt(x: Any) -> str:
    """Numbers to 3 significant digits; everything else as plain text."""
    if isinstance(x, bool) or x is None:
        return {True: "yes", False: "no", None: "n/a"}[x]
    if isinstance(x, float):
        return f"{x:.3g}"
    if isinstance(x, (list, tuple)) and all(not isinstance(v, (dict, list)) for v in x):
        return "[" + ", ".join(fmt(v) for v in x) + "]"
    return str(x)


def _table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows[:MAX_TABLE_ROWS]]
    if len(rows) > MAX_TABLE_ROWS:
        out.append(f"\n({len(rows) - MAX_TABLE_ROWS} more rows in claims.json)")
    return out


def measured_lines(measured: dict, indent: int = 0) -> list[str]:
    """A nested `measured` dict as a markdown bullet list (lists of records as tables)."""
    pad = "  " * indent
    out = []
    for k, v in measured.items():
        if k == "traceback":
            continue
        if isinstance(v, dict) and v:
            out.append(f"{pad}- {k}:")
            out += measured_lines(v, indent + 1)
        elif isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            out += [f"{pad}- {k}:", ""] + [f"{pad}  {line}" for line in _table(v)] + [""]
        else:
            out.append(f"{pad}- {k}: {fmt(v)}")
    return out


def _link(path: Path, base: Path | None) -> str:
    p = Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())) if base is not None else Path(path)
    return p.as_posix()


def render_findings(claims_by_study: dict[str, list[dict]], figures: dict[str, list[Path]], command: str,
                    base: Path | None = None, sources: dict[str, str] | None = None) -> str:
    """The markdown document. `base`: the directory the document lives in (links are made relative).
    `sources`: supplementary study -> the command that produced it (or would, if not run yet)."""
    sources = sources or {}
    findings = sorted({int(c["finding"]) for cs in claims_by_study.values() for c in cs})
    missing = sorted({cmd for st, cmd in sources.items() if st not in claims_by_study})
    lines = ["# Findings: the paper beside this reproduction", "",
             "Generated from each study's `claims.json` and figures; do not edit by hand. Regenerate with:", "",
             "```sh", command, "```", "",
             "Verdicts use fixed thresholds written in `stability/analysis/claims.py` (not tuned per study). "
             "\"no data\" means the study lacks the runs the check needs.", "",
             "| Finding | Study | Verdict |", "|---|---|---|"]
    label = lambda st: f"{st} (supplement)" if st in sources else st
    for f in findings:
        for study, cs in claims_by_study.items():
            for c in cs:
                if int(c["finding"]) == f:
                    lines.append(f"| {f}. {TITLES.get(f, '')} | {label(study)} | {verdict(c)} |")
    if sources:
        lines += ["", "Studies marked *supplement* are too long for the default run and come from their own "
                      "config file; they appear here once run (then rerun the command above):", ""]
        lines += [f"- `{cmd}`" + (" (not run yet)" if cmd in missing else "")
                  for cmd in sorted(set(sources.values()))]
    for f in findings:
        lines += ["", f"## {f}. {TITLES.get(f, f'Finding {f}')}", "",
                  f"**Paper:** {REGISTRY[f].claim if f in REGISTRY else ''}", ""]
        for study, cs in claims_by_study.items():
            for c in (c for c in cs if int(c["finding"]) == f):
                lines += [f"### Study `{study}`: {verdict(c)}", ""]
                if study in sources:
                    lines += [f"Supplement, produced by `{sources[study]}`.", ""]
                lines += [f"**Measured:** {c.get('quantity', '')}", ""]
                lines += measured_lines(c.get("measured") or {})
                if c.get("note"):
                    lines += ["", f"*Note:* {c['note']}"]
                if c.get("likely_reason"):
                    lines += ["", f"*Likely reason (our reading, from the study's `analysis.caveat`):* {c['likely_reason']}"]
                pngs = [p for p in figures.get(study, []) if Path(p).suffix == ".png"
                        and Path(p).stem in FIGURES_BY_FINDING.get(f, ())]
                if pngs:
                    lines.append("")
                    lines += [f"![{study}: {Path(p).stem}]({_link(Path(p), base)})" for p in pngs]
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


DEFAULT_COMMAND = "snakemake --cores all"


def write_findings(claims_files: list[str | Path], figure_files: list[str | Path], out: str | Path,
                   figures_dir: str | Path | None = None, command: str = DEFAULT_COMMAND,
                   sources: dict[str, str] | None = None) -> Path:
    """Write the document to `out` from each study's claims.json (…/studies/<study>/claims.json)
    and its figure PNGs. With `figures_dir`, the PNGs are copied there first, so a document
    that lives outside results/ (docs/findings.md) links to files that can be committed."""
    out = Path(out)
    claims_by_study: dict[str, list[dict]] = {}
    figures: dict[str, list[Path]] = {}
    for f in map(Path, claims_files):
        study = f.parent.name
        doc = read_json(f)
        claims_by_study[study] = doc["claims"] if isinstance(doc, dict) else doc
        figures[study] = []
    for fig in map(Path, figure_files):
        study = fig.parent.parent.name  # …/studies/<study>/figures/<name>.png
        if study not in figures or not fig.is_file():
            continue
        if figures_dir is not None:
            dest = Path(figures_dir) / study / fig.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(dest, lambda p, src=fig: shutil.copyfile(src, p))
            fig = dest
        figures[study].append(fig)
    for study, items in claims_by_study.items():  # the order figures_for gives
        order = {n: i for i, n in enumerate(figures_for([c["finding"] for c in items]))}
        figures[study].sort(key=lambda p: order.get(p.stem, len(order)))
    text = render_findings(claims_by_study, figures, command, base=out.parent.resolve(), sources=sources)
    return atomic_write(out, lambda p: p.write_text(text))
