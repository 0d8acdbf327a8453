"""Kevin Hillstrom's MineThatData e-mail experiment (2008) as two project tables.

64,000 customers who bought in the last twelve months were randomised in three equal arms
(`Mens E-Mail`, `Womens E-Mail`, `No E-Mail`) and followed for two weeks. The csv is split
in two so that the outcomes can never leak into features:

* `customers` (HILLSTROM_CUSTOMERS): what was known before the mailing;
* `experiment` (HILLSTROM_EXPERIMENT): the arm, its known assignment probability and the
  outcomes (visit, conversion, spend).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nba.data.checksums import HILLSTROM_CSV, HILLSTROM_ZIP, SHA256, check_digest, locate, verify
from nba.errors import DataFileError, SchemaError
from nba.io import sha256_bytes
from nba.schemas import ENTITY_KEY, EVENT_TS, HILLSTROM_CUSTOMERS, HILLSTROM_EXPERIMENT, validate_frame

if TYPE_CHECKING:
    from nba.settings import Settings

# Stand-in: the file does not say when the e-mails went out. The challenge was published
# in March 2008, so every row is stamped 2008-03-01 UTC; only the order of events matters
# to the platform (features at the mailing, outcomes after it), not the exact day.
MAILING_DATE = pd.Timestamp("2008-03-01", tz="UTC")
OUTCOME_WINDOW = pd.Timedelta(days=14)  # outcomes are measured over the two weeks after the mailing

CONTROL_ARM = "No E-Mail"
ARMS = ("Mens E-Mail", "Womens E-Mail", CONTROL_ARM)
ASSIGNMENT_PROBABILITY = 1 / len(ARMS)  # randomised in three equal arms

# The csv's columns and how each is parsed.
CSV_DTYPES: dict[str, str] = {
    "recency": "int64",
    "history_segment": "string",  # "1) $0 - $100" ... "7) $1,000 +": the prefix keeps the order
    "history": "float64",
    "mens": "int64",
    "womens": "int64",
    "zip_code": "string",
    "newbie": "int64",
    "channel": "string",
    "segment": "string",  # the arm
    "visit": "int64",
    "conversion": "int64",
    "spend": "float64",
}
OUTCOMES = ("visit", "conversion", "spend")

# The published file spells "Suburban" as "Surburban"; the tables use the correct word.
ZIP_CODE_FIXES = {"Surburban": "Suburban"}
CATEGORIES: dict[str, tuple[str, ...]] = {
    "segment": ARMS,
    "zip_code": ("Urban", "Suburban", "Rural"),
    "channel": ("Phone", "Web", "Multichannel"),
}


@dataclass(frozen=True, eq=False)
class HillstromData:
    """The experiment split into pre-mailing features and outcomes, one row per customer each."""

    customers: pd.DataFrame
    experiment: pd.DataFrame

    def __post_init__(self) -> None:
        validate_frame(self.customers, HILLSTROM_CUSTOMERS, source="Hillstrom customers")
        validate_frame(self.experiment, HILLSTROM_EXPERIMENT, source="Hillstrom experiment")
        leaked = sorted(set(OUTCOMES) & set(self.customers.columns))
        if leaked:
            raise SchemaError(
                f"table '{HILLSTROM_CUSTOMERS.name}': outcome column(s) {leaked} must not be features"
            )
        if not self.customers[ENTITY_KEY].equals(self.experiment[ENTITY_KEY]):
            raise SchemaError(
                "Hillstrom customers and experiment must list the same customer_id in the same order"
            )


def load_hillstrom(path: Path | str | None = None, settings: Settings | None = None) -> HillstromData:
    """Read, verify and split the Hillstrom experiment.

    `path` is the zip file or the folder holding `hillstrom.csv.zip`; None means the
    configured data folder (`NBA_DATA_DIR`). Both the zip and the csv inside it must match
    their published sha256, or a `ChecksumError` says which and where.
    """
    zip_path = locate(HILLSTROM_ZIP, path, settings)
    verify(zip_path, SHA256[HILLSTROM_ZIP], what="Hillstrom e-mail experiment archive")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            data = archive.read(HILLSTROM_CSV)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DataFileError(f"{zip_path}: cannot read {HILLSTROM_CSV} from the archive ({exc})") from exc
    check_digest(
        sha256_bytes(data),
        SHA256[HILLSTROM_CSV],
        what="Hillstrom e-mail experiment csv",
        where=f"{HILLSTROM_CSV} inside {zip_path}",
    )
    return hillstrom_tables(parse_hillstrom_csv(data, source=str(zip_path)))


def parse_hillstrom_csv(data: bytes, *, source: str = HILLSTROM_CSV) -> pd.DataFrame:
    """The csv as published, with explicit dtypes; `SchemaError` if a column is missing."""
    header = data.split(b"\n", 1)[0].decode("utf-8").strip().split(",")
    missing = [c for c in CSV_DTYPES if c not in header]
    if missing:
        raise SchemaError(f"{source}: Hillstrom csv lacks column(s) {missing}; expected {list(CSV_DTYPES)}")
    try:
        return pd.read_csv(io.BytesIO(data), usecols=list(CSV_DTYPES), dtype=CSV_DTYPES)
    except ValueError as exc:
        raise SchemaError(f"{source}: Hillstrom csv does not parse with dtypes {CSV_DTYPES}: {exc}") from exc


def hillstrom_tables(raw: pd.DataFrame) -> HillstromData:
    """Split the parsed csv (columns as in `CSV_DTYPES`) into the two project tables.

    Customer ids are the row numbers from 1; every row is stamped at `MAILING_DATE` and its
    outcomes at the end of `OUTCOME_WINDOW`. Unknown categories raise `SchemaError`.
    """
    missing = [c for c in CSV_DTYPES if c not in raw.columns]
    if missing:
        raise SchemaError(f"Hillstrom data lacks column(s) {missing}; expected {list(CSV_DTYPES)}")
    try:
        raw = raw.astype(CSV_DTYPES).reset_index(drop=True)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"Hillstrom data does not convert to dtypes {CSV_DTYPES}: {exc}") from exc
    raw["zip_code"] = raw["zip_code"].replace(ZIP_CODE_FIXES)
    for col, allowed in CATEGORIES.items():
        values = raw[col]
        unknown = sorted(values[values.isna() | ~values.isin(allowed)].astype(str).unique())
        if unknown:
            raise SchemaError(
                f"Hillstrom column '{col}' has unknown value(s) {unknown[:10]}; expected one of {list(allowed)}"
            )

    n = len(raw)
    ids = pd.Series(np.arange(1, n + 1, dtype="int64"), name=ENTITY_KEY)
    mailed = pd.Series(MAILING_DATE, index=raw.index, dtype="datetime64[ns, UTC]")
    features = [c for c in HILLSTROM_CUSTOMERS.names if c not in (ENTITY_KEY, EVENT_TS)]
    customers = pd.concat([ids, mailed.rename(EVENT_TS), raw[features]], axis=1)

    arm = raw["segment"].astype("string")
    experiment = pd.DataFrame(
        {
            ENTITY_KEY: ids,
            EVENT_TS: mailed,
            "outcome_timestamp": mailed + OUTCOME_WINDOW,
            "arm": arm,
            "treated": (arm != CONTROL_ARM).astype("int64"),
            "assignment_probability": np.full(n, ASSIGNMENT_PROBABILITY, dtype="float64"),
            **{c: raw[c] for c in OUTCOMES},
        }
    )
    return HillstromData(customers=customers, experiment=experiment)
