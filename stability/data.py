"""Token sources, a memory-mapped token cache, and deterministic batches.

Sources:
- `synthetic` (the embedded default): a seeded Markov chain with copy markers. A marker
  token m_L means "repeat the previous L tokens", so after it the next L tokens are fully
  determined by context that only attention can reach (L is longer than any n-gram an
  MLP could memorise). The exact conditional entropy of every target position is computed
  while generating, so the best achievable loss (`entropy_floor`) is known.
- `text`: local .txt / .jsonl / .parquet, byte-level or a BPE trained locally (tokenizers).
- `huggingface`: any hub dataset streamed through `datasets`, or a local file or hub-style
  folder (.parquet/.jsonl/.json/.arrow shards), and a hub or local tokenizer.

Each dataset is tokenized once into results/data/<data_id>/{train,val}.bin (+ meta.json),
read back with np.memmap; a local corpus's data id includes its content fingerprint
(stability/corpus.py), so an edited corpus is tokenized again. The batch at step t depends only on (seed, t), which is what
makes a resumed run identical to an uninterrupted one.
"""
from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import corpus
from .config import ConfigError, RunConfig
from .io import file_lock, temp_dir, write_json

COPY_LENGTHS = (4, 8, 12, 16)  # one marker token per length
BOS = 0


# ---- synthetic ----------------------------------------------------------------------------

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
    # The chain is fixed by `seed` (shared by train and val); `stream` picks the samples. Row i:
    # the transition probabilities over the content tokens (ids 1..n_content) after token id i.
    rows = np.random.default_rng(seed).dirichlet(np.full(n_content, alpha), size=vocab)
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


# ---- text ----------------------------------------------------------------------------------
# One policy for every reader (.txt, .jsonl, .json, .parquet, .arrow, hub streams): a record
# whose text field is missing or null is skipped and counted (meta.json `skipped_records`, one
# warning line); a value that is not a string is refused, naming the file, line or column and
# the type found; a field that no record has is refused, listing the fields there are.

class Skips:
    """Records skipped for a missing or null text field, counted per file (or dataset)."""

    def __init__(self) -> None:
        self.by_source: dict[str, int] = {}
        self.records = 0  # records read, skipped ones included

    def add(self, source, n: int = 1) -> None:
        if n:
            self.by_source[str(source)] = self.by_source.get(str(source), 0) + n

    @property
    def total(self) -> int:
        return sum(self.by_source.values())


def skipped_note(meta: dict, text_field: str) -> str | None:
    """The log line for a token cache's skipped records (None when there were none)."""
    by_source = meta.get("skipped_by_file") or {}
    if not by_source:
        return None
    where = ", ".join(f"{src}: {n}" for src, n in list(by_source.items())[:3])
    more = f" and {len(by_source) - 3} more" if len(by_source) > 3 else ""
    return (f"warning: data: skipped {meta['skipped_records']} of {meta['records']} records whose {text_field!r} "
            f"is missing or null ({where}{more})")


_JSON_TYPES = {dict: "an object", list: "an array", bool: "a boolean", int: "a number", float: "a number"}


def _json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _record_texts(records, text_field: str, source, field_name: str, skips: Skips, first_decides: bool = False):
    """The text of each (location, record) pair under the policy above. A field that no record
    of `source` has is an error at its end (at its first record when `first_decides`: a stream)."""
    seen, fields, n = False, {}, 0
    for where, rec in records:
        if not isinstance(rec, dict):
            raise ConfigError(f"{field_name}: {source} {where}: expected a JSON object, got {_json_type(rec)}")
        n += 1
        skips.records += 1
        if text_field not in rec:
            if not seen:  # the fields to list if no record has text_field
                fields.update(dict.fromkeys(map(str, rec)))
                if first_decides:
                    break
            skips.add(source)
            continue
        seen = True
        value = rec[text_field]
        if value is None:
            skips.add(source)
        elif isinstance(value, str):
            yield value
        else:
            raise ConfigError(f"data.text_field: {text_field!r} in {source} {where} is {_json_type(value)} "
                              f"({str(value)[:40]}), expected a string")
    if n and not seen:
        raise ConfigError(f"data.text_field: {text_field!r} not in {source} (fields: {', '.join(fields) or 'none'})")


