"""The champion models at serving time, scored in as few calls as possible.

The trained objects (`nba.training.models`) take DataFrames, which costs about a millisecond
per call on the online path. At load, each model is compiled into a `FastModel`: the list of
input columns (numeric as they are, string columns one-hot with the categories seen in
training, exactly as `FrameEncoder` does), its trees twice (an ONNX graph that `nba bundle
build` converted and checked, scored by ONNX Runtime for a few rows; the XGBoost booster's
`inplace_predict` for many, one thread per worker) and the link and calibration in numpy.
Propensity models registered once per action but holding the same pooled model (the
`pooled` strategy) are recognised by a fingerprint of their booster and calibration and
scored in one call for every (customer, action) pair.

Tests check the ONNX margins against XGBoost's (tests/test_onnx_scoring.py) and the fast path
against the models' own `predict_proba` / `predict` (tests/test_serving.py).

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


# The link from margin to prediction, per XGBoost objective (XGBoost's documented objectives).
_LINKS = {
    "binary:logistic": "logit", "reg:logistic": "logit",
    "reg:squarederror": "identity", "reg:absoluteerror": "identity", "reg:pseudohubererror": "identity",
    "reg:tweedie": "log", "count:poisson": "log", "reg:gamma": "log",
}
# ONNX Runtime scores a few rows, XGBoost's `inplace_predict` many (one thread each). ONNX
# Runtime's cost grows with rows x trees x depth from about 10 us; XGBoost's starts at 0.15-0.6
# ms per call and grows more slowly. `benchmarks/bench_scoring.py` measured XGBoost faster from
# 192 rows for 200 trees of depth 2, 96 for 300 of depth 3 and 48 for 300 of depth 6: 77,000 to
# 86,000 rows x trees x depth (benchmarks/RESULTS.md, "Serve-time scoring"). Each model switches
# at SWITCH_WORK // (trees x depth) rows, at most SMALL. Both paths give the same margins bit
# for bit, so the switch changes the time, never a score.
SWITCH_WORK = 80_000
SMALL = 256  # the most rows any model scores through ONNX Runtime
# A `JointTrees` call scores every per-action model on every row of the call. For one customer
# it replaces one call per model the decision reads (about 60-80 us each) with one that walks
# every model's trees; it is used while rows x models <= JOINT_TREES_PER_CALL x the calls it
# replaces (benchmarks/RESULTS.md, "One call for the models of a row").
JOINT_TREES_PER_CALL = 4
ONNX_TOLERANCE = 1e-6  # |ONNX - XGBoost| on final probabilities and values, checked at bundle build


def _xgb_model(model: Any) -> tuple[Any, Any]:
    """(the scikit-learn XGBoost estimator, the nba wrapper holding it) of a trained model."""
    from nba.training.models import ActionBoundClassifier, CalibratedXGBClassifier, XGBRegressorOnFrame

    inner = model.model if isinstance(model, ActionBoundClassifier) else model
    if not isinstance(inner, CalibratedXGBClassifier | XGBRegressorOnFrame):
        raise ModelLoadError(f"{type(inner).__name__} has no fast path (expected a calibrated XGBoost classifier "
                             "or an XGBoost regressor of nba.training.models)")
    return inner.booster_, inner


def _base_margin(xgb_model: Any, link: str) -> np.float32:
    """XGBoost's base score as the float32 margin its sums start from.

    `intercept_` (public) gives the base score in prediction space; its margin computed here
    can differ from the one XGBoost computes by an ulp or two, which moves sums of hundreds of
    leaves by a few more. So the candidates within 16 ulps are tried on XGBoost itself (its
    `base_margin` argument replaces the base score): the one giving XGBoost's own margins bit
    for bit on sample rows is XGBoost's.
    """
    base = float(np.asarray(xgb_model.intercept_, dtype=np.float64).ravel()[0])
    estimate = np.float32(np.log(base / (1 - base)) if link == "logit" else np.log(base) if link == "log" else base)
    booster = xgb_model.get_booster()
    X = sample_rows(booster, int(xgb_model.n_features_in_), rows=64)
    own = booster.inplace_predict(X, predict_type="margin")
    candidates = [estimate]
    up = down = estimate
    for _ in range(16):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        candidates += [up, down]
    for b in candidates:
        if np.array_equal(booster.inplace_predict(X, predict_type="margin", base_margin=np.full(len(X), b)), own):
            return b
    return estimate  # the check at bundle build says whether it is close enough


def xgboost_of(model: Any) -> Any:
    """The scikit-learn XGBoost estimator inside a trained model of `nba.training.models`."""
    return _xgb_model(model)[0]


def _link_of(xgb_model: Any) -> str:
    objective = str(xgb_model.get_xgb_params()["objective"])
    link = _LINKS.get(objective)
    if link is None:
        raise ModelLoadError(f"XGBoost objective {objective} is not scored at serving time (known: {sorted(_LINKS)})")
    return link


def to_onnx(model: Any) -> bytes:
    """The trees of a trained model (`nba.training.models`) as an ONNX graph of their margin.

    `onnxmltools` converts the trees (splits, thresholds, default directions of missing
    values, leaves). Its graph adds the base score after the trees and applies the link in
    float32, which puts it up to 1e-5 (relative) from XGBoost on values in the hundreds (CLV).
    So the graph kept here is one `TreeEnsembleRegressor` with the converted trees, the base
    margin as a first one-leaf tree (XGBoost starts its float32 sum with it) and no post
    transform: its margins equal XGBoost's bit for bit (tests/test_onnx_scoring.py), and the
    link and the calibration are applied in numpy to either (`FastModel.finish`).
    """
    from onnx import helper
    from onnxmltools.convert import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    xgb_model, _ = _xgb_model(model)
    link = _link_of(xgb_model)
    n = int(xgb_model.n_features_in_)
    converted = convert_xgboost(xgb_model, initial_types=[("X", FloatTensorType([None, n]))])
    ensembles = [node for node in converted.graph.node if node.op_type.startswith("TreeEnsemble")]
    if len(ensembles) != 1:
        raise ModelLoadError(f"onnxmltools gave {len(ensembles)} tree ensembles, expected one")
    attrs = {a.name: helper.get_attribute_value(a) for a in ensembles[0].attribute}
    out = "class_" if ensembles[0].op_type == "TreeEnsembleClassifier" else "target_"
    first = {"nodes_treeids": 0, "nodes_nodeids": 0, "nodes_featureids": 0, "nodes_values": 0.0,
             "nodes_modes": b"LEAF", "nodes_truenodeids": 0, "nodes_falsenodeids": 0,
             "nodes_missing_value_tracks_true": 0, "nodes_hitrates": 1.0}
    nodes = {k: v for k, v in attrs.items() if k.startswith("nodes_")}
    unknown = sorted(set(nodes) - set(first))
    if unknown:
        raise ModelLoadError(f"onnxmltools wrote tree attributes {unknown} this conversion does not know")
    tree: dict[str, Any] = {k: [first[k], *(t + 1 for t in v)] if k == "nodes_treeids" else [first[k], *v]
                            for k, v in nodes.items()}
    if len(set(attrs[out + "ids"])) != 1:
        raise ModelLoadError("the converted trees hold more than one output (a multi-class or multi-target model)")
    node = helper.make_node(
        "TreeEnsembleRegressor", ["X"], ["margin"], domain="ai.onnx.ml", **tree,
        target_treeids=[0, *(t + 1 for t in attrs[out + "treeids"])], target_nodeids=[0, *attrs[out + "nodeids"]],
        target_ids=[0] * (1 + len(attrs[out + "ids"])),
        target_weights=[float(_base_margin(xgb_model, link)), *attrs[out + "weights"]],
        n_targets=1, aggregate_function="SUM", post_transform="NONE", base_values=[0.0])
    return _tree_graph(node, n, 1)


def onnx_session(onnx_model: bytes, nthread: int = 1) -> Any:
    """An ONNX Runtime session on `nthread` threads (the service runs several workers)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = nthread
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])


