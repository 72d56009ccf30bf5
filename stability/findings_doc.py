"""docs/findings.md: each paper finding beside what this reproduction measured.

The sections follow the findings registry (stability/analysis/findings: the paper's claim,
quantity, decision rule and thresholds); the outcomes, intervals and numbers come from the
studies' claims.json, the figures from their PNGs. Nothing in the document is typed in by hand.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from . import yamlio
from .analysis import verdict as verdict_rules
from .analysis.findings import REGISTRY, Finding
from .analysis.verdict import (CONFIDENCE, INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, NOT_TESTABLE, OUTCOMES, PARTIAL,
                               REPRODUCED)
from .io import atomic_write, read_json, write_text
from .config import ConfigError
from .figure_names import FIGURES_BY_FINDING, figures_for

TITLES = {n: f.title for n, f in REGISTRY.items()}
MAX_TABLE_ROWS = 24
REGISTRY_DIR = Path(__file__).resolve().parent / "analysis" / "findings"
VERDICT_FILE = Path(verdict_rules.__file__).resolve()


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
            cfg = yamlio.load(Path(path).read_text()) or {}
        except (yaml.YAMLError, ValueError) as e:
            raise ConfigError(f"{where}: {path} is not valid YAML ({e})") from None
        studies = cfg.get("studies") if isinstance(cfg, dict) else None
        if not isinstance(studies, dict) or not studies:
            raise ConfigError(f"{where}: {path} defines no `studies`")
        out[path] = {"results": str(cfg.get("results", "results")), "studies": list(studies),
                     "command": f"snakemake --cores 2 --configfile {path}"}
    return out


def supplement_claims(supplements: dict[str, dict]) -> dict[str, str]:
    """study -> the supplement's claims.json, for those that exist now (the findings rule's
    optional inputs)."""
    return {st: f for s in supplements.values() for st in s["studies"]
            if Path(f := f"{s['results']}/studies/{st}/claims.json").is_file()}


def supplement_figures(supplements: dict[str, dict]) -> dict[str, list[str]]:
    """study -> the supplement's figure PNGs that exist now, sorted."""
    return {st: sorted(str(p) for p in Path(f"{s['results']}/studies/{st}/figures").glob("*.png"))
            for s in supplements.values() for st in s["studies"]}


def rule_inputs(claims: Mapping[str, str], figures: Mapping[str, list[str]]) -> dict[str, Any]:
    """The findings rule's named inputs: `claims_<study>` (a path) and `figures_<study>` (a
    list), so each file reaches write_findings labelled with its study (see by_study)."""
    return {**{f"claims_{st}": f for st, f in claims.items()}, **{f"figures_{st}": fs for st, fs in figures.items()}}


