"""Policy learning that optimises value directly, from a randomised or logged experiment.

Data: rows i with features x_i, the arm a_i they got (K arms, one of them the control), the
outcome y_i (in value units: the outcome times its value) and the probability e_i with which
a_i was assigned (known in a randomised experiment, logged otherwise). Each arm k has a cost
c_k per customer (0 by default).

1. **Outcome models, cross-fitted, per arm**: the rows are cut in `folds` parts stratified
   by arm; for each part and arm, a regressor of y on x fitted on that arm's rows of the
   other parts predicts mu_k(x) on the part. No row's score uses a model that saw it.
2. **Doubly-robust scores** per row and arm:
       Gamma_ik = mu_k(x_i) + 1[a_i = k] (y_i - mu_k(x_i)) / e_i  -  c_k.
   The mean of Gamma_.k over rows estimates the value of giving everyone arm k, unbiased
   when either the probabilities or the outcome models are right; the mean of Gamma_i,pi(x_i)
   estimates the value of any policy pi fitted on other rows (Athey & Wager 2021).
3. **A policy fitted to the scores**: an exhaustive policy tree of depth 1 or 2 (`PolicyTree`:
   the split thresholds at the quantiles of each feature, each leaf the arm of highest summed
   score, every leaf at least `min_leaf` rows; the search of `policytree`, on histograms) or
   a weighted classifier (`ScoreClassifier`: XGBoost, label the arm of highest score, weight
   the score's spread), fitted on the "fit" part of the training rows.
4. **Safe improvement**: the best blanket arm b (highest mean score over the training rows)
   is the default. A segment (a leaf, or the rows the classifier gives one arm) gets its own
   arm k != b only if, on the "check" part of the training rows that played no role in the
   fit, the lower confidence bound of the mean advantage Gamma_.k - Gamma_.b is above 0, at
   level alpha / m for the m segments proposing a deviation (Bonferroni), and both arms have
   at least `min_arm_rows` logged rows of the check part in the segment. Elsewhere the policy
   is b. So a policy that overfits a rare outcome (Hillstrom's spend: ~1 % buy) falls back to
   the best single arm instead of losing to it.

Pure numpy and XGBoost: no files, no frames beyond the encoder (nba.evaluation reads and
values; this module only learns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nba.errors import ConfigError

METHODS = ("tree", "classifier")
DEFAULT_METHOD = "tree"
DEFAULT_DEPTH = 2
DEFAULT_FOLDS = 5
DEFAULT_CHECK_SHARE = 0.5  # of the training rows: the held-out check of the safe-improvement rule
DEFAULT_ALPHA = 0.05  # one-sided, split over the segments proposing a deviation
DEFAULT_MIN_LEAF_SHARE = 0.05  # a leaf holds at least this share of the fit rows
DEFAULT_MIN_ARM_ROWS = 50  # logged rows per arm in a segment's check part, to trust its advantage
MAX_BINS = 32  # split thresholds per feature (its quantiles, or each distinct value if fewer)
# The outcome models: few shallow trees with big leaves. Uplift is a small difference of noisy
# means; the DR scores correct the models' bias, so they need to be steady more than sharp.
OUTCOME_PARAMS: dict[str, Any] = {"n_estimators": 100, "max_depth": 2, "learning_rate": 0.05, "subsample": 0.8,
                                  "min_child_weight": 300}


class PolicyLearningError(ConfigError):
    """Inputs that policy learning cannot use (named with the reason)."""


# --- outcome models and DR scores ---------------------------------------------------------


def stratified_folds(arm: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number 0..folds-1 per row, each arm's rows spread evenly over the folds."""
    out = np.empty(len(arm), dtype=np.int64)
    for a in np.unique(arm):
        idx = rng.permutation(np.flatnonzero(arm == a))
        out[idx] = np.arange(len(idx)) % folds
    return out


