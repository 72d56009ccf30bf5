"""The findings page: one section per registry finding in order, each with the paper's claim,
rule and thresholds, and per study the outcome, the effect interval, sub-checks and figures;
a finding no study ran reads `not run`."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from helpers import REPO, analyse_dir

from stability.analysis import planted
from stability.analysis.findings import REGISTRY, Threshold
from stability.analysis.findings.base import result
from stability.analysis.verdict import (INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, OUTCOMES, REPRODUCED, Interval,
                                        subcheck, t_interval)
from stability.config import ConfigError
from stability.findings_doc import (check_study_findings, interval_text, render_findings, summary_rows,
                                    write_findings)

ALL_BUT_7 = [n for n in REGISTRY if n != 7]


@pytest.fixture(scope="module")
def planted_claims(tmp_path_factory):
    """Every finding but 7 run on a planted study by the registry's own checks."""
    d = tmp_path_factory.mktemp("study") / "studies" / "planted"
    d.mkdir(parents=True)
    variants = {**planted.MITIGATION_VARIANTS, "big_eps": {"optim.eps": 1e-4},
                "kappa_1e2": {"model.qk_kappa": 100.0}, "kappa_1e4": {"model.qk_kappa": 1e4}}
    runs, curves = planted.planted_study(variants, seeds=(0, 1))
    runs.write_parquet(d / "runs.parquet")
    curves.write_parquet(d / "curves.parquet")
    out = analyse_dir(d, {"name": "planted", "findings": ALL_BUT_7, "reference": "reference", "options": {}})
    return d, out["claims_list"]


def weight_decay_claim(diffs=(0.1, 0.2, 0.15), **kw) -> dict:
    """A finding-4 record with a headline interval and sub-checks of every kind."""
    iv = t_interval(diffs)
    subs = {"paired_gap": subcheck(REPRODUCED, iv, "coupled minus independent, paired seeds"),
            "long_horizon": subcheck(NOT_TESTABLE, note="decay cannot act in 300 steps", sum_lr_steps=150.0),
            "one_seed": subcheck(INCONCLUSIVE, t_interval([0.3]), "a single pair")}
    return result(4, REPRODUCED, {"per_scale": {"s0": 0.1, "s2": 0.2}}, "a note with a | pipe",
                  subchecks=subs, effect=iv, effect_unit="nats", n_seeds=len(diffs), **kw)


def summary(text: str) -> list[list[str]]:
    block = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in block.splitlines()
            if line.startswith("| ") and not line.startswith("| Finding")]


def test_every_registry_finding_has_a_section_in_order_and_an_outcome(planted_claims):
    _, items = planted_claims
    text = render_findings({"planted": items}, {}, "make study")
    headings = [int(m) for m in re.findall(r"^## (\d+)\. ", text, re.M)]
    assert headings == sorted(REGISTRY) == list(range(1, 12))
    rows = summary(text)
    assert [int(r[0].split(".")[0]) for r in rows] == list(range(1, 12))
    assert all(r[2] in OUTCOMES for r in rows)
    # the study did not list finding 7: it is listed, as not run, in the table and in its section
    assert rows[6][:3] == ["7. Steps and batch size", "—", "not run"]
    seven = text.split("## 7. ", 1)[1].split("\n## ", 1)[0]
    assert "### No study: not run" in seven and REGISTRY[7].claim in seven and REGISTRY[7].source in seven
    # each section shows the paper's claim with its source, the quantity and the rule
    for n, f in REGISTRY.items():
        section = text.split(f"## {n}. {f.title}", 1)[1].split("\n## ", 1)[0]
        assert f"**Paper** ({f.source}): {f.claim}" in section
        assert f.quantity in section and f.rule in section


def test_header_explains_every_outcome_and_links_the_registry(tmp_path):
    text = render_findings({}, {}, "make study", base=REPO / "docs")
    header = text.split("## Summary", 1)[0]
    for outcome in (*OUTCOMES, NOT_TESTABLE):
        assert f"| {outcome} | " in header
    assert "straddles zero or the edge of the no-effect band" in header and "sub-checks are missing" in header
    assert "(../stability/analysis/findings/)" in header and "(../stability/analysis/verdict.py)" in header
    assert "fixed before any data" in header
    # with no study at all, every finding is listed as not run
    assert [r[2] for r in summary(text)] == ["not run"] * len(REGISTRY)


