"""Business KPIs of the decision log: what the platform's contacts did (reach, response,
conversion, value, cost, ROI) and what they caused in the customers' later behaviour (churn,
value and CLV over 3 and 6 months of the treated customers against the universal hold-out).

Inputs
------
* The decision log (`nba.stores.decisions.read_log`), optionally cut to a period of
  `decided_at`.
* The customers' later behaviour (`behaviour_frame`): one row per customer and month with the
  columns of `BEHAVIOUR_COLUMNS`: `customer_id` (integer), `month` (a date or timestamp in the
  month; the month is what counts), `value` (what the bank earned from the customer that month)
  and `churned` (0/1: the customer left during that month; no row after it). The simulator's
  `monthly_value` (margin) and `customers` (churn_timestamp) tables are read into it by
  `simulator_behaviour`. A month without a row is worth 0.
* Costs (`Costs`, from the strategy: each channel's `cost` per contact in
  serving/policies.yaml, each action's `cost` in serving/actions.yaml, and
  `economics.acquisition_cost` / `economics.discount_rate`).
* Segments (optional): a frame with `customer_id`, the segment column and optionally
  `event_timestamp` (then the segment of a decision is the customer's latest one at or before
  it, e.g. the simulator's `rfm` table and its `rfm_segment`). Without it every decision is in
  segment `all`.

What is measured
----------------
The activity table (`kpi_table`), one row per shown action (a candidate with rank >= 1, or the
decision's first shown action): per segment, action, channel and month of the decision, and
rolled up per single dimension, per channel and month, and overall: `contacts`, `reach` (distinct customers),
`responses` (any outcome reported against the shown action), `conversions` (an `accepted`
one), their rates per contact, `value` (the values reported), `cost` (the channel's cost per
contact + the action's), `net` = value - cost and `roi` = net / cost.

The hold-out table (`holdout_table`): one unit per customer, the customer's first decision in
the period fixing its cohort (month of the decision, channel, segment and intended action: the
arbitration's pick, a pre-treatment quantity computed the same way for hold-out customers,
`nba.evaluation.incrementality.intended_actions`). A customer is `treated` if any of its
decisions is in group `nba` or `explore`, `holdout` if all are in the hold-out. For each
horizon h (months) and each customer whose behaviour covers the h calendar months after its
cohort month (`matured`): `churn_<h>m` (churned in any month up to cohort month + h),
`value_<h>m` (mean monthly value over those h months, 0 after churn) and `clv_<h>m` (their
value discounted monthly at `discount_rate` per year: sum of value_m / (1 + r)^(m / 12)).
Treated against hold-out, overall and per segment, intended action, channel and cohort month,
with Welch CIs (`nba.evaluation.stats.segmented`); the hold-out is a random sample of
customers, so the lift is the average effect of being treated by the platform (intention to
treat). CLV/CAC: the mean CLV of each arm over `acquisition_cost`, when it is given.

A period with no decision gives an empty report that says so (`KpiReport.empty`), never zeros.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nba.evaluation.incrementality import EXPLORE, HOLDOUT, NBA_GROUP, intended_actions
from nba.evaluation.stats import DEFAULT_CONFIDENCE, ExperimentDataError, segmented, slug
from nba.records import NO_ACTION

if TYPE_CHECKING:
    from nba.config import EvaluationLimits
    from nba.stores.decisions import LogFrames

logger = logging.getLogger(__name__)

BEHAVIOUR_COLUMNS = ("customer_id", "month", "value", "churned")
DEFAULT_HORIZONS = (3, 6)
DIMENSIONS = ("segment", "action", "channel", "month")
ALL_SEGMENT = "all"
TREATED = "treated"
METRICS = ("churn", "value", "clv")
KPI_COLUMNS = ("by", *DIMENSIONS, "contacts", "reach", "responses", "response_rate", "conversions",
               "conversion_rate", "value", "cost", "net", "roi")
HOLDOUT_COLUMNS = ("horizon", "metric", "by", "key", "treated_n", "treated_mean", "holdout_n", "holdout_mean",
                   "lift", "ci_low", "ci_high", "relative_lift", "p_value", "treated_clv_cac", "holdout_clv_cac",
                   "flags")


class KpiInputError(ExperimentDataError):
    """A behaviour, segment or cost input does not follow its contract (the message names the column)."""


# --- costs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Costs:
    """Euros per contact per channel and per action, the cost of acquiring a customer (CLV/CAC,
    None when unknown) and the yearly discount rate of the CLV."""

    channel: Mapping[str, float] = field(default_factory=dict)
    action: Mapping[str, float] = field(default_factory=dict)
    acquisition: float | None = None
    discount_rate: float = 0.10

    def __post_init__(self) -> None:
        for what, table in (("channel", self.channel), ("action", self.action)):
            for k, v in table.items():
                if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                    raise KpiInputError(f"cost of {what} '{k}' = {v!r}; expected euros >= 0")
        if self.acquisition is not None and not self.acquisition > 0:
            raise KpiInputError(f"acquisition cost {self.acquisition!r}; expected euros > 0 (or none)")
        if not 0 <= self.discount_rate < 1:
            raise KpiInputError(f"discount rate {self.discount_rate!r}; expected a yearly rate in [0, 1)")

    @classmethod
    def from_strategy(cls, home: Path, *, actions: Path | None = None, policies: Path | None = None) -> Costs:
        """The costs the strategy declares (serving/policies.yaml channels and economics,
        serving/actions.yaml actions); the YAML is validated by `nba.catalog`."""
        from nba.catalog import read_files

        spec, pol, _, _ = read_files(home, actions, policies)
        return cls(channel={k: float(c.cost) for k, c in pol.channels.items()},
                   action={a.id: float(a.cost) for a in spec.actions},
                   acquisition=pol.economics.acquisition_cost, discount_rate=pol.economics.discount_rate)

    def per_contact(self, channels: pd.Series, actions: pd.Series) -> np.ndarray:
        """The cost of each (channel, action) contact; a channel or action without a declared
        cost costs 0 (`unknown` says which)."""
        ch = channels.astype(str).map(self.channel).fillna(0.0).to_numpy(np.float64)
        ac = actions.astype(str).map(self.action).fillna(0.0).to_numpy(np.float64)
        return ch + ac

    def unknown(self, channels: pd.Series, actions: pd.Series) -> list[str]:
        out = [f"channel '{c}'" for c in sorted(set(channels.astype(str)) - set(self.channel))]
        return out + [f"action '{a}'" for a in sorted(set(actions.astype(str)) - set(self.action) - {NO_ACTION})]


# --- the customers' later behaviour ------------------------------------------------------------


def month_index(ts: pd.Series) -> np.ndarray:
    """Months since year 0 (year * 12 + month - 1) of timestamps, UTC."""
    t = pd.to_datetime(ts, utc=True)
    return (t.dt.year.to_numpy(np.int64) * 12 + t.dt.month.to_numpy(np.int64) - 1)


def month_label(index: np.ndarray | int) -> Any:
    """`YYYY-MM` of a `month_index` (an array gives an array)."""
    idx = np.asarray(index, dtype=np.int64)
    uniq, inverse = np.unique(idx.ravel(), return_inverse=True)  # a few months, many rows: format each once
    names = np.array([f"{i // 12:04d}-{i % 12 + 1:02d}" for i in uniq], dtype=object)
    out = names[inverse].reshape(idx.shape) if len(uniq) else np.empty(idx.shape, dtype=object)
    return out.item() if out.ndim == 0 else out


def behaviour_frame(frame: pd.DataFrame, source: str = "behaviour") -> pd.DataFrame:
    """Validate a behaviour frame (module docstring) and return it as customer_id (int64),
    m (`month_index`), value (float64), churned (0/1 int64); errors name the column."""
    if not isinstance(frame, pd.DataFrame):
        raise KpiInputError(f"{source}: expected a table, got {type(frame).__name__}")
    missing = [c for c in BEHAVIOUR_COLUMNS if c not in frame.columns]
    if missing:
        raise KpiInputError(f"{source}: missing column(s) {missing}; a behaviour table has one row per customer "
                            f"and month with columns {list(BEHAVIOUR_COLUMNS)} (value: what the bank earned that "
                            "month; churned: 0/1, the customer left that month)")
    cid = frame["customer_id"]
    if cid.isna().any() or not pd.api.types.is_numeric_dtype(cid) or (cid.astype(np.float64) % 1 != 0).any():
        bad = cid[cid.isna() | ~cid.astype(str).str.fullmatch(r"-?\d+")]
        raise KpiInputError(f"{source}: column 'customer_id' has {len(bad) or 'non-integer'} value(s) that are not "
                            f"integers (first: {bad.iloc[0] if len(bad) else cid.iloc[0]!r}); expected the "
                            "customer's integer id")
    try:
        text = frame["month"].dtype == object or pd.api.types.is_string_dtype(frame["month"])
        month = pd.to_datetime(frame["month"], utc=True, **({"format": "mixed"} if text else {}))
    except (ValueError, TypeError) as exc:
        raise KpiInputError(f"{source}: column 'month' is not a date ({exc}); expected e.g. 2025-07-01") from None
    if month.isna().any():
        i = int(np.flatnonzero(month.isna().to_numpy())[0])
        raise KpiInputError(f"{source}: column 'month' is missing at row {i}; expected a date in the month")
    value = pd.to_numeric(frame["value"], errors="coerce")
    bad = value.isna() | ~np.isfinite(value.to_numpy(np.float64, na_value=np.nan))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise KpiInputError(f"{source}: column 'value' has {int(bad.sum())} value(s) that are not finite numbers "
                            f"(row {i}: {frame['value'].iloc[i]!r}); expected euros earned that month")
    churned = frame["churned"]
    if churned.dtype == bool:
        churned = churned.astype(np.int64)
    ch = pd.to_numeric(churned, errors="coerce")
    bad = ~ch.isin([0, 1])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise KpiInputError(f"{source}: column 'churned' has {int(bad.sum())} value(s) other than 0/1 "
                            f"(row {i}: {frame['churned'].iloc[i]!r}); expected 1 in the month the customer left")
    out = pd.DataFrame({"customer_id": cid.astype(np.int64).to_numpy(), "m": month_index(month),
                        "value": value.to_numpy(np.float64), "churned": ch.to_numpy(np.int64)})
    dup = out.duplicated(["customer_id", "m"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise KpiInputError(f"{source}: customer {out['customer_id'].iloc[i]} has two rows for month "
                            f"{month_label(out['m'].iloc[i])} (row {i}); expected one row per customer and month")
    return out


def simulator_behaviour(monthly_value: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
    """The simulator's tables as a behaviour frame: value = the month's margin, churned = 1 in
    the month of churn_timestamp."""
    mv = monthly_value[["customer_id", "event_timestamp", "margin"]]
    churn = customers.set_index("customer_id")["churn_timestamp"]
    churn_m = pd.Series(month_index(churn.fillna(pd.Timestamp("1970-01-01", tz="UTC"))), index=churn.index)
    churn_m[churn.isna().to_numpy()] = -1
    m = month_index(mv["event_timestamp"])
    churned = (churn_m.reindex(mv["customer_id"]).fillna(-1).to_numpy(np.int64) == m).astype(np.int64)
    return pd.DataFrame({"customer_id": mv["customer_id"].to_numpy(np.int64), "month": mv["event_timestamp"],
                         "value": mv["margin"].to_numpy(np.float64), "churned": churned})


def read_behaviour(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A behaviour table (.csv / .parquet with `BEHAVIOUR_COLUMNS`) or a simulator folder
    (monthly_value.parquet and customers.parquet; its rfm.parquet gives the segments).
    Returns the validated behaviour frame and the segments (or None)."""
    path = Path(path)
    if path.is_dir():
        mv, cu = path / "monthly_value.parquet", path / "customers.parquet"
        if not (mv.is_file() and cu.is_file()):
            raise KpiInputError(f"--behaviour {path}: a folder must be the simulator's output (monthly_value.parquet "
                                "and customers.parquet); or give a .csv/.parquet file with columns "
                                f"{list(BEHAVIOUR_COLUMNS)}")
        frame = simulator_behaviour(pd.read_parquet(mv), pd.read_parquet(cu))
        rfm = path / "rfm.parquet"
        segs = None
        if rfm.is_file():
            r = pd.read_parquet(rfm, columns=["customer_id", "event_timestamp", "rfm_segment"])
            segs = r.rename(columns={"rfm_segment": "segment"})
        return behaviour_frame(frame, str(path)), segs
    return behaviour_frame(_read_table(path, "--behaviour"), str(path)), None


