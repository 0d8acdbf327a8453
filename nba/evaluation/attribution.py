"""Attribution beside incrementality: who gets the credit for the conversions that happened,
next to what the hold-out says the contacts caused.

Paths (`log_paths`): a *touch* is a shown action of the decision log (a candidate with
rank >= 1, or the decision's first shown action) at its `decided_at`, keyed by its action and
its channel. A *conversion* is an `accepted` outcome of any decision (against `do_nothing` too:
a hold-out customer who converted without being asked), at its `responded_at`, worth its
value. Each touch belongs to the customer's first conversion at or after it, if that comes
within `window_days`; the touches of a conversion, in time order, are its path. A conversion
without a touch in its window is not attributed (counted in `Paths.untouched`). The touches
that led to no conversion form one non-converting path per customer (the Markov model needs
them: a touch that often leads nowhere earns less).

Models (`MODELS`), each splitting one conversion (and its value) among its path's touches:
`first_touch`, `last_touch`, `linear` (equal shares), `u_shaped` (40 % first, 40 % last, 20 %
shared by the middle; two touches 50/50; one touch all), `time_decay` (weight 2^(-age /
half-life), age = conversion time - touch time), and `markov` (data-driven: the removal effect
of each key in a first-order Markov chain start -> touches -> conversion | null, fitted on the
converting and the non-converting paths; each conversion is shared among its path's touches in
proportion to their keys' removal effects, so its value goes where it was earned).

`attribution_table` puts them beside the hold-out incremental value of the same key: the lift
of the treated decisions (nba and explore) over the hold-out's, per intended action and per
channel (`nba.evaluation.incrementality`), times the number of treated decisions, with its CI.
`EXPLANATION` is the sentence that goes with the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nba.evaluation.incrementality import HOLDOUT, decision_outcomes
from nba.evaluation.stats import DEFAULT_CONFIDENCE, ExperimentDataError, segmented
from nba.records import NO_ACTION

if TYPE_CHECKING:
    from nba.stores.decisions import LogFrames

MODELS = ("first_touch", "last_touch", "linear", "u_shaped", "time_decay", "markov")
KEYS = ("action", "channel")
DAY_S = 86_400.0
EXPLANATION = (
    "attribution shares the credit for the conversions that happened among the touches before them (the "
    "conversions that would have happened anyway included); the hold-out incremental value measures what the "
    "touches caused (treated decisions against the hold-out's, per intended action and channel): where "
    "attribution exceeds it, the difference is credit for conversions the contacts did not cause")
TABLE_COLUMNS = ("by", "key", "metric", "touches", *MODELS, "holdout_incremental", "holdout_ci_low",
                 "holdout_ci_high")


class AttributionError(ExperimentDataError):
    """Paths or parameters that attribution cannot work on."""


@dataclass(frozen=True)
class Paths:
    """Touch paths: `touches` (path_id, pos 0.., t seconds, action, channel) in path order and
    `paths` (path_id, converted 0/1, value, t_end: the conversion time, NaN if none)."""

    touches: pd.DataFrame
    paths: pd.DataFrame
    untouched: int = 0  # conversions without a touch in their window (not attributed)

    @classmethod
    def from_lists(cls, items: Sequence[tuple[Sequence[tuple[str, str, float]], bool, float, float]]) -> Paths:
        """Hand-built paths: each item is ([(action, channel, t), ...], converted, value, t_end)."""
        rows, prow = [], []
        for pid, (touches, converted, value, t_end) in enumerate(items):
            for pos, (action, channel, t) in enumerate(touches):
                rows.append((pid, pos, float(t), action, channel))
            prow.append((pid, int(converted), float(value), float(t_end) if converted else np.nan))
        return cls(pd.DataFrame(rows, columns=["path_id", "pos", "t", "action", "channel"]),
                   pd.DataFrame(prow, columns=["path_id", "converted", "value", "t_end"]))


def log_paths(frames: LogFrames, *, window_days: float = 30.0) -> Paths:
    """The touch paths of a decision log (module docstring)."""
    if not window_days > 0:
        raise AttributionError(f"attribution window {window_days!r} days; expected a number of days > 0")
    d = frames.decisions
    dec = pd.DataFrame({"decision_id": d["decision_id"].astype(str), "customer_id": d["customer_id"].astype(np.int64),
                        "channel": d["channel"].astype(str),
                        "t": pd.to_datetime(d["decided_at"], utc=True).astype("int64").to_numpy() / 1e9})
    pairs = [pd.DataFrame({"decision_id": dec["decision_id"], "action": d["action_id"].astype(str)})]
    c = frames.candidates
    if len(c):
        shown = c[c["rank"].astype(np.int64) >= 1]
        pairs.append(pd.DataFrame({"decision_id": shown["decision_id"].astype(str),
                                   "action": shown["action_id"].astype(str)}))
    touch = pd.concat(pairs, ignore_index=True).drop_duplicates(["decision_id", "action"])
    touch = touch[touch["action"] != NO_ACTION].merge(dec, on="decision_id", how="inner")
    o = frames.outcomes
    acc = o[o["outcome"].astype(str) == "accepted"] if len(o) else o
    conv = pd.DataFrame({"decision_id": acc["decision_id"].astype(str),
                         "t_end": pd.to_datetime(acc["responded_at"], utc=True).astype("int64").to_numpy() / 1e9
                         if len(acc) else np.zeros(0),
                         "value": acc["value"].astype(np.float64).to_numpy() if len(acc) else np.zeros(0)})
    conv = conv.merge(dec[["decision_id", "customer_id"]], on="decision_id", how="inner")
    conv = conv.sort_values(["t_end", "customer_id"], kind="stable").reset_index(drop=True)
    conv["conv_id"] = np.arange(len(conv))
    touch = touch.sort_values(["t", "customer_id"], kind="stable").reset_index(drop=True)
    if len(touch) and len(conv):
        m = pd.merge_asof(touch, conv[["customer_id", "t_end", "conv_id"]], left_on="t", right_on="t_end",
                          by="customer_id", direction="forward", allow_exact_matches=True)
        ok = m["conv_id"].notna() & ((m["t_end"] - m["t"]) <= window_days * DAY_S)
    else:
        m = touch.assign(t_end=np.nan, conv_id=np.nan)
        ok = pd.Series(False, index=m.index)
    n_conv = len(conv)
    # converting paths are numbered by conversion; the leftovers of each customer form one null path
    null_codes, _ = pd.factorize(m.loc[~ok, "customer_id"], sort=True)
    pid = np.empty(len(m), dtype=np.int64)
    pid[ok.to_numpy()] = m.loc[ok, "conv_id"].to_numpy(np.int64)
    pid[~ok.to_numpy()] = n_conv + null_codes
    touches = pd.DataFrame({"path_id": pid, "t": m["t"].to_numpy(np.float64), "action": m["action"].to_numpy(),
                            "channel": m["channel"].to_numpy()})
    touches = touches.sort_values(["path_id", "t"], kind="stable").reset_index(drop=True)
    touches.insert(1, "pos", touches.groupby("path_id").cumcount().to_numpy(np.int64))
    n_null = int(null_codes.max()) + 1 if len(null_codes) else 0
    paths = pd.DataFrame({"path_id": np.arange(n_conv + n_null, dtype=np.int64),
                          "converted": np.r_[np.ones(n_conv, dtype=np.int64), np.zeros(n_null, dtype=np.int64)],
                          "value": np.r_[conv["value"].to_numpy(np.float64), np.zeros(n_null)],
                          "t_end": np.r_[conv["t_end"].to_numpy(np.float64), np.full(n_null, np.nan)]})
    touched = set(touches["path_id"])
    untouched = int(sum(1 for p in range(n_conv) if p not in touched))
    return Paths(touches, paths, untouched)


def touch_weights(paths: Paths, model: str, *, half_life_days: float = 7.0) -> np.ndarray:
    """The share of its path's conversion each touch of a converting path gets under a
    position or time model (0 for touches of non-converting paths); shares sum to 1 per path."""
    t = paths.touches
    p = paths.paths.set_index("path_id")
    n = t.groupby("path_id")["pos"].transform("size").to_numpy(np.int64)
    pos = t["pos"].to_numpy(np.int64)
    converted = p["converted"].reindex(t["path_id"]).to_numpy(np.int64) == 1
    if model == "first_touch":
        w = (pos == 0).astype(np.float64)
    elif model == "last_touch":
        w = (pos == n - 1).astype(np.float64)
    elif model == "linear":
        w = 1.0 / n
    elif model == "u_shaped":
        end = (pos == 0) | (pos == n - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(n == 1, 1.0, np.where(n == 2, 0.5, np.where(end, 0.4, 0.2 / np.maximum(n - 2, 1))))
    elif model == "time_decay":
        if not half_life_days > 0:
            raise AttributionError(f"time-decay half-life {half_life_days!r} days; expected a number of days > 0")
        age = p["t_end"].reindex(t["path_id"]).to_numpy(np.float64) - t["t"].to_numpy(np.float64)
        raw = np.where(converted, np.exp2(-np.maximum(age, 0.0) / (half_life_days * DAY_S)), 0.0)
        total = pd.Series(raw).groupby(t["path_id"].to_numpy()).transform("sum").to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(total > 0, raw / total, 0.0)
    else:
        raise AttributionError(f"attribution model '{model}' is not a position or time model; expected one of "
                               f"{list(MODELS[:-1])}")
    return np.where(converted, w, 0.0)


def markov_removal(paths: Paths, key: str) -> pd.Series:
    """Removal effect per key value: 1 - P(conversion without it) / P(conversion), in a
    first-order absorbing Markov chain fitted on every path (start -> touches -> conversion |
    null); a key whose removal does not change P has effect 0."""
    t = paths.touches
    keys = sorted(set(t[key].astype(str)))
    if not keys:
        return pd.Series(dtype=np.float64)
    k = len(keys)
    start, conv, null = k, k + 1, k + 2  # transient: keys 0..k-1 and start; absorbing: conv, null
    code = pd.Categorical(t[key].astype(str), categories=keys).codes.astype(np.int64)
    pid = t["path_id"].to_numpy(np.int64)
    converted = paths.paths.set_index("path_id")["converted"]
    counts = np.zeros((k + 1, k + 3))
    first = t["pos"].to_numpy(np.int64) == 0
    np.add.at(counts, (np.full(int(first.sum()), start), code[first]), 1.0)
    same_next = np.r_[pid[1:] == pid[:-1], False]
    np.add.at(counts, (code[:-1][same_next[:-1]], code[1:][same_next[:-1]]), 1.0)
    last = ~same_next
    ends = np.where(converted.reindex(pid[last]).to_numpy(np.int64) == 1, conv, null)
    np.add.at(counts, (code[last], ends), 1.0)
    rows = counts.sum(axis=1, keepdims=True)
    prob = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)

    def p_conv(removed: int | None) -> float:
        q = prob[:, : k + 1].copy()
        r = prob[:, conv].copy()
        if removed is not None:  # every transition into the removed state ends in null
            q[:, removed] = 0.0
            q[removed, :] = 0.0
            r[removed] = 0.0
        x = np.linalg.solve(np.eye(k + 1) - q, r)
        return float(x[start])

    base = p_conv(None)
    effects = [max(0.0, 1.0 - p_conv(i) / base) if base > 0 else 0.0 for i in range(k)]
    return pd.Series(effects, index=keys, dtype=np.float64)


def markov_weights(paths: Paths, key: str) -> np.ndarray:
    """Each touch's share of its converting path under the Markov model: its key's removal
    effect over the sum of the effects of the path's touches (equal shares where they are all 0)."""
    t = paths.touches
    effects = markov_removal(paths, key)
    converted = paths.paths.set_index("path_id")["converted"].reindex(t["path_id"]).to_numpy(np.int64) == 1
    e = t[key].astype(str).map(effects).fillna(0.0).to_numpy(np.float64)
    pid = t["path_id"].to_numpy()
    total = pd.Series(e).groupby(pid).transform("sum").to_numpy()
    n = pd.Series(e).groupby(pid).transform("size").to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(total > 0, e / total, 1.0 / n)
    return np.where(converted, w, 0.0)