def test_effect_interval_subchecks_and_measured_numbers_are_shown():
    claim = weight_decay_claim()
    claim["likely_reason"] = "decay timescale longer than the run"
    text = render_findings({"wd": [claim]}, {}, "make")
    iv = t_interval([0.1, 0.2, 0.15])
    shown = f"0.15 [{iv.lo:.3g}, {iv.hi:.3g}] nats (n = 3, t)"
    assert summary(text)[3] == ["4. Independent weight decay", "wd", "reproduced", shown, "3"]
    section = text.split("### Study `wd`: reproduced", 1)[1].split("\n## ", 1)[0]
    assert f"- **Effect:** {shown}" in section and "- **Seeds:** 3" in section
    assert f"| paired_gap | reproduced | 0.15 [{iv.lo:.3g}, {iv.hi:.3g}] (n = 3, t) |" in section
    assert "| long_horizon | not testable | — | decay cannot act in 300 steps | sum_lr_steps = 150 |" in section
    assert "| one_seed | inconclusive | 0.3 (n = 1: no interval) |" in section  # never a fake bound
    assert "  - s2: 0.2" in section and "a note with a | pipe" in section
    assert "*Likely reason (our reading, from the study's `analysis.caveat`):* decay timescale" in section
    assert "a note with a \\| pipe" not in section  # only table cells are escaped


def test_interval_text_edge_cases():
    assert interval_text(None) == "—"
    assert interval_text(Interval(float("nan"), -1, 1, 0).as_dict()) == "—"
    assert interval_text({"estimate": 2.0, "lo": 1.0, "hi": 3.0, "n": 4, "method": "bootstrap"}, "decades") == \
        "2 [1, 3] decades (n = 4, bootstrap)"


def test_thresholds_with_reasons_come_from_the_registry(monkeypatch):
    stale = weight_decay_claim()  # computed before the threshold below existed
    entry = dataclasses.replace(REGISTRY[4], thresholds={
        "no_effect_band": Threshold(0.05, "half the paired seed spread of the default s0 config")})
    monkeypatch.setitem(REGISTRY, 4, entry)
    text = render_findings({"wd": [stale]}, {}, "make")
    section = text.split("## 4. ", 1)[1].split("\n## ", 1)[0]
    assert "| no_effect_band | 0.05 | half the paired seed spread of the default s0 config |" in section
    assert "computed under a different rule or thresholds" in section
    fresh = weight_decay_claim()
    assert fresh["thresholds"] == entry.describe()["thresholds"]
    assert "computed under a different rule" not in render_findings({"wd": [fresh]}, {}, "make")


def test_a_check_not_run_inside_a_study_is_listed_with_its_note(planted_claims):
    _, items = planted_claims
    broken = result(7, "not run", note="needs a variant with train.steps changed")
    rows = summary_rows({"planted": items, "knobs": [broken]})
    assert ["7. Steps and batch size", "knobs", "not run", "—", "—"] in rows
    text = render_findings({"knobs": [broken]}, {}, "make")
    assert "### Study `knobs`: not run" in text and "needs a variant with train.steps changed" in text


def test_write_findings_links_each_findings_figures(planted_claims, tmp_path):
    d, _ = planted_claims
    figs = d / "figures"
    figs.mkdir(exist_ok=True)
    for name in ("lr_vs_loss", "forecast", "kappa"):
        (figs / f"{name}.png").write_bytes(b"png")
    out = write_findings({"planted": d / "claims.json"}, {"planted": sorted(figs.glob("*.png"))},
                         tmp_path / "docs" / "findings.md",
                         tmp_path / "docs" / "findings_figures", "make study")
    text = out.read_text()
    eight = text.split("## 8. ", 1)[1].split("\n## ", 1)[0]
    nine = text.split("## 9. ", 1)[1].split("\n## ", 1)[0]
    assert "](findings_figures/planted/forecast.png)" in eight and "kappa.png" not in eight
    assert "](findings_figures/planted/kappa.png)" in nine and "forecast.png" not in nine


def test_unknown_finding_numbers_are_a_config_error():
    check_study_findings({"a": [1, 11], "b": []})
    with pytest.raises(ConfigError, match=r"studies\.b\.findings: \[12\] not among the paper's findings .*1\.\.11"):
        check_study_findings({"a": [1], "b": [3, 12]})


def test_compare_findings_lists_every_finding_with_intervals(tmp_path):
    for name, diffs in (("a", (0.1, 0.2, 0.15)), ("b", (0.1, -0.2, 0.05))):
        d = tmp_path / name / "studies" / "wd"
        d.mkdir(parents=True)
        claim = weight_decay_claim(diffs)
        if name == "b":
            claim["outcome"] = NOT_REPRODUCED
        (d / "claims.json").write_text(json.dumps({"claims": [claim]}))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_findings.py"), "a", "b"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 + len(REGISTRY)
    wd = next(line for line in lines if line.startswith("| 4. "))
    assert "| wd | reproduced | not reproduced | 0.15 [" in wd and "nats (n = 3, t) | -0.0167 [" in wd
    assert wd.endswith("| 3 / 3 |")
    assert "| 7. Steps and batch size | — | not run | not run | — | — | — / — |" in lines
