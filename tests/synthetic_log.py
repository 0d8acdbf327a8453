"""A platform decision log with known truth, built from the simulator's ground truth.

The contexts are the simulated bank's customers at its last snapshot (`truth`: the true
P(convert | contacted) and P(convert | not contacted) of every customer and action, and which
actions the bank's rules allow). Each customer gets `per_customer` decisions, each on a random
channel. The platform is imitated the way `nba.decisioning.core.decide` works:

* candidates: the eligible actions, each with a model P (the true probability blurred on the
  logit scale, so the NBA is good but not perfect), a value V and a lever L; priority =
  P x V x (1 + L); the winner is the highest priority above `threshold` (ties: catalog order),
  or nothing; a candidate below the threshold also gets a `filtered` row of stage `threshold`;
* a universal hold-out of customers (share `holdout_share`, random per customer) shown nothing;
* exploration: a share `eps` of the other decisions shows a uniformly random candidate; the
  logged probability is the exact mixture (1 - eps) 1[a = winner] + eps / n (1 - eps for
  nothing when there is no winner).

Outcomes: a shown action a is accepted with its true P(convert | contacted), worth V(a). A
customer shown nothing (hold-out, or no winner) converts without contact with the true
P(convert | not contacted) of the candidate of highest priority (the product the bank would
have offered), reported as `accepted` against `do_nothing`. So the true value of a policy pi on a
decision is sum_a pi(a | x) r(x, a) with r(x, a) = p_treated(a) for an action and
p_control(top candidate) for nothing (x V for value): `reward_matrix`.

Decisions go through `DecisionLog.append` (one transaction, the records column-wise as the
engine's column builder gives them) and outcomes through `DecisionLog.append_outcome`: the
log's own writing path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nba import records
from nba.data.simulator import ACTION_VALUE, SimulationConfig, simulate
from nba.records import NO_ACTION
from nba.schemas import CAMPAIGN_ACTIONS as ACTIONS  # the bank campaign's ten (their truth is main's)
from nba.schemas import CHANNELS
from nba.stores.decisions.sqlite import DecisionLog

MORTGAGE_VALUE = 2_000.0  # the simulator's mortgage value is 4 % of income; a fixed stand-in here
LEVERS = {"payment_plan": 0.5, "sick_leave_support": 0.5, "mobile_app": 1.0}  # boosts, as in the catalog


@dataclass
class SyntheticLog:
    folder: Path
    decisions: pd.DataFrame  # decision_id, customer_id, group, winner, shown, probability, converted, value
    p_treated: np.ndarray  # (decisions, actions) true P(convert | contacted)
    p_control: np.ndarray
    eligible: np.ndarray  # (decisions, actions) bool
    propensity: np.ndarray  # the "model" P of every action (NaN where not a candidate)
    value: np.ndarray  # V per action (decisions, actions)
    lever: np.ndarray  # L per action (actions,)
    threshold: float

    def reward_matrix(self, outcome: str = "converted") -> np.ndarray:
        """(decisions, ACTIONS + do_nothing): the expected reward of showing each action, or nothing."""
        rows = np.arange(len(self.decisions))
        top = self.decisions["top_index"].to_numpy()
        value = self.value if outcome == "value" else np.ones_like(self.value)
        nothing = self.p_control[rows, top] * value[rows, top]
        return np.column_stack([self.p_treated * value, nothing])

    def true_value(self, target: np.ndarray, outcome: str = "converted", rows: np.ndarray | None = None) -> float:
        """Mean over decisions (`rows`, default all) of sum_a pi(a | x) r(x, a); `target` has the
        columns of `reward_matrix` (ACTIONS, then do_nothing)."""
        rows = np.ones(len(target), dtype=bool) if rows is None else rows
        return float((target[rows] * self.reward_matrix(outcome)[rows]).sum(axis=1).mean())

    def nba_target(self) -> np.ndarray:
        """The arbitration's choice (the winner, or nothing) as a one-hot target."""
        greedy = self.decisions["greedy_index"].to_numpy()
        out = np.zeros((len(greedy), len(ACTIONS) + 1))
        out[np.arange(len(greedy)), np.where(greedy >= 0, greedy, len(ACTIONS))] = 1.0
        return out

    def nothing_target(self) -> np.ndarray:
        out = np.zeros((len(self.decisions), len(ACTIONS) + 1))
        out[:, -1] = 1.0
        return out