def attribute(paths: Paths, key: str, *, half_life_days: float = 7.0) -> pd.DataFrame:
    """Credited conversions and value per key value and model: a frame indexed by key with
    columns `<model>` (conversions) and `<model>_value`, plus `touches`."""
    if key not in KEYS:
        raise AttributionError(f"attribution key '{key}'; expected one of {list(KEYS)}")
    t = paths.touches
    keys = sorted(set(t[key].astype(str)))
    out = pd.DataFrame(index=pd.Index(keys, name="key"))
    out["touches"] = t.groupby(t[key].astype(str)).size().reindex(keys).fillna(0).astype(np.int64)
    value = paths.paths.set_index("path_id")["value"].reindex(t["path_id"]).to_numpy(np.float64)
    for model in MODELS[:-1]:
        w = touch_weights(paths, model, half_life_days=half_life_days)
        g = pd.DataFrame({"k": t[key].astype(str).to_numpy(), "c": w, "v": w * value}).groupby("k").sum()
        out[model] = g["c"].reindex(keys).fillna(0.0)
        out[f"{model}_value"] = g["v"].reindex(keys).fillna(0.0)
    w = markov_weights(paths, key)
    g = pd.DataFrame({"k": t[key].astype(str).to_numpy(), "c": w, "v": w * value}).groupby("k").sum()
    out["markov"] = g["c"].reindex(keys).fillna(0.0)
    out["markov_value"] = g["v"].reindex(keys).fillna(0.0)
    return out