@dataclass
class OutcomeModels:
    """Per fold and arm a fitted regressor; `predict` on new rows averages the folds' models."""

    models: list[list[Any]]  # [fold][arm]
    n_arms: int

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = np.zeros((len(X), self.n_arms))
        for fold in self.models:
            for k, m in enumerate(fold):
                out[:, k] += m.predict(X)
        return out / len(self.models)


def _regressor(params: dict[str, Any] | None, seed: int) -> Any:
    import xgboost as xgb

    p = {"tree_method": "hist", "n_jobs": 2, "random_state": seed, "verbosity": 0, **OUTCOME_PARAMS,
         **(params or {}), "objective": "reg:squarederror"}
    return xgb.XGBRegressor(**p)


def cross_fitted_outcomes(X: np.ndarray, arm: np.ndarray, y: np.ndarray, n_arms: int, *, folds: int = DEFAULT_FOLDS,
                          params: dict[str, Any] | None = None, seed: int = 0) -> tuple[np.ndarray, OutcomeModels]:
    """mu_k(x_i) for every row and arm, each from models that never saw row i (module docstring, 1)."""
    if folds < 2:
        raise PolicyLearningError(f"folds {folds}: expected at least 2 for cross-fitting")
    rng = np.random.default_rng(seed)
    fold = stratified_folds(arm, folds, rng)
    q = np.zeros((len(y), n_arms))
    models: list[list[Any]] = []
    for f in range(folds):
        out, inside = fold != f, fold == f
        row = []
        for k in range(n_arms):
            rows = out & (arm == k)
            if not rows.any():
                raise PolicyLearningError(f"arm {k} has no rows outside fold {f}: too few rows to cross-fit")
            m = _regressor(params, seed + f).fit(X[rows], y[rows])
            q[inside, k] = m.predict(X[inside])
            row.append(m)
        models.append(row)
    return q, OutcomeModels(models, n_arms)


