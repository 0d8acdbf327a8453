"""The customers' later behaviour after the decisions of `tests.synthetic_log`, with its true
expectation under the platform's policy and under the hold-out, so the KPIs' treated-against-
hold-out figures can be checked against the truth.

The model, per customer (all its decisions fall in one month M, the cohort month):

* a base monthly value b ~ Gamma(2, 10), plus for each conversion of its decisions a monthly
  gain of the conversion's value / 12 (a product bought is worth a year's value spread over the
  months), plus N(0, 5) noise per month;
* a monthly churn hazard H0 * R ** c (c: its number of conversions): converted customers stay
  longer. The churn month has its value row; there is no row after it;
* rows from month M - 1 to M + `months`.

The truth is exact: each decision converts independently with the probability the simulator's
truth gives for what the policy (the arbitration's winner mixed with exploration, `eps`) or the
hold-out (nothing: P(convert | not contacted) of the top candidate) would show, worth the value
of that action; the expectation over the 2^n conversion patterns of a customer's n decisions
is summed exactly (`true_effects`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from tests.synthetic_log import SyntheticLog

H0, R, GAIN_MONTHS, NOISE_SD = 0.05, 0.4, 12.0, 5.0


def base_values(customers: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 10.0, size=len(customers))


def later_behaviour(log: SyntheticLog, *, months: int = 7, seed: int = 11) -> pd.DataFrame:
    """customer_id, month, value, churned for every customer of the log (module docstring)."""
    d = log.decisions
    per = d.groupby("customer_id", sort=True).agg(c=("converted", "sum"), v=("value", "sum"))
    cust = per.index.to_numpy(np.int64)
    rng = np.random.default_rng(seed)
    base = base_values(cust, seed)
    gain = per["v"].to_numpy() / GAIN_MONTHS
    hazard = H0 * R ** per["c"].to_numpy()
    cohort = pd.Timestamp("2025-06-01", tz="UTC")
    u = rng.random((len(cust), months))
    churn_at = np.where((u < hazard[:, None]).any(axis=1), (u < hazard[:, None]).argmax(axis=1) + 1, months + 1)
    rows = []
    for m in range(-1, months + 1):  # month offsets from the cohort month
        alive = churn_at >= max(m, 1)
        value = np.where(m >= 1, base + gain, base) + rng.normal(0.0, NOISE_SD, size=len(cust))
        rows.append(pd.DataFrame({"customer_id": cust[alive], "month": cohort + pd.DateOffset(months=m),
                                  "value": value[alive], "churned": (churn_at[alive] == m).astype(np.int64)}))
    return pd.concat(rows, ignore_index=True)


def true_effects(log: SyntheticLog, *, eps: float, horizons: Sequence[int], discount_rate: float,
                 seed: int = 11) -> dict[tuple[str, int], float]:
    """(metric, horizon) -> the true mean effect per customer of the policy over the hold-out."""
    d = log.decisions.reset_index(drop=True)
    n, k = log.p_treated.shape
    rows = np.arange(n)
    elig = log.eligible
    n_cand = elig.sum(axis=1)
    winner = d["greedy_index"].to_numpy()
    top = d["top_index"].to_numpy()
    gain = log.value / GAIN_MONTHS
    pi = eps * elig / n_cand[:, None]
    pi[rows[winner >= 0], winner[winner >= 0]] += 1 - eps
    pi_nothing = np.where(winner >= 0, 0.0, 1 - eps)
    pc_top, g_top = log.p_control[rows, top], gain[rows, top]
    arms = {
        "policy": ((pi * log.p_treated).sum(axis=1) + pi_nothing * pc_top,
                   (pi * log.p_treated * gain).sum(axis=1) + pi_nothing * pc_top * g_top),
        "holdout": (pc_top, pc_top * g_top),
    }
    order = np.argsort(d["customer_id"].to_numpy(), kind="stable")
    cust = d["customer_id"].to_numpy()[order]
    per = int(np.bincount(pd.factorize(cust)[0]).max())
    if (np.bincount(pd.factorize(cust)[0]) != per).any():
        raise ValueError("true_effects needs the same number of decisions per customer")
    ucust = cust[::per]
    base = base_values(ucust, seed)
    delta = (1 + discount_rate) ** (-1 / 12)
    out: dict[str, dict[tuple[str, int], np.ndarray]] = {}
    for arm, (q, qmu) in arms.items():
        q = q[order].reshape(-1, per)
        mu = np.divide(qmu[order].reshape(-1, per), q, out=np.zeros_like(q), where=q > 0)
        res: dict[tuple[str, int], np.ndarray] = {}
        for state in itertools.product((0, 1), repeat=per):
            s = np.array(state)
            p = np.prod(np.where(s == 1, q, 1 - q), axis=1)
            c = int(s.sum())
            g = (mu * s).sum(axis=1)
            h_c = H0 * R ** c
            for h in horizons:
                surv = (1 - h_c) ** np.arange(h)  # alive at the start of months 1..h
                disc = delta ** np.arange(1, h + 1)
                for metric, val in (("churn", np.full(len(p), 1 - (1 - h_c) ** h)),
                                    ("value", (base + g) * surv.sum() / h),
                                    ("clv", (base + g) * (surv * disc).sum())):
                    res[(metric, h)] = res.get((metric, h), 0.0) + p * val
        out[arm] = res
    return {key: float(np.mean(out["policy"][key] - out["holdout"][key])) for key in out["policy"]}


def true_incremental_value(log: SyntheticLog) -> dict[str, float]:
    """Per shown action: the true value its treated decisions added over showing nothing,
    sum of p_treated(a) V(a) - p_control(top) V(top) (the truth attribution should recover)."""
    d = log.decisions
    rows = np.arange(len(d))
    shown = d["shown_index"].to_numpy()
    top = d["top_index"].to_numpy()
    treated = (d["group"].to_numpy() != "holdout") & (shown >= 0)
    sv = np.maximum(shown, 0)
    inc = log.p_treated[rows, sv] * log.value[rows, sv] - log.p_control[rows, top] * log.value[rows, top]
    from nba.schemas import ACTIONS

    frame = pd.DataFrame({"a": np.array(ACTIONS, dtype=object)[sv][treated], "inc": inc[treated]})
    return frame.groupby("a")["inc"].sum().to_dict()