def holdout_increments(frames: LogFrames, *, threshold: float | None = None,
                       confidence: float = DEFAULT_CONFIDENCE) -> pd.DataFrame:
    """Incremental conversions and value of the treated decisions over the hold-out, per
    intended action and per channel and in total: (treated mean - hold-out mean) x treated
    decisions, with the CI scaled the same way. Columns by, key, metric, incremental, ci_low,
    ci_high."""
    from nba.evaluation.stats import cluster_codes

    f = decision_outcomes(frames, threshold=threshold)
    arm = (f["experiment_group"].astype(str) != HOLDOUT).to_numpy().astype(np.int64)
    cols = ["by", "key", "metric", "incremental", "ci_low", "ci_high"]
    if arm.min(initial=1) == 1 or arm.max(initial=0) == 0:
        return pd.DataFrame(columns=cols)
    ys = {"conversions": f["converted"].to_numpy(np.float64), "value": f["value"].to_numpy(np.float64)}
    clusters = cluster_codes(f["customer_id"].to_numpy())
    rows = []
    for by, column in (("total", None), ("action", "intended_action"), ("channel", "channel")):
        if column is None:
            codes, labels = np.zeros(len(f), dtype=np.int64), ["total"]
        else:
            c, u = pd.factorize(f[column].astype(str), sort=True)
            codes, labels = c.astype(np.int64), [str(x) for x in u]
        for r in segmented(ys, arm, [HOLDOUT, "treated"], HOLDOUT, codes, labels, clusters=clusters,
                           unit="customer_id", confidence=confidence):
            a = r.arms[0]
            rows.append({"by": by, "key": r.segment, "metric": r.outcome, "incremental": a.lift * a.n,
                         "ci_low": a.ci_low * a.n, "ci_high": a.ci_high * a.n})
    return pd.DataFrame(rows, columns=cols)


