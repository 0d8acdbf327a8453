"""The value of decision policies: the platform's candidates from its decision log, and a
targeting policy learnt on Hillstrom against the obvious alternatives.

The platform (`platform_policy_values`)
---------------------------------------
The decision log keeps, per decision, every candidate (an action left after rules and contact
policies) with its P, V, L and priority, the action shown and the exact probability with
which the logging policy showed it: (1 - eps) 1[a = the arbitration's winner] + eps / n over the
n candidates (eps: the exploration share), 1 - eps for "do nothing" when the winner is nothing
(`nba.decisioning.core.decide`). So any policy that picks among the candidates can be valued
from the `nba` and `explore` decisions (`nba.evaluation.ope`):

* `nba`: the highest priority among the candidates the "do nothing" threshold kept (else
  nothing; the log marks the others with a `filtered` row of stage `threshold`): the
  arbitration itself (its value estimates the platform's value without exploration);
* `random`: a uniformly random candidate (what exploration shows);
* `propensity_only`: the candidate most likely to be accepted (P alone);
* `no_levers`: the highest P x V, the business levers left out;
* `holdout`: do nothing, valued on-policy as the mean outcome of the hold-out decisions (a
  random sample of customers shown nothing): the exploration never shows nothing, so no other
  decision supports it.

Ties go to the candidate logged first (the catalog's order, as the arbitration breaks them).
The counterfactual rankings ignore the threshold: it is defined on the priority's scale.
Only exploration gives support to an action other than the winner: with eps = 0 every other
policy is flagged (its unsupported share is reported). Hold-out decisions are left out of the
off-policy rows: their logging policy never shows an action. The reward of a decision is
`converted` (or `value`) as defined in `nba.evaluation.incrementality`; the reward model of
DR is the platform's own P (x V for value) of each candidate and the hold-out mean for nothing.
Standard errors are clustered by customer.

A targeting policy learnt from an experiment table (Hillstrom, or any randomised or logged
experiment) and valued against the blanket arms: `nba.evaluation.policy_experiment` (learning:
`nba.training.policy_learning`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nba.evaluation.incrementality import HOLDOUT, decision_outcomes
from nba.evaluation.ope import (
    DEFAULT_CONFIDENCE,
    Diagnostics,
    PolicyValue,
    _estimate,
    action_mean_rewards,
    greedy_target,
    mean_se,
    off_policy_value,
)
from nba.evaluation.stats import ExperimentDataError

if TYPE_CHECKING:
    import pandas as pd

    from nba.config import EvaluationLimits
    from nba.stores.decisions import LogFrames

PLATFORM_POLICIES = ("nba", "random", "propensity_only", "no_levers", "holdout")
PLATFORM_OUTCOMES = ("converted", "value")
PRIMARY_ESTIMATOR = "dr"
REWARD_MODELS = ("model", "action_mean")
NO_ACTION = "do_nothing"


# --- the platform ------------------------------------------------------------------------


@dataclass(frozen=True)
class PlatformPolicyReport:
    """Candidate policies valued from the decision log."""

    outcome: str
    primary_estimator: str
    policies: tuple[PolicyValue, ...]
    diagnostics: Mapping[str, Any]
    notes: tuple[str, ...]

    def policy(self, name: str) -> PolicyValue:
        for p in self.policies:
            if p.policy == name:
                return p
        raise KeyError(f"no policy '{name}'; have {[p.policy for p in self.policies]}")

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for p in self.policies:
            e = p.estimates[0] if p.policy == HOLDOUT else p.estimate(self.primary_estimator)
            rows.append({"name": p.policy, "estimator": e.estimator, "value": _num(e.value), "ci_low": _num(e.ci_low),
                         "ci_high": _num(e.ci_high), "reliable": p.reliable and e.reliable,
                         "flags": list(dict.fromkeys((*p.diagnostics.flags, *e.flags))), **p.to_dict()})
        logged = next((e for p in self.policies for e in p.estimates if e.estimator == "logged"), None)
        return {"source": "decision_log", "outcome": self.outcome, "primary_estimator": self.primary_estimator,
                "logged": logged.to_dict() if logged else None, "policies": rows,
                "diagnostics": {k: _num(v) if isinstance(v, float) else v for k, v in self.diagnostics.items()},
                "notes": list(self.notes)}

    def values(self, prefix: str = "policy") -> dict[str, float]:
        out = {}
        for row in self.to_dict()["policies"]:
            if row["value"] is not None:
                out[f"{prefix}.{row['name']}.value"] = float(row["value"])
        return out


@dataclass(frozen=True)
class _LoggedCandidates:
    decisions: pd.DataFrame  # the non-hold-out decisions, in matrix row order
    actions: list[str]  # matrix columns; the last is do_nothing
    available: np.ndarray  # (n, K) bool: a candidate of the decision
    above: np.ndarray  # (n, K) bool: a candidate the "do nothing" threshold kept
    priority: np.ndarray
    propensity: np.ndarray
    value: np.ndarray
    logged: np.ndarray  # (n,) column of the shown action

    @property
    def nothing(self) -> int:
        return len(self.actions) - 1


def _candidate_matrices(frames: LogFrames, decisions: pd.DataFrame, threshold: float | None = None
                        ) -> _LoggedCandidates:
    import pandas as pd

    from nba.evaluation.incrementality import above_threshold

    ids = pd.Index(decisions["decision_id"].astype(str).to_numpy())
    c = frames.candidates
    c = c[c["decision_id"].astype(str).isin(ids)] if len(c) else c
    cand_actions = list(dict.fromkeys(c["action_id"].astype(str).tolist())) if len(c) else []
    shown = decisions["action_id"].astype(str)
    extra = [a for a in dict.fromkeys(shown.tolist()) if a not in cand_actions and a != NO_ACTION]
    actions = [*cand_actions, *extra, NO_ACTION]
    col = {a: j for j, a in enumerate(actions)}
    n, k = len(decisions), len(actions)
    avail = np.zeros((n, k), dtype=bool)
    above = np.zeros((n, k), dtype=bool)
    mats = {name: np.full((n, k), np.nan) for name in ("priority", "propensity", "value")}
    if len(c):
        r = ids.get_indexer(c["decision_id"].astype(str))
        j = c["action_id"].astype(str).map(col).to_numpy(np.int64)
        avail[r, j] = True
        above[r, j] = above_threshold(c, frames.filtered, threshold)
        for name in mats:
            mats[name][r, j] = c[name].astype(np.float64).to_numpy()
    logged = shown.map(col).to_numpy(np.int64)
    return _LoggedCandidates(decisions.reset_index(drop=True), actions, avail, above, mats["priority"],
                             mats["propensity"], mats["value"], logged)


def platform_targets(m: _LoggedCandidates) -> dict[str, np.ndarray]:
    """The candidate policies as n x K probability matrices over `m.actions`."""
    none = m.nothing
    avail = m.available
    no_cand = ~avail.any(axis=1)
    random_avail = avail.copy()
    random_avail[no_cand, none] = True
    p, v = m.propensity, m.value
    return {
        "nba": greedy_target(m.priority, m.above, fallback=none),
        "random": random_avail / random_avail.sum(axis=1, keepdims=True),
        "propensity_only": greedy_target(p, avail, fallback=none),
        "no_levers": greedy_target(p * v, avail, fallback=none),
    }


def platform_policy_values(frames: LogFrames, *, outcome: str = "converted", threshold: float | None = None,
                           reward_model: str = "model", confidence: float = DEFAULT_CONFIDENCE,
                           limits: EvaluationLimits | None = None) -> PlatformPolicyReport:
    """Every policy of `PLATFORM_POLICIES` valued from the decision log (see the module docstring)."""
    if outcome not in PLATFORM_OUTCOMES:
        raise ExperimentDataError(f"outcome '{outcome}' is unknown; expected one of {', '.join(PLATFORM_OUTCOMES)}")
    if reward_model not in REWARD_MODELS:
        raise ExperimentDataError(f"reward model '{reward_model}' is unknown; expected one of "
                                  f"{', '.join(REWARD_MODELS)}")
    if len(frames.outcomes) == 0 and len(frames.decisions):
        raise ExperimentDataError(
            f"the decision log holds {len(frames.decisions):,} decisions and no outcome: nothing was reported to "
            "/respond, so every reward would be 0 by omission, not measured; report outcomes first")
    frame = decision_outcomes(frames, threshold=threshold)
    groups = frame["experiment_group"].astype(str)
    is_h = (groups == HOLDOUT).to_numpy()
    treated = frame.loc[~is_h].reset_index(drop=True)
    holdout = frame.loc[is_h].reset_index(drop=True)
    notes = [
        f"off-policy rows: the {len(treated):,} nba and explore decisions, with their logged probabilities; "
        f"value of doing nothing: the mean of the {len(holdout):,} hold-out decisions",
        f"primary estimator: {PRIMARY_ESTIMATOR}; reward model: "
        + ("the platform's P (x V) of each candidate" if reward_model == "model" else "each action's mean reward"),
        "standard errors clustered by customer",
    ]

    # do nothing: on-policy, from the hold-out
    h_shown = holdout["action_id"].astype(str) == NO_ACTION
    hy = holdout.loc[h_shown, outcome].to_numpy(np.float64)
    h_mean, h_se = mean_se(hy, holdout.loc[h_shown, "customer_id"].to_numpy()) if len(hy) else (math.nan, math.nan)
    h_flags = []
    if len(hy) == 0:
        h_flags.append("no hold-out decision showed nothing: the value of doing nothing cannot be estimated")
    elif limits is not None and len(hy) < limits.min_rows:
        h_flags.append(f"{len(hy)} hold-out decisions, below min_rows {limits.min_rows}")
    h_est = _estimate("on_policy", h_mean, h_se, len(hy), confidence, h_flags)
    h_value = PolicyValue(HOLDOUT, (h_est,), Diagnostics(len(hy), float(len(hy)), 1.0, 1.0, 0.0, True,
                                                         tuple(h_flags)))
    if len(treated) == 0:
        flags = ("no nba or explore decision in the log: no policy other than doing nothing can be valued",)
        empty = tuple(PolicyValue(name, tuple(_estimate(e, math.nan, math.nan, 0, confidence, flags)
                                              for e in ("ips", "snips", "dr")),
                                  Diagnostics(0, 0.0, math.nan, math.nan, math.nan, True, flags))
                      for name in PLATFORM_POLICIES if name != HOLDOUT)
        return PlatformPolicyReport(outcome, PRIMARY_ESTIMATOR, (*empty, h_value), {"decisions": len(frame)},
                                    tuple(notes))

    m = _candidate_matrices(frames, treated, threshold)
    r = treated[outcome].to_numpy(np.float64)
    mu = treated["probability"].to_numpy(np.float64)
    clusters = treated["customer_id"].to_numpy()
    targets = platform_targets(m)
    greedy = targets["nba"].argmax(axis=1)
    # support: every candidate when the decision could explore (its shown action had P < 1),
    # the winner always, and the action actually shown
    n, k = m.available.shape
    support = m.available & (mu < 1.0 - 1e-12)[:, None]
    support[np.arange(n), greedy] = True
    support[np.arange(n), m.logged] = True
    if reward_model == "model":
        p = np.nan_to_num(m.propensity)
        q = p if outcome == "converted" else p * np.nan_to_num(m.value)
        q = q.copy()
        q[:, m.nothing] = h_mean if h_mean == h_mean else 0.0
    else:
        q = np.broadcast_to(action_mean_rewards(r, m.logged, k), (n, k))
    policies = [off_policy_value(r, m.logged, mu, target, policy=name, q_hat=q, support=support, clusters=clusters,
                                 confidence=confidence, limits=limits, action_names=m.actions)
                for name, target in targets.items()]
    not_candidate = int((~m.available[np.arange(n), m.logged] & (m.logged != m.nothing)).sum())
    agreement = float((greedy == m.logged)[(treated["experiment_group"].astype(str) == "nba").to_numpy()].mean()) \
        if (treated["experiment_group"].astype(str) == "nba").any() else math.nan
    if not_candidate:
        notes.append(f"{not_candidate} decision(s) showed an action that is not among their logged candidates")
    if agreement == agreement and agreement < 0.99:
        notes.append(f"the nba policy as rebuilt (highest priority kept by the threshold) matches the logged nba "
                     f"choice in only {agreement:.1%} of nba decisions: a threshold or tie-break differs")
    diag = {"decisions": len(frame), "offpolicy_rows": n, "holdout_decisions": len(holdout),
            "customers": int(frame["customer_id"].nunique()), "actions": k - 1, "threshold": threshold,
            "nba_agreement": agreement, "shown_not_candidate": not_candidate,
            "rows_supporting_every_candidate": float((mu < 1.0 - 1e-12).mean())}
    return PlatformPolicyReport(outcome, PRIMARY_ESTIMATOR, (*policies, h_value), diag, tuple(notes))



def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
