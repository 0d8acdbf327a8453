"""Offline sources of the feature views over the public data sets (Hillstrom, CDNOW).

Models trained on real data read their features through Feast like every other model:
`hillstrom_uplift_v1` (pre-mailing profile of the e-mail experiment) and `cdnow_clv_v1`
(RFM snapshots of the CDNOW cohort at every month end). Their entity keys differ from the
bank's `customer_id` (`hillstrom_id`, `cdnow_id`) so the three populations never mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nba import schemas
from nba.errors import DataFileError
from nba.features.sources import write_source
from nba.io import write_parquet
from nba.settings import Settings

HILLSTROM_KEY = "hillstrom_id"
CDNOW_KEY = "cdnow_id"
# Pre-mailing features are stamped one day before the mailing so an entity at the mailing
# time sees them (and nothing measured after it).
HILLSTROM_FEATURES_LEAD = pd.Timedelta(days=1)


@dataclass(frozen=True)
class RealSources:
    hillstrom_profile: pd.DataFrame
    cdnow_rfm: pd.DataFrame
    hillstrom_experiment: pd.DataFrame  # labels (outcomes), not a feature source
    cdnow_transactions: pd.DataFrame  # labels (future spend), not a feature source


def hillstrom_profile_source(customers: pd.DataFrame) -> pd.DataFrame:
    out = customers.rename(columns={schemas.ENTITY_KEY: HILLSTROM_KEY}).copy()
    out[schemas.EVENT_TS] = out[schemas.EVENT_TS] - HILLSTROM_FEATURES_LEAD
    return out


def cdnow_month_ends(transactions: pd.DataFrame) -> list[pd.Timestamp]:
    first = transactions[schemas.EVENT_TS].min()
    last = transactions[schemas.EVENT_TS].max()
    return list(pd.date_range(first, last, freq="ME", tz="UTC", normalize=True))


def cdnow_rfm_source(transactions: pd.DataFrame, cutoffs: list[pd.Timestamp] | None = None) -> pd.DataFrame:
    """RFM (all history) of every CDNOW customer at each month end, plus spend to date."""
    from nba.data.rfm import rfm_from_transactions

    tx = transactions[[schemas.ENTITY_KEY, schemas.EVENT_TS, "amount"]]
    frames = []
    for cutoff in cutoffs or cdnow_month_ends(transactions):
        rfm = rfm_from_transactions(tx, cutoff, lookback_days=None)
        rfm["total_spend"] = rfm["frequency"] * rfm["monetary"]
        frames.append(rfm)
    out = pd.concat(frames, ignore_index=True)
    return out.rename(columns={schemas.ENTITY_KEY: CDNOW_KEY})


def build_real_sources(settings: Settings) -> RealSources:
    from nba.data.cdnow import load_cdnow
    from nba.data.hillstrom import load_hillstrom

    hill = load_hillstrom(settings=settings)
    cd = load_cdnow(settings=settings)
    return RealSources(
        hillstrom_profile=hillstrom_profile_source(hill.customers),
        cdnow_rfm=cdnow_rfm_source(cd),
        hillstrom_experiment=hill.experiment,
        cdnow_transactions=cd,
    )


def publish_real_sources(settings: Settings, sources: RealSources | None = None) -> dict[str, int]:
    """Write the real-data feature sources into the staged repository and the label tables
    into `<work>/real`. Returns rows per table."""
    sources = sources or build_real_sources(settings)
    data = settings.feast_repo / "data"
    real = settings.work / "real"
    written: dict[str, tuple[pd.DataFrame, Path]] = {
        "hillstrom_profile": (sources.hillstrom_profile, data / "hillstrom_profile.parquet"),
        "cdnow_rfm": (sources.cdnow_rfm, data / "cdnow_rfm.parquet"),
        "hillstrom_experiment": (sources.hillstrom_experiment, real / "hillstrom_experiment.parquet"),
        "cdnow_transactions": (sources.cdnow_transactions, real / "cdnow_transactions.parquet"),
    }
    for frame, path in written.values():
        if path.parent == data:
            write_source(frame, path)
        else:
            write_parquet(frame, path)
    return {name: len(frame) for name, (frame, _) in written.items()}


def require_published(settings: Settings, model: str, dataset_file: str, what: str) -> dict[str, Path]:
    """The label table (`<work>/real`) and feature source (the repository's data/) of a public
    data set, or an error saying how to publish them. `what` is 'hillstrom' or 'cdnow'."""
    tables = {"hillstrom": ("hillstrom_experiment", "hillstrom_profile", "Hillstrom"),
              "cdnow": ("cdnow_transactions", "cdnow_rfm", "CDNOW")}[what]
    paths = {"labels": settings.work / "real" / f"{tables[0]}.parquet",
             "features": settings.feast_repo / "data" / f"{tables[1]}.parquet"}
    for path in paths.values():
        if not path.is_file():
            raise DataFileError(
                f"{model} ({what}): {path} not found: set NBA_DATA_DIR to the folder holding {dataset_file} "
                f"and run `nba features apply` (it publishes the {tables[2]} tables)")
    return paths

