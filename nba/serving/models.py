"""The champion models at serving time, scored in as few calls as possible.

The trained objects (`nba.training.models`) take DataFrames, which costs about a millisecond
per call on the online path. At load, each model is compiled into a `FastModel`: the list of
input columns (numeric as they are, string columns one-hot with the categories seen in
training, exactly as `FrameEncoder` does), the XGBoost booster (scored with
`inplace_predict` on a float32 matrix, one thread per worker) and the calibration as two
numbers (Platt) or a step table (isotonic). Propensity models registered once per action
but holding the same pooled model (the `pooled` strategy) are recognised by a fingerprint of
their booster and calibration and scored in one call for every (customer, action) pair.

A test checks the fast path against the models' own `predict_proba` / `predict`.

Uplift models (several boosters per learner) are scored through their own `predict`; the
core only asks for uplift when the priority formula reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nba.errors import NbaError


class ModelLoadError(NbaError):
    """A bundled model cannot be loaded or does not fit the catalog's features."""

    exit_code = 3


@dataclass(frozen=True)
class Column:
    name: str  # the feature (or "action_id")
    category: str | None  # None: numeric; else the one-hot category


def _columns(encoder: Any) -> tuple[Column, ...]:
    cols = [Column(c, None) for c in encoder.numeric_]
    for c, values in encoder.categories_.items():
        cols.extend(Column(c, v) for v in values)
    return tuple(cols)


def _as_float(x: Any) -> float:
    if x is None:
        return np.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return np.nan


def feature_matrix(columns: Sequence[Column], env: Mapping[str, Any], n: int) -> np.ndarray:
    """(n, len(columns)) float32 from an environment of arrays (or scalars when n == 1).
    `action_id` columns are left at zero (the caller sets them per pair)."""
    if n == 1 and not any(isinstance(v, np.ndarray) for v in env.values()):  # one request: no numpy per cell
        row = [0.0 if c.name == "action_id" else (_as_float(env[c.name]) if c.category is None
                                                  else float(env[c.name] == c.category)) for c in columns]
        return np.array([row], dtype=np.float32)
    X = np.zeros((n, len(columns)), dtype=np.float32)
    for j, col in enumerate(columns):
        if col.name == "action_id":
            continue
        x = env[col.name]
        if col.category is None:
            if isinstance(x, np.ndarray):
                X[:, j] = x.astype(np.float64) if x.dtype != object else [_as_float(v) for v in x]
            else:
                X[:, j] = _as_float(x)
        elif isinstance(x, np.ndarray):
            X[:, j] = x == col.category
        else:
            X[:, j] = x == col.category
    return X


# The output transform and the margin of the base score, per XGBoost objective.
_LINKS = {
    "binary:logistic": "logit", "reg:logistic": "logit",
    "reg:squarederror": "identity", "reg:absoluteerror": "identity", "reg:pseudohubererror": "identity",
    "reg:tweedie": "log", "count:poisson": "log", "reg:gamma": "log",
}
SMALL = 256  # up to this many rows, the numpy trees beat XGBoost's per-call overhead


