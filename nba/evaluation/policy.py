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

Hillstrom (`hillstrom_policy_values`)
-------------------------------------
The e-mail experiment assigned Mens, Womens or no e-mail with probability 1/3 each, so any
policy's value on held-out customers is estimated without bias by inverse propensity
weighting: V = mean(1[arm_i = pi(x_i)] y_i / (1/3)) (a uniformly random policy is the plain mean).

The learnt policy: on the training split, per e-mail, an uplift learner of `nba.training.uplift_learners`
(parameters from training/uplift.yaml) on *visit* (the outcome with enough positives: ~10 %
visit, 0.6-1.3 % convert; learnt on spend directly, the T- and X-learners lost to "everyone
gets Mens" on every split tried), times the spend a visit of that e-mail's customers brings
(training rows: spend / visits in the arm). The policy sends the e-mail of highest predicted
incremental spend if it exceeds the cost of an e-mail (`--email-cost`, default
`DEFAULT_EMAIL_COST`), else nothing. The learner is chosen on a validation part of the training
split by the IPS value net of e-mail costs, then refit on the whole training split; the test
split is touched once, for the table. Compared against everyone Mens, everyone Womens, nobody
and uniformly random, on spend per customer (primary), conversion and visit, each with a CI,
and the paired difference to `all:Mens E-Mail` with its CI and p-value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nba.errors import ConfigError
from nba.evaluation.incrementality import HOLDOUT, decision_outcomes
from nba.evaluation.ope import (
    DEFAULT_CONFIDENCE,
    Diagnostics,
    Estimate,
    PolicyValue,
    _estimate,
    action_mean_rewards,
    greedy_target,
    mean_se,
    off_policy_value,
)
from nba.evaluation.stats import ExperimentDataError
from nba.training.config import load_model_config

if TYPE_CHECKING:
    import pandas as pd

    from nba.config import EvaluationLimits
    from nba.settings import Settings
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


# --- Hillstrom --------------------------------------------------------------------------------

DEFAULT_EMAIL_COST = 0.10  # $ of spend per e-mail: sending plus the customer's attention (see README)
DEFAULT_TEST_FRACTION = 0.5
DEFAULT_VALIDATION_FRACTION = 0.3  # of the training split, to choose the learner
LEARN_OUTCOME = "visit"
HILLSTROM_POLICY_OUTCOMES = ("spend", "conversion", "visit")
BASELINE = "all:Mens E-Mail"
BASELINES = (BASELINE, "none")  # every policy's paired difference to these is reported


@dataclass(frozen=True)
class HillstromPolicyConfig:
    """How the Hillstrom targeting policy is learnt and judged."""

    email_cost: float = DEFAULT_EMAIL_COST
    test_fraction: float = DEFAULT_TEST_FRACTION
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    learners: tuple[str, ...] = ("t_learner", "s_learner", "x_learner", "class_transformation")
    seed: int = 7
    confidence: float = DEFAULT_CONFIDENCE

    def __post_init__(self) -> None:
        from nba.training.uplift_learners import LEARNERS

        if not (math.isfinite(self.email_cost) and self.email_cost >= 0):
            raise ConfigError(f"email cost {self.email_cost}: expected a number >= 0 ($ per e-mail)")
        for name in ("test_fraction", "validation_fraction"):
            v = getattr(self, name)
            if not 0.05 <= v <= 0.8:
                raise ConfigError(f"{name} {v}: expected a share in [0.05, 0.8]")
        unknown = [x for x in self.learners if x not in LEARNERS]
        if unknown or not self.learners:
            raise ConfigError(f"learner(s) {unknown or '(none)'}: expected any of {', '.join(LEARNERS)}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence {self.confidence}: expected a level in (0, 1)")


@dataclass(frozen=True)
class Difference:
    """A paired difference of two policies' values on the same rows."""

    versus: str
    diff: float
    ci_low: float
    ci_high: float
    p_value: float


@dataclass(frozen=True)
class HillstromPolicy:
    """One policy's value on the held-out split."""

    name: str
    estimates: Mapping[str, Estimate]  # outcome -> IPS estimate
    snips: Mapping[str, Estimate]
    mailed_share: float
    mens_share: float
    womens_share: float
    net_value: float  # spend - email_cost x mailed share
    net_ci_low: float
    net_ci_high: float
    differences: Mapping[str, Mapping[str, Difference]]  # baseline -> outcome -> this policy minus it

    @property
    def versus_baseline(self) -> Mapping[str, Difference]:
        """outcome -> the paired difference to `all:Mens E-Mail`."""
        return self.differences[BASELINE]

    def to_dict(self, primary: str = "spend") -> dict[str, Any]:
        e = self.estimates[primary]
        out: dict[str, Any] = {"name": self.name, "estimator": "ips", "outcome": primary, "value": _num(e.value),
                               "ci_low": _num(e.ci_low), "ci_high": _num(e.ci_high), "se": _num(e.se)}
        for outcome, est in self.estimates.items():
            if outcome != primary:
                out[outcome] = {"value": _num(est.value), "ci_low": _num(est.ci_low), "ci_high": _num(est.ci_high)}
        out.update({
            "snips": {o: {"value": _num(s.value), "ci_low": _num(s.ci_low), "ci_high": _num(s.ci_high)}
                      for o, s in self.snips.items()},
            "net_value": _num(self.net_value), "net_ci_low": _num(self.net_ci_low),
            "net_ci_high": _num(self.net_ci_high), "mailed_share": self.mailed_share,
            "mens_share": self.mens_share, "womens_share": self.womens_share,
        })
        for baseline, diffs in self.differences.items():
            out["vs_" + _slug(baseline)] = {o: {"diff": _num(d.diff), "ci_low": _num(d.ci_low),
                                               "ci_high": _num(d.ci_high), "p_value": _num(d.p_value)}
                                           for o, d in diffs.items()}
        return out


@dataclass(frozen=True)
class HillstromPolicyReport:
    config: HillstromPolicyConfig
    learner: str
    validation: Mapping[str, float]  # learner -> validation net value per customer
    value_per_visit: Mapping[str, float]  # e-mail -> spend per visit (training rows)
    policies: tuple[HillstromPolicy, ...]
    rows: Mapping[str, int]  # train, validation, test
    notes: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def policy(self, name: str) -> HillstromPolicy:
        for p in self.policies:
            if p.name == name:
                return p
        raise KeyError(f"no policy '{name}'; have {[p.name for p in self.policies]}")

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "data": "hillstrom", "outcome": "spend", "estimator": "ips", "assignment_probability": 1 / 3,
            "email_cost": c.email_cost, "seed": c.seed, "confidence": c.confidence,
            "split": {"test_fraction": c.test_fraction, "validation_fraction": c.validation_fraction,
                      **{f"{k}_rows": v for k, v in self.rows.items()}},
            "learn_outcome": LEARN_OUTCOME, "learner": self.learner, "learners": list(c.learners),
            "validation_net_value": dict(self.validation), "value_per_visit": dict(self.value_per_visit),
            "policies": [p.to_dict() for p in self.policies], "notes": list(self.notes),
        }

    def values(self, prefix: str = "policy") -> dict[str, float]:
        out = {}
        for p in self.policies:
            slug = _slug(p.name)
            out[f"{prefix}.{slug}.value"] = p.estimates["spend"].value
            out[f"{prefix}.{slug}.conversion"] = p.estimates["conversion"].value
        return {k: float(v) for k, v in out.items() if v == v}

    def table(self) -> pd.DataFrame:
        """One row per policy: spend, conversion (with CIs), mailed share, difference to all:Mens."""
        import pandas as pd

        rows = []
        for p in self.policies:
            s, cv = p.estimates["spend"], p.estimates["conversion"]
            d = p.versus_baseline["spend"]
            rows.append({
                "policy": p.name, "spend": s.value, "spend_ci": f"[{s.ci_low:.3f}, {s.ci_high:.3f}]",
                "conversion": cv.value, "conversion_ci": f"[{cv.ci_low:.4f}, {cv.ci_high:.4f}]",
                "mailed": p.mailed_share, "net": p.net_value,
                "vs_all_mens": d.diff, "vs_all_mens_ci": f"[{d.ci_low:.3f}, {d.ci_high:.3f}]",
                "p_value": d.p_value,
            })
        return pd.DataFrame(rows)


