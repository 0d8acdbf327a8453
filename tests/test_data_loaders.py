"""The loaders of the public data sets, on the real files: published figures, contracts,
and the checks that stop a damaged or missing file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from nba.data.cdnow import cdnow_transactions, load_cdnow
from nba.data.checksums import CDNOW_GZ, HILLSTROM_ZIP, SHA256, verify
from nba.data.hillstrom import (
    ARMS,
    MAILING_DATE,
    OUTCOMES,
    HillstromData,
    hillstrom_tables,
    load_hillstrom,
)
from nba.errors import ChecksumError, DataFileError, SchemaError
from nba.io import sha256_file
from nba.schemas import (
    CDNOW_TRANSACTIONS,
    HILLSTROM_CUSTOMERS,
    HILLSTROM_EXPERIMENT,
    TRANSACTIONS,
    validate_frame,
)
from nba.settings import Settings
from tests.constants import (
    CDNOW_CUSTOMERS,
    CDNOW_GZ_SHA256,
    CDNOW_ROWS,
    HILLSTROM_ARM_MEANS,
    HILLSTROM_CSV_SHA256,
    HILLSTROM_ROWS,
    HILLSTROM_ZIP_SHA256,
)

CDNOW_FIRST_DAY = pd.Timestamp("1997-01-01", tz="UTC")
CDNOW_LAST_DAY = pd.Timestamp("1998-06-30", tz="UTC")
CDNOW_COHORT_END = pd.Timestamp("1997-03-31", tz="UTC")  # everyone first bought in Q1 1997
CDNOW_ZERO_DOLLAR_ROWS = 80  # measured on the published file; kept by the loader


@pytest.fixture(scope="module")
def hillstrom(data_dir: Path) -> HillstromData:
    return load_hillstrom(data_dir)


@pytest.fixture(scope="module")
def cdnow(data_dir: Path) -> pd.DataFrame:
    return load_cdnow(data_dir)


def _corrupt_copy(src: Path, folder: Path) -> Path:
    target = folder / src.name
    shutil.copyfile(src, target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


# --- checksums ----------------------------------------------------------------------


def test_published_digests_match_the_shared_data_readme():
    assert SHA256[HILLSTROM_ZIP] == HILLSTROM_ZIP_SHA256
    assert SHA256["hillstrom.csv"] == HILLSTROM_CSV_SHA256
    assert SHA256[CDNOW_GZ] == CDNOW_GZ_SHA256


@pytest.mark.parametrize(("name", "loader"), [(HILLSTROM_ZIP, load_hillstrom), (CDNOW_GZ, load_cdnow)])
def test_a_corrupted_byte_raises_checksum_error_naming_path_and_both_digests(
    data_dir, tmp_path, name, loader
):
    bad = _corrupt_copy(data_dir / name, tmp_path)
    with pytest.raises(ChecksumError) as info:
        loader(bad)
    message = str(info.value)
    assert "\n" not in message
    assert str(bad) in message
    assert SHA256[name] in message
    assert sha256_file(bad) in message
    # the folder form finds the same file and fails the same way
    with pytest.raises(ChecksumError):
        loader(tmp_path)


@pytest.mark.parametrize(("name", "loader"), [(HILLSTROM_ZIP, load_hillstrom), (CDNOW_GZ, load_cdnow)])
def test_a_missing_file_raises_data_file_error_naming_the_path(tmp_path, name, loader):
    with pytest.raises(DataFileError) as info:
        loader(tmp_path)
    assert not isinstance(info.value, ChecksumError)
    assert f"{name} not found in {tmp_path}" in str(info.value)

    absent = tmp_path / "nowhere" / name
    with pytest.raises(DataFileError, match=str(absent)):
        loader(absent)


def test_the_configured_data_folder_is_named_when_the_file_is_missing(tmp_path):
    settings = Settings(home=tmp_path, data_dir=tmp_path)
    with pytest.raises(DataFileError, match=r"NBA_DATA_DIR"):
        load_cdnow(settings=settings)


def test_verify_returns_the_digest_and_reports_a_missing_file(data_dir, tmp_path):
    assert verify(data_dir / CDNOW_GZ, CDNOW_GZ_SHA256, what="CDNOW") == CDNOW_GZ_SHA256
    with pytest.raises(DataFileError, match=str(tmp_path / "x.gz")):
        verify(tmp_path / "x.gz", CDNOW_GZ_SHA256, what="CDNOW")


# --- Hillstrom ----------------------------------------------------------------------


def test_hillstrom_tables_follow_their_contracts(hillstrom):
    validate_frame(hillstrom.customers, HILLSTROM_CUSTOMERS)
    validate_frame(hillstrom.experiment, HILLSTROM_EXPERIMENT)
    assert len(hillstrom.customers) == len(hillstrom.experiment) == HILLSTROM_ROWS
    ids = hillstrom.customers["customer_id"]
    assert ids.tolist() == list(range(1, HILLSTROM_ROWS + 1))
    assert (hillstrom.customers["event_timestamp"] == MAILING_DATE).all()
    exp = hillstrom.experiment
    assert ((exp["outcome_timestamp"] - exp["event_timestamp"]) == pd.Timedelta(days=14)).all()


def test_hillstrom_arm_means_match_the_published_figures(hillstrom):
    means = hillstrom.experiment.groupby("arm")[list(OUTCOMES)].mean()
    assert set(means.index) == set(HILLSTROM_ARM_MEANS) == set(ARMS)
    for arm, (visit, conversion, spend) in HILLSTROM_ARM_MEANS.items():
        assert round(means.loc[arm, "visit"], 4) == visit
        assert round(means.loc[arm, "conversion"], 4) == conversion
        assert round(means.loc[arm, "spend"], 2) == spend


def test_hillstrom_arms_are_a_third_each_with_the_hold_out_untreated(hillstrom):
    exp = hillstrom.experiment
    shares = exp["arm"].value_counts(normalize=True)
    assert ((shares - 1 / 3).abs() < 0.01).all()
    assert (exp["treated"] == (exp["arm"] != "No E-Mail").astype("int64")).all()
    assert exp["assignment_probability"].eq(1 / 3).all()


def test_hillstrom_customer_features_hold_no_outcome(hillstrom):
    leaked = {"visit", "conversion", "spend", "segment", "arm", "treated"} & set(hillstrom.customers.columns)
    assert not leaked


def test_hillstrom_categories_are_clean(hillstrom):
    c = hillstrom.customers
    assert set(c["zip_code"]) == {"Urban", "Suburban", "Rural"}  # the file says "Surburban"
    assert set(c["channel"]) == {"Phone", "Web", "Multichannel"}
    assert c["history_segment"].str.match(r"^[1-7]\) \$").all()


def _raw_rows(hillstrom: HillstromData, n: int = 30) -> pd.DataFrame:
    """The first `n` rows back in the csv's shape (to test the splitter on real values)."""
    raw = hillstrom.customers.head(n).drop(columns=["customer_id", "event_timestamp"])
    exp = hillstrom.experiment.head(n)
    return raw.assign(
        segment=exp["arm"], visit=exp["visit"], conversion=exp["conversion"], spend=exp["spend"]
    )


