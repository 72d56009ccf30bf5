import json

import numpy as np
import pytest

from helpers import tiny
from stability import data as D
from stability.config import ConfigError


def test_synthetic_is_deterministic_and_its_copies_are_exact():
    a, ha = D.generate_synthetic(20_000, 64, 64, 0.1, 0.05, seed=3, stream=0)
    b, hb = D.generate_synthetic(20_000, 64, 64, 0.1, 0.05, seed=3, stream=0)
    assert np.array_equal(a, b) and ha == hb
    seqs = a.reshape(-1, 65)
    markers = {64 - 4 + i: L for i, L in enumerate(D.COPY_LENGTHS)}
    n_copies = 0
    for seq in seqs:
        for i, tok in enumerate(seq):
            if tok in markers and i + markers[tok] < len(seq):
                L = markers[tok]
                assert list(seq[i + 1:i + 1 + L]) == list(seq[i - L:i])  # "repeat the previous L tokens"
                n_copies += 1
    assert n_copies > 50


def test_synthetic_entropy_floor_is_below_unigram_entropy():
    tokens, floor = D.generate_synthetic(50_000, 64, 64, 0.1, 0.05, seed=0, stream=0)
    counts = np.bincount(tokens, minlength=64)[1:] + 1e-12
    p = counts / counts.sum()
    unigram = float(-(p * np.log(p)).sum())
    assert 0 < floor < unigram - 0.5


def test_cache_is_built_once_and_memory_mapped(tmp_path):
    cfg = tiny(tmp_path)
    path = D.prepare(cfg)
    mtime = (path / "meta.json").stat().st_mtime_ns
    assert D.prepare(cfg) == path and (path / "meta.json").stat().st_mtime_ns == mtime
    data = D.load(cfg)
    assert isinstance(data.train, np.memmap) and data.vocab_size == 256
    assert json.loads((path / "meta.json").read_text())["entropy_floor"] > 0


def test_batches_depend_only_on_seed_and_step(tmp_path):
    data = D.load(tiny(tmp_path))
    x1, y1 = D.train_batch(data, 7, 4, 32, seed=1)
    x2, y2 = D.train_batch(data, 7, 4, 32, seed=1)
    x3, _ = D.train_batch(data, 8, 4, 32, seed=1)
    assert (x1 == x2).all() and not (x1 == x3).all()
    assert (x1[:, 1:] == y1[:, :-1]).all()
    assert (x1[:, 0] == D.BOS).all()  # synthetic windows are aligned to sequences
    v1 = D.val_batches(data, 2, 4, 32)
    assert all((a[0] == b[0]).all() for a, b in zip(v1, D.val_batches(data, 2, 4, 32)))


def _text_cfg(tmp_path, path, **over):
    return tiny(tmp_path, **{"data.source": "text", "data.path": str(path), **over})


def test_text_source_bytes_and_formats(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hello world. " * 400)
    (tmp_path / "docs" / "b.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i} " * 50}) for i in range(20)))
    data = D.load(_text_cfg(tmp_path, tmp_path / "docs"))
    assert data.vocab_size == 257 and data.stride == 1
    assert (np.asarray(data.train) == D.ByteTokenizer.eos_id).sum() >= 2  # documents packed with EOS


def test_text_source_bpe(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text(("The quick brown fox jumps over the lazy dog. " * 200 + "\n\n\n") * 3)
    data = D.load(_text_cfg(tmp_path, f, **{"data.tokenizer": "bpe", "data.bpe_vocab_size": 300}))
    assert data.vocab_size <= 301 and len(data.train) < len(f.read_bytes())  # BPE compresses


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "contains no text"),
    (b"\xff\xfe\x00bad", "not valid UTF-8"),
])
def test_text_source_bad_files_are_named(tmp_path, content, message):
    f = tmp_path / "in.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as e:
        D.load(_text_cfg(tmp_path, f))
    assert str(e.value).startswith("data.path")


def test_huggingface_source_on_local_files(tmp_path):
    pytest.importorskip("datasets")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    corpus = tmp_path / "c4-sample.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"sample document number {i} about transformers. " * 20}) for i in range(50)))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["sample document number about transformers"] * 10,
                            trainers.BpeTrainer(vocab_size=100, special_tokens=["<unk>", "</s>"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg = tiny(tmp_path, **{"data.source": "huggingface", "data.hf_dataset": str(corpus),
                            "data.hf_tokenizer": str(tmp_path / "tokenizer.json")})
    data = D.load(cfg)
    assert data.vocab_size == tok.get_vocab_size()
    assert (np.asarray(data.train) == tok.token_to_id("</s>")).sum() > 10  # EOS between documents
