"""Recency, frequency and monetary value (RFM) as of a cut-off, scored in quintiles and named
in segments (the "scoring article" model).

Two entry points:

* `rfm_from_transactions(tx, cutoff)` computes the raw measures from any TRANSACTIONS frame
  using only the purchases at or before the cut-off, then scores them;
* `score_rfm(frame)` scores measures computed elsewhere (the simulator calls it on its own
  `recency_days`, `frequency`, `monetary` and `tenure_days` columns).

Scores are relative to the rows scored together: call `score_rfm` once per cut-off.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from nba.errors import SchemaError
from nba.schemas import ENTITY_KEY, EVENT_TS, RFM_FEATURES, TRANSACTIONS, validate_frame

SCORE_INPUTS = ("recency_days", "frequency", "monetary", "tenure_days")
N_SCORES = 5  # quintiles: scores 1..5, 5 = best
DAY = pd.Timedelta(days=1)

# First matching segment wins, in this order; a customer matching none is "other"
# (together: nba.schemas.RFM_SEGMENTS).
SEGMENT_ORDER = ("best_active", "lapsed_high_value", "new_with_potential", "loyal_low_basket")
OTHER = "other"


@dataclass(frozen=True)
class SegmentRules:
    """Thresholds of the named segments (scores are 1..5, 5 = best; tenure in days).

    best_active:        r >= best_min_r and f >= best_min_f and m >= best_min_m
    lapsed_high_value:  r <= lapsed_max_r and m >= lapsed_min_m
    new_with_potential: r >= new_min_r and f <= new_max_f and tenure_days <= new_max_tenure_days
    loyal_low_basket:   f >= loyal_min_f and m <= loyal_max_m
    """

    best_min_r: int = 4
    best_min_f: int = 4
    best_min_m: int = 4
    lapsed_max_r: int = 2
    lapsed_min_m: int = 4
    new_min_r: int = 4
    new_max_f: int = 2
    new_max_tenure_days: float = 90.0
    loyal_min_f: int = 4
    loyal_max_m: int = 2

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "new_max_tenure_days":
                if not value >= 0:
                    raise ValueError(f"SegmentRules.{f.name} must be >= 0 days, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= N_SCORES:
                raise ValueError(f"SegmentRules.{f.name} must be a score in 1..{N_SCORES}, got {value!r}")


def rfm_from_transactions(
    tx: pd.DataFrame,
    cutoff: pd.Timestamp | str,
    *,
    lookback_days: int | None = 365,
    rules: SegmentRules | None = None,
) -> pd.DataFrame:
    """RFM_FEATURES as of `cutoff`, one row per customer with a purchase at or before it.

    Only purchases with `event_timestamp <= cutoff` are read; later ones never are.
    recency_days and tenure_days run from the last and the first purchase to the cut-off;
    frequency (number of purchase rows) and monetary (mean amount per purchase) use the
    look-back window (cutoff - lookback_days, cutoff], or all history when None. A customer
    with no purchase in the window has frequency 0 and monetary 0. A naive `cutoff` is UTC.
    """
    validate_frame(tx, TRANSACTIONS, source="rfm_from_transactions input")
    if lookback_days is not None and (isinstance(lookback_days, bool) or lookback_days <= 0):
        raise ValueError(f"lookback_days must be a positive number of days or None, got {lookback_days!r}")
    cut = _utc(cutoff)

    ts = tx[EVENT_TS]
    past = tx.loc[ts <= cut, [ENTITY_KEY, EVENT_TS, "amount"]]
    span = past.groupby(ENTITY_KEY, sort=True)[EVENT_TS].agg(["min", "max"])
    window = past if lookback_days is None else past[past[EVENT_TS] > cut - lookback_days * DAY]
    spend = window.groupby(ENTITY_KEY, sort=True)["amount"].agg(["size", "mean"]).reindex(span.index)

    frame = pd.DataFrame(
        {
            ENTITY_KEY: span.index.to_numpy(dtype="int64"),
            EVENT_TS: pd.Series(cut, index=range(len(span)), dtype="datetime64[ns, UTC]"),
            "recency_days": ((cut - span["max"]) / DAY).to_numpy(dtype="float64"),
            "frequency": spend["size"].fillna(0).to_numpy(dtype="int64"),
            "monetary": spend["mean"].fillna(0.0).to_numpy(dtype="float64"),
            "tenure_days": ((cut - span["min"]) / DAY).to_numpy(dtype="float64"),
        }
    )
    frame = score_rfm(frame, rules)
    validate_frame(frame, RFM_FEATURES, source=f"RFM as of {cut.date()}")
    return frame


def score_rfm(frame: pd.DataFrame, rules: SegmentRules | None = None) -> pd.DataFrame:
    """A copy of `frame` with r_score, f_score, m_score (1..5, 5 = best) and rfm_segment.

    Needs only recency_days, frequency, monetary and tenure_days (no missing values).

    Scores are balanced quintiles of ranks: the rows are ordered by the measure (recency
    reversed, so the most recent is best) and cut into five equal groups, so each score holds
    a fifth of the customers however heavily the values tie (`pd.qcut` fails when, as in real
    purchase logs, half the customers bought exactly once). The price is that a block of tied
    values straddling a quintile edge is split; the tie-break is a fixed hash of customer_id
    (of the row position when there is no customer_id), so the split is reproducible,
    independent of row order, and uncorrelated with id order (ids often follow sign-up
    order, which a plain `rank(method="first")` would turn into a tenure bias).
    """
    rules = rules or SegmentRules()
    missing = [c for c in SCORE_INPUTS if c not in frame.columns]
    if missing:
        raise SchemaError(f"score_rfm: missing column(s) {missing}; expected {list(SCORE_INPUTS)}")
    values = {}
    for col in SCORE_INPUTS:
        v = frame[col].to_numpy(dtype="float64", na_value=np.nan)
        if np.isnan(v).any():
            raise SchemaError(
                f"score_rfm: column '{col}' has {int(np.isnan(v).sum())} missing value(s); every customer needs one"
            )
        values[col] = v

    n = len(frame)
    key = frame[ENTITY_KEY].to_numpy(dtype="int64") if ENTITY_KEY in frame.columns else np.arange(n)
    tiebreak = _scramble(key)
    r = quintile_scores(-values["recency_days"], tiebreak)
    f = quintile_scores(values["frequency"], tiebreak)
    m = quintile_scores(values["monetary"], tiebreak)

    out = frame.copy()
    out["r_score"] = r
    out["f_score"] = f
    out["m_score"] = m
    out["rfm_segment"] = assign_segments(r, f, m, values["tenure_days"], rules)
    return out


def quintile_scores(values: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Scores 1..5 by ascending `values` (ties ordered by `tiebreak`), a fifth of the rows each."""
    values = np.asarray(values)
    n = len(values)
    order = np.lexsort((np.arange(n) if tiebreak is None else tiebreak, values))
    ranks = np.empty(n, dtype="int64")
    ranks[order] = np.arange(n, dtype="int64")
    return ranks * N_SCORES // max(n, 1) + 1