class TreeEnsemble:
    """An XGBoost booster's trees as flat numpy arrays, for scoring a few rows.

    From Python, one `inplace_predict` costs about 0.3 ms (0.7 ms on a loaded machine) whatever
    the number of rows; walking the shallow trees in numpy costs 0.02-0.1 ms for up to ten
    rows. Splits follow XGBoost: `x < split_condition` goes to `yes`, a missing value to
    `missing`; leaves sum to the margin, plus the base score's margin, and the objective's
    link gives the prediction. `supported` is False for objectives not handled here (the
    caller then uses XGBoost). A test checks it against `Booster.predict`.

    Layout: the two children of a split are adjacent (`yes` at `left`, `no` at `left + 1`), so
    one level of the walk is `left[node] + (x >= threshold)`: five numpy calls, two more only
    when the rows hold a missing value. A leaf has a NaN threshold (never `>=`) and is its own
    `left`, so walking on stays there. Indices are int32 and values float32: the churn model's
    57,000 nodes take 0.9 MB instead of 2.3 MB, which keeps them in a core's cache between
    requests.
    """

    def __init__(self, booster: Any):
        import json

        config = json.loads(booster.save_config())
        self.objective = config["learner"]["objective"]["name"]
        self.link = _LINKS.get(self.objective)
        self.supported = self.link is not None
        if not self.supported:
            return
        base = float(str(config["learner"]["learner_model_param"]["base_score"]).strip("[]").split(",")[0])
        margins = {"logit": float(np.log(base / (1 - base))) if 0 < base < 1 else 0.0,
                   "log": float(np.log(base)) if base > 0 else 0.0, "identity": base}
        self.base_margin = margins[str(self.link)]
        feat: list[int] = []
        thr: list[float] = []
        left: list[int] = []
        miss_right: list[bool] = []
        leaf: list[float] = []
        roots: list[int] = []
        depth = 0

        def place() -> int:  # reserve a slot, filled when its node is visited
            feat.append(0)
            thr.append(np.nan)
            left.append(len(left))
            miss_right.append(False)
            leaf.append(0.0)
            return len(feat) - 1

        for dump in booster.get_dump(dump_format="json"):
            tree = json.loads(dump)
            queue = [(tree, place(), 0)]
            roots.append(queue[0][1])
            while queue:  # breadth first: a split's children get two adjacent slots
                node, at, d = queue.pop(0)
                depth = max(depth, d)
                if "leaf" in node:
                    leaf[at] = float(node["leaf"])
                    continue
                children = {c["nodeid"]: c for c in node["children"]}
                yes, no = children[node["yes"]], children[node["no"]]
                y_at, n_at = place(), place()  # side by side
                feat[at] = int(str(node["split"]).lstrip("f"))
                thr[at] = float(node["split_condition"])
                left[at] = y_at
                miss_right[at] = node["missing"] == node["no"]
                queue.extend([(yes, y_at, d + 1), (no, n_at, d + 1)])
        self.depth = depth
        self.feat = np.asarray(feat, dtype=np.int32)
        self.thr = np.asarray(thr, dtype=np.float32)
        self.left = np.asarray(left, dtype=np.int32)
        self.miss_right = np.asarray(miss_right, dtype=np.int32)
        self.leaf = np.asarray(leaf, dtype=np.float32)
        self.roots = np.asarray(roots, dtype=np.int32)

    def margin(self, X: np.ndarray) -> np.ndarray:
        missing = bool(np.isnan(X).any())
        if X.shape[0] == 1:  # one row: flat indexing
            x = X[0]
            node = self.roots
            for _ in range(self.depth):
                v = x[self.feat[node]]
                right = v >= self.thr[node]
                if missing:
                    right = np.where(np.isnan(v), self.miss_right[node], right)
                node = self.left[node] + right
            return np.array([self.leaf[node].sum(dtype=np.float64) + self.base_margin])
        node = np.broadcast_to(self.roots, (X.shape[0], self.roots.size))
        r = np.arange(X.shape[0])[:, None]
        for _ in range(self.depth):
            v = X[r, self.feat[node]]
            right = v >= self.thr[node]
            if missing:
                right = np.where(np.isnan(v), self.miss_right[node], right)
            node = self.left[node] + right
        return self.leaf[node].sum(axis=1, dtype=np.float64) + self.base_margin

    def predict(self, X: np.ndarray) -> np.ndarray:
        m = self.margin(X)
        if self.link == "logit":
            return 1.0 / (1.0 + np.exp(-m))
        if self.link == "log":
            return np.exp(m)
        return m