def attribution_table(frames: LogFrames, *, window_days: float = 30.0, half_life_days: float = 7.0,
                      threshold: float | None = None, confidence: float = DEFAULT_CONFIDENCE) -> pd.DataFrame:
    """Every model's credit per action and per channel (and their totals), conversions and
    value, beside the hold-out incremental figure (`TABLE_COLUMNS`)."""
    paths = log_paths(frames, window_days=window_days)
    inc = holdout_increments(frames, threshold=threshold, confidence=confidence)
    inc_by = {(r.by, r.key, r.metric): r for r in inc.itertuples(index=False)}
    rows = []
    for key in KEYS:
        credit = attribute(paths, key, half_life_days=half_life_days)
        for metric, suffix in (("conversions", ""), ("value", "_value")):
            keys = sorted(set(credit.index) | {k for (b, k, m) in inc_by if b == key and m == metric} - {NO_ACTION})
            for k in [*keys, "total"]:
                if k == "total":
                    vals = {m: float(credit[f"{m}{suffix}"].sum()) for m in MODELS}
                    touches = int(credit["touches"].sum())
                    h = inc_by.get(("total", "total", metric))
                else:
                    vals = {m: float(credit[f"{m}{suffix}"].get(k, 0.0)) for m in MODELS}
                    touches = int(credit["touches"].get(k, 0))
                    h = inc_by.get((key, k, metric))
                rows.append({"by": key, "key": k, "metric": metric, "touches": touches, **vals,
                             "holdout_incremental": h.incremental if h else np.nan,
                             "holdout_ci_low": h.ci_low if h else np.nan, "holdout_ci_high": h.ci_high if h else np.nan})
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    table.attrs["untouched_conversions"] = paths.untouched
    return table


def distance_to_truth(table: pd.DataFrame, truth: Mapping[str, float], *, by: str = "action",
                      metric: str = "value") -> pd.DataFrame:
    """How far each model (and the hold-out estimate) is from a known incremental effect per key
    (the simulator's): the total's error and the sum of absolute errors over the keys."""
    t = table[(table["by"] == by) & (table["metric"] == metric) & (table["key"] != "total")].set_index("key")
    keys = sorted(truth)
    true = pd.Series(truth, dtype=np.float64).reindex(keys)
    rows = []
    for model in (*MODELS, "holdout_incremental"):
        est = t[model].reindex(keys).fillna(0.0)
        rows.append({"model": model, "estimate_total": float(est.sum()), "truth_total": float(true.sum()),
                     "total_error": float(est.sum() - true.sum()), "abs_error_by_key": float((est - true).abs().sum())})
    return pd.DataFrame(rows)