def _linked(margin: np.ndarray, link: str) -> np.ndarray:
    """XGBoost's link from margin to prediction."""
    if link == "logit":
        return 1.0 / (1.0 + np.exp(-margin))
    if link == "log":
        return np.exp(margin)
    return margin


def _platt(raw: np.ndarray, coef: Any, intercept: Any) -> np.ndarray:
    """Platt calibration of probabilities (`coef` and `intercept` numbers, or arrays broadcast
    over a block of models' columns)."""
    r = np.clip(raw, 1e-6, 1 - 1e-6)
    z = coef * np.log(r / (1 - r)) + intercept
    return 1.0 / (1.0 + np.exp(-z))


class FastModel:
    """A classifier or regressor of `nba.training.models`, scored on numpy arrays.

    The margin comes from ONNX Runtime for up to `small` rows (see `SWITCH_WORK`) and from
    XGBoost's `inplace_predict` above; the link and the calibration (Platt: two numbers; isotonic: a
    step table) are applied in numpy to either.
    """

    def __init__(self, name: str, model: Any, onnx_model: bytes, *, nthread: int = 1):
        from nba.training.models import ActionBoundClassifier, CalibratedXGBClassifier

        self.name = name
        self.action: str | None = model.action if isinstance(model, ActionBoundClassifier) else None
        try:
            xgb_model, inner = _xgb_model(model)
            self.link = _link_of(xgb_model)
        except ModelLoadError as exc:
            raise ModelLoadError(f"model {name}: {exc}") from None
        if isinstance(inner, CalibratedXGBClassifier):
            self.kind = "classifier"
            self.calibration = inner.calibration
            if inner.calibration == "sigmoid":
                self.coef = float(inner.calibrator_.coef_.ravel()[0])
                self.intercept = float(inner.calibrator_.intercept_.ravel()[0])
            else:
                self.x_thr = np.asarray(inner.calibrator_.X_thresholds_, dtype=np.float64)
                self.y_thr = np.asarray(inner.calibrator_.y_thresholds_, dtype=np.float64)
        else:
            self.kind = "regressor"
        self.columns = _columns(inner.encoder_)
        self.booster = xgb_model.get_booster()
        self.booster.set_param({"nthread": nthread})
        try:  # early stopping: XGBoost's scikit-learn predict uses the best iteration's trees
            self.iteration_range = (0, int(xgb_model.best_iteration) + 1)
        except AttributeError:
            self.iteration_range = (0, 0)  # every tree
        depth = int(xgb_model.get_xgb_params().get("max_depth") or 6)  # XGBoost's default depth is 6
        trees = (self.iteration_range[1] or self.booster.num_boosted_rounds()) - self.iteration_range[0]
        self.small = max(1, min(SMALL, SWITCH_WORK // max(1, trees * depth)))  # rows ONNX Runtime scores
        self.onnx_model = onnx_model  # a `JointTrees` merges the graphs of the models one row feeds
        self.nthread = nthread
        self.session = onnx_session(onnx_model, nthread)
        width = self.session.get_inputs()[0].shape[1]
        if width != len(self.columns):
            raise ModelLoadError(f"model {name}: its ONNX graph reads {width} columns, the model {len(self.columns)}; "
                                 "rebuild the bundle with `nba bundle build`")
        self._input = self.session.get_inputs()[0].name
        self.inputs = sorted({c.name for c in self.columns} - {"action_id"})
        self.action_values = {str(c.category): j for j, c in enumerate(self.columns) if c.name == "action_id"}
        if self.action is not None and self.action not in self.action_values:
            raise ModelLoadError(f"model {name} is bound to action '{self.action}', which its pooled model never "
                                 f"saw (it knows {sorted(self.action_values)})")
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> str:
        h = hashlib.sha256(bytes(self.booster.save_raw("ubj")))
        h.update(repr([(c.name, c.category) for c in self.columns]).encode())
        if self.kind == "classifier":
            h.update(repr((self.calibration, getattr(self, "coef", None), getattr(self, "intercept", None))).encode())
            if self.calibration == "isotonic":
                h.update(self.x_thr.tobytes() + self.y_thr.tobytes())
        return h.hexdigest()

    def margin_onnx(self, X: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self._input: np.ascontiguousarray(X, dtype=np.float32)})[0]
        return out[:, 0].astype(np.float64)

    def margin_xgboost(self, X: np.ndarray) -> np.ndarray:
        out = self.booster.inplace_predict(X, predict_type="margin", iteration_range=self.iteration_range)
        return np.asarray(out, dtype=np.float64).ravel()

    def margin(self, X: np.ndarray) -> np.ndarray:
        """The trees' margin: ONNX Runtime up to `small` rows, XGBoost above."""
        return self.margin_onnx(X) if X.shape[0] <= self.small else self.margin_xgboost(X)

    def finish(self, margin: np.ndarray) -> np.ndarray:
        """Link and calibration: probabilities (classifier) or non-negative values (regressor)."""
        raw = _linked(margin, self.link)
        if self.kind == "classifier":
            return self.calibrate(raw)
        return np.maximum(raw, 0.0)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        if self.calibration == "sigmoid":
            return _platt(raw, self.coef, self.intercept)
        return np.clip(np.interp(raw, self.x_thr, self.y_thr), 0.0, 1.0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Probabilities (classifier) or non-negative values (regressor)."""
        return self.finish(self.margin(X))

    def warm(self) -> None:
        """First calls are slow (XGBoost: 10-40 ms): make them here, on both paths."""
        for rows in (1, self.small + 1):
            self.predict(np.zeros((rows, len(self.columns)), dtype=np.float32))

    def check_sample(self, rows: int = 512, seed: int = 0, missing: float = 0.15) -> np.ndarray:
        return sample_rows(self.booster, len(self.columns), rows, seed, missing)


def sample_rows(booster: Any, width: int, rows: int = 512, seed: int = 0, missing: float = 0.15) -> np.ndarray:
    """Rows that take both sides of a booster's splits: each value a split threshold of its
    column, or the float32 just below or above one, or missing (`missing` of the cells);
    columns no tree splits on are standard normal."""
    rng = np.random.default_rng(seed)
    trees = booster.trees_to_dataframe()
    splits = trees[trees["Feature"] != "Leaf"]
    X = rng.normal(size=(rows, width)).astype(np.float32)
    for feature, thresholds in splits.groupby("Feature")["Split"]:
        j = int(str(feature).lstrip("f"))
        t = rng.choice(np.unique(thresholds.to_numpy(dtype=np.float32)), size=rows)
        step = rng.integers(-1, 2, size=rows)  # below, at, above
        X[:, j] = np.where(step < 0, np.nextafter(t, np.float32(-np.inf)),
                           np.where(step > 0, np.nextafter(t, np.float32(np.inf)), t))
    X[rng.random(X.shape) < missing] = np.nan
    return X


class JointTrees:
    """Models that read one row per customer (the per-action propensity models), scored
    together in one ONNX Runtime call.

    Scored one by one, a model costs a call for a single customer: about 60-80 us each with
    its feature row and its link, of which its trees are about 10 (`benchmarks/RESULTS.md`,
    "One call for the models of a row"). Here one graph holds every model's trees, each model
    one target of a `TreeEnsembleRegressor` (its base margin its target's first one-leaf tree,
    as in its own graph, its features renumbered into the union of the models' columns), so
    one call gives every model's margin; the links and the calibrations are applied in numpy,
    per group of models finished alike. A target's float32 sum runs over its trees in the same
    order as in the model's own graph: the margins are the models' own bit for bit, which the
    constructor checks on sample rows (`check`) (`JointTreesMismatch` else).
    """

    def __init__(self, models: Sequence[FastModel], graph: bytes | None = None):
        """`graph`: the joint graph of these models as `nba bundle build` wrote it; None: merged
        from the models' own graphs and checked against them here (the bundle build does)."""
        if len(models) < 2:
            raise ValueError("a joint graph merges at least two models")
        self.models = tuple(models)
        union: dict[tuple[str, Any], int] = {}
        for m in models:
            for c in m.columns:
                union.setdefault((c.name, c.category), len(union))
        self.columns = tuple(Column(name, category) for name, category in union)
        built = graph is None
        self.graph = self._merge(union) if graph is None else graph
        self.session = onnx_session(self.graph, models[0].nthread)
        width, targets = self.session.get_inputs()[0].shape[1], self.session.get_outputs()[0].shape[1]
        if (width, targets) != (len(self.columns), len(models)):
            raise ModelLoadError(f"the joint graph reads {width} columns into {targets} models, its models "
                                 f"{len(self.columns)} into {len(models)}; rebuild the bundle with `nba bundle build`")
        self._input = self.session.get_inputs()[0].name
        # the models finished alike, as one block of columns each: (columns, link, calibration, a, b)
        finishes: dict[tuple[str, str | None], list[int]] = {}
        for t, m in enumerate(models):
            finishes.setdefault((m.link, m.calibration if m.kind == "classifier" else None), []).append(t)
        self._finishes: list[tuple[np.ndarray, str, str | None, Any, Any]] = []
        for (link, calibration), ts in finishes.items():
            at = np.array(ts, dtype=np.int64)
            a: Any
            b: Any
            if calibration == "sigmoid":
                a = np.array([models[t].coef for t in ts])
                b = np.array([models[t].intercept for t in ts])
            else:  # isotonic: the models themselves; a regressor: nothing
                a, b = tuple(models[t] for t in ts), None
            self._finishes.append((at, link, calibration, a, b))
        if built:
            self.check()

    def _merge(self, union: Mapping[tuple[str, Any], int]) -> bytes:
        from onnx import helper

        merged: dict[str, list[Any]] = {}
        offset = 0
        for t, m in enumerate(self.models):
            attrs = _tree_attributes(m.onnx_model)
            remap = np.array([union[(c.name, c.category)] for c in m.columns], dtype=np.int64)
            for key, values in attrs.items():
                if key in ("nodes_treeids", "target_treeids"):
                    values = [v + offset for v in values]
                elif key == "nodes_featureids":
                    values = remap[np.asarray(values, dtype=np.int64)].tolist()
                elif key == "target_ids":
                    values = [t] * len(values)
                merged.setdefault(key, []).extend(values)
            offset += max(attrs["nodes_treeids"]) + 1
        attributes: dict[str, Any] = {**merged, "n_targets": len(self.models), "aggregate_function": "SUM",
                                      "post_transform": "NONE", "base_values": [0.0] * len(self.models)}
        node = helper.make_node("TreeEnsembleRegressor", ["X"], ["margin"], domain="ai.onnx.ml", **attributes)
        return _tree_graph(node, len(union), len(self.models))

    def margin(self, X: np.ndarray) -> np.ndarray:
        """(rows, models) margins of rows in the union's columns."""
        return self.session.run(None, {self._input: np.ascontiguousarray(X, dtype=np.float32)})[0].astype(np.float64)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(rows, models): each model's probabilities (classifier) or values (regressor)."""
        margin = self.margin(X)
        if len(self._finishes) == 1:
            return self._finish(margin, *self._finishes[0][1:])
        out = np.empty_like(margin)
        for at, link, calibration, a, b in self._finishes:
            out[:, at] = self._finish(margin[:, at], link, calibration, a, b)
        return out

    def _finish(self, margin: np.ndarray, link: str, calibration: str | None, a: Any, b: Any) -> np.ndarray:
        """`FastModel.finish` for a block of models finished alike (the same functions, so the
        same numbers)."""
        raw = _linked(margin, link)
        if calibration is None:
            return np.maximum(raw, 0.0)
        if calibration == "sigmoid":
            return _platt(raw, a, b)
        out = np.empty_like(raw)
        for j, model in enumerate(a):  # isotonic: each model its own step table
            out[:, j] = model.calibrate(raw[:, j])
        return out

    def check(self, rows: int = 64) -> None:
        """Each model's margins on rows that take both sides of its splits (the other columns
        standard normal), from the joint graph and from its own."""
        rng = np.random.default_rng(1)
        for t, m in enumerate(self.models):
            own_rows = m.check_sample(rows, seed=t)
            X = rng.normal(size=(rows, len(self.columns))).astype(np.float32)
            X[:, [self.columns.index(c) for c in m.columns]] = own_rows
            joint, own = self.margin(X)[:, t], m.margin_onnx(own_rows)
            if not np.array_equal(joint, own):
                raise JointTreesMismatch(f"model {m.name}: the joint graph's margins differ from its own by up to "
                                         f"{float(np.max(np.abs(joint - own))):.3g}")


class JointTreesMismatch(ModelLoadError):
    """The joint graph does not reproduce a model's own margins (the models are scored apart)."""


def _tree_attributes(onnx_model: bytes) -> dict[str, list[Any]]:
    """The node and target attributes of the one `TreeEnsembleRegressor` of a `to_onnx` graph."""
    from onnx import helper, load_from_string

    graph = load_from_string(onnx_model).graph
    nodes = [n for n in graph.node if n.op_type == "TreeEnsembleRegressor"]
    if len(graph.node) != 1 or len(nodes) != 1:
        raise ModelLoadError("expected a graph of one TreeEnsembleRegressor (rebuild the bundle with `nba bundle build`)")
    return {a.name: list(helper.get_attribute_value(a)) for a in nodes[0].attribute
            if a.name.startswith(("nodes_", "target_"))}


def _tree_graph(node: Any, width: int, targets: int) -> bytes:
    """A model of one tree-ensemble node reading X (rows, width) and giving (rows, targets)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([node], "nba_trees", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info("margin", TensorProto.FLOAT, [None, targets])])
    onx = helper.make_model(graph, producer_name="nba", opset_imports=[helper.make_opsetid("", 17),
                                                                       helper.make_opsetid("ai.onnx.ml", 3)])
    onx.ir_version = 8
    return onx.SerializeToString()


class ModelSet:
    """Every model the catalog reads, loaded once; implements the core's `Scorer`.

    `propensity[action_id]` and `scores[name]` (churn_risk, clv) are FastModels; `uplift` holds
    the uplift learners by action. Pooled propensity models share one `FastModel` group; the
    per-action models (each scoring the customer's own row) can share one `JointTrees` call.
    """

    def __init__(self, action_ids: Sequence[str], propensity: Mapping[str, FastModel],
                 scores: Mapping[str, FastModel], uplift: Mapping[str, Any] | None = None,
                 cold_start: Any = None, joint: tuple[Sequence[str], bytes] | None = None):
        """`cold_start` (`nba.decisioning.coldstart.ColdStart`): the actions without a model
        (cold start) and their posteriors; their P is the posterior mean, and the core explores
        them by Thompson sampling. `joint`: the names of the `joint_models()` and their joint
        graph as the bundle build wrote it (None: each scored on its own)."""
        self.action_ids = tuple(action_ids)
        self.propensity_models = dict(propensity)
        self.score_models = dict(scores)
        self.uplift_models = dict(uplift or {})
        self.cold_start = cold_start if cold_start is not None and bool(np.any(cold_start.cold)) else None
        cold = (np.asarray(self.cold_start.cold, dtype=bool) if self.cold_start is not None
                else np.zeros(len(self.action_ids), dtype=bool))
        if cold.shape != (len(self.action_ids),):
            raise ModelLoadError(f"the cold-start state covers {cold.size} actions, the catalog {len(self.action_ids)}")
        self._cold = cold
        missing = [a for j, a in enumerate(self.action_ids) if a not in self.propensity_models and not cold[j]]
        if missing:
            raise ModelLoadError(f"no propensity model for action(s) {missing}")
        # groups of actions scored by one booster call: pooled models share a fingerprint
        groups: dict[str, list[int]] = {}
        for j, a in enumerate(self.action_ids):
            if cold[j]:
                continue
            groups.setdefault(self.propensity_models[a].fingerprint, []).append(j)
        self.groups = [(self.propensity_models[self.action_ids[js[0]]], np.array(js, dtype=np.int64))
                       for js in groups.values()]
        self._group_of = np.full(len(self.action_ids), -1, dtype=np.int64)  # action -> its group (-1: cold)
        for gi, (_, js) in enumerate(self.groups):
            self._group_of[js] = gi
        # models of one feature layout share one column list, so `propensity` builds each
        # layout's matrix once per call (per-action models: 16 lists of 2 layouts here)
        layouts: dict[tuple[tuple[str, Any], ...], Any] = {}
        for model, _ in self.groups:
            model.columns = layouts.setdefault(tuple((c.name, c.category) for c in model.columns), model.columns)
        # pooled models: the one-hot column of each action's id in the shared encoding
        self._onehot: dict[str, dict[int, int]] = {}
        for model, js in self.groups:
            if model.action is not None:
                bound = [self.propensity_models[self.action_ids[j]] for j in js]
                self._onehot[model.fingerprint] = {int(j): m.action_values[str(m.action)]
                                                   for j, m in zip(js, bound, strict=True)}
        self.joint: JointTrees | None = None
        self._joint_of = np.full(len(self.action_ids), -1, dtype=np.int64)  # action -> its joint target (-1: none)
        if joint is not None:
            names, graph = joint
            mergeable = self.joint_models()
            if list(names) != [m.name for m in mergeable]:
                raise ModelLoadError(f"the bundle's joint graph holds models {list(names)}, its per-action models are "
                                     f"{[m.name for m in mergeable]}; rebuild the bundle with `nba bundle build`")
            self.joint = JointTrees(mergeable, graph)
            target = {id(m): t for t, m in enumerate(self.joint.models)}
            for model, js in self.groups:
                if id(model) in target:
                    self._joint_of[js] = target[id(model)]

    def joint_models(self) -> list[FastModel]:
        """The propensity models that score the customer's own row (not pooled), one per group,
        in the groups' order: what a `JointTrees` can merge (none unless at least two)."""
        models = [model for model, _ in self.groups if model.action is None]
        return models if len(models) >= 2 else []

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
        if self.cold_start is not None:
            hot = ~self._cold[cols]
            out[~hot] = self.cold_start.mean[cols[~hot]]
        single = len(self.groups) == 1 and self.cold_start is None
        group = self._group_of[cols]
        needed = np.unique(group[group >= 0])
        if self.joint is not None:
            target = self._joint_of[cols]
            jointly = target >= 0
            # the joint call scores every per-action model on every row: worth it while that is
            # at most JOINT_TREES_PER_CALL models' worth per call it saves (benchmarks/RESULTS.md)
            if n * len(self.joint.models) <= JOINT_TREES_PER_CALL * np.unique(group[jointly]).size:
                scored = self.joint.predict(feature_matrix(self.joint.columns, env, n))
                out[jointly] = scored[rows[jointly], target[jointly]]
                needed = np.unique(group[(group >= 0) & ~jointly])
        for gi in needed:
            model, _ = self.groups[gi]
            at = np.arange(rows.size) if single else np.flatnonzero(group == gi)
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
