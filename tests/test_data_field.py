"""Issue 12, kinds 2, 3 and 6: data is identified by its content; every reader applies one
policy to missing, null and non-string text; local hub-style folders load; the CLI ends in
one line, not a traceback.

    pytest tests/test_data_field.py -m "not slow"     # seconds, no network, no training
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from helpers import REPO, TINY, child_env, tiny
from stability import corpus
from stability import data as D
from stability.cli import main
from stability.config import ConfigError

# ---- fixtures: tiny corpora and a tokenizer, built here (nothing is downloaded) ---------------

DOC = "The quick brown fox jumps over the lazy dog. " * 8


def _docs(n: int, tag: str = "") -> list[str]:
    return [f"{tag}document {i}. {DOC}" for i in range(n)]


def _jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _parquet(path: Path, columns: dict, schema: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(columns, schema=schema).write_parquet(path)
    return path


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_docs(20), trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"]))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def _text(tmp_path, path, **over):
    return tiny(tmp_path, **{"data.source": "text", "data.path": str(path), **over})


def _hf(tmp_path, dataset, tokenizer, **over):
    return tiny(tmp_path, **{"data.source": "huggingface", "data.hf_dataset": str(dataset),
                             "data.hf_tokenizer": str(tokenizer), **over})


def _tokens(path: Path) -> np.ndarray:
    meta = json.loads((path / "meta.json").read_text())
    return np.concatenate([np.fromfile(path / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")])


def stability(*args, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI as a subprocess: for what only a process shows (pipes, hangs, a fresh environment)."""
    return subprocess.run([sys.executable, "-m", "stability", *map(str, args)], cwd=cwd, env=env or child_env(),
                          capture_output=True, text=True, timeout=timeout)


