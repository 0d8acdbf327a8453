"""Off-policy value: what a target policy would have earned, estimated from decisions that
another (the logging) policy made, with the probabilities it made them with.

Data, one row per logged decision i: the action a_i shown, the reward r_i, the logging
probability mu_i = mu(a_i | x_i) > 0, and the target policy pi(a | x_i) for every action a (a
row-stochastic n x K matrix). The importance weight is w_i = pi(a_i | x_i) / mu_i.

* IPS (inverse propensity scoring): V = mean(w_i r_i). Unbiased when the logging policy gives
  every action the target takes a positive probability; its variance grows with the weights.
* SNIPS (self-normalised IPS): V = sum(w_i r_i) / sum(w_i). Slightly biased, much steadier when
  weights are large; its standard error by the delta method on the ratio, from the per-row
  terms psi_i = w_i (r_i - V) / mean(w).
* DR (doubly robust): c_i = sum_a pi(a | x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)) with a reward
  model q ("q-hat": by default each action's mean logged reward; the platform passes its own
  propensity x value). Unbiased if either the probabilities or q are right, and tighter than
  IPS when q is good.
* logged: mean(r_i), the value the logging policy itself earned (on-policy).

Each estimate has a normal-approximation CI, V +- z se, with se = sd(per-row terms) / sqrt(n);
with `clusters` (the customer, when a customer has several decisions) the cluster-robust
standard error of the mean of the per-row terms instead.

Diagnostics, reported beside every estimate and turned into flags against the `evaluation:`
limits of evaluation/gates.yaml, so a thin estimate never looks like a plain number:

* effective sample size ESS = (sum w)^2 / sum w^2 (n when every weight is equal);
* the share of the target's probability mass without support: on actions the logging policy
  could not have taken. With a `support` matrix (the platform knows it) this is exact; without,
  it is a lower bound: mass on actions never logged, and on other actions in rows the logging
  policy took with probability 1;
* the number of rows, the largest and the mean weight (about 1 when supported).

Invalid input is an error, not a flag: a missing, zero or out-of-range logging probability (a
logged action had probability > 0, or the log is corrupt), a target row that is not a
probability distribution, a missing reward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nba.errors import NbaError

if TYPE_CHECKING:
    from nba.config import EvaluationLimits

DEFAULT_CONFIDENCE = 0.95
ESTIMATORS = ("ips", "snips", "dr")
PROBABILITY_TOLERANCE = 1e-6  # a target row's probabilities must sum to 1 within this


class OpeInputError(NbaError):
    """Logged data or a target policy that off-policy evaluation cannot use."""


@dataclass(frozen=True)
class Estimate:
    """One estimator's value of a policy, its CI and what makes it unreliable (if anything)."""

    estimator: str
    value: float
    se: float
    ci_low: float
    ci_high: float
    n: int
    confidence: float = DEFAULT_CONFIDENCE
    flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence {self.confidence}: expected a level in (0, 1)")
        if self.value == self.value and self.se == self.se and not self.ci_low <= self.value <= self.ci_high:
            raise ValueError(f"{self.estimator}: value {self.value} outside its CI [{self.ci_low}, {self.ci_high}]")

    @property
    def reliable(self) -> bool:
        return not self.flags and self.value == self.value

    def to_dict(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "value": _num(self.value), "ci_low": _num(self.ci_low),
                "ci_high": _num(self.ci_high), "se": _num(self.se), "n": self.n, "confidence": self.confidence,
                "reliable": self.reliable, "flags": list(self.flags)}


@dataclass(frozen=True)
class Diagnostics:
    """The importance weights of a target policy on the logged rows."""

    n: int
    ess: float
    mean_weight: float
    max_weight: float
    unsupported_share: float
    support_known: bool  # False: unsupported_share is a lower bound
    flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "ess": _num(self.ess), "mean_weight": _num(self.mean_weight),
                "max_weight": _num(self.max_weight), "unsupported_share": _num(self.unsupported_share),
                "support_known": self.support_known, "flags": list(self.flags)}