def build_log(folder: Path, *, customers: int = 6_000, seed: int = 7, per_customer: int = 2, eps: float = 0.2,
              holdout_share: float = 0.1, noise: float = 0.5, threshold: float = 1.0,
              holdout_candidates: bool = True, report_holdout: bool = True) -> SyntheticLog:
    sim = simulate(SimulationConfig(customers=customers, seed=seed, months=2))
    truth = sim.truth
    wide = {c: truth.pivot(index="customer_id", columns="action_id", values=c)[list(ACTIONS)]
            for c in ("true_p_treated", "true_p_control", "eligible")}
    keep = wide["eligible"].to_numpy().sum(axis=1) > 0
    cust = wide["eligible"].index.to_numpy()[keep]
    rng = np.random.default_rng(seed + 1)
    cid = np.repeat(cust, per_customer)
    n, k = len(cid), len(ACTIONS)
    pt = np.repeat(wide["true_p_treated"].to_numpy()[keep], per_customer, axis=0)
    pc = np.repeat(wide["true_p_control"].to_numpy()[keep], per_customer, axis=0)
    elig = np.repeat(wide["eligible"].to_numpy()[keep].astype(bool), per_customer, axis=0)

    logit = np.log(pt / (1 - pt)) + rng.normal(0.0, noise, size=(n, k))
    prop = np.where(elig, 1 / (1 + np.exp(-logit)), np.nan)
    v_action = np.where(np.array(ACTIONS) == "mortgage", MORTGAGE_VALUE, ACTION_VALUE[:len(ACTIONS)])
    value = np.broadcast_to(v_action, (n, k)).copy()
    lever = np.array([LEVERS.get(a, 0.0) for a in ACTIONS])
    priority = prop * value * (1 + lever)
    top = np.argmax(np.where(elig, priority, -np.inf), axis=1)  # the product offered, threshold or not
    score = np.where(elig & (priority > threshold), priority, -np.inf)
    winner = np.argmax(score, axis=1)
    has_winner = np.isfinite(score[np.arange(n), winner])
    n_cand = elig.sum(axis=1)

    in_holdout = rng.random(len(cust)) < holdout_share
    holdout = np.repeat(in_holdout, per_customer)
    explore = ~holdout & (rng.random(n) < eps)
    nth = np.minimum((rng.random(n) * n_cand).astype(np.int64), n_cand - 1)
    random_action = np.argmax(np.cumsum(elig, axis=1) > nth[:, None], axis=1)
    nothing = -1
    shown = np.where(has_winner, winner, nothing)
    shown = np.where(explore, random_action, shown)
    shown = np.where(holdout, nothing, shown)
    prob = np.where(has_winner, (1 - eps) + eps / n_cand, 1 - eps)
    prob = np.where(explore & (random_action != np.where(has_winner, winner, nothing)), eps / n_cand, prob)
    prob = np.where(holdout, 1.0, prob)
    group = np.where(holdout, "holdout", np.where(explore, "explore", "nba"))

    rows = np.arange(n)
    treated_shown = shown >= 0
    p_conv = np.where(treated_shown, pt[rows, np.maximum(shown, 0)], pc[rows, top])
    converted = rng.random(n) < p_conv
    conv_value = np.where(treated_shown, value[rows, np.maximum(shown, 0)], value[rows, top])
    channel = rng.integers(0, len(CHANNELS), size=n)
    ids = [f"{i:032x}" for i in rng.integers(0, 2**62, size=n)]
    t0 = pd.Timestamp("2025-06-01", tz="UTC").timestamp()

    # the records column-wise, as `nba.decisioning.tables.decision_tables` builds them
    names = [*ACTIONS, NO_ACTION]
    shown_or_nothing = np.where(shown >= 0, shown, len(ACTIONS))
    sv = np.maximum(shown, 0)

    def at_shown(m: np.ndarray) -> np.ndarray:
        return np.where(shown >= 0, m[rows, sv], np.nan)

    zeros = np.zeros(n, dtype=np.int64)
    groups = list(records.EXPERIMENT_GROUPS)
    decisions = records.Columns(records.DECISION, n, {
        "decision_id": ids, "customer_id": cid.astype(np.int64), "channel": records.Coded(channel, CHANNELS),
        "decided_at": t0 + np.arange(n, dtype=np.float64),
        "experiment_group": records.Coded(np.array([groups.index(g) for g in group]), groups),
        "action_id": records.Coded(shown_or_nothing, names), "probability": prob,
        "propensity": at_shown(prop), "value": at_shown(value), "lever": np.where(shown >= 0, lever[sv], np.nan),
        "priority": at_shown(priority), "uplift": np.full(n, np.nan), "n_candidates": n_cand.astype(np.int64),
        "features_missing": zeros, "catalog_version": records.Coded(zeros, ["synthetic"]),
        "source": records.Coded(zeros, ["batch"])})
    cand = elig & (holdout_candidates | ~holdout)[:, None]
    cr, cc = np.nonzero(cand)
    candidates = records.Columns(records.CANDIDATE, cr.size, {
        "decision_id": records.Coded(cr, ids), "action_id": records.Coded(cc, names),
        "rank": (cc == shown[cr]).astype(np.int64), "propensity": prop[cr, cc], "value": value[cr, cc],
        "lever": lever[cc], "priority": priority[cr, cc], "uplift": np.full(cr.size, np.nan)})
    fr, fc = np.nonzero(cand & ~(priority > threshold))
    fz = np.zeros(fr.size, dtype=np.int64)
    filtered = records.Columns(records.FILTERED, fr.size, {
        "decision_id": records.Coded(fr, ids), "action_id": records.Coded(fc, names),
        "stage": records.Coded(fz, ["threshold"]), "rule": records.Coded(fz, [f"priority <= {threshold:g}"])})
    features = records.Columns(records.FEATURES, n, {"decision_id": ids})
    log = DecisionLog(folder)
    log.append(records.DecisionTables(decisions, candidates, filtered, features, {}))
    for i in np.flatnonzero(converted):
        if holdout[i] and not report_holdout:
            continue
        action = ACTIONS[shown[i]] if shown[i] >= 0 else NO_ACTION
        log.append_outcome(ids[i], action, "accepted", float(conv_value[i]), t0 + n + i)
    # a few non-conversions reported too (rejections): they count as not converted
    for i in np.flatnonzero(~converted & treated_shown)[:200]:
        log.append_outcome(ids[i], ACTIONS[shown[i]], "rejected", 0.0, t0 + n + i)
    log.close()
    frame = pd.DataFrame({"decision_id": ids, "customer_id": cid, "group": group,
                          "greedy_index": np.where(has_winner, winner, nothing), "top_index": top,
                          "shown_index": shown, "probability": prob, "converted": converted.astype(int),
                          "value": np.where(converted, conv_value, 0.0)})
    return SyntheticLog(folder, frame, pt, pc, elig, prop, value, lever, threshold)