def read_segments(path: Path, column: str) -> pd.DataFrame:
    """A segment table: customer_id, `column`, optionally event_timestamp."""
    frame = _read_table(path, "--segments")
    missing = [c for c in ("customer_id", column) if c not in frame.columns]
    if missing:
        raise KpiInputError(f"--segments {path}: missing column(s) {missing}; expected customer_id, the segment "
                            f"column '{column}' (--segment-column) and optionally event_timestamp")
    keep = ["customer_id", column, *(["event_timestamp"] if "event_timestamp" in frame.columns else [])]
    return frame[keep].rename(columns={column: "segment"})


def _read_table(path: Path, option: str) -> pd.DataFrame:
    if not path.is_file():
        raise KpiInputError(f"{option} {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    raise KpiInputError(f"{option} {path}: unknown format '{suffix}'; expected .csv or .parquet")


def segment_of(decisions: pd.DataFrame, segments: pd.DataFrame | None) -> np.ndarray:
    """The segment of each decision: the customer's (latest at or before `decided_at` when the
    segments carry `event_timestamp`); `unknown` for a customer without one, `all` without segments."""
    if segments is None:
        return np.full(len(decisions), ALL_SEGMENT, dtype=object)
    if "customer_id" not in segments.columns or "segment" not in segments.columns:
        raise KpiInputError(f"segments: columns {list(segments.columns)}; expected customer_id and segment")
    left = pd.DataFrame({"customer_id": decisions["customer_id"].to_numpy(np.int64),
                         "t": pd.to_datetime(decisions["decided_at"], utc=True).to_numpy(), "_row": np.arange(len(decisions))})
    if "event_timestamp" in segments.columns:
        right = pd.DataFrame({"customer_id": segments["customer_id"].to_numpy(np.int64),
                              "t": pd.to_datetime(segments["event_timestamp"], utc=True).to_numpy(),
                              "segment": segments["segment"].astype(str).to_numpy()}).sort_values("t")
        merged = pd.merge_asof(left.sort_values("t"), right, on="t", by="customer_id", direction="backward")
        merged = merged.sort_values("_row")
        seg = merged["segment"]
    else:
        static = segments.drop_duplicates("customer_id", keep="last").set_index("customer_id")["segment"].astype(str)
        seg = static.reindex(left["customer_id"]).reset_index(drop=True)
    return seg.fillna("unknown").astype(str).to_numpy(dtype=object)


# --- the activity table ------------------------------------------------------------------------


def contacts_frame(frames: LogFrames, costs: Costs, segments: np.ndarray) -> pd.DataFrame:
    """One row per shown action: decision, customer, group, channel, action, month, segment,
    responded (0/1), converted (0/1), value and cost (module docstring)."""
    d = frames.decisions
    seg = pd.Series(segments, index=d.index)
    base = pd.DataFrame({"decision_id": d["decision_id"].astype(str), "customer_id": d["customer_id"].astype(np.int64),
                         "experiment_group": d["experiment_group"].astype(str), "channel": d["channel"].astype(str),
                         "m": month_index(d["decided_at"]), "segment": seg.astype(str)})
    first = pd.DataFrame({"decision_id": base["decision_id"], "action": d["action_id"].astype(str)})
    first = first[first["action"] != NO_ACTION]
    c = frames.candidates
    pairs = [first]
    if len(c):
        shown = c[c["rank"].astype(np.int64) >= 1]
        pairs.append(pd.DataFrame({"decision_id": shown["decision_id"].astype(str),
                                   "action": shown["action_id"].astype(str)}))
    shown_pairs = pd.concat(pairs, ignore_index=True).drop_duplicates(["decision_id", "action"])
    shown_pairs = shown_pairs[shown_pairs["decision_id"].isin(set(base["decision_id"]))]
    out = shown_pairs.merge(base, on="decision_id", how="left")
    o = frames.outcomes
    if len(o):
        oo = pd.DataFrame({"decision_id": o["decision_id"].astype(str), "action": o["action_id"].astype(str),
                           "responded": 1, "converted": (o["outcome"].astype(str) == "accepted").astype(np.int64),
                           "value_reported": o["value"].astype(np.float64)})
        out = out.merge(oo, on=["decision_id", "action"], how="left")
    else:
        out["responded"], out["converted"], out["value_reported"] = 0, 0, 0.0
    out["responded"] = out["responded"].fillna(0).astype(np.int64)
    out["converted"] = out["converted"].fillna(0).astype(np.int64)
    out["value"] = np.where(out["converted"].to_numpy() == 1, out["value_reported"].fillna(0.0), 0.0)
    out["cost"] = costs.per_contact(out["channel"], out["action"])
    out["month"] = month_label(out["m"].to_numpy()) if len(out) else pd.Series(dtype=object)
    return out.drop(columns=["value_reported"])


ROLLUPS: tuple[tuple[str, ...], ...] = ((), ("segment",), ("action",), ("channel",), ("month",), ("channel", "month"),
                                        DIMENSIONS)


def kpi_table(contacts: pd.DataFrame) -> pd.DataFrame:
    """The activity KPIs per segment x action x channel x month, per each dimension alone and
    overall (`by` names the grouping; a dimension not grouped on reads `*`)."""
    parts = []
    for keys in ROLLUPS:
        if len(contacts) == 0:
            break
        g = contacts.groupby(list(keys), sort=True, observed=True) if keys else contacts.groupby(
            np.zeros(len(contacts), dtype=np.int64))
        agg = g.agg(contacts=("decision_id", "size"), reach=("customer_id", "nunique"),
                    responses=("responded", "sum"), conversions=("converted", "sum"), value=("value", "sum"),
                    cost=("cost", "sum")).reset_index()
        agg = agg.drop(columns=[c for c in agg.columns if c not in KPI_COLUMNS])
        agg.insert(0, "by", " x ".join(keys) if keys else "overall")
        for dim in DIMENSIONS:
            if dim not in agg.columns:
                agg[dim] = "*"
        parts.append(agg)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in KPI_COLUMNS})
    t = pd.concat(parts, ignore_index=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        t["response_rate"] = t["responses"] / t["contacts"]
        t["conversion_rate"] = t["conversions"] / t["contacts"]
        t["net"] = t["value"] - t["cost"]
        t["roi"] = np.where(t["cost"] > 0, t["net"] / t["cost"].where(t["cost"] > 0, 1.0), np.nan)
    return t[list(KPI_COLUMNS)]


# --- the hold-out table ------------------------------------------------------------------------


def customer_cohort(frames: LogFrames, segments: np.ndarray, *, threshold: float | None = None) -> pd.DataFrame:
    """One row per customer of the log: arm (treated / holdout), the first decision's month
    index `m`, channel, intended action and segment, and `mixed` (decisions in both arms)."""
    d = frames.decisions
    t = pd.DataFrame({"customer_id": d["customer_id"].astype(np.int64).to_numpy(),
                      "at": pd.to_datetime(d["decided_at"], utc=True).to_numpy(),
                      "group": d["experiment_group"].astype(str).to_numpy(),
                      "channel": d["channel"].astype(str).to_numpy(), "segment": np.asarray(segments, dtype=object),
                      "action": intended_actions(frames.candidates, d["decision_id"], filtered=frames.filtered,
                                                 threshold=threshold)})
    unknown = sorted(set(t["group"]) - {HOLDOUT, NBA_GROUP, EXPLORE})
    if unknown:
        raise ExperimentDataError(f"decision log: experiment_group value(s) {unknown}; expected holdout, nba, explore")
    t["_treated"] = t["group"] != HOLDOUT
    treated = t.groupby("customer_id", sort=False)["_treated"].agg(["max", "min"])
    first = t.sort_values(["customer_id", "at"], kind="stable").drop_duplicates("customer_id", keep="first")
    first = first.set_index("customer_id")
    out = pd.DataFrame({"customer_id": first.index.to_numpy(np.int64),
                        "arm": np.where(treated.loc[first.index, "max"].to_numpy(), TREATED, HOLDOUT),
                        "mixed": (treated.loc[first.index, "max"] != treated.loc[first.index, "min"]).to_numpy(),
                        "m": month_index(pd.Series(first["at"].to_numpy())),
                        "channel": first["channel"].to_numpy(), "segment": first["segment"].to_numpy(),
                        "action": first["action"].to_numpy()})
    out["month"] = month_label(out["m"].to_numpy()) if len(out) else pd.Series(dtype=object)
    return out.reset_index(drop=True)


def horizon_outcomes(cohort: pd.DataFrame, behaviour: pd.DataFrame, horizons: Sequence[int],
                     discount_rate: float) -> pd.DataFrame:
    """The cohort with, per horizon h, `matured_<h>m` and `churn_<h>m`, `value_<h>m`, `clv_<h>m`
    (module docstring); `known` says whether the behaviour has any row of the customer."""
    out = cohort.copy()
    last = int(behaviour["m"].max()) if len(behaviour) else -1
    start = pd.Series(out["m"].to_numpy(), index=out["customer_id"].to_numpy())
    b = behaviour[behaviour["customer_id"].isin(start.index)]
    rel = b["m"].to_numpy() - start.reindex(b["customer_id"]).to_numpy()  # months after the cohort month
    out["known"] = out["customer_id"].isin(set(behaviour["customer_id"])).to_numpy()
    monthly = (1.0 + discount_rate) ** (-1.0 / 12.0)
    codes = pd.Index(out["customer_id"]).get_indexer(b["customer_id"])
    for h in horizons:
        inside = (rel >= 1) & (rel <= h)
        churn_by = (rel <= h) & (b["churned"].to_numpy() == 1)
        n = len(out)
        value = np.bincount(codes[inside], weights=b["value"].to_numpy()[inside], minlength=n)
        clv = np.bincount(codes[inside], weights=b["value"].to_numpy()[inside] * monthly ** rel[inside], minlength=n)
        churned = np.bincount(codes[churn_by], minlength=n) > 0
        out[f"matured_{h}m"] = (out["m"].to_numpy() + h <= last) & out["known"].to_numpy()
        out[f"churn_{h}m"] = churned.astype(np.float64)
        out[f"value_{h}m"] = value / h
        out[f"clv_{h}m"] = clv
    return out


def holdout_table(outcomes: pd.DataFrame, horizons: Sequence[int], *, acquisition: float | None = None,
                  confidence: float = DEFAULT_CONFIDENCE, limits: EvaluationLimits | None = None) -> pd.DataFrame:
    """Treated against hold-out for every metric and horizon, overall and per segment,
    intended action, channel and cohort month (one row each)."""
    rows: list[dict[str, Any]] = []
    arms = [HOLDOUT, TREATED]
    for h in horizons:
        sub = outcomes[outcomes[f"matured_{h}m"].to_numpy(bool)]
        if len(sub) == 0 or sub["arm"].nunique() < 2:
            continue
        codes = (sub["arm"].to_numpy() == TREATED).astype(np.int64)
        ys = {m: sub[f"{m}_{h}m"].to_numpy(np.float64) for m in METRICS}
        splits = [("overall", np.zeros(len(sub), dtype=np.int64), ["overall"])]
        for by in ("segment", "action", "channel", "month"):
            c, labels = pd.factorize(sub[by].astype(str), sort=True)
            splits.append((by, c.astype(np.int64), [str(x) for x in labels]))
        for by, seg_codes, labels in splits:
            for r in segmented(ys, codes, arms, HOLDOUT, seg_codes, labels, unit="customer_id",
                               confidence=confidence, limits=limits):
                a = r.arms[0]
                clv_t = clv_h = math.nan
                if acquisition and r.outcome == "clv":
                    clv_t, clv_h = a.mean / acquisition, r.control.mean / acquisition
                rows.append({"horizon": h, "metric": r.outcome, "by": by, "key": r.segment, "treated_n": a.n,
                             "treated_mean": a.mean, "holdout_n": r.control.n, "holdout_mean": r.control.mean,
                             "lift": a.lift, "ci_low": a.ci_low, "ci_high": a.ci_high,
                             "relative_lift": a.relative_lift, "p_value": a.p_value, "treated_clv_cac": clv_t,
                             "holdout_clv_cac": clv_h, "flags": "; ".join(a.flags)})
    return pd.DataFrame(rows, columns=list(HOLDOUT_COLUMNS))


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KpiReport:
    """Everything `nba evaluate kpis` shows; `empty` when the period holds no decision."""

    period: tuple[str | None, str | None]
    decisions: int
    kpis: pd.DataFrame
    holdout: pd.DataFrame
    attribution: pd.DataFrame | None
    horizons: tuple[int, ...]
    notes: tuple[str, ...]
    costs: Costs

    @property
    def empty(self) -> bool:
        return self.decisions == 0

    def overall(self) -> dict[str, float]:
        if len(self.kpis) == 0:
            return {}
        row = self.kpis[self.kpis["by"] == "overall"].iloc[0]
        return {k: float(row[k]) for k in ("contacts", "reach", "responses", "response_rate", "conversions",
                                           "conversion_rate", "value", "cost", "net", "roi")}

    def to_dict(self) -> dict[str, Any]:
        def records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
            if frame is None:
                return []
            return [{k: _plain(v) for k, v in r.items()} for r in frame.to_dict(orient="records")]

        return {"period": {"since": self.period[0], "until": self.period[1]}, "decisions": self.decisions,
                "empty": self.empty, "horizons_months": list(self.horizons),
                "costs": {"channel": dict(self.costs.channel), "action": dict(self.costs.action),
                          "acquisition": self.costs.acquisition, "discount_rate": self.costs.discount_rate},
                "overall": self.overall(), "kpis": records(self.kpis), "holdout": records(self.holdout),
                "attribution": records(self.attribution), "notes": list(self.notes)}

    def monthly_values(self) -> dict[str, dict[str, float]]:
        """Month (YYYY-MM) -> dashboard values of that month's decisions: `kpi_rates.*`,
        `kpi_money.*` (overall and per channel) and `kpi_holdout.*` (the cohort of that month)."""
        out: dict[str, dict[str, float]] = {}
        k = self.kpis
        for _, r in k[k["by"] == "month"].iterrows():
            _kpi_values(out.setdefault(str(r["month"]), {}), r, "overall")
        for _, r in k[k["by"] == "channel x month"].iterrows():
            _kpi_values(out.setdefault(str(r["month"]), {}), r, f"channel.{slug(r['channel'])}")
        h = self.holdout
        for _, r in h[h["by"] == "month"].iterrows():
            vals = out.setdefault(str(r["key"]), {})
            name = f"kpi_holdout.{r['metric']}_{int(r['horizon'])}m"
            vals[f"{name}.lift"] = float(r["lift"])
            vals[f"{name}.treated"] = float(r["treated_mean"])
            vals[f"{name}.holdout"] = float(r["holdout_mean"])
        return {m: {n: v for n, v in vals.items() if v == v and math.isfinite(v)} for m, vals in out.items()}

    def period_values(self) -> dict[str, float]:
        """Dashboard values of the whole period: `kpi_period.*` and `attribution.<model>.<action>`."""
        vals: dict[str, float] = {}
        for n, v in self.overall().items():
            vals[f"kpi_period.{n}"] = v
        h = self.holdout
        for _, r in h[h["by"] == "overall"].iterrows():
            vals[f"kpi_period.{r['metric']}_{int(r['horizon'])}m.lift"] = float(r["lift"])
        a = self.attribution
        if a is not None and len(a):
            from nba.evaluation.attribution import MODELS

            for _, r in a[(a["by"] == "action") & (a["metric"] == "value") & (a["touches"] > 0)].iterrows():
                for model in (*MODELS, "holdout_incremental"):
                    vals[f"attribution.{model}.{slug(r['key'])}"] = float(r[model])
        return {n: v for n, v in vals.items() if v == v and math.isfinite(v)}


def _kpi_values(vals: dict[str, float], r: Any, where: str) -> None:
    for metric in ("response_rate", "conversion_rate"):
        vals[f"kpi_rates.{metric}.{where}"] = float(r[metric])
    for metric in ("value", "cost", "roi"):
        vals[f"kpi_money.{metric}.{where}"] = float(r[metric])


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def cut_period(frames: LogFrames, since: pd.Timestamp | None, until: pd.Timestamp | None) -> LogFrames:
    """The log restricted to decisions with since <= decided_at < until (their candidates,
    filtered rows and outcomes with them)."""
    from nba.stores.decisions import LogFrames

    if since is None and until is None:
        return frames
    t = pd.to_datetime(frames.decisions["decided_at"], utc=True)
    keep = np.ones(len(t), dtype=bool)
    if since is not None:
        keep &= (t >= since).to_numpy()
    if until is not None:
        keep &= (t < until).to_numpy()
    d = frames.decisions[keep].reset_index(drop=True)
    ids = set(d["decision_id"].astype(str))

    def sub(f: pd.DataFrame) -> pd.DataFrame:
        return f[f["decision_id"].astype(str).isin(ids)].reset_index(drop=True) if len(f) else f

    feats = sub(frames.features) if frames.features is not None else None
    return LogFrames(d, sub(frames.candidates), sub(frames.filtered), sub(frames.outcomes), feats)


def kpi_report(frames: LogFrames, *, behaviour: pd.DataFrame | None = None, segments: pd.DataFrame | None = None,
               costs: Costs | None = None, horizons: Sequence[int] = DEFAULT_HORIZONS,
               since: pd.Timestamp | None = None, until: pd.Timestamp | None = None,
               threshold: float | None = None, confidence: float = DEFAULT_CONFIDENCE,
               limits: EvaluationLimits | None = None, attribution_window_days: float | None = 30.0,
               half_life_days: float = 7.0) -> KpiReport:
    """The business KPIs of the log's decisions in [since, until): the activity table, the
    treated-vs-hold-out table over `horizons` months (with `behaviour`, a `behaviour_frame`)
    and the attribution table (`nba.evaluation.attribution`; None to leave it out)."""
    costs = costs or Costs()
    hs = tuple(sorted({int(h) for h in horizons}))
    if not hs or hs[0] < 1:
        raise KpiInputError(f"horizons {list(horizons)}: expected whole months >= 1, e.g. 3,6")
    cut = cut_period(frames, since, until)
    period = (since.isoformat() if since is not None else None, until.isoformat() if until is not None else None)
    if len(cut.decisions) == 0:
        where = _period_text(since, until)
        held = len(frames.decisions)
        note = (f"no decision in the period {where} (the log holds {held:,} decision(s) in all): nothing was "
                "measured, so this report has no figures (not zeros)")
        return KpiReport(period, 0, kpi_table(pd.DataFrame()), pd.DataFrame(columns=list(HOLDOUT_COLUMNS)), None,
                         hs, (note,), costs)
    notes: list[str] = []
    seg = segment_of(cut.decisions, segments)
    contacts = contacts_frame(cut, costs, seg)
    table = kpi_table(contacts)
    missing_costs = costs.unknown(contacts["channel"], contacts["action"]) if len(contacts) else []
    if missing_costs:
        notes.append(f"no cost declared for {', '.join(missing_costs)}: counted as 0 euros per contact")
    notes.append("contacts: every shown action (a decision showing k actions counts k); value: the values "
                 "reported against accepted outcomes; cost: the channel's cost per contact + the action's; "
                 "roi = (value - cost) / cost")
    holdout = pd.DataFrame(columns=list(HOLDOUT_COLUMNS))
    if behaviour is None:
        notes.append("treated against hold-out (churn, value, CLV over the horizons) not measured: no behaviour "
                     "table given (--behaviour)")
    else:
        cohort = customer_cohort(cut, seg, threshold=threshold)
        if cohort["mixed"].any():
            notes.append(f"{int(cohort['mixed'].sum())} customer(s) have decisions both in and out of the hold-out "
                         "(was the salt changed?): counted as treated")
        out = horizon_outcomes(cohort, behaviour, hs, costs.discount_rate)
        unknown = int((~out["known"]).sum())
        if unknown:
            notes.append(f"{unknown:,} of {len(out):,} customer(s) of the log have no row in the behaviour table: "
                         "left out of the hold-out comparison")
        for h in hs:
            immature = int((out["known"] & ~out[f"matured_{h}m"]).sum())
            if immature:
                notes.append(f"{immature:,} customer(s) decided too recently for {h} months of behaviour (the "
                             f"behaviour ends {month_label(int(behaviour['m'].max()))}): left out of the {h}-month "
                             "figures")
        if (out["arm"] == HOLDOUT).sum() == 0:
            notes.append("no hold-out customer in the period: treated against hold-out not measured "
                         "(is experiment.holdout_share 0?)")
        elif (out["arm"] == TREATED).sum() == 0:
            notes.append("no treated customer in the period (every decision is in the hold-out): treated against "
                         "hold-out not measured")
        holdout = holdout_table(out, hs, acquisition=costs.acquisition, confidence=confidence, limits=limits)
        notes.append("hold-out comparison: one unit per customer, cohort = the customer's first decision in the "
                     "period (its month, channel, segment and intended action); churn_Nm: left within N months "
                     "after the cohort month; value_Nm: mean monthly value over them; clv_Nm: their value "
                     f"discounted at {costs.discount_rate:.0%} a year" + (
                         f"; CLV/CAC with an acquisition cost of {costs.acquisition:g}" if costs.acquisition else ""))
    attribution = None
    if attribution_window_days is not None:
        from nba.evaluation.attribution import EXPLANATION, attribution_table

        attribution = attribution_table(cut, window_days=attribution_window_days, half_life_days=half_life_days,
                                        threshold=threshold, confidence=confidence)
        notes.append(EXPLANATION)
    return KpiReport(period, len(cut.decisions), table, holdout, attribution, hs, tuple(notes), costs)


def _period_text(since: pd.Timestamp | None, until: pd.Timestamp | None) -> str:
    a = since.isoformat() if since is not None else "the start"
    b = until.isoformat() if until is not None else "the end"
    return f"[{a}, {b})"