@dataclass(frozen=True)
class PolicyValue:
    """A target policy's estimated value by every estimator, beside the logged policy's."""

    policy: str
    estimates: tuple[Estimate, ...]
    diagnostics: Diagnostics

    def estimate(self, estimator: str) -> Estimate:
        for e in self.estimates:
            if e.estimator == estimator:
                return e
        raise KeyError(f"no estimator '{estimator}'; have {[e.estimator for e in self.estimates]}")

    @property
    def reliable(self) -> bool:
        return not self.diagnostics.flags

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "reliable": self.reliable,
                "estimates": [e.to_dict() for e in self.estimates], "diagnostics": self.diagnostics.to_dict()}


# --- the estimators --------------------------------------------------------------------


def mean_se(terms: np.ndarray, clusters: np.ndarray | None = None) -> tuple[float, float]:
    """Mean of per-row terms and its standard error (cluster-robust with `clusters`)."""
    terms = np.asarray(terms, dtype=np.float64)
    n = len(terms)
    if n == 0:
        return math.nan, math.nan
    if clusters is None:
        return float(terms.mean()), float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    from nba.evaluation.stats import cell_moments

    m = cell_moments(terms, np.zeros(n, dtype=np.int64), 1, np.asarray(clusters))
    return float(m["mean"][0]), float(m["se"][0])


def _z(confidence: float) -> float:
    from statistics import NormalDist

    if not 0.0 < confidence < 1.0:
        raise OpeInputError(f"confidence {confidence}: expected a level in (0, 1), e.g. 0.95")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _estimate(name: str, value: float, se: float, n: int, confidence: float, flags: Sequence[str]) -> Estimate:
    z = _z(confidence)
    lo, hi = (value - z * se, value + z * se) if se == se else (math.nan, math.nan)
    return Estimate(name, value, se, lo, hi, n, confidence, tuple(flags))


def action_mean_rewards(reward: np.ndarray, action: np.ndarray, n_actions: int) -> np.ndarray:
    """q-hat by action: each action's mean logged reward (the overall mean for an action never logged)."""
    reward = np.asarray(reward, dtype=np.float64)
    count = np.bincount(action, minlength=n_actions)
    total = np.bincount(action, weights=reward, minlength=n_actions)
    overall = float(reward.mean()) if len(reward) else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), overall)


def off_policy_value(reward: Any, action: Any, logging_prob: Any, target: Any, *, policy: str = "target",
                     q_hat: Any = None, support: Any = None, clusters: Any = None,
                     confidence: float = DEFAULT_CONFIDENCE, limits: EvaluationLimits | None = None,
                     action_names: Sequence[str] | None = None, include_logged: bool = True) -> PolicyValue:
    """IPS, SNIPS and DR values of `target` (n x K probabilities) from logged rows.

    `action`: integer codes 0..K-1 of the logged actions; `logging_prob`: mu(a_i | x_i);
    `q_hat`: n x K expected rewards, a length-K vector (per action), or None (per-action means);
    `support`: n x K booleans, True where the logging policy could take the action (None: a
    lower bound is inferred); `clusters`: the unit of independence per row (customer id).
    """
    r, a, mu, pi = validate(reward, action, logging_prob, target, action_names=action_names)
    n, k = pi.shape
    cl = None if clusters is None else np.asarray(clusters)
    if cl is not None and len(cl) != n:
        raise OpeInputError(f"clusters has {len(cl)} values for {n} rows")
    rows = np.arange(n)
    w = pi[rows, a] / mu

    if q_hat is None:
        q = np.broadcast_to(action_mean_rewards(r, a, k), (n, k))
    else:
        q = np.asarray(q_hat, dtype=np.float64)
        q = np.broadcast_to(q, (n, k)) if q.ndim == 1 else q
        if q.shape != (n, k) or not np.isfinite(q).all():
            raise OpeInputError(f"q_hat: expected {n} x {k} finite expected rewards (or {k} per action), got shape "
                                f"{np.shape(q_hat)}{'' if np.isfinite(q).all() else ' with missing values'}")

    diag = diagnostics(w, a, mu, pi, support=support, limits=limits, action_names=action_names)
    flags = diag.flags
    ips_terms = w * r
    ips = mean_se(ips_terms, cl)
    sw = float(w.sum())
    if sw > 0:
        snips_v = float(ips_terms.sum() / sw)
        snips_se = mean_se(w * (r - snips_v) / (sw / n), cl)[1]
        snips_flags = flags
    else:
        snips_v, snips_se = math.nan, math.nan
        snips_flags = (*flags, "the target never takes a logged action: every weight is 0, SNIPS is undefined")
    dr_terms = (pi * q).sum(axis=1) + w * (r - q[rows, a])
    dr = mean_se(dr_terms, cl)
    estimates = [
        _estimate("ips", ips[0], ips[1], n, confidence, flags),
        _estimate("snips", snips_v, snips_se, n, confidence, snips_flags),
        _estimate("dr", dr[0], dr[1], n, confidence, flags),
    ]
    if include_logged:
        logged = mean_se(r, cl)
        small = [f"{n} logged rows, below min_rows {limits.min_rows}"] if limits and n < limits.min_rows else []
        estimates.append(_estimate("logged", logged[0], logged[1], n, confidence, small))
    return PolicyValue(policy, tuple(estimates), diag)