def _json_records(f: Path, text: str, field_name: str):
    """(location, record) pairs of a .jsonl file, or of a .json file holding an array of
    records or JSON lines (both of which `datasets` reads)."""
    if f.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSON lines, read below
        if isinstance(data, list):
            yield from ((f"record {i}", rec) for i, rec in enumerate(data, 1))
            return
        if data is not None:
            raise ConfigError(f"{field_name}: {f}: expected a JSON array of records or JSON lines, got {_json_type(data)}")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{field_name}: {f} line {n}: expected a JSON object, got text that is not JSON") from None
        yield f"line {n}", rec


def _column_texts(f: Path, text_field: str, field_name: str, skips: Skips) -> list[str]:
    """The text column of a .parquet or .arrow (Arrow IPC, as `datasets` writes) file."""
    import polars as pl
    readers = (pl.read_parquet,) if f.suffix == ".parquet" else (pl.read_ipc_stream, pl.read_ipc)
    for read in readers:
        try:
            df = read(f)
            break
        except (pl.exceptions.PolarsError, OSError) as e:
            error = e
    else:
        msg = " ".join(str(error).split())[:120]
        raise ConfigError(f"{field_name}: {f} is not a readable {f.suffix[1:]} file ({msg})")
    if text_field not in df.columns:
        raise ConfigError(f"data.text_field: {text_field!r} not in {f} (fields: {', '.join(df.columns) or 'none'})")
    col = df[text_field]
    if not (col.dtype in (pl.String, pl.Null, pl.Categorical) or isinstance(col.dtype, pl.Enum)):
        raise ConfigError(f"data.text_field: column {text_field!r} of {f} is {col.dtype}, expected strings")
    skips.records += col.len()
    skips.add(f, col.null_count())
    return col.drop_nulls().cast(pl.String).to_list()


def _file_texts(f: Path, text_field: str, field_name: str, skips: Skips):
    """The documents of one local file (any suffix of corpus.TEXT_SUFFIXES or HF_SUFFIXES)."""
    if f.suffix in (".parquet", ".arrow"):
        yield from _column_texts(f, text_field, field_name, skips)
        return
    try:
        text = f.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{field_name}: {f} is not valid UTF-8 (byte {e.start}); convert it or use a UTF-8 file") from None
    except OSError as e:  # unreadable: permissions, a FIFO that vanished
        raise ConfigError(f"{field_name}: cannot read {f} ({e.strerror})") from None
    if f.suffix in (".jsonl", ".json"):
        yield from _record_texts(_json_records(f, text, field_name), text_field, f, field_name, skips)
    else:
        yield from (d for d in text.split("\n\n\n") if d.strip())  # blank-line-separated documents


def _read_documents(path: Path, text_field: str, skips: Skips) -> list[str]:
    """Every document of the text source's file or folder."""
    files = corpus.corpus_files(path, corpus.TEXT_SUFFIXES)
    if not files:
        raise ConfigError(f"data.path: no .txt, .jsonl or .parquet files under {path}")
    docs: list[str] = []
    for f in files:
        if not f.is_file():  # a FIFO or device: reading it could block forever
            raise ConfigError(f"data.path: {f} is not a regular file")
        docs.extend(_file_texts(f, text_field, "data.path", skips))
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


def _import_tokenizers(field_name: str, extra: str):
    try:
        import tokenizers
    except ImportError:
        raise ConfigError(f"{field_name}: needs the tokenizers package (pip install 'stability[{extra}]')") from None
    return tokenizers


def train_bpe(docs: list[str], vocab_size: int) -> HFTokenizer:
    tk = _import_tokenizers("data.tokenizer: bpe", "text")
    pre_tokenizers = tk.pre_tokenizers
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer)
    return HFTokenizer(tok, "<|endoftext|>")


def _one_line(e: BaseException, limit: int = 160) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}"