def by_study(named: Iterable[tuple[str, Any]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """rule_inputs' (name, value) pairs (snakemake.input.items()) back to (claims, figures)."""
    claims: dict[str, str] = {}
    figures: dict[str, list[str]] = {}
    for name, value in named:
        if name.startswith("claims_"):
            claims[name.removeprefix("claims_")] = str(value)
        elif name.startswith("figures_"):
            figures[name.removeprefix("figures_")] = [str(v) for v in value]
    return claims, figures


def supplement_sources(supplements: dict[str, dict]) -> dict[str, str]:
    """study name -> the command that produces it."""
    return {st: s["command"] for s in supplements.values() for st in s["studies"]}


def verdict(claim: dict) -> str:
    return claim.get("outcome") or NOT_RUN


def check_study_findings(findings_by_study: dict[str, list[int]]) -> None:
    """Raise ConfigError naming any study that lists a finding the registry does not hold."""
    known = sorted(REGISTRY)
    for study, findings in findings_by_study.items():
        bad = [f for f in findings or [] if f not in REGISTRY]
        if bad:
            raise ConfigError(f"studies.{study}.findings: {bad} not among the paper's findings "
                              f"(the registry in stability/analysis/findings/ holds {known[0]}..{known[-1]})")


# ---- formatting ------------------------------------------------------------------------------

def fmt(x: Any) -> str:
    """Numbers to 3 significant digits; everything else as plain text."""
    if isinstance(x, bool) or x is None:
        return {True: "yes", False: "no", None: "n/a"}[x]
    if isinstance(x, float):
        return f"{x:.3g}"
    if isinstance(x, (list, tuple)) and all(not isinstance(v, (dict, list)) for v in x):
        return "[" + ", ".join(fmt(v) for v in x) + "]"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in x.items()) + "}"
    return str(x)


def cell(x: Any) -> str:
    """fmt(x) made safe for one markdown table cell."""
    return fmt(x).replace("|", "\\|").replace("\n", " ")


def interval_text(iv: dict | None, unit: str = "") -> str:
    """An effect record {estimate, lo, hi, n, method} as `est [lo, hi] unit (n = ...)`.

    lo / hi are null in claims.json when the interval is infinite (fewer than two paired
    observations): the page says so instead of printing a bound."""
    if not iv or iv.get("estimate") is None:
        return "—"
    unit = f" {unit}" if unit else ""
    n = iv.get("n")
    if iv.get("lo") is None or iv.get("hi") is None:
        return f"{fmt(iv['estimate'])}{unit} (n = {n}: no interval)"
    method = "t" if iv.get("method") in (None, "t") else iv["method"]
    return f"{fmt(iv['estimate'])} [{fmt(iv['lo'])}, {fmt(iv['hi'])}]{unit} (n = {n}, {method})"


def effect_text(claim: dict) -> str:
    eff = claim.get("effect")
    return interval_text(eff, (eff or {}).get("unit", ""))


def seeds_text(claim: dict) -> str:
    n = claim.get("n_seeds")
    return "—" if n is None else fmt(n)


def _table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows[:MAX_TABLE_ROWS]]
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


SUBCHECK_KEYS = ("outcome", "note", "interval", "unit")


def subcheck_lines(subchecks: dict[str, dict]) -> list[str]:
    """The sub-check table: name, outcome, interval, note, and the numbers it was decided on."""
    if not subchecks:
        return []
    out = [f"| Sub-check | Outcome | Interval ({CONFIDENCE:.0%}) | Note | Numbers |", "|---|---|---|---|---|"]
    for name, sc in subchecks.items():
        sc = sc if isinstance(sc, dict) else {"outcome": sc}
        numbers = "; ".join(f"{k} = {fmt(v)}" for k, v in sc.items() if k not in SUBCHECK_KEYS)
        out.append("| " + " | ".join([cell(name), cell(sc.get("outcome") or NOT_RUN),
                                      cell(interval_text(sc.get("interval"), sc.get("unit", ""))),
                                      cell(sc.get("note") or ""), cell(numbers)]) + " |")
    return out


def _link(path: Path, base: Path | None) -> str:
    p = Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())) if base is not None else Path(path)
    return p.as_posix()


# ---- the page --------------------------------------------------------------------------------

OUTCOME_MEANING = {  # what each verdict.OUTCOMES value tells a reader; the rules are verdict.py's
    REPRODUCED: "every sub-check's interval lies on the side the paper claims (or inside the "
                "no-effect band, for a claim of no effect)",
    NOT_REPRODUCED: "a sub-check's interval lies on the opposite side, or inside the no-effect band of a "
                    "claimed effect",
    INCONCLUSIVE: "an interval straddles zero or the edge of the no-effect band: the seeds cannot decide; "
                  "also one LR, every run failed (or not run, for a check that needs a trained run to read), "
                  "or one scale where a trend is needed",
    PARTIAL: "some sub-checks are missing (the study lacks their runs); none of the others contradicts the paper",
    NOT_RUN: "no study ran this finding, or the study lacks the runs, variants or trained runs its check needs",
    NOT_TESTABLE: "(sub-checks only) the mechanism cannot act within the runs' horizon; it does not count "
                  "towards the outcome",
}


