"""Which files a local corpus is read from, and the content fingerprint that identifies it.

A data id (and so every run id) names the corpus by what it holds, not where it lies: editing
a file gives new ids, `touch` alone does not. Hashing is paid once per version of a file: each
file's BLAKE2b digest is cached in `<data.cache_dir>/fingerprints/` under its absolute path
and its stat (size, mtime, ctime, inode); while the stat is unchanged the file is not read.

Standard library only: `stability.config` imports this before torch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Iterable, Iterator

# The text source's formats (.txt: documents separated by two blank lines).
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
# Local files of the huggingface source (a downloaded hub dataset: shards of one of these).
HF_SUFFIXES = (".parquet", ".jsonl", ".json", ".arrow")

CHUNK = 1 << 20  # bytes per read while hashing
# A file changed this recently is not cached: a same-size edit within the file system's
# timestamp resolution would otherwise look unchanged (git's "racily clean" problem).
RACY_S = 2.0

_memo: dict[tuple, tuple[tuple, str]] = {}  # (abs path, suffixes) -> (stat signature, digest)
_frozen = 0  # > 0: inside frozen(): each corpus is fingerprinted once, then read from _pass
_pass: dict[tuple, str] = {}


def is_local(name: str) -> bool:
    """True when a huggingface-source name is a local file or folder (else a hub name)."""
    try:
        return bool(name) and Path(name).exists()
    except (OSError, ValueError):  # a name the OS refuses (NUL byte, too long)
        return False


def local_tokenizer(name: str) -> Path | None:
    """The local tokenizer file `data.hf_tokenizer` names: the file itself, or `tokenizer.json`
    in a folder (a downloaded hub model); None for a hub name (or a path that does not exist)."""
    if not is_local(name):
        return None
    path = Path(name)
    return path / "tokenizer.json" if path.is_dir() else path


def corpus_files(path: Path, suffixes: Iterable[str] | None) -> list[Path]:
    """The files a corpus at `path` is read from, in reading order: `[path]` for a file; for a
    folder every file below it (recursively) whose suffix is in `suffixes`, sorted."""
    if not path.is_dir():
        return [path]
    suffixes = tuple(suffixes or ())
    return sorted(p for p in path.rglob("*") if p.suffix in suffixes and p.is_file())


def file_digest(path: Path) -> str:
    """BLAKE2b-128 of a file's bytes, read in 1 MiB chunks. Raises OSError."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _cache_file(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "fingerprints" / f"{hashlib.blake2b(key.encode(), digest_size=10).hexdigest()}.json"


def _read_cache(path: Path, key: str) -> dict:
    try:
        data = json.loads(path.read_text())
        return data["files"] if data.get("path") == key else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent or damaged: rehash
        return {}


def _write_cache(path: Path, key: str, files: dict) -> None:
    from .io import write_json
    try:
        write_json(path, {"path": key, "files": files})
    except OSError:  # a read-only cache dir: correct, only slower next time
        pass


def fingerprint(path: str | Path, suffixes: Iterable[str] | None, cache_dir: str | Path) -> str:
    """Hex digest of the corpus at `path`: the relative name and bytes of every file it is
    read from (`corpus_files`). "missing" when nothing is there and "unreadable" when it cannot
    be listed or read; the reader then reports the problem (the id only has to be stable)."""
    p = Path(path)
    suffixes = tuple(sorted(suffixes or ()))
    try:
        p = p.absolute()
        memo_key = (str(p), suffixes)
        if _frozen and memo_key in _pass:
            return _pass[memo_key]
        if not p.exists():
            return "missing"
        files = corpus_files(p, suffixes)
        stats = {(f.relative_to(p).as_posix() if f != p else ""): f.stat() for f in files}
        if not all(stat.S_ISREG(st.st_mode) for st in stats.values()):
            return "unreadable"  # a FIFO or device would block or never end; the reader refuses it
        signature = tuple((rel, *_signature(st)) for rel, st in stats.items())
        if memo_key in _memo and _memo[memo_key][0] == signature:
            if _frozen:
                _pass[memo_key] = _memo[memo_key][1]
            return _memo[memo_key][1]
        cache_path = _cache_file(cache_dir, str(p))
        cached = _read_cache(cache_path, str(p))
        digests, entries, now = {}, {}, time.time()
        for rel, st in stats.items():
            hit = cached.get(rel)
            fresh = isinstance(hit, list) and len(hit) == 5 and hit[:4] == _signature(st)
            digests[rel] = hit[4] if fresh else file_digest(p / rel if rel else p)
            if now - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > RACY_S:
                entries[rel] = [*_signature(st), digests[rel]]
        if entries != cached:
            _write_cache(cache_path, str(p), entries)
    except (OSError, ValueError):  # permission denied, a file vanishing mid-walk, a NUL byte
        return "unreadable"
    h = hashlib.blake2b(digest_size=16)
    for rel in sorted(digests):
        h.update(f"{rel}\0{digests[rel]}\n".encode())
    result = h.hexdigest()
    if len(entries) == len(digests):  # racy files are hashed again next time, as above
        _memo[memo_key] = (signature, result)
    if _frozen:
        _pass[memo_key] = result
    return result


@contextlib.contextmanager
def frozen() -> Iterator[None]:
    """Within it a corpus is fingerprinted once (memoised by path, no stat): for planners
    that compute many ids from the same files in one pass."""
    global _frozen
    _frozen += 1
    try:
        yield
    finally:
        _frozen -= 1
        if not _frozen:
            _pass.clear()


def freeze() -> None:
    """Memoise for the rest of the process (Snakemake plans every job in one process; a
    job that finds the corpus changed since is refused by --expect-run-id)."""
    global _frozen
    _frozen += 1
