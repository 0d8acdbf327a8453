"""The CDNOW purchase log (Fader & Hardie): every purchase of the customers who first bought
at CDNOW in the first quarter of 1997, up to the end of June 1998.

The published file is whitespace-separated with one header line
`customer_id date number_of_cds dollar_value` (ids zero-padded, dates as YYYYMMDD). There
is no time of day, so each purchase is stamped at UTC midnight of its date, and a customer's
purchases on one day stay separate rows in file order.

80 purchases have a dollar value of 0 (CDs bought for nothing, presumably free or fully
discounted). They are kept: they are purchases (they count in frequency and recency), and
dropping them would make a customer look less active than they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from nba.data.checksums import CDNOW_GZ, SHA256, locate, verify
from nba.errors import DataFileError, SchemaError
from nba.schemas import CDNOW_TRANSACTIONS, ENTITY_KEY, EVENT_TS, TRANSACTIONS, validate_frame

if TYPE_CHECKING:
    from nba.settings import Settings

FILE_COLUMNS = ("customer_id", "date", "number_of_cds", "dollar_value")


def load_cdnow(path: Path | str | None = None, settings: Settings | None = None) -> pd.DataFrame:
    """The verified CDNOW purchases as a CDNOW_TRANSACTIONS frame, sorted by customer and time.

    `path` is the gz file or the folder holding `CDNOW_master.txt.gz`; None means the
    configured data folder (`NBA_DATA_DIR`).
    """
    gz = locate(CDNOW_GZ, path, settings)
    verify(gz, SHA256[CDNOW_GZ], what="CDNOW purchase log")
    try:
        raw = pd.read_csv(
            gz,
            sep=r"\s+",
            header=0,
            compression="gzip",
            dtype={
                "customer_id": "int64",
                "date": "string",
                "number_of_cds": "int64",
                "dollar_value": "float64",
            },
        )
    except (OSError, ValueError) as exc:
        raise DataFileError(f"{gz}: cannot parse the CDNOW purchase log ({exc})") from exc
    missing = [c for c in FILE_COLUMNS if c not in raw.columns]
    if missing:
        raise SchemaError(
            f"{gz}: CDNOW log lacks column(s) {missing}; expected header {' '.join(FILE_COLUMNS)}"
        )

    frame = pd.DataFrame(
        {
            ENTITY_KEY: raw["customer_id"].astype("int64"),
            EVENT_TS: pd.to_datetime(raw["date"], format="%Y%m%d", utc=True).astype("datetime64[ns, UTC]"),
            "quantity": raw["number_of_cds"].astype("int64"),
            "amount": raw["dollar_value"].astype("float64"),
        }
    )
    # A stable sort keeps same-day purchases in file order.
    frame = frame.sort_values([ENTITY_KEY, EVENT_TS], kind="stable", ignore_index=True)
    validate_frame(frame, CDNOW_TRANSACTIONS, source=str(gz))
    return frame


def cdnow_transactions(frame: pd.DataFrame) -> pd.DataFrame:
    """The generic TRANSACTIONS view (customer, time, amount) of a CDNOW frame, for RFM."""
    validate_frame(frame, CDNOW_TRANSACTIONS, source="CDNOW frame")
    out = frame[TRANSACTIONS.names].reset_index(drop=True)
    validate_frame(out, TRANSACTIONS, source="CDNOW transactions")
    return out