def cli(*args) -> subprocess.CompletedProcess:
    """stability.cli.main in this process (no interpreter start per case); paths absolute."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def sets(over: dict) -> list[str]:
    return [a for k, v in over.items() for a in ("--set", f"{k}={v}")]


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ---- kind 2: a changed corpus is a new data id and new run ids ----------------------------

def _edit_file(p: Path, tag: str = "edited") -> None:
    p.write_text(p.read_text().replace("document 0.", f"{tag} 0."))


def _corpus_file(root: Path, kind: str, tokenizer_json: Path):
    """(config over, the file whose edit must change the ids) for each kind of local corpus."""
    root.mkdir(parents=True, exist_ok=True)
    if kind == "txt":
        f = root / "book.txt"
        f.write_text("\n\n\n".join(_docs(30)))
        return {"data.source": "text", "data.path": str(f)}, f
    if kind == "folder":
        for i in range(3):
            (root / "books" / "sub").mkdir(parents=True, exist_ok=True)
            (root / "books" / ("sub" if i else "") / f"b{i}.txt").write_text("\n\n\n".join(_docs(10, f"b{i} ")))
        return {"data.source": "text", "data.path": str(root / "books")}, root / "books" / "sub" / "b2.txt"
    if kind == "jsonl":
        f = _jsonl(root / "c.jsonl", [{"text": d} for d in _docs(30)])
        return {"data.source": "text", "data.path": str(f)}, f
    if kind == "parquet":
        f = _parquet(root / "c.parquet", {"text": _docs(30)})
        return {"data.source": "text", "data.path": str(f)}, f
    hf = {"data.source": "huggingface", "data.hf_tokenizer": str(tokenizer_json)}
    if kind == "hf-shards":
        for i in range(2):
            _parquet(root / "shards" / "data" / f"train-0000{i}-of-00002.parquet", {"text": _docs(15, f"s{i} ")})
        return {**hf, "data.hf_dataset": str(root / "shards")}, root / "shards" / "data" / "train-00001-of-00002.parquet"
    if kind == "hf-jsonl":
        f = _jsonl(root / "hub" / "part0.jsonl", [{"text": d} for d in _docs(30)])
        return {**hf, "data.hf_dataset": str(root / "hub")}, f
    raise AssertionError(kind)


KINDS = ["txt", "folder", "jsonl", "parquet", "hf-shards", "hf-jsonl"]


@pytest.mark.parametrize("kind", KINDS)
def test_editing_the_corpus_changes_data_and_run_ids_touching_does_not(tmp_path, tokenizer_json, kind):
    over, f = _corpus_file(tmp_path / "in", kind, tokenizer_json)
    cfg = tiny(tmp_path, **over)
    ids = cfg.data_id(), cfg.run_id()
    first = D.prepare(cfg)
    old_tokens = _tokens(first)
    os.utime(f)  # touched, same bytes: the same data, nothing retrains
    assert (cfg.data_id(), cfg.run_id()) == ids
    if f.suffix == ".parquet":
        df = pl.read_parquet(f)
        _parquet(f, {"text": [t.replace("document", "changed!") for t in df["text"]]})
    else:
        _edit_file(f)
    new_ids = cfg.data_id(), cfg.run_id()
    assert new_ids[0] != ids[0] and new_ids[1] != ids[1]
    second = D.prepare(cfg)
    assert second != first and second.name == new_ids[0]
    assert not np.array_equal(_tokens(second), old_tokens)  # the new cache holds the new text
    assert np.array_equal(_tokens(first), old_tokens)  # the old one is untouched (runs that used it)


def test_a_local_tokenizer_is_part_of_the_data_id(tmp_path, tokenizer_json):
    over, _ = _corpus_file(tmp_path / "in", "hf-jsonl", tokenizer_json)
    tok = tmp_path / "tokenizer.json"
    tok.write_text(tokenizer_json.read_text())
    cfg = tiny(tmp_path, **{**over, "data.hf_tokenizer": str(tok)})
    before = cfg.data_id()
    tok.write_text(json.dumps({**json.loads(tok.read_text()), "truncation": None}, indent=1))
    assert cfg.data_id() != before


def test_the_same_bytes_elsewhere_share_content_but_not_the_path(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(DOC * 20)
    b.write_text(DOC * 20)
    assert corpus.fingerprint(a, (), tmp_path) == corpus.fingerprint(b, (), tmp_path)
    assert _text(tmp_path, a).data_id() != _text(tmp_path, b).data_id()  # data.path is in the id, as before


def test_synthetic_ids_hold_no_file_state(tmp_path, monkeypatch):
    """The default's ids come from the config alone: no fingerprint, no mtime of generated data."""
    cfg = tiny(tmp_path)
    assert cfg.data_content() == {}
    ids = cfg.data_id(), cfg.run_id()
    D.prepare(cfg)
    monkeypatch.chdir(tmp_path)
    assert (cfg.data_id(), cfg.run_id()) == ids
    assert tiny(tmp_path / "elsewhere").data_id() == ids[0]  # the cache location is not part of it


def test_a_same_size_edit_with_the_old_mtime_is_still_seen(tmp_path, monkeypatch):
    """mtime alone can lie (a tool that restores it); ctime and inode do not."""
    monkeypatch.setattr(corpus, "RACY_S", -1.0)  # cache even files written a moment ago
    f = tmp_path / "book.txt"
    f.write_text("a" * 1000)
    st = f.stat()
    before = corpus.fingerprint(f, (), tmp_path / "cache")
    f.write_text("b" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert corpus.fingerprint(f, (), tmp_path / "cache") != before


def test_fingerprints_are_cached_by_stat_in_and_across_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "RACY_S", -1.0)
    reads = []
    real = corpus.file_digest
    monkeypatch.setattr(corpus, "file_digest", lambda p: reads.append(p) or real(p))
    folder = tmp_path / "books"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(f"book {i} " * 100)
    fp = corpus.fingerprint(folder, corpus.TEXT_SUFFIXES, tmp_path / "cache")
    assert len(reads) == 3
    assert corpus.fingerprint(folder, corpus.TEXT_SUFFIXES, tmp_path / "cache") == fp and len(reads) == 3
    monkeypatch.setattr(corpus, "_memo", {})  # a new process: the on-disk cache answers
    assert corpus.fingerprint(folder, corpus.TEXT_SUFFIXES, tmp_path / "cache") == fp and len(reads) == 3
    (folder / "1.txt").write_text("book one, rewritten " * 100)
    assert corpus.fingerprint(folder, corpus.TEXT_SUFFIXES, tmp_path / "cache") != fp
    assert [p.name for p in reads[3:]] == ["1.txt"]  # only the edited file is read again


