"""The package's one file-writing module: atomic writes, one JSON policy, flock locks.

Every output (run files, checkpoints, token caches, study tables, figures) is written to a
hidden temp file in its final directory, fsynced, then renamed over the destination, so a
killed process never leaves a partial file visible. Files and folders get the mode a plain
open() or mkdir() would give (0o666 / 0o777 less the umask), so a group-readable umask
makes outputs readable by the group.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator


def _fresh(parent: Path, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    """Create a new, unused `parent/prefix<random>suffix` with `create`; the path."""
    for _ in range(100):
        path = parent / f"{prefix}{os.urandom(6).hex()}{suffix}"
        try:
            create(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name {prefix}*{suffix} in {parent}")


def _new_file(path: Path) -> None:
    # 0o666 through O_CREAT lets the umask (or a default ACL) decide, as open() does;
    # tempfile.mkstemp would force 0600.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))


def temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new empty folder `parent/<prefix><random>`, mode 0o777 less the umask (mkdtemp gives 0700)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return _fresh(parent, prefix, "", lambda p: os.mkdir(p, 0o777))


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a hidden temp file `.<name>.<random>.tmp` beside `path`, fsync it,
    then rename it over `path`; returns `path`.

    os.replace is atomic within one file system, hence the temp file in the same folder:
    readers see the old file or the new one, never a part. If `write` raises (or anything
    before the rename does), the temp file is removed, the old file is left intact and the
    exception propagates. The new file's mode is 0o666 less the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh(path.parent, f".{path.name}.", ".tmp", _new_file)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write `text` (UTF-8) to `path`."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def jsonable(x: Any) -> Any:
    """`x` as plain JSON values: NaN and +-inf become null (divergence is recorded in its own
    fields), numpy/torch scalars become Python numbers, tuples lists, Paths and dict keys str."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):  # numpy or 0-d torch scalar
        try:
            x = x.item()
        except (ValueError, TypeError, RuntimeError):
            pass
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON (see `jsonable`). Raises TypeError for a value
    JSON cannot hold (a set, an object), rather than writing its repr."""
    text = json.dumps(jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return write_text(path, text)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_parquet(path: str | Path, df: Any) -> Path:
    """Atomically write a polars DataFrame `df` as Parquet."""
    return atomic_write(path, lambda p: df.write_parquet(p))


def lock_fd(path: str | Path, blocking: bool = True) -> int | None:
    """Open (creating, mode 0o666 less the umask) and exclusively flock `path`; the open fd,
    or None when another process holds it and `blocking` is False. Release with `unlock_fd`.
    The kernel drops a flock when its holder dies, so a crash never leaves a stale lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


def unlock_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def file_lock(path: str | Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (its folder created) for the `with` block; yields
    True, or False at once when `blocking` is False and another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = lock_fd(path, blocking)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        unlock_fd(fd)
