"""Small I/O helpers: atomic writes and checksums.

Nothing is half-written: every file is written to a temporary sibling and renamed into
place, so a crash or an error leaves either the old file or the new one, never a torso.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from nba.errors import DataFileError

if TYPE_CHECKING:
    import pandas as pd


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file owner-only; give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_parquet(frame: pd.DataFrame, target: Path) -> Path:
    """Write `frame` to `target` atomically (no index)."""
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(target)


def write_text(text: str, target: Path) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def read_table(path: Path, what: str, error: type[Exception] | None = None) -> pd.DataFrame:
    """A user's table file, Parquet or CSV, as a DataFrame. `what` names it in the errors
    ("customers file", "entity file"), raised as `error` (default `DataFileError`)."""
    import pandas as pd

    error = error or DataFileError
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist (expected a Parquet or CSV file)")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise error(f"{what} {path}: unknown format '{suffix}' (expected .parquet or .csv)")
    try:
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # a corrupt file: one line naming it
        raise error(f"{what} {path}: cannot be read ({type(exc).__name__}: {exc})") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