def dr_scores(y: np.ndarray, arm: np.ndarray, propensity: np.ndarray, q: np.ndarray,
              costs: np.ndarray | None = None) -> np.ndarray:
    """Gamma_ik = q_ik + 1[a_i = k] (y_i - q_ik) / e_i - c_k (module docstring, 2)."""
    y = np.asarray(y, dtype=np.float64)
    arm = np.asarray(arm, dtype=np.int64)
    e = np.asarray(propensity, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    n, k = q.shape
    if (e <= 0).any() or (e > 1).any():
        raise PolicyLearningError("propensities must lie in (0, 1]")
    g = q.copy()
    rows = np.arange(n)
    g[rows, arm] += (y - q[rows, arm]) / e
    if costs is not None:
        g -= np.asarray(costs, dtype=np.float64)[None, :]
    return g


# --- the policy tree ------------------------------------------------------------------------


def bin_edges(X: np.ndarray, max_bins: int = MAX_BINS) -> list[np.ndarray]:
    """Candidate thresholds per column: its distinct values if few, else its quantiles."""
    edges = []
    for j in range(X.shape[1]):
        v = np.unique(X[:, j])
        if len(v) <= max_bins:
            cuts = v[:-1]
        else:
            cuts = np.unique(np.quantile(X[:, j], np.linspace(0, 1, max_bins + 1)[1:-1], method="lower"))
        edges.append(cuts.astype(np.float64))
    return edges


def _binned(X: np.ndarray, edges: Sequence[np.ndarray]) -> np.ndarray:
    """Bin b of x in column j: the number of thresholds below x, so x <= edges[j][t] iff b <= t."""
    return np.column_stack([np.searchsorted(e, X[:, j], side="left") for j, e in enumerate(edges)]) \
        if len(edges) else np.zeros((len(X), 0), dtype=np.int64)


@dataclass
class _Node:
    arm: int = -1  # a leaf's arm (-1: an inner node)
    feature: int = -1
    threshold: float = math.nan
    left: _Node | None = None
    right: _Node | None = None
    leaf_id: int = -1


@dataclass
class PolicyTree:
    """An exhaustive policy tree of depth 1 or 2 on DR scores (module docstring, 3)."""

    depth: int = DEFAULT_DEPTH
    min_leaf: int = 1
    max_bins: int = MAX_BINS
    root_: _Node | None = None
    leaves_: list[_Node] = field(default_factory=list)

    def fit(self, X: np.ndarray, scores: np.ndarray) -> PolicyTree:
        if self.depth not in (1, 2):
            raise PolicyLearningError(f"policy tree depth {self.depth}: expected 1 or 2")
        n, k = scores.shape
        edges = bin_edges(X, self.max_bins)
        B = _binned(X, edges)
        nb = [len(e) + 1 for e in edges]
        # per feature: (bins, K) score sums and (bins,) row counts
        totals = scores.sum(axis=0)
        best: tuple[Any, ...] = ("leaf",)
        best_value = float(totals.max())
        hist = [np.stack([np.bincount(B[:, f], weights=scores[:, a], minlength=nb[f]) for a in range(k)], axis=1)
                for f in range(X.shape[1])]
        count = [np.bincount(B[:, f], minlength=nb[f]).astype(np.float64) for f in range(X.shape[1])]
        if self.depth == 1:
            for f in range(X.shape[1]):
                v, t = _best_split(hist[f], count[f], totals, float(n), self.min_leaf)
                if v > best_value + 1e-12:
                    best_value, best = v, ("split", f, t)
        else:
            for f in range(X.shape[1]):
                if nb[f] < 2:
                    continue
                # left child's histograms over every feature g, for every root threshold t at once
                left_choice: list[Any] = [("leaf",)] * (nb[f] - 1)
                right_choice: list[Any] = [("leaf",)] * (nb[f] - 1)
                cum_count_f = np.cumsum(count[f])[:-1]  # rows on the left, per root threshold
                cum_hist_f = np.cumsum(hist[f], axis=0)[:-1]  # (T, K)
                ok = (cum_count_f >= self.min_leaf) & (n - cum_count_f >= self.min_leaf)
                left_val = np.where(ok, cum_hist_f.max(axis=1), -np.inf)
                right_val = np.where(ok, (totals - cum_hist_f).max(axis=1), -np.inf)
                for g in range(X.shape[1]):
                    if nb[g] < 2:
                        continue
                    code = B[:, f] * nb[g] + B[:, g]
                    joint = np.stack([np.bincount(code, weights=scores[:, a], minlength=nb[f] * nb[g])
                                      for a in range(k)], axis=1).reshape(nb[f], nb[g], k)
                    jcount = np.bincount(code, minlength=nb[f] * nb[g]).reshape(nb[f], nb[g]).astype(np.float64)
                    L = np.cumsum(joint, axis=0)[:-1]  # (T, Bg, K): rows with bin_f <= t, by bin_g
                    Lc = np.cumsum(jcount, axis=0)[:-1]  # (T, Bg)
                    R = hist[g][None] - L
                    Rc = count[g][None] - Lc
                    for H, C, val, choice in ((L, Lc, left_val, left_choice), (R, Rc, right_val, right_choice)):
                        cum = np.cumsum(H, axis=1)[:, :-1]  # (T, S, K): bin_g <= s
                        cumc = np.cumsum(C, axis=1)[:, :-1]
                        tot = H.sum(axis=1)[:, None, :]
                        totc = C.sum(axis=1)[:, None]
                        vs = cum.max(axis=2) + (tot - cum).max(axis=2)
                        vs = np.where((cumc >= self.min_leaf) & (totc - cumc >= self.min_leaf), vs, -np.inf)
                        s = vs.argmax(axis=1)
                        vbest = vs[np.arange(len(s)), s]
                        better = (vbest > val + 1e-12) & ok
                        for tt in np.flatnonzero(better):
                            val[tt] = vbest[tt]
                            choice[tt] = ("split", g, int(s[tt]))
                total = left_val + right_val
                t = int(np.argmax(total))
                if total[t] > best_value + 1e-12:
                    best_value, best = float(total[t]), ("split2", f, t, left_choice[t], right_choice[t])
        self.root_ = self._build(best, edges, X, B, scores)
        self.leaves_ = []
        self._number(self.root_)
        self.value_ = best_value / n
        return self

    def _build(self, spec: tuple, edges: list[np.ndarray], X: np.ndarray, B: np.ndarray, scores: np.ndarray,
               rows: np.ndarray | None = None) -> _Node:
        rows = np.ones(len(X), dtype=bool) if rows is None else rows
        if spec[0] == "leaf":
            return _Node(arm=int(scores[rows].sum(axis=0).argmax()))
        f, t = spec[1], spec[2]
        left = rows & (B[:, f] <= t)
        node = _Node(feature=int(f), threshold=float(edges[f][t]))
        lspec = spec[3] if spec[0] == "split2" else ("leaf",)
        rspec = spec[4] if spec[0] == "split2" else ("leaf",)
        node.left = self._build(lspec, edges, X, B, scores, left)
        node.right = self._build(rspec, edges, X, B, scores, rows & ~left)
        return node

    def _number(self, node: _Node) -> None:
        if node.arm >= 0:
            node.leaf_id = len(self.leaves_)
            self.leaves_.append(node)
            return
        assert node.left is not None and node.right is not None
        self._number(node.left)
        self._number(node.right)

    def apply(self, X: np.ndarray) -> np.ndarray:
        """The leaf of each row."""
        out = np.empty(len(X), dtype=np.int64)
        stack: list[tuple[_Node, np.ndarray]] = [(self.root_, np.arange(len(X)))]  # type: ignore[list-item]
        while stack:
            node, idx = stack.pop()
            if node.arm >= 0:
                out[idx] = node.leaf_id
                continue
            go_left = X[idx, node.feature] <= node.threshold
            stack.append((node.left, idx[go_left]))  # type: ignore[arg-type]
            stack.append((node.right, idx[~go_left]))  # type: ignore[arg-type]
        return out

    def describe(self, feature_names: Sequence[str], arms: Sequence[str]) -> list[str]:
        """One line per leaf: the path of conditions and its arm."""
        lines: list[str] = []

        def walk(node: _Node, path: list[str]) -> None:
            if node.arm >= 0:
                lines.append(f"{' and '.join(path) or 'everyone'} -> {arms[node.arm]}")
                return
            name = feature_names[node.feature]
            walk(node.left, [*path, f"{name} <= {node.threshold:g}"])  # type: ignore[arg-type]
            walk(node.right, [*path, f"{name} > {node.threshold:g}"])  # type: ignore[arg-type]

        walk(self.root_, [])  # type: ignore[arg-type]
        return lines

    def leaf_paths(self, feature_names: Sequence[str]) -> list[str]:
        return [line.rsplit(" -> ", 1)[0] for line in self.describe(feature_names, ["?"] * 10_000)]


def _best_split(hist: np.ndarray, count: np.ndarray, totals: np.ndarray, n: float,
                min_leaf: int) -> tuple[float, int]:
    """Best depth-1 split of one feature: (summed score of the two leaves' best arms, threshold bin)."""
    if len(count) < 2:
        return -math.inf, -1
    cum = np.cumsum(hist, axis=0)[:-1]
    cumc = np.cumsum(count)[:-1]
    v = cum.max(axis=1) + (totals - cum).max(axis=1)
    v = np.where((cumc >= min_leaf) & (n - cumc >= min_leaf), v, -np.inf)
    t = int(np.argmax(v))
    return float(v[t]), t


# --- the weighted classifier --------------------------------------------------------------------


@dataclass
class ScoreClassifier:
    """XGBoost multi-class on the arm of highest DR score, each row weighted by its scores'
    spread (max - min): a row whose arms hardly differ teaches little (module docstring, 3)."""

    params: dict[str, Any] | None = None
    seed: int = 0

    def fit(self, X: np.ndarray, scores: np.ndarray) -> ScoreClassifier:
        import xgboost as xgb

        label = scores.argmax(axis=1)
        weight = scores.max(axis=1) - scores.min(axis=1)
        self.classes_ = np.unique(label)
        if len(self.classes_) == 1:
            self.constant_ = int(self.classes_[0])
            return self
        self.constant_ = -1
        remap = {c: i for i, c in enumerate(self.classes_)}
        p = {"tree_method": "hist", "n_jobs": 2, "random_state": self.seed, "verbosity": 0, "n_estimators": 100,
             "max_depth": 2, "learning_rate": 0.05, "min_child_weight": 300, **(self.params or {})}
        obj = "multi:softprob" if len(self.classes_) > 2 else "binary:logistic"
        self.model_ = xgb.XGBClassifier(objective=obj, **p).fit(
            X, np.array([remap[c] for c in label]), sample_weight=weight + 1e-12)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.constant_ >= 0:
            return np.full(len(X), self.constant_, dtype=np.int64)
        return self.classes_[self.model_.predict(X).astype(np.int64)]


# --- the safe-improvement rule and the learnt policy ----------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One segment of the fitted policy and what the held-out check made of it."""

    name: str  # a leaf's path, or "classifier: <arm>"
    proposed: str  # the arm the fit proposed
    arm: str  # the arm the policy gives (the proposal, or the best blanket arm)
    fit_rows: int
    check_rows: int
    advantage: float  # mean Gamma_proposed - Gamma_best on the check rows (0 when proposed = best)
    se: float
    lower_bound: float  # at level alpha / m
    kept: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {"segment": self.name, "proposed": self.proposed, "arm": self.arm, "fit_rows": self.fit_rows,
                "check_rows": self.check_rows, "advantage": num(self.advantage), "se": num(self.se),
                "lower_bound": num(self.lower_bound), "kept": self.kept, "reason": self.reason}


@dataclass
class LearntPolicy:
    """The policy: a tree or classifier proposing arms, with the best blanket arm where the
    held-out check did not confirm a proposal."""

    method: str
    arms: list[str]
    best_arm: int
    model: Any
    segment_arm: dict[int, int]  # segment id (leaf id, or the classifier's proposed arm) -> arm given
    segments: list[Segment]
    feature_names: list[str]
    alpha: float
    train_value: float = math.nan  # mean training score of the proposals (optimistic, for reference)

    def _segment(self, X: np.ndarray) -> np.ndarray:
        return self.model.apply(X) if self.method == "tree" else self.model.predict(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The arm (index into `arms`) for each row."""
        seg = self._segment(X)
        out = np.full(len(X), self.best_arm, dtype=np.int64)
        for s, a in self.segment_arm.items():
            out[seg == s] = a
        return out

    @property
    def deviates(self) -> bool:
        return any(a != self.best_arm for a in self.segment_arm.values())

    def describe(self) -> list[str]:
        return [f"{s.name} -> {s.arm}" + ("" if s.kept or s.proposed == s.arm else f" (proposed {s.proposed}: "
                                                                                    f"{s.reason})")
                for s in self.segments]


def learn_policy(X: np.ndarray, scores: np.ndarray, arm: np.ndarray, arms: Sequence[str], *,
                 feature_names: Sequence[str], method: str = DEFAULT_METHOD, depth: int = DEFAULT_DEPTH,
                 check_share: float = DEFAULT_CHECK_SHARE, alpha: float = DEFAULT_ALPHA,
                 min_leaf_share: float = DEFAULT_MIN_LEAF_SHARE, min_arm_rows: int = DEFAULT_MIN_ARM_ROWS,
                 safe: bool = True, seed: int = 0) -> LearntPolicy:
    """Fit the policy on part of the rows' DR scores and keep a deviation from the best blanket
    arm only where the rest confirms it (module docstring, 3-4). `scores` are net of costs."""
    from statistics import NormalDist

    if method not in METHODS:
        raise PolicyLearningError(f"policy method '{method}': expected one of {', '.join(METHODS)}")
    if not 0.0 < check_share < 1.0:
        raise PolicyLearningError(f"check share {check_share}: expected a share in (0, 1)")
    if not 0.0 < alpha < 1.0:
        raise PolicyLearningError(f"alpha {alpha}: expected a level in (0, 1)")
    n, k = scores.shape
    best = int(scores.mean(axis=0).argmax())
    rng = np.random.default_rng(seed)
    check = np.zeros(n, dtype=bool)
    for a in np.unique(arm):
        idx = rng.permutation(np.flatnonzero(arm == a))
        check[idx[:int(round(len(idx) * check_share))]] = True
    fit = ~check
    if not safe:  # no held-out check: fit on every row (for the measurement of what the rule buys)
        fit = np.ones(n, dtype=bool)
    Xf, Sf = X[fit], scores[fit]
    if method == "tree":
        model: Any = PolicyTree(depth=depth, min_leaf=max(1, int(math.ceil(min_leaf_share * len(Xf))))).fit(Xf, Sf)
        seg_fit, seg_check = model.apply(Xf), model.apply(X[check])
        ids = list(range(len(model.leaves_)))
        proposed = {i: model.leaves_[i].arm for i in ids}
        names = dict(enumerate(model.leaf_paths(feature_names)))
    else:
        model = ScoreClassifier(seed=seed).fit(Xf, Sf)
        seg_fit, seg_check = model.predict(Xf), model.predict(X[check])
        ids = sorted(set(seg_fit.tolist()))
        proposed = {i: i for i in ids}
        names = {i: f"proposed {arms[i]}" for i in ids}
    train_value = float(Sf[np.arange(len(Sf)), np.array([proposed.get(s, best) for s in seg_fit])].mean())
    deviating = [i for i in ids if proposed[i] != best]
    m = max(1, len(deviating))
    z = NormalDist().inv_cdf(1 - alpha / m)
    segment_arm: dict[int, int] = {}
    segments: list[Segment] = []
    Sc, ac = scores[check], arm[check]
    for i in ids:
        p = proposed[i]
        in_fit, in_check = int((seg_fit == i).sum()), seg_check == i
        if p == best:
            segment_arm[i] = best
            segments.append(Segment(names[i], arms[p], arms[best], in_fit, int(in_check.sum()), 0.0, 0.0, 0.0,
                                    True, "the best blanket arm"))
            continue
        if not safe:
            segment_arm[i] = p
            segments.append(Segment(names[i], arms[p], arms[p], in_fit, 0, math.nan, math.nan, math.nan, True,
                                    "no safe-improvement check"))
            continue
        d = Sc[in_check, p] - Sc[in_check, best]
        rows_p, rows_b = int((ac[in_check] == p).sum()), int((ac[in_check] == best).sum())
        if len(d) < 2 or min(rows_p, rows_b) < min_arm_rows:
            segment_arm[i] = best
            segments.append(Segment(names[i], arms[p], arms[best], in_fit, len(d), math.nan, math.nan, math.nan,
                                    False, f"too little support on the check rows: {rows_p} got {arms[p]}, "
                                           f"{rows_b} got {arms[best]} (at least {min_arm_rows} each needed)"))
            continue
        mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
        lcb = mean - z * se
        kept = lcb > 0
        segment_arm[i] = p if kept else best
        reason = (f"advantage {mean:+.4g} (se {se:.3g}), lower bound {lcb:+.4g} at level {alpha:g}/{m}"
                  + (" > 0" if kept else " <= 0: not confidently better, the best blanket arm stays"))
        segments.append(Segment(names[i], arms[p], arms[segment_arm[i]], in_fit, len(d), mean, se, lcb, kept, reason))
    return LearntPolicy(method=method, arms=list(arms), best_arm=best, model=model, segment_arm=segment_arm,
                        segments=segments, feature_names=list(feature_names), alpha=alpha, train_value=train_value)