def _header(command: str, base: Path | None) -> list[str]:
    registry = _link(REGISTRY_DIR, base) + "/" if base is not None else "stability/analysis/findings/"
    rules = _link(VERDICT_FILE, base) if base is not None else "stability/analysis/verdict.py"
    return [
        "# Findings: the paper beside this reproduction", "",
        "Generated from the findings registry and each study's `claims.json` and figures; do not edit by hand. "
        "Regenerate with:", "", "```sh", command, "```", "",
        f"Every finding's claim, measured quantity, decision rule and thresholds live in the registry "
        f"([`stability/analysis/findings/`]({registry})), one module per finding; each threshold is written "
        "beside the reason for its value and was fixed before any data was seen.", "",
        f"Each outcome is decided by [`verdict.py`]({rules}). Effects are {CONFIDENCE:.0%} Student-t intervals "
        "over paired observations (the same seed, hence the same data order and initialisation, in both "
        "arms; one pair per (scale, seed)), shown as `estimate [lo, hi] unit (n = pairs)`. *Seeds* is the "
        "number of seeds the study trained for the variants the check compares; *n* counts the pairs "
        "that entered the interval.", "",
        "| Outcome | Meaning |", "|---|---|",
        *[f"| {o} | {OUTCOME_MEANING[o]} |" for o in (*OUTCOMES, NOT_TESTABLE)],
    ]


def _thresholds_changed(claim: dict, entry: Finding) -> bool:
    """The claim was computed under a decision rule the registry no longer holds (stale results)."""
    now = entry.describe()
    return ("thresholds" in claim and claim["thresholds"] != now["thresholds"]) or (
        "rule" in claim and claim["rule"] != now["rule"])


def _finding_lines(entry: Finding) -> list[str]:
    d = entry.describe()
    out = [f"**Paper** ({d['source']}): {d['statement']}", "",
           f"**Quantity:** {d['quantity']}", "", f"**Decision rule:** {d['rule']}", ""]
    if d["thresholds"]:
        out += ["| Threshold | Value | Reason |", "|---|---|---|"]
        out += [f"| {cell(k)} | {cell(t['value'])} | {cell(t['reason'])} |" for k, t in d["thresholds"].items()]
        out.append("")
    return out


def _study_lines(study: str, claim: dict, entry: Finding, figures: list[Path], base: Path | None,
                 sources: dict[str, str]) -> list[str]:
    """One study's section of a finding: outcome, effect, seeds, sub-checks, measured numbers,
    note, likely reason and figures, as markdown blocks separated by blank lines."""
    blocks = [[f"### Study `{study}`: {verdict(claim)}"]]
    if study in sources:
        blocks.append([f"Supplement, produced by `{sources[study]}`."])
    if _thresholds_changed(claim, entry):
        blocks.append(["*This study's `claims.json` was computed under a different rule or thresholds than the "
                       "registry's now: rerun its analysis.*"])
    blocks.append([f"- **Outcome:** {verdict(claim)}", f"- **Effect:** {effect_text(claim)}",
                   f"- **Seeds:** {seeds_text(claim)}"])
    blocks.append(subcheck_lines(claim.get("subchecks") or {}))
    measured = {k: v for k, v in (claim.get("measured") or {}).items() if k != "traceback"}
    if measured:
        blocks += [["**Measured:**"], measured_lines(measured)]
    if claim.get("note"):
        blocks.append([f"*Note:* {claim['note']}"])
    if claim.get("likely_reason"):
        blocks.append([f"*Likely reason (our reading, from the study's `analysis.caveat`):* {claim['likely_reason']}"])
    pngs = [p for p in figures if Path(p).suffix == ".png" and Path(p).stem in FIGURES_BY_FINDING.get(entry.number, ())]
    blocks.append([f"![{study}: {Path(p).stem}]({_link(Path(p), base)})" for p in pngs])
    out: list[str] = []
    for b in blocks:
        if b:
            out += [*b, ""]
    return out


def _ran(claims_by_study: dict[str, list[dict]], n: int) -> list[tuple[str, dict]]:
    """(study, claim) of every study that lists finding n, in study order."""
    return [(st, c) for st, cs in claims_by_study.items() for c in cs if int(c["finding"]) == n]