def test_files_written_just_now_are_not_cached(tmp_path):
    """Within the timestamp resolution a same-size edit keeps the stat: such files are rehashed."""
    f = tmp_path / "book.txt"
    f.write_text("x" * 100)
    corpus.fingerprint(f, (), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_planning_fingerprints_each_corpus_once(tmp_path, monkeypatch):
    from stability.grid import expand
    monkeypatch.setattr(corpus, "RACY_S", -1.0)  # the in-process memo holds it, as for an old corpus
    f = tmp_path / "book.txt"
    f.write_text("\n\n\n".join(_docs(10)))
    walks = []
    real = corpus.corpus_files
    monkeypatch.setattr(corpus, "corpus_files", lambda *a: walks.append(a) or real(*a))
    wf = {"scales": {"s0": {"d_model": 16, "n_layers": 1, "head_dim": 8}},
          "defaults": {"data.source": "text", "data.path": str(f), "data.cache_dir": str(tmp_path / "c")},
          "studies": {"a": {"scales": ["s0"], "lrs": [0.01, 0.1, 1.0], "seeds": [0, 1, 2]}}}
    studies = expand(wf)
    assert len(studies["a"].run_ids) == 9 and len(walks) == 1
    assert len(expand(wf)["a"].run_ids) == 9 and len(walks) == 2  # a second planning walks once more


def test_a_resumed_run_refuses_checkpoints_of_the_old_corpus(tmp_path, monkeypatch):
    import stability.train as T
    f = tmp_path / "book.txt"
    f.write_text("\n\n\n".join(_docs(40)))
    cfg = _text(tmp_path, f, **{"train.steps": 30, "train.checkpoint_every": 10})
    real_save = T.checkpoint.save

    def save_then_die(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt  # killed after its first checkpoint

    monkeypatch.setattr(T.checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, tmp_path / "run", quiet=True)
    monkeypatch.setattr(T.checkpoint, "save", real_save)
    assert list((tmp_path / "run" / "ckpt").glob("step-*.pt"))
    _edit_file(f)
    with pytest.raises(ConfigError, match="holds checkpoints of run .*the data files changed"):
        T.train(cfg, tmp_path / "run", quiet=True)


def test_prepare_data_expect_data_id(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("\n\n\n".join(_docs(20)))
    over = sets({"data.source": "text", "data.path": f, "train.seq_len": 32, "data.cache_dir": tmp_path / "cache"})
    proc = cli("prepare-data", "--expect-data-id", "text-0000000000", *over)
    assert "--expect-data-id: the data resolves to text-" in one_line_error(proc)
    assert not (tmp_path / "cache").exists()


def test_cli_prepare_data_twice_with_edited_text_gives_the_new_tokens(tmp_path):
    """The issue's case: the second prepare-data used to return the old cache."""
    f = tmp_path / "book.txt"
    over = sets({"data.source": "text", "data.path": f, "train.seq_len": 32, "data.cache_dir": tmp_path / "cache"})
    f.write_text("first version of the book. " * 50)
    first = Path(cli("prepare-data", *over).stdout.strip())
    f.write_text("other version of the book! " * 50)
    second = Path(cli("prepare-data", *over).stdout.strip())
    assert first != second
    assert bytes(_tokens(second)[:27].astype(np.uint8)) == b"other version of the book! "


@pytest.mark.slow
def test_workflow_retrains_exactly_the_runs_of_an_edited_corpus(tmp_path):
    """Two studies on two corpora: touching changes nothing, editing one replans only its runs."""
    from workflow_copy import copy_repo, planned_jobs, snakemake
    repo = copy_repo(tmp_path / "repo")
    (repo / "a.txt").write_text("\n\n\n".join(_docs(30, "a ")))
    (repo / "b.txt").write_text("\n\n\n".join(_docs(30, "b ")))
    defaults = {"train.steps": 6, "train.batch_size": 2, "train.seq_len": 16, "train.log_every": 3,
                "train.eval_every": 6, "train.eval_batches": 1, "train.checkpoint_every": 6,
                "optim.warmup_steps": 1, "data.source": "text"}
    wf = {"defaults": defaults, "scales": {"s0": {"d_model": 16, "n_layers": 1, "head_dim": 8}},
          "studies": {"a": {"scales": ["s0"], "lrs": [1e-2, 1e-1], "overrides": {"data.path": "a.txt"}},
                      "b": {"scales": ["s0"], "lrs": [1e-2], "overrides": {"data.path": "b.txt"}}}}
    (repo / "two.yaml").write_text(yaml.safe_dump(wf))
    args = ["results/studies/a/runs.parquet", "results/studies/b/runs.parquet", "--cores", "1", "--configfile", "two.yaml"]
    snakemake(repo, *args)
    assert planned_jobs(snakemake(repo, "-n", *args)) == {}
    os.utime(repo / "a.txt")
    assert planned_jobs(snakemake(repo, "-n", *args)) == {}  # same bytes: nothing to do
    _edit_file(repo / "a.txt")
    proc = snakemake(repo, "-n", *args)
    assert planned_jobs(proc) == {"prepare_data": 1, "train": 2, "aggregate": 1}
    outputs = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip().startswith("output:")]
    assert any("studies/a/" in ln for ln in outputs) and not any("studies/b/" in ln for ln in outputs)


# ---- kind 3: one policy for missing, null and non-string text -------------------------------

def _meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


GOOD = _docs(30)


def _bad_records_corpus(root: Path, fmt: str) -> Path:
    """GOOD plus one null and one record without the field (two to skip), in each format."""
    if fmt == "jsonl":
        return _jsonl(root / "c.jsonl", [{"text": d} for d in GOOD] + [{"text": None}, {"title": "no text"}])
    if fmt == "json":
        root.mkdir(parents=True, exist_ok=True)
        (root / "c.json").write_text(json.dumps([{"text": d} for d in GOOD] + [{"text": None}, {"title": "x"}]))
        return root / "c.json"
    if fmt == "parquet":  # a column cannot be absent for one row: two nulls
        return _parquet(root / "c.parquet", {"text": GOOD + [None, None]})
    if fmt == "arrow":
        import pyarrow as pa
        root.mkdir(parents=True, exist_ok=True)
        table = pa.table({"text": GOOD + [None, None]})
        with pa.OSFile(str(root / "c.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)  # the Arrow stream format `datasets` writes
        return root / "c.arrow"
    raise AssertionError(fmt)


@pytest.mark.parametrize("source, fmt", [("text", "jsonl"), ("text", "parquet"), ("huggingface", "jsonl"),
                                         ("huggingface", "json"), ("huggingface", "parquet"),
                                         ("huggingface", "arrow")])
def test_missing_and_null_text_is_skipped_and_counted(tmp_path, tokenizer_json, capfd, source, fmt):
    f = _bad_records_corpus(tmp_path / "in", fmt)
    cfg = _text(tmp_path, f) if source == "text" else _hf(tmp_path, f, tokenizer_json)
    out = D.prepare(cfg)
    meta = _meta(out)
    assert meta["skipped_records"] == 2 and meta["records"] == len(GOOD) + 2
    assert meta["skipped_by_file"] == {str(f): 2}
    err = capfd.readouterr().err
    assert f"skipped 2 of {len(GOOD) + 2} records whose 'text' is missing or null ({f}: 2)" in err
    # the same documents as a clean file: nothing of the bad records reached the tokens
    clean = _jsonl(tmp_path / "clean" / "c.jsonl", [{"text": d} for d in GOOD])
    ref = _text(tmp_path, clean) if source == "text" else _hf(tmp_path, clean, tokenizer_json)
    assert np.array_equal(_tokens(out), _tokens(D.prepare(ref)))


def test_jsonl_and_parquet_readers_agree(tmp_path):
    a = D.prepare(_text(tmp_path, _bad_records_corpus(tmp_path / "j", "jsonl")))
    b = D.prepare(_text(tmp_path, _bad_records_corpus(tmp_path / "p", "parquet")))
    assert np.array_equal(_tokens(a), _tokens(b))
    assert bytes(_tokens(a)).find(b"None") == -1


@pytest.mark.parametrize("value, found", [(12345, "a number (12345)"), ({"en": "hi"}, "an object"),
                                          (["a"], "an array"), (True, "a boolean")])
def test_a_non_string_record_is_refused_naming_file_line_and_type(tmp_path, value, found):
    f = _jsonl(tmp_path / "c.jsonl", [{"text": GOOD[0]}, {"text": value}])
    with pytest.raises(ConfigError) as e:
        D.prepare(_text(tmp_path, f))
    assert str(e.value).startswith(f"data.text_field: 'text' in {f} line 2 is {found}")
    assert not list((tmp_path / "data").glob("*/meta.json"))


@pytest.mark.parametrize("column, dtype", [([1, 2, 3], "Int64"), ([1.5, None, 2.0], "Float64"),
                                           ([["a"], ["b"], None], "List(String)")])
def test_a_non_string_column_is_refused_naming_it_and_its_type(tmp_path, tokenizer_json, column, dtype):
    f = _parquet(tmp_path / "c.parquet", {"text": column})
    for cfg in (_text(tmp_path, f), _hf(tmp_path, f, tokenizer_json)):
        with pytest.raises(ConfigError, match="^" + re.escape(f"data.text_field: column 'text' of {f} is {dtype}, expected strings")):
            D.prepare(cfg)


def test_cli_bad_record_is_one_line(tmp_path):
    """The issue's file: nulls, 12345 and a dict used to become 'None', '12345' and a dict repr."""
    f = _jsonl(tmp_path / "c.jsonl", [{"text": d} for d in GOOD] + [{"text": None}, {"text": 12345}, {"text": {"en": "x"}}])
    proc = cli("prepare-data", *sets({"data.source": "text", "data.path": f, "train.seq_len": 32,
                                      "data.cache_dir": tmp_path / "cache"}))
    assert one_line_error(proc) == f"error: data.text_field: 'text' in {f} line 32 is a number (12345), expected a string"
    assert not list(tmp_path.glob("cache/*/meta.json"))


# ---- kind 6: local hub-style folders, one-line errors, a closed pipe --------------------------

def test_hub_style_parquet_shards_load_the_requested_split(tmp_path, tokenizer_json):
    root = tmp_path / "shards"
    for i in range(2):
        _parquet(root / f"train-0000{i}-of-00002.parquet", {"text": _docs(10, f"train{i} "), "id": list(range(10))})
    _parquet(root / "test-00000-of-00001.parquet", {"text": _docs(10, "test ")})
    cfg = _hf(tmp_path, root, tokenizer_json)
    meta = _meta(D.prepare(cfg))
    assert meta["records"] == 20 and meta["skipped_records"] == 0  # the two train shards only
    test = _meta(D.prepare(_hf(tmp_path, root, tokenizer_json, **{"data.hf_split": "test"})))
    assert test["records"] == 10
    with pytest.raises(ConfigError, match=r"^data.hf_split: 'validation' not in .* \(splits: train, test\)"):
        D.prepare(_hf(tmp_path, root, tokenizer_json, **{"data.hf_split": "validation"}))


def test_a_saved_dataset_folder_loads(tmp_path, tokenizer_json):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": _docs(20) + [None]}),
                               "test": datasets.Dataset.from_dict({"text": _docs(5)})})
    dd.save_to_disk(str(tmp_path / "saved"))
    meta = _meta(D.prepare(_hf(tmp_path, tmp_path / "saved", tokenizer_json)))
    assert meta["records"] == 21 and meta["skipped_records"] == 1


def test_a_tokenizer_folder_loads_its_tokenizer_json(tmp_path, tokenizer_json):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(tokenizer_json.read_text())
    f = _jsonl(tmp_path / "c.jsonl", [{"text": d} for d in GOOD])
    assert D.load(_hf(tmp_path, f, tmp_path / "tok")).vocab_size == D.load(_hf(tmp_path, f, tokenizer_json)).vocab_size


def _bad_hub_folder(s: Path, kind: str) -> Path:
    if kind == "jsonl-wrong-field":
        return _jsonl(s / "jsonl_dir" / "part0.jsonl", [{"content": "x"}]).parent
    if kind == "parquet-wrong-field":
        return _parquet(s / "pq" / "train-00000-of-00001.parquet", {"body": ["x"]}).parent
    if kind == "empty-folder":
        (s / "empty").mkdir()
        return s / "empty"
    if kind == "only-csv":
        (s / "csv").mkdir()
        (s / "csv" / "a.csv").write_text("text\nx\n")
        return s / "csv"
    if kind == "json-object":
        (s / "o.json").write_text('{"text": "x"}')
        return s / "o.json"
    if kind == "not-parquet":
        (s / "x.parquet").write_text("not parquet")
        return s / "x.parquet"
    raise AssertionError(kind)


HF_BAD = [  # (kind, what the one line says after "error: "; {S} is the scratch folder)
    ("jsonl-wrong-field", "data.text_field: 'text' not in {S}/jsonl_dir/part0.jsonl (fields: content)"),
    ("parquet-wrong-field", "data.text_field: 'text' not in {S}/pq/train-00000-of-00001.parquet (fields: body)"),
    ("empty-folder", "data.hf_dataset: no data files under {S}/empty"),
    ("only-csv", "data.hf_dataset: no .parquet, .jsonl, .json, .arrow files for split 'train' in {S}/csv (found: .csv)"),
    ("json-object", "data.hf_dataset: {S}/o.json: expected a JSON array of records or JSON lines, got an object"),
    ("not-parquet", "data.hf_dataset: {S}/x.parquet is not a readable parquet file"),
]


@pytest.mark.parametrize("kind, message", HF_BAD, ids=[c[0] for c in HF_BAD])
def test_cli_local_hub_dataset_errors_are_one_line(tmp_path, tokenizer_json, kind, message):
    dataset = _bad_hub_folder(tmp_path, kind)
    proc = cli("prepare-data", *sets({"data.source": "huggingface", "data.hf_dataset": dataset,
                                      "data.hf_tokenizer": tokenizer_json, "data.cache_dir": tmp_path / "cache"}))
    assert one_line_error(proc).startswith("error: " + message.format(S=tmp_path))
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*/meta.json"))


@pytest.mark.parametrize("tokenizer, message", [
    ("not-json", "data.hf_tokenizer: {S}/tok.json is not a tokenizers JSON file"),
    ("folder", "data.hf_tokenizer: {S}/tokdir is a folder without a tokenizer.json"),
])
def test_cli_tokenizer_errors_are_one_line(tmp_path, tokenizer, message):
    f = _jsonl(tmp_path / "c.jsonl", [{"text": d} for d in GOOD])
    (tmp_path / "tok.json").write_text("{not a tokenizer")
    (tmp_path / "tokdir").mkdir()
    name = {"not-json": tmp_path / "tok.json", "folder": tmp_path / "tokdir"}[tokenizer]
    proc = cli("prepare-data", *sets({"data.source": "huggingface", "data.hf_dataset": f, "data.hf_tokenizer": name,
                                      "data.cache_dir": tmp_path / "cache"}))
    assert one_line_error(proc).startswith("error: " + message.format(S=tmp_path))


def _offline() -> dict:
    return {**child_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # never the network


def test_cli_hub_tokenizer_offline_is_one_line(tmp_path):
    f = _jsonl(tmp_path / "c.jsonl", [{"text": d} for d in GOOD])
    proc = stability("prepare-data", *sets({"data.source": "huggingface", "data.hf_dataset": f,
                                            "data.hf_tokenizer": "no-such-org/no-such-tokenizer",
                                            "data.cache_dir": tmp_path / "cache"}),
                     cwd=tmp_path, env={**_offline(), "HF_HOME": str(tmp_path / "hf")})
    assert one_line_error(proc).startswith("error: data.hf_tokenizer: 'no-such-org/no-such-tokenizer' is no local "
                                           "file or folder, and the hub did not provide it")


def test_cli_hub_dataset_offline_is_one_line(tmp_path, tokenizer_json):
    proc = stability("prepare-data", *sets({"data.source": "huggingface", "data.hf_dataset": "no-such-org/no-such-dataset",
                                            "data.hf_tokenizer": tokenizer_json, "data.cache_dir": tmp_path / "cache"}),
                     cwd=tmp_path, env={**_offline(), "HF_HOME": str(tmp_path / "hf")})
    assert one_line_error(proc).startswith("error: data.hf_dataset: cannot stream 'no-such-org/no-such-dataset'")


@pytest.fixture(scope="module")
def big_grid(tmp_path_factory) -> Path:
    """A workflow config whose `grid -v` listing (~120 kB) overfills a pipe (64 kB), so the
    writer is still writing when the reader leaves, whatever the timing."""
    wf = {"scales": {"s0": {"d_model": 16, "n_layers": 1, "head_dim": 8}},
          "studies": {"x": {"scales": ["s0"], "lrs": [round(1e-4 * (i + 1), 6) for i in range(1500)]}}}
    path = tmp_path_factory.mktemp("grid") / "big.yaml"
    path.write_text(yaml.safe_dump(wf))
    return path


def test_grid_into_a_closed_pipe_exits_quietly(big_grid):
    """The reader goes away with most of the output unread: no traceback, SIGPIPE's status."""
    proc = subprocess.Popen([sys.executable, "-m", "stability", "grid", str(big_grid), "-v"], cwd=REPO,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and first.startswith(b"x: 1500 grid points") and err == "", err


def test_head_in_a_shell_pipeline_shows_no_traceback(big_grid):
    """`stability grid config/config.yaml | head -3`, with a listing too long to fit the pipe."""
    proc = subprocess.run(f"{sys.executable} -m stability grid {big_grid} -v | head -3", shell=True, cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert len(proc.stdout.splitlines()) == 3 and proc.stderr == "", proc.stderr


def test_a_fifo_as_data_path_is_refused_not_read(tmp_path):
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    proc = stability("prepare-data", *sets({"data.source": "text", "data.path": fifo, "data.cache_dir": tmp_path / "cache"}),
                     cwd=tmp_path, timeout=600)  # a subprocess: hashing or reading a FIFO would block
    assert one_line_error(proc) == f"error: data.path: {fifo} is not a regular file"


def test_a_damaged_token_cache_is_one_line(tmp_path):
    over = sets({**TINY, "data.cache_dir": tmp_path / "cache"})
    path = Path(cli("prepare-data", *over).stdout.strip())
    (path / "val.bin").unlink()
    proc = cli("train", "--out", tmp_path / "run", *over)
    assert one_line_error(proc).startswith(f"error: data.cache_dir: the token cache {path} is damaged")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("over, message", [
    ({"data.cache_dir": "{S}/file"}, "data.cache_dir: cannot write the token cache in {S}/file"),
    ({"data.n_train_tokens": 10**14}, "out of memory (Unable to allocate"),
    ({"model.d_model": 400_000, "model.head_dim": 8}, "out of memory ("),  # the model: ~2.5 TB
    ({"model.d_model": 2**62, "model.head_dim": 8}, "sizes overflow (Storage size calculation overflowed"),
    ({"data.source": "text", "data.path": "{S}/file", "data.tokenizer": "bpe", "data.bpe_vocab_size": 10**20},
     "data.bpe_vocab_size: expected at least 260 and at most 2**32"),
])
def test_cli_resource_errors_are_one_line_and_write_nothing(tmp_path, over, message):
    (tmp_path / "file").write_text("in the way\n")
    over = {k: str(v).format(S=tmp_path) for k, v in over.items()}
    proc = cli("train", "--out", tmp_path / "run", *sets({**TINY, "data.cache_dir": tmp_path / "cache", **over}))
    assert one_line_error(proc).startswith("error: " + message.format(S=tmp_path))
    assert not (tmp_path / "run").exists()


def test_a_damaged_summary_is_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{half")
    proc = cli("train", "--out", tmp_path / "run", *sets({**TINY, "data.cache_dir": tmp_path / "cache"}))
    assert one_line_error(proc).startswith(f"error: --out: {tmp_path}/run/summary.json is unreadable")


GRID_BAD = [  # (id, study change, message): `stability grid` has no JSON schema in front of it
    ("seeds-text", {"seeds": ["a"]}, "studies.x.seeds: expected a list of integers, got ['a']"),
    ("seeds-scalar", {"seeds": 3}, "studies.x.seeds: expected a list of integers, got 3"),
    ("seeds-negative", {"seeds": [-1]},
     "studies.x (scale=s0, variant=default, lr=0.1): seed: expected an integer in [0, 2**63)"),
    ("analysis-scalar", {"analysis": 5}, "studies.x.analysis: expected a mapping of analysis options, got 5"),
    ("findings-text", {"findings": "x"}, "studies.x.findings: expected a list of finding numbers, got 'x'"),
    ("reference-list", {"reference": [1]}, "studies.x.reference: unknown variant [1]"),
    ("scale-name-list", {"scales": [[1]]}, "studies.x.scales: unknown scale [1]"),
    ("scales-list", {"top-scales": ["s0"]},
     "scales: expected a mapping of name -> {d_model, n_layers, head_dim}, got ['s0']"),
]


@pytest.mark.parametrize("change, message", [c[1:] for c in GRID_BAD], ids=[c[0] for c in GRID_BAD])
def test_cli_grid_shape_errors_are_one_line(tmp_path, change, message):
    study = {"scales": ["s0"], "lrs": [0.1], **{k: v for k, v in change.items() if k != "top-scales"}}
    wf = {"scales": change.get("top-scales", {"s0": {"d_model": 16, "n_layers": 1, "head_dim": 8}}),
          "studies": {"x": study}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(wf))
    assert one_line_error(cli("grid", tmp_path / "g.yaml")).startswith("error: " + message)


@pytest.mark.parametrize("key", ["data.hf_dataset", "data.hf_tokenizer"])
def test_an_empty_hub_name_is_refused_not_read_as_the_current_folder(key):
    from stability.config import load
    with pytest.raises(ConfigError, match=f"^{key}: expected a hub"):
        load(overrides={"data.source": "huggingface", key: ""})


def test_a_nul_in_a_path_from_a_config_file_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text('data:\n  source: text\n  path: "a\\0b"\n')
    proc = cli("train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert one_line_error(proc).startswith("error: data.path: expected text without NUL or lone surrogate characters")