class FastModel:
    """A classifier or regressor of `nba.training.models`, scored on numpy."""

    def __init__(self, name: str, model: Any, *, nthread: int = 1):
        from nba.training.models import ActionBoundClassifier, CalibratedXGBClassifier, XGBRegressorOnFrame

        self.name = name
        self.action: str | None = None
        inner = model
        if isinstance(model, ActionBoundClassifier):
            self.action = model.action
            inner = model.model
        if isinstance(inner, CalibratedXGBClassifier):
            self.kind = "classifier"
            self.calibration = inner.calibration
            if inner.calibration == "sigmoid":
                self.coef = float(inner.calibrator_.coef_.ravel()[0])
                self.intercept = float(inner.calibrator_.intercept_.ravel()[0])
            else:
                self.x_thr = np.asarray(inner.calibrator_.X_thresholds_, dtype=np.float64)
                self.y_thr = np.asarray(inner.calibrator_.y_thresholds_, dtype=np.float64)
        elif isinstance(inner, XGBRegressorOnFrame):
            self.kind = "regressor"
        else:
            raise ModelLoadError(f"model {name}: {type(inner).__name__} has no fast path (expected a calibrated "
                                 "XGBoost classifier or an XGBoost regressor of nba.training.models)")
        self.columns = _columns(inner.encoder_)
        self.booster = inner.booster_.get_booster()
        self.booster.set_param({"nthread": nthread})
        self.trees = TreeEnsemble(self.booster)
        self.inputs = sorted({c.name for c in self.columns} - {"action_id"})
        self.action_values = {str(c.category): j for j, c in enumerate(self.columns) if c.name == "action_id"}
        if self.action is not None and self.action not in self.action_values:
            raise ModelLoadError(f"model {name} is bound to action '{self.action}', which its pooled model never "
                                 f"saw (it knows {sorted(self.action_values)})")
        self.fingerprint = self._fingerprint(inner)

    def _fingerprint(self, inner: Any) -> str:
        h = hashlib.sha256(bytes(self.booster.save_raw("ubj")))
        h.update(repr([(c.name, c.category) for c in self.columns]).encode())
        if self.kind == "classifier":
            h.update(repr((self.calibration, getattr(self, "coef", None), getattr(self, "intercept", None))).encode())
            if self.calibration == "isotonic":
                h.update(self.x_thr.tobytes() + self.y_thr.tobytes())
        return h.hexdigest()

    def raw(self, X: np.ndarray) -> np.ndarray:
        """The booster's prediction: numpy trees for a few rows, XGBoost for many."""
        if X.shape[0] <= SMALL and self.trees.supported:
            return self.trees.predict(X)
        return np.asarray(self.booster.inplace_predict(X), dtype=np.float64).ravel()

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        if self.calibration == "sigmoid":
            r = np.clip(raw, 1e-6, 1 - 1e-6)
            z = self.coef * np.log(r / (1 - r)) + self.intercept
            return 1.0 / (1.0 + np.exp(-z))
        return np.clip(np.interp(raw, self.x_thr, self.y_thr), 0.0, 1.0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Probabilities (classifier) or non-negative values (regressor)."""
        raw = self.raw(X)
        if self.kind == "classifier":
            return self.calibrate(raw)
        return np.maximum(raw, 0.0)


class ModelSet:
    """Every model the catalog reads, loaded once; implements the core's `Scorer`.

    `propensity[action_id]` and `scores[name]` (churn_risk, clv) are FastModels; `uplift` holds
    the uplift learners by action. Pooled propensity models share one `FastModel` group.
    """

    def __init__(self, action_ids: Sequence[str], propensity: Mapping[str, FastModel],
                 scores: Mapping[str, FastModel], uplift: Mapping[str, Any] | None = None):
        self.action_ids = tuple(action_ids)
        self.propensity_models = dict(propensity)
        self.score_models = dict(scores)
        self.uplift_models = dict(uplift or {})
        missing = [a for a in self.action_ids if a not in self.propensity_models]
        if missing:
            raise ModelLoadError(f"no propensity model for action(s) {missing}")
        # groups of actions scored by one booster call: pooled models share a fingerprint
        groups: dict[str, list[int]] = {}
        for j, a in enumerate(self.action_ids):
            groups.setdefault(self.propensity_models[a].fingerprint, []).append(j)
        self.groups = [(self.propensity_models[self.action_ids[js[0]]], np.array(js, dtype=np.int64))
                       for js in groups.values()]
        self._group_of = np.zeros(len(self.action_ids), dtype=np.int64)  # action -> its group
        for gi, (_, js) in enumerate(self.groups):
            self._group_of[js] = gi
        # pooled models: the one-hot column of each action's id in the shared encoding
        self._onehot: dict[str, dict[int, int]] = {}
        for model, js in self.groups:
            if model.action is not None:
                bound = [self.propensity_models[self.action_ids[j]] for j in js]
                self._onehot[model.fingerprint] = {int(j): m.action_values[str(m.action)]
                                                   for j, m in zip(js, bound, strict=True)}

    @property
    def inputs(self) -> set[str]:
        """Every feature some model reads."""
        names: set[str] = set()
        for m in [*self.propensity_models.values(), *self.score_models.values()]:
            names.update(m.inputs)
        return names

    def score(self, env: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
        """The scores rules read (churn_risk, clv...), one value per customer."""
        return {name: m.predict(feature_matrix(m.columns, env, n)) for name, m in self.score_models.items()}

    def propensity(self, env: Mapping[str, Any], n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        out = np.full(rows.size, np.nan)
        base: dict[int, np.ndarray] = {}  # by identity: hashing 57 columns per lookup cost more than the lookup
        for gi, (model, _) in enumerate(self.groups):
            at = np.flatnonzero(self._group_of[cols] == gi) if len(self.groups) > 1 else np.arange(rows.size)
            if at.size == 0:
                continue
            if id(model.columns) not in base:
                base[id(model.columns)] = feature_matrix(model.columns, env, n)
            X = base[id(model.columns)][rows[at]]
            onehot = self._onehot.get(model.fingerprint)
            if onehot is not None:
                X[np.arange(at.size), [onehot[int(c)] for c in cols[at]]] = 1.0
            out[at] = model.predict(X)
        return out

    def uplift(self, env: Mapping[str, Any], n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        import pandas as pd

        out = np.full(rows.size, np.nan)
        for j, a in enumerate(self.action_ids):
            model = self.uplift_models.get(a)
            at = np.flatnonzero(cols == j)
            if model is None or at.size == 0:
                continue
            names = list(model.feature_names_in_)
            frame = pd.DataFrame({c: (np.asarray(env[c])[rows[at]] if isinstance(env[c], np.ndarray)
                                      else [env[c]] * at.size) for c in names})
            out[at] = np.asarray(model.predict(frame), dtype=np.float64)
        return out
