"""A targeting policy learnt from a randomised or logged experiment, valued on held-out rows
against every blanket arm, the control ("none") and random (`nba evaluate policy --data`).

Input: a table (CSV / Parquet, or Hillstrom by name) with an arm column, a control value, a
numeric outcome (times `value_per_outcome`, e.g. the margin of a conversion), feature columns
(numeric or categorical), each arm's cost per customer, and the probability each row got its
arm: per arm for a randomised experiment (`assignment`), per row for a logged one
(`propensity_column`), or, with neither, each arm's share of the rows (right for a completely
randomised experiment, said in the notes).

Learning (`nba.training.policy_learning`) happens on the training rows only: cross-fitted
outcome models per arm, doubly-robust scores net of costs, a policy tree (or a weighted
classifier) fitted on half of them and the safe-improvement rule checked on the other half.

Valuation on the test rows (`--test FILE`, or a seeded share of the table stratified by arm),
which played no role in learning: every policy pi by its doubly-robust value
    V(pi) = mean_i sum_k pi_k(x_i) (Gamma_ik - c_k),  Gamma_ik = mu_k(x_i) + 1[a_i = k](y_i - mu_k(x_i)) / e_i
with the outcome models of the training rows (so unbiased with known probabilities), its CI
from the per-row terms, the gross value (before costs) beside it, the IPS value and the
off-policy diagnostics (effective sample size, unsupported share) flagged against the
`evaluation:` limits of evaluation/gates.yaml. `learned_vs_best_single` is the paired
difference of the learnt policy and the best blanket treated arm on the test rows (the best
*on the test rows*: the harder comparison), with its CI and two-sided p-value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nba.errors import ConfigError, SchemaError
from nba.evaluation.ope import DEFAULT_CONFIDENCE, Estimate, _estimate, mean_se, off_policy_value
from nba.evaluation.stats import ExperimentDataError
from nba.training import policy_learning as pl

if TYPE_CHECKING:
    from nba.config import EvaluationLimits
    from nba.settings import Settings

HILLSTROM = "hillstrom"
HILLSTROM_EMAIL_COST = 0.10  # $ of spend per e-mail: sending plus the customer's attention (a stand-in)
HILLSTROM_OUTCOMES = ("spend", "conversion", "visit")
DEFAULT_TEST_SHARE = 0.5
PROBABILITY_TOLERANCE = 1e-6
LEARNED, NONE, RANDOM = "learned", "none", "random"


def all_arm(arm: str) -> str:
    return f"all:{arm}"


# --- inputs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySpec:
    """What to learn and how to value it (the command's options, validated on the data)."""

    arm_column: str
    control: str
    outcome: str
    features: tuple[str, ...] | None = None  # None: every other column
    value_per_outcome: float = 1.0
    costs: Mapping[str, float] = field(default_factory=dict)
    assignment: Mapping[str, float] | None = None
    propensity_column: str | None = None
    test_share: float = DEFAULT_TEST_SHARE
    seed: int = 7
    method: str = pl.DEFAULT_METHOD
    depth: int = pl.DEFAULT_DEPTH
    safe: bool = True
    confidence: float = DEFAULT_CONFIDENCE

    def __post_init__(self) -> None:
        if not (math.isfinite(self.value_per_outcome) and self.value_per_outcome > 0):
            raise ConfigError(f"--value-per-outcome {self.value_per_outcome}: expected a number > 0")
        for arm, c in self.costs.items():
            if not math.isfinite(c):
                raise ConfigError(f"--cost {arm}={c}: expected a finite number (cost per customer)")
        if self.assignment is not None and self.propensity_column:
            raise ConfigError("--assignment-probability and --propensity-column: give one of them, not both")
        if not 0.05 <= self.test_share <= 0.8:
            raise ConfigError(f"--test-share {self.test_share}: expected a share in [0.05, 0.8]")
        if self.method not in pl.METHODS:
            raise ConfigError(f"method '{self.method}': expected one of {', '.join(pl.METHODS)}")
        if self.depth not in (1, 2):
            raise ConfigError(f"depth {self.depth}: expected 1 or 2")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence {self.confidence}: expected a level in (0, 1)")


def parse_assignments(values: Sequence[str], option: str) -> dict[str, float]:
    """`ARM=VALUE` pairs (the arm may contain spaces and '='; the value follows the last '=')."""
    out: dict[str, float] = {}
    for text in values:
        arm, sep, value = text.rpartition("=")
        if not sep or not arm:
            raise ConfigError(f"{option} {text!r}: expected ARM=NUMBER, e.g. {option} \"Mens E-Mail=0.1\"")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{option} {text!r}: '{value}' is not a number") from None
        if arm in out:
            raise ConfigError(f"{option}: arm '{arm}' is given twice")
        out[arm] = number
    return out


@dataclass(frozen=True)
class _Arrays:
    X: pd.DataFrame
    arm: np.ndarray  # codes into arms
    y: np.ndarray  # outcome x value_per_outcome
    e: np.ndarray  # probability of the row's own arm


def read_frame(path: Path, option: str = "--data") -> pd.DataFrame:
    """Every column of a CSV or Parquet file."""
    from nba.errors import DataFileError

    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{option} {path}: no such file (expected a CSV or Parquet experiment table)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt") or path.name.lower().endswith(".csv.gz"):
            return pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise DataFileError(f"{option} {path}: cannot read it ({exc})") from None
    raise DataFileError(f"{option} {path}: unknown table format '{suffix}'; expected .csv or .parquet")


def _require(frame: pd.DataFrame, columns: Sequence[str], source: str, why: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SchemaError(f"{source}: no column(s) {missing} ({why}); the table has {list(frame.columns)}")


def _arms(frame: pd.DataFrame, spec: PolicySpec, source: str) -> list[str]:
    col = frame[spec.arm_column]
    if col.isna().any():
        raise SchemaError(f"{source}: column '{spec.arm_column}' has {int(col.isna().sum())} empty value(s); every "
                          "row needs its arm")
    labels = list(dict.fromkeys(col.astype(str).tolist()))
    if len(labels) < 2:
        raise ExperimentDataError(f"{source}: column '{spec.arm_column}' holds only '{labels[0] if labels else ''}'; "
                                  "expected the control and at least one other arm")
    if spec.control not in labels:
        raise ExperimentDataError(f"{source}: control value '{spec.control}' does not occur in column "
                                  f"'{spec.arm_column}'; its values are {labels[:20]}")
    # the others sorted (an order that does not depend on the rows'), the control last
    return sorted(a for a in labels if a != spec.control) + [spec.control]


def _features(frame: pd.DataFrame, spec: PolicySpec, source: str, notes: list[str]) -> list[str]:
    used = {spec.arm_column, spec.outcome, *([spec.propensity_column] if spec.propensity_column else [])}
    if spec.features is not None:
        _require(frame, spec.features, source, "named by --features")
        clash = [c for c in spec.features if c in used]
        if clash:
            raise ConfigError(f"--features {clash}: the arm, outcome or propensity column cannot be a feature")
        for c in spec.features:
            if frame[c].nunique(dropna=False) <= 1:
                raise ExperimentDataError(f"{source}: feature column '{c}' is constant (every row "
                                          f"{frame[c].iloc[0]!r}); it cannot tell customers apart, leave it out")
        return list(spec.features)
    out = []
    for c in frame.columns:
        if c in used:
            continue
        if frame[c].nunique(dropna=False) <= 1:
            notes.append(f"column '{c}' is constant: left out of the features")
            continue
        out.append(str(c))
    if not out:
        raise ExperimentDataError(f"{source}: no feature column besides the arm, outcome and propensity columns")
    return out


def _outcome(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    col = frame[column]
    if pd.api.types.is_bool_dtype(col):
        col = col.astype(np.int64)
    if not pd.api.types.is_numeric_dtype(col):
        sample = next((v for v in col.head(100) if v is not None and v == v), None)
        raise SchemaError(f"{source}: outcome column '{column}' holds {col.dtype} values (e.g. {sample!r}); "
                          "expected 0/1 or numbers")
    y = col.to_numpy(np.float64)
    bad = ~np.isfinite(y)
    if bad.any():
        raise SchemaError(f"{source}: outcome column '{column}' has {int(bad.sum())} empty or infinite value(s) "
                          f"(first at row {int(np.flatnonzero(bad)[0])}); expected a number in every row")
    return y


def _check_assignment(assignment: Mapping[str, float], arms: Sequence[str], spec: PolicySpec, source: str) -> None:
    unknown = [a for a in assignment if a not in arms]
    if unknown:
        raise ConfigError(f"--assignment-probability: arm(s) {unknown} do not occur in column '{spec.arm_column}' "
                          f"of {source} (its arms: {list(arms)})")
    missing = [a for a in arms if a not in assignment]
    if missing:
        raise ConfigError(f"--assignment-probability: no probability for arm(s) {missing} of column "
                          f"'{spec.arm_column}'; give one per arm")
    for a, p in assignment.items():
        if not (math.isfinite(p) and 0 < p <= 1):
            raise ConfigError(f"--assignment-probability {a}={p:g}: expected a probability in (0, 1]; an arm that "
                              "rows received had a chance > 0")
    total = sum(assignment.values())
    if abs(total - 1.0) > PROBABILITY_TOLERANCE:
        raise ConfigError(f"--assignment-probability: the probabilities sum to {total:g}; expected 1 (one "
                          "probability per arm of a randomised assignment)")


def _arrays(frame: pd.DataFrame, spec: PolicySpec, arms: Sequence[str], features: Sequence[str],
            assignment: Mapping[str, float] | None, source: str) -> _Arrays:
    labels = frame[spec.arm_column].astype(str)
    unknown = sorted(set(labels) - set(arms))
    if unknown:
        raise ExperimentDataError(f"{source}: column '{spec.arm_column}' has arm(s) {unknown[:10]} the training "
                                  f"rows do not (their arms: {list(arms)})")
    code = labels.map({a: i for i, a in enumerate(arms)}).to_numpy(np.int64)
    y = _outcome(frame, spec.outcome, source) * spec.value_per_outcome
    if spec.propensity_column:
        import pyarrow as pa

        from nba.evaluation.policy_file import read_propensities

        e = read_propensities(pa.Table.from_pandas(frame[[spec.propensity_column]], preserve_index=False),
                              spec.propensity_column, source)
    else:
        assert assignment is not None
        e = np.array([assignment[a] for a in arms])[code]
    return _Arrays(frame[list(features)].reset_index(drop=True), code, y, e)


def _stratified(arm: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros(len(arm), dtype=bool)
    for a in np.unique(arm):
        idx = rng.permutation(np.flatnonzero(arm == a))
        mask[idx[:int(round(len(idx) * share))]] = True
    return mask


# --- the report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    versus: str
    diff: float
    ci_low: float
    ci_high: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return {"versus": self.versus, "diff": _num(self.diff), "ci_low": _num(self.ci_low),
                "ci_high": _num(self.ci_high), "p_value": _num(self.p_value)}


@dataclass(frozen=True)
class ValuedPolicy:
    name: str
    net: Estimate  # DR, net of costs
    gross: Estimate  # DR, before costs
    ips: Estimate  # IPS, before costs
    cost: float  # mean cost per customer
    shares: Mapping[str, float]  # arm -> share of the test rows
    flags: tuple[str, ...]
    diagnostics: Mapping[str, Any]
    versus: Mapping[str, Difference]  # 'best_single', 'none'

    def to_dict(self, costs_given: bool) -> dict[str, Any]:
        out = {"name": self.name, "estimator": "dr", "net_of_costs": costs_given, "value": _num(self.net.value),
               "ci_low": _num(self.net.ci_low), "ci_high": _num(self.net.ci_high), "se": _num(self.net.se),
               "gross_value": _num(self.gross.value), "gross_ci_low": _num(self.gross.ci_low),
               "gross_ci_high": _num(self.gross.ci_high), "cost": self.cost,
               "ips": {"value": _num(self.ips.value), "ci_low": _num(self.ips.ci_low),
                       "ci_high": _num(self.ips.ci_high)},
               "shares": dict(self.shares), "reliable": not self.flags, "flags": list(self.flags),
               "diagnostics": dict(self.diagnostics)}
        for k, d in self.versus.items():
            out[f"vs_{k}"] = d.to_dict()
        return out


@dataclass(frozen=True)
class PolicyLearningReport:
    source: str
    spec: PolicySpec
    arms: tuple[str, ...]
    features: tuple[str, ...]
    best_blanket_arm: str  # on the training rows (the safe rule's default)
    best_single: str  # the best all:<treated arm> on the test rows
    policy: pl.LearntPolicy
    policies: tuple[ValuedPolicy, ...]
    rows: Mapping[str, int]
    timing: Mapping[str, float]
    notes: tuple[str, ...] = ()

    def get(self, name: str) -> ValuedPolicy:
        for p in self.policies:
            if p.name == name:
                return p
        raise KeyError(f"no policy '{name}'; have {[p.name for p in self.policies]}")

    @property
    def learned_vs_best_single(self) -> Difference:
        return self.get(LEARNED).versus["best_single"]

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        costs_given = any(c != 0 for c in s.costs.values())
        d = self.learned_vs_best_single
        return {
            "data": self.source, "arm_column": s.arm_column, "control": s.control, "outcome": s.outcome,
            "value_per_outcome": s.value_per_outcome, "arms": list(self.arms),
            "costs": {a: float(s.costs.get(a, 0.0)) for a in self.arms}, "features": list(self.features),
            "assignment_probability": dict(s.assignment) if s.assignment is not None else None,
            "propensity_column": s.propensity_column, "seed": s.seed, "confidence": s.confidence,
            "split": {**dict(self.rows), "test_share": s.test_share if "test_file" not in self.rows else None},
            "method": s.method, "depth": s.depth if s.method == "tree" else None, "safe_improvement": s.safe,
            "best_blanket_arm": self.best_blanket_arm,
            "learned_policy": {"rules": self.policy.describe(), "deviates": self.policy.deviates,
                               "alpha": self.policy.alpha,
                               "segments": [seg.to_dict() for seg in self.policy.segments]},
            "policies": [p.to_dict(costs_given) for p in self.policies],
            "learned_vs_best_single": {"best_single": self.best_single, **d.to_dict()},
            "timing_s": dict(self.timing), "notes": list(self.notes),
        }

    def table(self) -> pd.DataFrame:
        rows = []
        for p in self.policies:
            b, n = p.versus["best_single"], p.versus["none"]
            rows.append({"policy": p.name, "value": p.net.value, "ci": f"[{p.net.ci_low:.4g}, {p.net.ci_high:.4g}]",
                         "gross": p.gross.value, "cost": p.cost, "ips": p.ips.value,
                         "vs_best_single": b.diff, "vs_best_ci": f"[{b.ci_low:.4g}, {b.ci_high:.4g}]",
                         "p": b.p_value, "vs_none": n.diff, "reliable": not p.flags})
        return pd.DataFrame(rows)

    def values(self, prefix: str = "policy") -> dict[str, float]:
        from nba.evaluation.stats import slug

        out = {f"{prefix}.{slug(p.name)}.value": p.net.value for p in self.policies}
        out[f"{prefix}.learned_vs_best_single.diff"] = self.learned_vs_best_single.diff
        return {k: float(v) for k, v in out.items() if v == v}


def policy_terms(scores: np.ndarray, target: np.ndarray, costs: np.ndarray | None = None) -> np.ndarray:
    """Each row's doubly-robust value of a policy: sum_k pi_k(x_i) (Gamma_ik - c_k), from the
    gross scores Gamma (n x K) and the policy's probabilities (n x K); their mean is the value."""
    scores, target = np.asarray(scores, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if scores.shape != target.shape:
        raise ExperimentDataError(f"scores {scores.shape} and policy {target.shape}: expected the same n x K shape")
    net = scores if costs is None else scores - np.asarray(costs, dtype=np.float64)[None, :]
    return (target * net).sum(axis=1)


def _paired(a: np.ndarray, b: np.ndarray, versus: str, confidence: float) -> Difference:
    from statistics import NormalDist

    mean, se = mean_se(a - b)
    if se > 0:
        z = NormalDist().inv_cdf(0.5 + confidence / 2)
        return Difference(versus, mean, mean - z * se, mean + z * se, 2 * (1 - NormalDist().cdf(abs(mean) / se)))
    # no spread: the two policies agree on every row (p = 1), or differ by a constant (p = 0)
    return Difference(versus, mean, mean, mean, 1.0 if mean == 0 else 0.0)


# --- learning and valuing ----------------------------------------------------------------------------


def learn_and_value(frame: pd.DataFrame, spec: PolicySpec, *, test: pd.DataFrame | None = None,
                    source: str = "table", test_source: str | None = None, limits: EvaluationLimits | None = None,
                    progress: Callable[[str], None] | None = None) -> PolicyLearningReport:
    """Learn a policy on the training rows and value it and the fixed policies on the test rows."""
    from nba.training.models import FrameEncoder

    clock = {"start": time.perf_counter()}
    notes: list[str] = []
    need = [spec.arm_column, spec.outcome, *([spec.propensity_column] if spec.propensity_column else [])]
    _require(frame, need, source, "named by --arm-column, --outcome" + (", --propensity-column"
                                                                        if spec.propensity_column else ""))
    if len(frame) == 0:
        raise ExperimentDataError(f"{source}: the table has no rows")
    arms = _arms(frame, spec, source)
    unknown_cost = [a for a in spec.costs if a not in arms]
    if unknown_cost:
        raise ConfigError(f"--cost: arm(s) {unknown_cost} do not occur in column '{spec.arm_column}' of {source} "
                          f"(its arms: {arms})")
    features = _features(frame, spec, source, notes)
    assignment = dict(spec.assignment) if spec.assignment is not None else None
    if assignment is not None:
        _check_assignment(assignment, arms, spec, source)
    elif not spec.propensity_column:
        counts = frame[spec.arm_column].astype(str).value_counts()
        assignment = {a: float(counts[a] / len(frame)) for a in arms}
        notes.append("assignment probabilities: each arm's share of the rows (" + ", ".join(
            f"{a} {p:.3f}" for a, p in assignment.items()) + "), right for a completely randomised experiment; "
            "give --assignment-probability or --propensity-column otherwise")
    data = _arrays(frame, spec, arms, features, assignment, source)
    if test is not None:
        tsrc = test_source or "--test"
        _require(test, [*need, *features], tsrc, f"the columns the policy is learnt and valued on, as in {source}")
        test_data = _arrays(test, spec, arms, features, assignment, tsrc)
        train_data = data
        rows = {"train_rows": len(frame), "test_rows": len(test), "test_file": 1}
    else:
        is_test = _stratified(data.arm, spec.test_share, np.random.default_rng(spec.seed))
        tr, te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
        train_data = _Arrays(data.X.iloc[tr].reset_index(drop=True), data.arm[tr], data.y[tr], data.e[tr])
        test_data = _Arrays(data.X.iloc[te].reset_index(drop=True), data.arm[te], data.y[te], data.e[te])
        rows = {"train_rows": len(tr), "test_rows": len(te)}
    k = len(arms)
    for part, d in (("training", train_data), ("test", test_data)):
        counts = np.bincount(d.arm, minlength=k)
        if (counts < 2).any():
            thin = [arms[j] for j in np.flatnonzero(counts < 2)]
            raise ExperimentDataError(f"{source}: the {part} rows have fewer than 2 rows of arm(s) {thin}; every arm "
                                      "needs rows on both sides to learn and value a policy")
    costs = np.array([float(spec.costs.get(a, 0.0)) for a in arms])

    encoder = FrameEncoder().fit(train_data.X)
    Xtr = encoder.transform(train_data.X).astype(np.float64)
    Xte = encoder.transform(test_data.X).astype(np.float64)
    names = list(encoder.feature_names_out_)
    if progress:
        progress("outcome models")
    folds = min(pl.DEFAULT_FOLDS, int(np.bincount(train_data.arm, minlength=k).min()))
    q_train, models = pl.cross_fitted_outcomes(Xtr, train_data.arm, train_data.y, k, folds=max(2, folds),
                                               seed=spec.seed)
    clock["outcome_models"] = time.perf_counter()
    scores = pl.dr_scores(train_data.y, train_data.arm, train_data.e, q_train, costs)
    if progress:
        progress("policy")
    min_arm = limits.min_arm_size if limits is not None else pl.DEFAULT_MIN_ARM_ROWS
    policy = pl.learn_policy(Xtr, scores, train_data.arm, arms, feature_names=names, method=spec.method,
                             depth=spec.depth, min_arm_rows=min(min_arm, pl.DEFAULT_MIN_ARM_ROWS), safe=spec.safe,
                             seed=spec.seed)
    clock["policy"] = time.perf_counter()
    if progress:
        progress("value")

    # valuation on the test rows
    q_test = models.predict(Xte)
    gamma = pl.dr_scores(test_data.y, test_data.arm, test_data.e, q_test)  # gross
    n = len(test_data.y)
    control = arms.index(spec.control)

    def onehot(choice: np.ndarray) -> np.ndarray:
        out = np.zeros((n, k))
        out[np.arange(n), choice] = 1.0
        return out

    targets: dict[str, np.ndarray] = {LEARNED: onehot(policy.predict(Xte))}
    for j, a in enumerate(arms):
        if j != control:
            targets[all_arm(a)] = onehot(np.full(n, j))
    targets[NONE] = onehot(np.full(n, control))
    targets[RANDOM] = np.full((n, k), 1.0 / k)
    net_terms = {name: policy_terms(gamma, pi, costs) for name, pi in targets.items()}
    singles = [all_arm(a) for j, a in enumerate(arms) if j != control]
    best_single = max(singles, key=lambda s: float(net_terms[s].mean()))
    z_conf = spec.confidence
    valued = []
    for name, pi in targets.items():
        pv = off_policy_value(test_data.y, test_data.arm, test_data.e, pi, policy=name, q_hat=q_test,
                              confidence=z_conf, limits=limits, action_names=arms, include_logged=False)
        flags = list(pv.diagnostics.flags)
        gross_terms = policy_terms(gamma, pi)
        g_mean, g_se = mean_se(gross_terms)
        n_mean, n_se = mean_se(net_terms[name])
        net = _estimate("dr", n_mean, n_se, n, z_conf, flags)
        gross = _estimate("dr", g_mean, g_se, n, z_conf, flags)
        versus = {"best_single": _paired(net_terms[name], net_terms[best_single], best_single, z_conf),
                  "none": _paired(net_terms[name], net_terms[NONE], NONE, z_conf)}
        valued.append(ValuedPolicy(
            name=name, net=net, gross=gross, ips=pv.estimate("ips"), cost=float((pi * costs).sum(axis=1).mean()),
            shares={a: float(pi[:, j].mean()) for j, a in enumerate(arms)}, flags=tuple(flags),
            diagnostics=pv.diagnostics.to_dict(), versus=versus))
    clock["value"] = time.perf_counter()
    unsupported = [s for s in policy.segments if not s.kept and s.reason.startswith("too little support")]
    if unsupported:
        notes.append(f"{len(unsupported)} segment(s) proposed another arm on too little support and kept the best "
                     "blanket arm: " + "; ".join(f"{s.name}: {s.reason}" for s in unsupported))
    if not policy.deviates:
        notes.append(f"the learnt policy is '{all_arm(arms[policy.best_arm])}' everywhere: no segment's advantage "
                     "over the best blanket arm was confidently positive on the held-out check")
    notes.append(f"values: doubly robust on the {n:,} test rows (outcome models from the training rows), "
                 + ("net of the costs per arm, the gross value beside it" if any(costs) else "no costs given"))
    timing = {"outcome_models": clock["outcome_models"] - clock["start"],
              "policy": clock["policy"] - clock["outcome_models"], "value": clock["value"] - clock["policy"],
              "total": clock["value"] - clock["start"]}
    return PolicyLearningReport(
        source=source, spec=spec, arms=tuple(arms), features=tuple(features), best_blanket_arm=arms[policy.best_arm],
        best_single=best_single, policy=policy, policies=tuple(valued), rows=rows, timing=timing, notes=tuple(notes))


def hillstrom_frame(settings: Settings) -> pd.DataFrame:
    """Hillstrom as one table: the pre-mailing features, the arm and the outcomes."""
    from nba.data.hillstrom import load_hillstrom

    data = load_hillstrom(settings=settings)
    features = data.customers.drop(columns=["customer_id", "event_timestamp"])
    exp = data.experiment
    return pd.concat([features.reset_index(drop=True),
                      pd.DataFrame({"arm": exp["arm"].astype(str).to_numpy(),
                                    **{o: exp[o].to_numpy() for o in HILLSTROM_OUTCOMES}})], axis=1)


def hillstrom_spec(*, outcome: str | None = None, costs: Mapping[str, float] | None = None,
                   **options: Any) -> PolicySpec:
    """Hillstrom's defaults: arm 'arm', control 'No E-Mail', outcome spend, the known 1/3 per
    arm, the eight pre-mailing features, and 0.10 $ per e-mail when the outcome is in $ (spend,
    or another outcome with a value per outcome); conversion and visit alone are valued gross."""
    from nba.data.hillstrom import ARMS, ASSIGNMENT_PROBABILITY, CONTROL_ARM
    from nba.schemas import ENTITY_KEY, EVENT_TS, HILLSTROM_CUSTOMERS

    outcome = outcome or "spend"
    if outcome not in HILLSTROM_OUTCOMES:
        raise ConfigError(f"--outcome {outcome}: Hillstrom's outcomes are {', '.join(HILLSTROM_OUTCOMES)}")
    emails = [a for a in ARMS if a != CONTROL_ARM]
    if costs is None:  # the e-mail cost is in $: it applies to spend (or an outcome given a $ value)
        costs = {e: HILLSTROM_EMAIL_COST for e in emails} if outcome == "spend" or "value_per_outcome" in options \
            else {}
    features = tuple(c for c in HILLSTROM_CUSTOMERS.names if c not in (ENTITY_KEY, EVENT_TS))
    options.setdefault("assignment", {a: ASSIGNMENT_PROBABILITY for a in ARMS})
    options.setdefault("features", features)
    return PolicySpec(arm_column="arm", control=CONTROL_ARM, outcome=outcome,
                      costs=dict(costs), **options)


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