def _stratified_split(arm: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask taking `fraction` of each arm's rows (seeded)."""
    mask = np.zeros(len(arm), dtype=bool)
    for a in np.unique(arm):
        idx = rng.permutation(np.flatnonzero(arm == a))
        mask[idx[:int(round(len(idx) * fraction))]] = True
    return mask


def _choices(pred: np.ndarray, emails: Sequence[str], control: str, cost: float) -> np.ndarray:
    """The e-mail of highest predicted incremental spend above its cost, else the control arm."""
    best = pred.argmax(axis=1)
    gain = pred[np.arange(len(pred)), best] - cost
    return np.where(gain > 0, np.asarray(emails, dtype=object)[best], control)


def hillstrom_policy_values(settings: Settings, config: HillstromPolicyConfig | None = None, *,
                            limits: EvaluationLimits | None = None,
                            progress: Callable[[str], None] | None = None) -> HillstromPolicyReport:
    """Learn the targeting policy on a training split of Hillstrom and value it, and the
    baselines, on the held-out split by inverse propensity weighting (module docstring)."""
    from nba.data.hillstrom import ARMS, ASSIGNMENT_PROBABILITY, CONTROL_ARM, load_hillstrom
    from nba.training.uplift import FAMILY, model_params
    from nba.training.uplift_learners import make_learner

    config = config or HillstromPolicyConfig(seed=settings.seed)
    data = load_hillstrom(settings=settings)
    exp = data.experiment
    X = data.customers.drop(columns=["customer_id", "event_timestamp"])
    arm = exp["arm"].astype(str).to_numpy()
    ys = {o: exp[o].to_numpy(np.float64) for o in HILLSTROM_POLICY_OUTCOMES}
    emails = [a for a in ARMS if a != CONTROL_ARM]
    params = model_params(load_model_config(settings.home, FAMILY), "hillstrom")

    rng = np.random.default_rng(config.seed)
    test = _stratified_split(arm, config.test_fraction, rng)
    train_idx = np.flatnonzero(~test)
    val_in_train = _stratified_split(arm[train_idx], config.validation_fraction, rng)
    val = np.zeros(len(arm), dtype=bool)
    val[train_idx[val_in_train]] = True
    fit = ~test & ~val
    visit, spend = ys[LEARN_OUTCOME], ys["spend"]

    def value_per_visit(rows: np.ndarray) -> dict[str, float]:
        return {e: float(spend[rows & (arm == e)].sum() / max(visit[rows & (arm == e)].sum(), 1.0)) for e in emails}

    def predict(kind: str, rows: np.ndarray, where: np.ndarray) -> np.ndarray:
        vpv = value_per_visit(rows)
        cols = []
        for e in emails:
            m = rows & np.isin(arm, [e, CONTROL_ARM])
            learner = make_learner(kind, params, min_positives=10, name=f"hillstrom policy {kind} {e}",
                                   random_state=config.seed)
            learner.fit(X[m], (arm[m] == e).astype(np.int64), visit[m])
            cols.append(learner.predict(X[where]) * vpv[e])
        return np.column_stack(cols)

    validation: dict[str, float] = {}
    for kind in config.learners:
        if progress:
            progress(f"validate {kind}")
        choice = _choices(predict(kind, fit, val), emails, CONTROL_ARM, config.email_cost)
        hit = arm[val] == choice
        validation[kind] = float((hit * spend[val] / ASSIGNMENT_PROBABILITY).mean()
                                 - config.email_cost * (choice != CONTROL_ARM).mean())
    learner = max(validation, key=lambda k: validation[k])
    if progress:
        progress(f"refit {learner}")
    train = ~test
    learned = _choices(predict(learner, train, test), emails, CONTROL_ARM, config.email_cost)

    n_test = int(test.sum())
    codes = {a: i for i, a in enumerate(ARMS)}
    a_test = np.array([codes[a] for a in arm[test]], dtype=np.int64)
    mu = np.full(n_test, ASSIGNMENT_PROBABILITY)

    def onehot(choice: np.ndarray) -> np.ndarray:
        out = np.zeros((n_test, len(ARMS)))
        out[np.arange(n_test), [codes[c] for c in choice]] = 1.0
        return out

    targets = {
        "learned": onehot(learned),
        **{f"all:{e}": onehot(np.full(n_test, e, dtype=object)) for e in emails},
        "none": onehot(np.full(n_test, CONTROL_ARM, dtype=object)),
        "random": np.full((n_test, len(ARMS)), 1 / len(ARMS)),
    }
    terms: dict[str, dict[str, np.ndarray]] = {}
    policies = []
    for name, target in targets.items():
        w = target[np.arange(n_test), a_test] / mu
        terms[name] = {o: w * ys[o][test] for o in HILLSTROM_POLICY_OUTCOMES}
    for name, target in targets.items():
        ests, snips = {}, {}
        for o in HILLSTROM_POLICY_OUTCOMES:
            pv = off_policy_value(ys[o][test], a_test, mu, target, policy=name, confidence=config.confidence,
                                  limits=limits, action_names=list(ARMS), include_logged=False)
            ests[o], snips[o] = pv.estimate("ips"), pv.estimate("snips")
        mailed = float(1.0 - target[:, codes[CONTROL_ARM]].mean())
        spend_e = ests["spend"]
        net = spend_e.value - config.email_cost * mailed
        diffs = {b: {o: _paired(terms[name][o], terms[b][o], b, config.confidence)
                     for o in HILLSTROM_POLICY_OUTCOMES} for b in BASELINES}
        policies.append(HillstromPolicy(
            name=name, estimates=ests, snips=snips, mailed_share=mailed,
            mens_share=float(target[:, codes["Mens E-Mail"]].mean()),
            womens_share=float(target[:, codes["Womens E-Mail"]].mean()), net_value=net,
            net_ci_low=spend_e.ci_low - config.email_cost * mailed,
            net_ci_high=spend_e.ci_high - config.email_cost * mailed, differences=diffs))
    notes = (
        "value: inverse propensity weighting on the held-out split (assignment probability 1/3 per arm)",
        f"learned: {learner} on {LEARN_OUTCOME} per e-mail x spend per visit, e-mail sent when the predicted "
        f"incremental spend exceeds {config.email_cost:g} $",
        "net_value: spend per customer minus the e-mail cost times the share mailed",
    )
    return HillstromPolicyReport(config=config, learner=learner, validation=validation,
                                 value_per_visit=value_per_visit(train), policies=tuple(policies),
                                 rows={"train": int(fit.sum()), "validation": int(val.sum()), "test": n_test},
                                 notes=notes)


def _paired(a: np.ndarray, b: np.ndarray, versus: str, confidence: float) -> Difference:
    """Mean of a - b (per-row terms of two policies on the same rows), CI and two-sided p-value."""
    from statistics import NormalDist

    d = a - b
    mean, se = mean_se(d)
    if se > 0:
        z = NormalDist().inv_cdf(0.5 + confidence / 2)
        p = 2 * (1 - NormalDist().cdf(abs(mean) / se))
        return Difference(versus, mean, mean - z * se, mean + z * se, p)
    return Difference(versus, mean, mean, mean, math.nan if mean == 0 else 0.0)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(text).lower()).strip("_")


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
