"""`stability analyse-runs` on runs recorded by the monitor (stability.attach) on a model from
outside the project: three GPT-2 widths, one LR, a named target size."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import polars as pl
import pytest

from stability.cli import main

pytest.importorskip("transformers")  # in the dev extra

WIDTHS = (16, 32, 48)
LR = 1e-2


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    from byom_helpers import tiny_gpt2, train_hf
    root = tmp_path_factory.mktemp("ladder")
    for d in WIDTHS:
        train_hf(tiny_gpt2(d=d), root / f"gpt2-d{d}", steps=20, lr=LR, every=5, data="counting")
    return root


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_analyse_runs_on_three_widths(ladder, tmp_path, capsys):
    out = tmp_path / "analysis"
    dirs = [str(ladder / f"gpt2-d{d}") for d in WIDTHS]
    code, stdout, err = run_cli(capsys, "analyse-runs", *dirs, "--out", str(out), "--target", "1M=1e6",
                                "--formats", "html")
    assert code == 0, err
    sentence = stdout.strip().splitlines()
    assert len(sentence) == 1
    m = re.fullmatch(r"at 1e\+06 parameters and LR 0\.01, the max attention logit is predicted to reach (\S+) by "
                     r"step 20 \(90% interval (\S+) to (\S+); a line in log-log through 3 sizes, .*\)", sentence[0])
    assert m, sentence[0]
    pred, lo, hi = map(float, m.groups())
    assert lo <= pred <= hi
    assert (out / "forecast.txt").read_text().strip() == sentence[0]
    runs = pl.read_parquet(out / "runs.parquet")
    assert runs.height == 3 and runs["lr"].unique().to_list() == [LR]
    assert sorted(runs["run_dir"].to_list()) == sorted(dirs)
    # the size axis is each card's non-embedding parameters; the probe reads step 20
    cards = [json.loads((ladder / f"gpt2-d{d}" / "run_card.json").read_text()) for d in WIDTHS]
    assert sorted(runs["non_embedding_params"].to_list()) == sorted(c["non_embedding_params"] for c in cards)
    assert set(runs["max_attn_logit_at_probe"].to_list()) == {
        pl.read_parquet(ladder / f"gpt2-d{d}" / "metrics.parquet").filter(pl.col("step") == 20)["max_attn_logit"][0]
        for d in WIDTHS}
    # the forecast is the logit fit of fits.parquet, evaluated at the target
    fits = pl.read_parquet(out / "fits.parquet").filter(pl.col("kind") == "attn_logit")
    assert fits["n_sizes"].to_list() == [3] and fits["target_params"].to_list() == [1e6]
    coef = fits["coef"][0].to_list()
    assert math.isclose(10 ** np.polyval(coef, 6.0), fits["predicted"][0], rel_tol=1e-9)
    assert math.isclose(float(f"{fits['predicted'][0]:.3g}"), pred, rel_tol=1e-9)
    curves = pl.read_parquet(out / "curves.parquet")
    assert curves["run_id"].n_unique() == 3 and "attn_logit_l0" in curves.columns
    for name in ("attn_logit_vs_step", "attn_logit_vs_lr", "logz_vs_step", "logit_vs_size"):
        html = (out / "figures" / f"{name}.html").read_text()
        assert "No data for this figure" not in html, name
    assert not (out / "figures" / "forecast.html").exists()  # a backtest needs 4 sizes


def test_bad_and_mixed_inputs_exit_2_with_one_line(ladder, tmp_path, capsys):
    good = str(ladder / "gpt2-d16")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "analyse-runs", good, str(empty), "--out", str(tmp_path / "a"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(empty) in err and "no metrics.parquet" in err and "expected a monitored run folder" in err

    other = tmp_path / "other-data"
    shutil.copytree(ladder / "gpt2-d32", other)
    card = json.loads((other / "run_card.json").read_text())
    (other / "run_card.json").write_text(json.dumps({**card, "data": "wikitext"}))
    code, _, err = run_cli(capsys, "analyse-runs", good, str(other), "--out", str(tmp_path / "b"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(other) in err and "'wikitext'" in err and "one data set" in err

    nolr = tmp_path / "no-lr"
    shutil.copytree(ladder / "gpt2-d32", nolr)
    (nolr / "run_card.json").write_text(json.dumps({**card, "peak_lr": None}))
    code, _, err = run_cli(capsys, "analyse-runs", str(nolr), "--out", str(tmp_path / "c"))
    assert code == 2 and str(nolr) in err and "peak_lr" in err

    for argv, needle in ((["--lr", "0.5"], "--lr: 0.5 is not a peak LR"), (["--target", "big"], "--target"),
                         ([], "given twice")):
        extra = [good] if needle == "given twice" else []
        code, _, err = run_cli(capsys, "analyse-runs", good, *extra, *argv, "--out", str(tmp_path / "d"))
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()  # refused before writing