def load_hf_tokenizer(name: str) -> HFTokenizer:
    """A local tokenizer.json (or a folder holding one) or a hub tokenizer. Raises ConfigError."""
    Tokenizer = _import_tokenizers("data.source: huggingface", "hf").Tokenizer
    local = corpus.local_tokenizer(name)
    if local is not None:
        if not local.is_file():
            raise ConfigError(f"data.hf_tokenizer: {name} is a folder without a tokenizer.json")
        try:
            tok = Tokenizer.from_file(str(local))
        except Exception as e:  # noqa: BLE001 - the Rust library raises plain Exception
            raise ConfigError(f"data.hf_tokenizer: {local} is not a tokenizers JSON file ({_one_line(e)})") from None
    else:
        try:
            tok = Tokenizer.from_pretrained(name)
        except Exception as e:  # noqa: BLE001 - no network, unknown name, ...
            raise ConfigError(f"data.hf_tokenizer: {name!r} is no local file or folder, and the hub did not "
                              f"provide it ({_one_line(e)})") from None
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


def _hf_local_files(d) -> list[Path]:
    """The files of split `data.hf_split` in a local file or hub-style folder, chosen by the
    `datasets` library's own layout rules (`train-00000-of-00002.parquet`, `data/test/...`;
    a folder without split names is all `train`)."""
    path = Path(d.hf_dataset)
    if not path.is_dir() and not path.is_file():  # a FIFO or device: reading it could block forever
        raise ConfigError(f"data.hf_dataset: {path} is not a regular file or a folder")
    if path.is_file():
        files = [path]
    elif (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        files = _saved_dataset_files(path, d.hf_split)
    else:
        from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns
        try:
            splits = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
        except (EmptyDatasetError, FileNotFoundError):
            splits = {}
        splits = {str(k): v for k, v in splits.items()}
        if not splits:
            raise ConfigError(f"data.hf_dataset: no data files under {path}")
        if d.hf_split not in splits:
            raise ConfigError(f"data.hf_split: {d.hf_split!r} not in {path} (splits: {', '.join(splits)})")
        files = [Path(f) for f in splits[d.hf_split]]
    readable = [f for f in files if f.suffix in corpus.HF_SUFFIXES]
    if not readable:
        found = ", ".join(sorted({f.suffix or f.name for f in files}))
        raise ConfigError(f"data.hf_dataset: no {', '.join(corpus.HF_SUFFIXES)} files for split {d.hf_split!r} "
                          f"in {path} (found: {found})")
    return readable


def _saved_dataset_files(path: Path, split: str) -> list[Path]:
    """The .arrow files of a folder written by `datasets`' save_to_disk (a Dataset, or a
    DatasetDict with one folder per split), as listed in its own state.json."""
    try:
        if (path / "dataset_dict.json").is_file():
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
            if split not in splits:
                raise ConfigError(f"data.hf_split: {split!r} not in {path} (splits: {', '.join(map(str, splits))})")
            path = path / split
        state = json.loads((path / "state.json").read_text())
        return [path / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"data.hf_dataset: {path} looks like a saved dataset but its state.json is unreadable "
                          f"({_one_line(e)})") from None


def _hf_documents(cfg: RunConfig, skips: Skips):
    d = cfg.data
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.source: huggingface needs the datasets package (pip install 'stability[hf]')") from None
    if corpus.is_local(d.hf_dataset):  # a local file or hub-style folder: our readers, no network
        for f in _hf_local_files(d):
            yield from _file_texts(f, d.text_field, "data.hf_dataset", skips)
        return
    try:
        ds = datasets.load_dataset(d.hf_dataset, d.hf_config or None, split=d.hf_split, streaming=True)
        rows = iter(ds)
        records = ((f"row {i}", row) for i, row in enumerate(rows, 1))
        yield from _record_texts(records, d.text_field, d.hf_dataset, "data.hf_dataset", skips, first_decides=True)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - no network, unknown dataset/config/split, a broken shard
        raise ConfigError(f"data.hf_dataset: cannot stream {d.hf_dataset!r} (config {d.hf_config!r}, split "
                          f"{d.hf_split!r}): {_one_line(e)}") from None


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
    skips = Skips()
    if d.source == "text":
        path = Path(d.path)
        if not path.exists():
            raise ConfigError(f"data.path: {path} does not exist")
        docs = _read_documents(path, d.text_field, skips)
        tokenizer = ByteTokenizer() if d.tokenizer == "bytes" else train_bpe(docs, d.bpe_vocab_size)
        tokens = _pack(docs, tokenizer)
        name, field_name = f"text:{path}", "data.path"
    else:
        tokenizer = load_hf_tokenizer(d.hf_tokenizer)
        tokens = _pack(_hf_documents(cfg, skips), tokenizer, d.hf_max_tokens)
        name, field_name = f"hf:{d.hf_dataset}", "data.hf_dataset"
    n_val = max(int(len(tokens) * d.val_fraction), seq_len + 1)
    if len(tokens) - n_val < 2 * (seq_len + 1):
        raise ConfigError(f"{field_name}: {name} has {len(tokens)} tokens; need at least {3 * (seq_len + 1)} for train.seq_len={seq_len}")
    meta = {"vocab_size": tokenizer.vocab_size, "window_stride": 1, "entropy_floor": None, "source": name,
            "records": skips.records, "skipped_records": skips.total, "skipped_by_file": skips.by_source}
    return tokens[:-n_val], tokens[-n_val:], meta


def prepare(cfg: RunConfig) -> Path:
    """Tokenize once into the cache (atomic: built in a temp dir, then renamed). Raises
    ConfigError for bad data, including a corpus that changed while it was read, and for a
    cache folder that cannot be written."""
    out = cache_dir(cfg)
    if (out / "meta.json").is_file():
        return out
    with contextlib.ExitStack() as stack:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(file_lock(out.parent / f".{out.name}.lock"))
        except OSError as e:  # a file in the way, no permission, a read-only file system
            raise ConfigError(f"data.cache_dir: cannot write the token cache in {out.parent} ({e.strerror})") from None
        if (out / "meta.json").is_file():  # another process finished it while we waited
            return out
        train, val, meta = _build_tokens(cfg)
        if cfg.data_id() != out.name:  # the cache would be named after content it does not hold
            field_name = "data.path" if cfg.data.source == "text" else "data.hf_dataset"
            raise ConfigError(f"{field_name}: the data changed while it was being read; run the command again")
        dtype = np.uint16 if meta["vocab_size"] <= 65535 else np.uint32
        tmp = None
        try:
            tmp = temp_dir(out.parent, f".{out.name}.")
            train.astype(dtype).tofile(tmp / "train.bin")
            val.astype(dtype).tofile(tmp / "val.bin")
            meta.update(dtype=np.dtype(dtype).name, n_train=int(len(train)), n_val=int(len(val)), data_id=out.name)
            write_json(tmp / "meta.json", meta)
            if out.exists():
                shutil.rmtree(out)  # an incomplete leftover without meta.json
            os.replace(tmp, out)
        except BaseException as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):  # disk full, quota
                raise ConfigError(f"data.cache_dir: cannot write the token cache in {out.parent} ({e.strerror})") from None
            raise
    note = skipped_note(meta, cfg.data.text_field)
    if note:  # printed once, by the process that built the cache (the workflow's data log)
        print(note, file=sys.stderr)
    return out


def load(cfg: RunConfig) -> TokenData:
    """The token cache, built first if needed. Raises ConfigError for a damaged cache."""
    path = prepare(cfg)
    try:
        meta = json.loads((path / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        train = np.memmap(path / "train.bin", dtype=dtype, mode="r")
        val = np.memmap(path / "val.bin", dtype=dtype, mode="r")
        if (len(train), len(val)) != (meta["n_train"], meta["n_val"]):
            raise ValueError(f"{len(train)} + {len(val)} tokens where meta.json says {meta['n_train']} + {meta['n_val']}")
    except (OSError, ValueError, KeyError, TypeError) as e:  # a file deleted, truncated or edited by hand
        raise ConfigError(f"data.cache_dir: the token cache {path} is damaged ({_one_line(e)}); delete that folder "
                          "and run again") from None
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