def test_hillstrom_unknown_arm_raises_schema_error_naming_it(hillstrom):
    raw = _raw_rows(hillstrom)
    assert len(hillstrom_tables(raw).experiment) == len(raw)
    raw.loc[3, "segment"] = "Kids E-Mail"
    with pytest.raises(SchemaError, match=r"'segment'.*Kids E-Mail"):
        hillstrom_tables(raw)


def test_hillstrom_missing_column_raises_schema_error_naming_it(hillstrom):
    with pytest.raises(SchemaError, match=r"spend"):
        hillstrom_tables(_raw_rows(hillstrom).drop(columns=["spend"]))


# --- CDNOW --------------------------------------------------------------------------


def test_cdnow_matches_the_published_figures(cdnow):
    validate_frame(cdnow, CDNOW_TRANSACTIONS)
    assert len(cdnow) == CDNOW_ROWS
    assert cdnow["customer_id"].nunique() == CDNOW_CUSTOMERS
    assert cdnow["event_timestamp"].min() == CDNOW_FIRST_DAY
    assert cdnow["event_timestamp"].max() == CDNOW_LAST_DAY
    first = cdnow.groupby("customer_id")["event_timestamp"].min()
    assert first.between(CDNOW_FIRST_DAY, CDNOW_COHORT_END).all()


def test_cdnow_is_sorted_at_utc_midnight_and_keeps_zero_dollar_purchases(cdnow):
    assert cdnow.equals(
        cdnow.sort_values(["customer_id", "event_timestamp"], kind="stable", ignore_index=True)
    )
    assert (cdnow["event_timestamp"] == cdnow["event_timestamp"].dt.normalize()).all()
    assert (cdnow["amount"] == 0).sum() == CDNOW_ZERO_DOLLAR_ROWS
    assert (cdnow["quantity"] > 0).all()
    assert (cdnow["amount"] >= 0).all()


def test_cdnow_transactions_is_the_generic_view(cdnow):
    tx = cdnow_transactions(cdnow)
    validate_frame(tx, TRANSACTIONS)
    assert list(tx.columns) == TRANSACTIONS.names
    assert tx["amount"].sum() == pytest.approx(cdnow["amount"].sum())