def diagnostics(w: np.ndarray, a: np.ndarray, mu: np.ndarray, pi: np.ndarray, *, support: Any = None,
                limits: EvaluationLimits | None = None, action_names: Sequence[str] | None = None) -> Diagnostics:
    """ESS, weights and support of a target on the logged rows, with flags against `limits`."""
    n, k = pi.shape
    sw, sw2 = float(w.sum()), float((w * w).sum())
    ess = sw * sw / sw2 if sw2 > 0 else 0.0
    names = list(action_names) if action_names is not None else [str(i) for i in range(k)]
    if support is not None:
        sup = np.asarray(support, dtype=bool)
        if sup.shape != (n, k):
            raise OpeInputError(f"support: expected an {n} x {k} boolean matrix, got shape {sup.shape}")
        unsupported = float((pi * ~sup).sum() / n)
        known = True
        never: list[str] = []
    else:
        logged = np.bincount(a, minlength=k) > 0
        never = [names[j] for j in np.flatnonzero(~logged & (pi.sum(axis=0) > 0))]
        mass = (pi[:, ~logged]).sum(axis=1)
        # a row logged with probability 1: the logging policy could take no other action there
        certain = mu >= 1.0 - 1e-12
        if certain.any():
            other = pi[certain].sum(axis=1) - pi[certain, a[certain]] - mass[certain]
            mass = mass.copy()
            mass[certain] += np.clip(other, 0.0, None)
        unsupported = float(mass.sum() / n)
        known = False
    flags: list[str] = []
    if limits is not None:
        if n < limits.min_rows:
            flags.append(f"{n} logged rows, below min_rows {limits.min_rows}")
        if ess < limits.min_ess:
            why = ": a few heavily weighted rows carry the estimate" if ess < 0.5 * n else ""
            flags.append(f"effective sample size {ess:.1f} (of {n} rows) is below min_ess {limits.min_ess:g}{why}")
        if unsupported > limits.max_unsupported_share:
            where = f" (actions never logged: {', '.join(never[:5])})" if never else ""
            flags.append(f"{unsupported:.1%} of the target policy's probability is on actions the logging policy "
                         f"{'could not take' if known else 'never took'}{where}, above max_unsupported_share "
                         f"{limits.max_unsupported_share:g}: IPS misses that mass and DR extrapolates it")
    return Diagnostics(n=n, ess=ess, mean_weight=float(w.mean()) if n else math.nan,
                       max_weight=float(w.max()) if n else math.nan, unsupported_share=unsupported,
                       support_known=known, flags=tuple(flags))


