"""The RFM model: hand-computed measures, no look-ahead, balanced quintiles, the segment
rules, and a behavioural check on the real CDNOW purchases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba.data.cdnow import cdnow_transactions, load_cdnow
from nba.data.rfm import (
    OTHER,
    SEGMENT_ORDER,
    SegmentRules,
    assign_segments,
    quintile_scores,
    rfm_from_transactions,
    score_rfm,
)
from nba.errors import SchemaError
from nba.schemas import RFM_FEATURES, RFM_SEGMENTS, validate_frame
from tests.constants import SEED

CUTOFF = pd.Timestamp("2024-06-30", tz="UTC")
CDNOW_CUTOFF = pd.Timestamp("1997-09-30", tz="UTC")
CDNOW_HORIZON = pd.Timedelta(weeks=39)  # the rest of the CDNOW log after the cut-off


def _tx(rows: list[tuple[int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": pd.array([r[0] for r in rows], dtype="int64"),
            "event_timestamp": pd.to_datetime([r[1] for r in rows], utc=True).astype("datetime64[ns, UTC]"),
            "amount": pd.array([r[2] for r in rows], dtype="float64"),
        }
    )


# Window of 365 days before 2024-06-30: (2023-07-01, 2024-06-30].
HAND_TX = _tx(
    [
        (1, "2023-01-10", 100.0),  # before the window: tenure only
        (1, "2024-03-01", 30.0),
        (1, "2024-06-20", 50.0),
        (2, "2024-06-30", 10.0),  # on the cut-off: used
        (2, "2024-07-01", 1000.0),  # after the cut-off: never used
        (3, "2022-12-31", 80.0),  # nothing in the window
        (4, "2024-07-15", 500.0),  # only after the cut-off: not a customer yet
        (5, "2023-07-01", 20.0),  # exactly 365 days before: outside the window
        (5, "2023-07-02", 40.0),
    ]
)
# customer: (recency_days, frequency, monetary, tenure_days), computed by hand
HAND_EXPECTED_365 = {
    1: (10.0, 2, 40.0, 537.0),
    2: (0.0, 1, 10.0, 0.0),
    3: (547.0, 0, 0.0, 547.0),
    5: (364.0, 1, 40.0, 365.0),
}
HAND_EXPECTED_ALL = {
    1: (10.0, 3, 60.0, 537.0),
    2: (0.0, 1, 10.0, 0.0),
    3: (547.0, 1, 80.0, 547.0),
    5: (364.0, 2, 30.0, 365.0),
}


def _measures(frame: pd.DataFrame) -> dict[int, tuple[float, int, float, float]]:
    cols = ["recency_days", "frequency", "monetary", "tenure_days"]
    return {int(row[0]): tuple(row[1:]) for row in frame[["customer_id", *cols]].itertuples(index=False)}


@pytest.fixture(scope="module")
def cdnow_tx(data_dir: Path) -> pd.DataFrame:
    return cdnow_transactions(load_cdnow(data_dir))


@pytest.fixture(scope="module")
def cdnow_rfm(cdnow_tx: pd.DataFrame) -> pd.DataFrame:
    return rfm_from_transactions(cdnow_tx, CDNOW_CUTOFF)


# --- measures -----------------------------------------------------------------------


@pytest.mark.parametrize(("lookback", "expected"), [(365, HAND_EXPECTED_365), (None, HAND_EXPECTED_ALL)])
def test_hand_made_transactions_give_the_hand_computed_measures(lookback, expected):
    rfm = rfm_from_transactions(HAND_TX, CUTOFF, lookback_days=lookback)
    validate_frame(rfm, RFM_FEATURES)
    assert _measures(rfm) == expected
    assert (rfm["event_timestamp"] == CUTOFF).all()


def test_a_naive_cutoff_is_read_as_utc():
    a = rfm_from_transactions(HAND_TX, "2024-06-30")
    b = rfm_from_transactions(HAND_TX, CUTOFF)
    pd.testing.assert_frame_equal(a, b)


def test_transactions_after_the_cutoff_never_influence_the_result():
    before = HAND_TX[HAND_TX["event_timestamp"] <= CUTOFF].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        rfm_from_transactions(HAND_TX, CUTOFF), rfm_from_transactions(before, CUTOFF)
    )


def test_cdnow_rfm_ignores_everything_after_the_cutoff(cdnow_tx, cdnow_rfm):
    before = cdnow_tx[cdnow_tx["event_timestamp"] <= CDNOW_CUTOFF].reset_index(drop=True)
    pd.testing.assert_frame_equal(cdnow_rfm, rfm_from_transactions(before, CDNOW_CUTOFF))
    # a later purchase of any size changes nothing either
    extra = pd.concat(
        [cdnow_tx, _tx([(1, "1997-10-01", 1e6), (999_999, "1997-10-01", 1e6)])], ignore_index=True
    )
    pd.testing.assert_frame_equal(cdnow_rfm, rfm_from_transactions(extra, CDNOW_CUTOFF))


# --- scores -------------------------------------------------------------------------


def test_scores_point_the_right_way():
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(1, 11, dtype="int64"),
            "recency_days": np.arange(10, dtype="float64") * 10,  # customer 1 most recent
            "frequency": np.arange(10, dtype="int64"),  # customer 10 most frequent
            "monetary": np.arange(10, dtype="float64") * 5,  # customer 10 biggest spender
            "tenure_days": np.full(10, 400.0),
        }
    )
    scored = score_rfm(frame)
    assert scored["r_score"].tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert scored["f_score"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert scored["m_score"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    pd.testing.assert_frame_equal(scored[frame.columns], frame)  # the input columns untouched


def test_cdnow_quintiles_are_balanced_despite_heavy_ties(cdnow_rfm):
    assert (cdnow_rfm["frequency"] == 1).mean() > 0.5  # the heavy tie qcut cannot cut
    for col in ("r_score", "f_score", "m_score"):
        shares = cdnow_rfm[col].value_counts(normalize=True)
        assert set(shares.index) == {1, 2, 3, 4, 5}
        assert ((shares - 0.2).abs() < 0.001).all(), (col, shares.to_dict())


def test_scores_do_not_depend_on_row_order(cdnow_rfm):
    inputs = cdnow_rfm[["customer_id", "recency_days", "frequency", "monetary", "tenure_days"]]
    shuffled = inputs.sample(frac=1.0, random_state=SEED)
    again = score_rfm(shuffled).sort_values("customer_id", ignore_index=True)
    cols = ["r_score", "f_score", "m_score", "rfm_segment"]
    pd.testing.assert_frame_equal(again[cols], cdnow_rfm[cols])


def test_score_rfm_needs_only_the_four_measures_and_keeps_the_index():
    rng = np.random.default_rng(SEED)
    n = 1_000
    frame = pd.DataFrame(
        {
            "recency_days": rng.integers(0, 400, n).astype("float64"),
            "frequency": rng.poisson(1.0, n),
            "monetary": rng.gamma(2.0, 30.0, n),
            "tenure_days": rng.integers(0, 2000, n).astype("float64"),
        },
        index=pd.RangeIndex(100, 100 + n),
    )
    scored = score_rfm(frame)
    assert scored.index.equals(frame.index)
    for col in ("r_score", "f_score", "m_score"):
        assert scored[col].between(1, 5).all()
        assert (scored[col].value_counts() == n // 5).all()
    assert set(scored["rfm_segment"]) <= set(RFM_SEGMENTS)


def test_score_rfm_names_a_missing_or_incomplete_column():
    frame = pd.DataFrame({"recency_days": [1.0], "frequency": [1], "monetary": [2.0]})
    with pytest.raises(SchemaError, match="tenure_days"):
        score_rfm(frame)
    with pytest.raises(SchemaError, match="monetary"):
        score_rfm(frame.assign(tenure_days=1.0, monetary=np.nan))


def test_quintile_scores_of_an_empty_input():
    assert quintile_scores(np.array([])).tolist() == []


@pytest.mark.timeout(10)
def test_score_rfm_scales_to_a_million_customers():
    rng = np.random.default_rng(SEED)
    n = 1_000_000
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype="int64"),
            "recency_days": rng.exponential(90.0, n).round(),
            "frequency": rng.poisson(2.0, n),
            "monetary": rng.gamma(2.0, 30.0, n).round(2),
            "tenure_days": rng.integers(0, 3000, n).astype("float64"),
        }
    )
    scored = score_rfm(frame)
    assert len(scored) == n
    assert scored["f_score"].value_counts().eq(n // 5).all()


# --- segments -----------------------------------------------------------------------

# (r, f, m, tenure_days) -> expected segment
SEGMENT_CASES = [
    ((5, 5, 5, 1000.0), "best_active"),
    ((4, 4, 4, 10.0), "best_active"),  # also new, but best_active is tried first
    ((1, 5, 5, 1000.0), "lapsed_high_value"),
    ((2, 1, 4, 30.0), "lapsed_high_value"),
    ((5, 1, 3, 30.0), "new_with_potential"),
    ((4, 2, 5, 90.0), "new_with_potential"),  # tenure limit is inclusive
    ((5, 1, 3, 91.0), "other"),  # too old to be new
    ((3, 5, 1, 500.0), "loyal_low_basket"),
    ((5, 5, 2, 500.0), "loyal_low_basket"),  # frequent and recent but a small basket
    ((1, 4, 2, 500.0), "loyal_low_basket"),  # lapsed, but not high value
    ((3, 3, 3, 500.0), "other"),
    ((3, 3, 5, 500.0), "other"),
]


def test_segment_rules_on_hand_made_rows():
    r, f, m, tenure = (np.array(col) for col in zip(*(case for case, _ in SEGMENT_CASES), strict=True))
    got = assign_segments(r, f, m, tenure)
    assert list(got) == [expected for _, expected in SEGMENT_CASES]
    assert str(got.dtype) == "string"


def test_segment_thresholds_are_data():
    older_newcomers = SegmentRules(new_max_tenure_days=120)
    assert list(assign_segments([5], [1], [3], [91.0], older_newcomers)) == ["new_with_potential"]
    with pytest.raises(ValueError, match="lapsed_max_r"):
        SegmentRules(lapsed_max_r=0)
    with pytest.raises(ValueError, match="new_max_tenure_days"):
        SegmentRules(new_max_tenure_days=-1)


def test_segment_names_are_the_contract_names():
    assert {*SEGMENT_ORDER, OTHER} == set(RFM_SEGMENTS)


def test_cdnow_lapsed_high_value_customers_spend_less_afterwards_than_best_active(cdnow_tx, cdnow_rfm):
    later = cdnow_tx[
        (cdnow_tx["event_timestamp"] > CDNOW_CUTOFF)
        & (cdnow_tx["event_timestamp"] <= CDNOW_CUTOFF + CDNOW_HORIZON)
    ]
    future_spend = later.groupby("customer_id")["amount"].sum()
    spend = cdnow_rfm.assign(future=cdnow_rfm["customer_id"].map(future_spend).fillna(0.0))
    by_segment = spend.groupby("rfm_segment")["future"].mean()
    assert by_segment["lapsed_high_value"] < by_segment["best_active"]
    counts = spend["rfm_segment"].value_counts()
    assert counts["lapsed_high_value"] > 1_000 and counts["best_active"] > 1_000
