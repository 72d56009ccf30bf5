"""Token sources, a memory-mapped token cache, and deterministic batches.

Sources:
- `synthetic` (the embedded default): a seeded Markov chain with copy markers. A marker
  token m_L means "repeat the previous L tokens", so after it the next L tokens are fully
  determined by context that only attention can reach (L is longer than any n-gram an
  MLP could memorise). The exact conditional entropy of every target position is computed
  while generating, so the best achievable loss (`entropy_floor`) is known.
- `text`: local .txt / .jsonl / .parquet, byte-level or a BPE trained locally (tokenizers).
- `huggingface`: any hub dataset streamed through `datasets` and a named tokenizer.

Each dataset is tokenized once into results/data/<data_id>/{train,val}.bin (+ meta.json),
read back with np.memmap. The batch at step t depends only on (seed, t), which is what
makes a resumed run identical to an uninterrupted one.
"""
from __future__ import annotations

import bisect
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, RunConfig
from .io import file_lock, write_json_atomic

COPY_LENGTHS = (4, 8, 12, 16)  # one marker token per length
BOS = 0


# ---- synthetic ----------------------------------------------------------------------------

def _markov_rows(vocab: int, n_content: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Transition rows over the content tokens (ids 1..n_content) for every token id."""
    rows = rng.dirichlet(np.full(n_content, alpha), size=vocab)
    return rows


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def generate_synthetic(n_tokens: int, seq_len: int, vocab: int, copy_prob: float, alpha: float,
                       seed: int, stream: int) -> tuple[np.ndarray, float]:
    """Sequences of seq_len+1 tokens (BOS first). Returns tokens and the mean conditional
    entropy (nats) of the targets, i.e. the loss of the Bayes-optimal predictor that knows
    the generating process and the position."""
    n_markers = len(COPY_LENGTHS)
    n_content = vocab - 1 - n_markers
    markers = {vocab - n_markers + i: L for i, L in enumerate(COPY_LENGTHS)}
    # The chain is fixed by `seed` (shared by train and val); `stream` picks the samples.
    rows = _markov_rows(vocab, n_content, alpha, np.random.default_rng(seed))
    cdfs = [np.cumsum(r).tolist() for r in rows]
    row_entropy = [_entropy(r) for r in rows]
    rng = np.random.default_rng([seed, stream])
    n_seq = max(n_tokens // (seq_len + 1), 1)
    out = np.empty((n_seq, seq_len + 1), dtype=np.int64)
    u = rng.random((n_seq, seq_len + 1, 2)).tolist()
    total_h = 0.0
    q = copy_prob
    for s in range(n_seq):
        seq = [BOS]
        last_marker = -10**9  # position of the last marker
        copy_left, copy_len = 0, 0
        us = u[s]
        for i in range(1, seq_len + 1):
            if copy_left > 0:  # deterministic: repeat the token copy_len+1 positions back
                seq.append(seq[i - copy_len - 1])
                copy_left -= 1
                continue
            prev = seq[-1]
            # A marker may start only if L content tokens precede it and no marker is among them.
            allowed = [m for m, L in markers.items() if i - 1 >= L and i - last_marker > L]
            h_markov = row_entropy[prev]
            if allowed and q > 0:
                total_h += -q * math.log(q) - (1 - q) * math.log(1 - q) + q * math.log(len(allowed)) + (1 - q) * h_markov
                if us[i][0] < q:
                    m = allowed[min(int(us[i][1] * len(allowed)), len(allowed) - 1)]
                    seq.append(m)
                    last_marker, copy_len, copy_left = i, markers[m], markers[m]
                    continue
            else:
                total_h += h_markov
            tok = 1 + min(bisect.bisect_right(cdfs[prev], us[i][1]), n_content - 1)
            seq.append(tok)
        out[s] = seq
    return out.reshape(-1), total_h / (n_seq * seq_len)


# ---- text ------------------------------------------------------------------------------------

def _read_documents(path: Path, text_field: str) -> list[str]:
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".parquet")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"data.path: no .txt, .jsonl or .parquet files under {path}")
    docs: list[str] = []
    for f in files:
        if not f.is_file():
            raise ConfigError(f"data.path: file not found: {f}")
        if f.suffix == ".parquet":
            import polars as pl
            df = pl.read_parquet(f)
            if text_field not in df.columns:
                raise ConfigError(f"data.text_field: column {text_field!r} not in {f} (columns: {', '.join(df.columns)})")
            docs.extend(str(t) for t in df[text_field].drop_nulls().to_list())
            continue
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"data.path: {f} is not valid UTF-8 (byte {e.start}); convert it or use a UTF-8 file") from None
        if f.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    docs.append(str(json.loads(line)[text_field]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ConfigError(f"data.path: {f} line {n}: expected a JSON object with a {text_field!r} field") from None
        else:
            docs.extend(d for d in text.split("\n\n\n") if d.strip())  # blank-line-separated documents
    if not any(d.strip() for d in docs):
        raise ConfigError(f"data.path: {path} contains no text")
    return docs


class ByteTokenizer:
    """UTF-8 bytes, with id 256 as the end-of-document token."""
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


class HFTokenizer:
    """A `tokenizers` tokenizer (trained locally, loaded from a file, or from the hub)."""

    def __init__(self, tok, eos_token: str | None = None):
        self.tok = tok
        self.eos_id = tok.token_to_id(eos_token) if eos_token else None
        if self.eos_id is None:
            for cand in ("</s>", "<|endoftext|>", "[SEP]", "<eos>"):
                if tok.token_to_id(cand) is not None:
                    self.eos_id = tok.token_to_id(cand)
                    break
        self.vocab_size = tok.get_vocab_size()
        if self.eos_id is None:
            self.eos_id = self.vocab_size
            self.vocab_size += 1

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids


def train_bpe(docs: list[str], vocab_size: int) -> HFTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer)
    return HFTokenizer(tok, "<|endoftext|>")


def load_hf_tokenizer(name: str) -> HFTokenizer:
    from tokenizers import Tokenizer
    path = Path(name)
    tok = Tokenizer.from_file(str(path)) if path.is_file() else Tokenizer.from_pretrained(name)
    return HFTokenizer(tok)


def _pack(docs, tokenizer, max_tokens: int | None = None) -> np.ndarray:
    """Concatenate documents with an EOS between them (the paper's packing)."""
    chunks, total = [], 0
    for doc in docs:
        ids = tokenizer.encode(doc)
        ids.append(tokenizer.eos_id)
        chunks.append(np.asarray(ids, dtype=np.int64))
        total += len(ids)
        if max_tokens and total >= max_tokens:
            break
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)


def _hf_documents(cfg: RunConfig):
    import datasets
    d = cfg.data
    local = Path(d.hf_dataset)
    if local.exists():  # a local file or folder: the same code path, no network
        files = [str(p) for p in sorted(local.rglob("*.jsonl"))] if local.is_dir() else [str(local)]
        kind = "parquet" if files[0].endswith(".parquet") else "json"
        ds = datasets.load_dataset(kind, data_files=files, split="train", streaming=True)
    else:
        ds = datasets.load_dataset(d.hf_dataset, d.hf_config or None, split=d.hf_split, streaming=True)
    for row in ds:
        yield row[d.text_field]


# ---- the cache ---------------------------------------------------------------------------

@dataclass
class TokenData:
    train: np.ndarray
    val: np.ndarray
    meta: dict

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def stride(self) -> int:
        return int(self.meta.get("window_stride", 1))


def cache_dir(cfg: RunConfig) -> Path:
    return Path(cfg.data.cache_dir) / cfg.data_id()


def _build_tokens(cfg: RunConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    d, seq_len = cfg.data, cfg.train.seq_len
    if d.source == "synthetic":
        train, h_train = generate_synthetic(d.n_train_tokens, seq_len, d.vocab_size, d.copy_prob, d.markov_alpha, d.data_seed, 0)
        val, h_val = generate_synthetic(d.n_val_tokens, seq_len, d.vocab_size, d.copy_prob, d.markov_alpha, d.data_seed, 1)
        meta = {"vocab_size": d.vocab_size, "window_stride": seq_len + 1, "entropy_floor": h_val,
                "entropy_floor_train": h_train, "copy_lengths": list(COPY_LENGTHS)}
        return train, val, meta
    if d.source == "text":
        path = Path(d.path)
        if not path.exists():
            raise ConfigError(f"data.path: {path} does not exist")
        docs = _read_documents(path, d.text_field)
        tokenizer = ByteTokenizer() if d.tokenizer == "bytes" else train_bpe(docs, d.bpe_vocab_size)
        tokens = _pack(docs, tokenizer)
        name = f"text:{path}"
    else:
        tokenizer = load_hf_tokenizer(d.hf_tokenizer)
        tokens = _pack(_hf_documents(cfg), tokenizer, d.hf_max_tokens)
        name = f"hf:{d.hf_dataset}"
    n_val = max(int(len(tokens) * d.val_fraction), seq_len + 1)
    if len(tokens) - n_val < 2 * (seq_len + 1):
        raise ConfigError(f"data.path: {name} has {len(tokens)} tokens; need at least {3 * (seq_len + 1)} for train.seq_len={seq_len}")
    meta = {"vocab_size": tokenizer.vocab_size, "window_stride": 1, "entropy_floor": None, "source": name}
    return tokens[:-n_val], tokens[-n_val:], meta


def prepare(cfg: RunConfig) -> Path:
    """Tokenize once into the cache (atomic: built in a temp dir, then renamed)."""
    out = cache_dir(cfg)
    if (out / "meta.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f".{out.name}.lock"):
        if (out / "meta.json").is_file():  # another process finished it while we waited
            return out
        train, val, meta = _build_tokens(cfg)
        dtype = np.uint16 if meta["vocab_size"] <= 65535 else np.uint32
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        try:
            train.astype(dtype).tofile(tmp / "train.bin")
            val.astype(dtype).tofile(tmp / "val.bin")
            meta.update(dtype=np.dtype(dtype).name, n_train=int(len(train)), n_val=int(len(val)), data_id=cfg.data_id())
            write_json_atomic(tmp / "meta.json", meta)
            if out.exists():
                shutil.rmtree(out)  # an incomplete leftover without meta.json
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def load(cfg: RunConfig) -> TokenData:
    path = prepare(cfg)
    meta = json.loads((path / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    train = np.memmap(path / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(path / "val.bin", dtype=dtype, mode="r")
    return TokenData(train, val, meta)


# ---- batches -----------------------------------------------------------------------------

def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    block = torch.from_numpy(tokens[idx].astype(np.int64))
    return block[:, :-1], block[:, 1:]


def train_batch(data: TokenData, step: int, batch_size: int, seq_len: int, seed: int):
    """The batch for `step`, a pure function of (seed, step)."""
    n_windows = (len(data.train) - seq_len - 1) // data.stride + 1
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, n_windows, size=batch_size) * data.stride
    return _windows(data.train, starts, seq_len)


def val_batches(data: TokenData, n_batches: int, batch_size: int, seq_len: int):
    """Fixed validation batches: evenly spaced windows, the same for every run."""
    n_windows = (len(data.val) - seq_len - 1) // data.stride + 1
    n = min(n_batches * batch_size, n_windows)
    starts = (np.linspace(0, n_windows - 1, n).astype(np.int64)) * data.stride
    return [_windows(data.val, starts[i:i + batch_size], seq_len) for i in range(0, n, batch_size)]