def summary_rows(claims_by_study: dict[str, list[dict]], label: Callable[[str], str] = str) -> list[list[str]]:
    """[finding, study, outcome, effect, seeds] per (registry finding, study that ran it), in
    registry order; a finding no study ran gets one `not run` row."""
    rows = []
    for n, entry in sorted(REGISTRY.items()):
        name = f"{n}. {entry.title}"
        ran = _ran(claims_by_study, n)
        if not ran:
            rows.append([name, "—", NOT_RUN, "—", "—"])
        rows += [[name, label(st), verdict(c), effect_text(c), seeds_text(c)] for st, c in ran]
    return rows


def render_findings(claims_by_study: dict[str, list[dict]], figures: dict[str, list[Path]], command: str,
                    base: Path | None = None, sources: dict[str, str] | None = None) -> str:
    """The markdown document: one section per registry finding, in order, each with every study
    that ran it (a finding none ran reads `not run`). `base`: the directory the document lives
    in (links are made relative). `sources`: supplementary study -> the command that produced
    it (or would, if not run yet)."""
    sources = sources or {}
    missing = sorted({cmd for st, cmd in sources.items() if st not in claims_by_study})
    label = lambda st: f"{st} (supplement)" if st in sources else st
    lines = _header(command, base)
    lines += ["", "## Summary", "", f"| Finding | Study | Outcome | Effect ({CONFIDENCE:.0%} interval) | Seeds |",
              "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in summary_rows(claims_by_study, label)]
    if sources:
        lines += ["", "Studies marked *supplement* are too long for the default run and come from their own "
                      "config file; they appear here once run (then rerun the command above):", ""]
        lines += [f"- `{cmd}`" + (" (not run yet)" if cmd in missing else "")
                  for cmd in sorted(set(sources.values()))]
    for n, entry in sorted(REGISTRY.items()):
        lines += ["", f"## {n}. {entry.title}", ""] + _finding_lines(entry)
        ran = _ran(claims_by_study, n)
        if not ran:
            lines += [f"### No study: {NOT_RUN}", "", f"No study in this configuration lists finding {n}.", ""]
        for study, c in ran:
            lines += _study_lines(study, c, entry, figures.get(study, []), base, sources)
    return "\n".join(lines).rstrip() + "\n"


DEFAULT_COMMAND = "snakemake --cores all"


def write_findings(claims: Mapping[str, str | Path], figures: Mapping[str, Sequence[str | Path]],
                   out: str | Path, figures_dir: str | Path | None = None, command: str = DEFAULT_COMMAND,
                   sources: dict[str, str] | None = None) -> Path:
    """Write the document to `out` from `claims` (study -> its claims.json; sections list the
    studies in this order) and `figures` (study -> its figure PNGs; PNGs that do not exist, or
    of a study without claims, are left out). With `figures_dir`, the PNGs are copied to
    figures_dir/<study>/ first, so a document that lives outside results/ (docs/findings.md)
    links to files that can be committed. Raises KeyError if a claims.json has no `claims`."""
    out = Path(out)
    claims_by_study: dict[str, list[dict]] = {}
    shown: dict[str, list[Path]] = {}
    for study, f in claims.items():
        doc = read_json(Path(f))
        claims_by_study[study] = doc["claims"] if isinstance(doc, dict) else doc
        shown[study] = []
    for study, files in figures.items():
        for fig in map(Path, files):
            if study not in shown or not fig.is_file():
                continue
            if figures_dir is not None:
                dest = Path(figures_dir) / study / fig.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(dest, lambda p, src=fig: shutil.copyfile(src, p))
                fig = dest
            shown[study].append(fig)
    for study, items in claims_by_study.items():  # the order figures_for gives
        order = {n: i for i, n in enumerate(figures_for([c["finding"] for c in items]))}
        shown[study].sort(key=lambda p: order.get(p.stem, len(order)))
    text = render_findings(claims_by_study, shown, command, base=out.parent.resolve(), sources=sources)
    return write_text(out, text)