def assign_segments(
    r: np.ndarray,
    f: np.ndarray,
    m: np.ndarray,
    tenure_days: np.ndarray,
    rules: SegmentRules | None = None,
) -> pd.api.extensions.ExtensionArray:
    """The named segment of each row from its scores and tenure (first rule in SEGMENT_ORDER wins)."""
    rules = rules or SegmentRules()
    r, f, m, tenure = (np.asarray(a) for a in (r, f, m, tenure_days))
    matches = {
        "best_active": (r >= rules.best_min_r) & (f >= rules.best_min_f) & (m >= rules.best_min_m),
        "lapsed_high_value": (r <= rules.lapsed_max_r) & (m >= rules.lapsed_min_m),
        "new_with_potential": (r >= rules.new_min_r)
        & (f <= rules.new_max_f)
        & (tenure <= rules.new_max_tenure_days),
        "loyal_low_basket": (f >= rules.loyal_min_f) & (m <= rules.loyal_max_m),
    }
    names = np.array([*SEGMENT_ORDER, OTHER], dtype=object)
    codes = np.select(
        [matches[s] for s in SEGMENT_ORDER], list(range(len(SEGMENT_ORDER))), default=len(SEGMENT_ORDER)
    )
    return pd.array(names[codes], dtype="string")


def _utc(when: pd.Timestamp | str) -> pd.Timestamp:
    ts = pd.Timestamp(when)
    if ts is pd.NaT:
        raise ValueError(f"cutoff must be a time, got {when!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _scramble(key: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random permutation of 64-bit keys (the splitmix64 finaliser)."""
    z = key.astype("int64").view("uint64") + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
