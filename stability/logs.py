"""Send a script rule's stdout and stderr to its Snakemake log file."""
from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def to_log(path: str | Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            yield
        except BaseException:
            import traceback
            traceback.print_exc(file=fh)
            raise