def validate(reward: Any, action: Any, logging_prob: Any, target: Any, *,
             action_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Arrays checked for off-policy evaluation; `OpeInputError` names what is wrong and where."""
    r = np.asarray(reward, dtype=np.float64)
    a = np.asarray(action)
    mu = np.asarray(logging_prob, dtype=np.float64)
    pi = np.asarray(target, dtype=np.float64)
    n = len(r)
    if n == 0:
        raise OpeInputError("no logged rows to evaluate a policy on")
    if pi.ndim != 2:
        raise OpeInputError(f"target: expected one row of action probabilities per logged row, got shape {pi.shape}")
    if not (len(a) == len(mu) == pi.shape[0] == n):
        raise OpeInputError(f"rows differ: {n} rewards, {len(a)} actions, {len(mu)} logging probabilities, "
                            f"{pi.shape[0]} target rows")
    if not np.issubdtype(a.dtype, np.integer) or (a.min() < 0 or a.max() >= pi.shape[1]):
        raise OpeInputError(f"actions must be integer codes 0..{pi.shape[1] - 1} (the target's columns)")
    a = a.astype(np.int64)
    _first_bad("reward", ~np.isfinite(r), "a number")
    _first_bad("logging probability", np.isnan(mu), "the probability the logging policy took the logged action")
    _first_bad("logging probability", mu <= 0,
               "> 0 (the logged action was taken, so its probability cannot be 0)", values=mu)
    _first_bad("logging probability", mu > 1 + 1e-9, "<= 1", values=mu)
    _first_bad("target probability", ~np.isfinite(pi).all(axis=1), "a number for every action")
    _first_bad("target probability", (pi < 0).any(axis=1), ">= 0 for every action")
    sums = pi.sum(axis=1)
    off = np.abs(sums - 1.0) > PROBABILITY_TOLERANCE
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise OpeInputError(f"target probabilities of {int(off.sum())} row(s) do not sum to 1 (row {i}: "
                            f"{sums[i]:.6g}); expected a probability distribution over the actions per row")
    return r, a, np.minimum(mu, 1.0), pi


def _first_bad(what: str, bad: Any, expected: str, values: np.ndarray | None = None) -> None:
    bad = np.asarray(bad)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        got = f" ({values[i]:g})" if values is not None else ""
        raise OpeInputError(f"{what}: {int(bad.sum())} row(s) invalid, first at row {i}{got}; expected {expected}")


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# --- target policies -------------------------------------------------------------------


def uniform_target(available: np.ndarray) -> np.ndarray:
    """Uniform over the available actions of each row (n x K booleans); a row without any is an error."""
    avail = np.asarray(available, dtype=bool)
    count = avail.sum(axis=1, keepdims=True)
    if (count == 0).any():
        raise OpeInputError(f"{int((count == 0).sum())} row(s) have no available action for a uniform target")
    return avail / count


def greedy_target(score: np.ndarray, available: np.ndarray, *, fallback: int | None = None,
                  threshold: float | None = None) -> np.ndarray:
    """One-hot on the available action of highest score per row (ties: the lowest column).

    With `threshold`, only scores above it count; rows with no such action (or no available
    action) take column `fallback` ("do nothing"), which must then be given."""
    s = np.where(np.asarray(available, dtype=bool), np.asarray(score, dtype=np.float64), -np.inf)
    s = np.where(np.isnan(s), -np.inf, s)
    if threshold is not None:
        s = np.where(s > threshold, s, -np.inf)
    best = np.argmax(s, axis=1)  # first maximum: ties go to the lowest column
    none = ~np.isfinite(s[np.arange(len(s)), best])
    if none.any():
        if fallback is None:
            raise OpeInputError(f"{int(none.sum())} row(s) have no available action and no fallback action")
        best = np.where(none, fallback, best)
    out = np.zeros(s.shape, dtype=np.float64)
    out[np.arange(len(s)), best] = 1.0
    return out
