"""Serve-time scoring (`nba.serving.models`): the trees converted to ONNX at bundle build give
XGBoost's predictions, missing values included, for the objectives training uses, on both
sides of the row count where the service switches from ONNX Runtime to XGBoost; and the
bundle build refuses a converted graph that disagrees."""

from __future__ import annotations

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import helper

from nba.serving.bundle import BundleError, check_onnx
from nba.serving.models import ONNX_TOLERANCE, SMALL, FastModel, to_onnx
from nba.training.models import ActionBoundClassifier, CalibratedXGBClassifier, XGBRegressorOnFrame

ACTIONS = ["card", "loan", "savings"]


def _frame(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(8)})
    frame["segment"] = rng.choice(["young", "family", "retired"], n)
    frame["action_id"] = rng.choice(ACTIONS, n)
    for c in [f"x{i}" for i in range(8)]:
        frame.loc[rng.random(n) < 0.15, c] = np.nan  # XGBoost learns a default direction per split
    return frame


def _label(frame: pd.DataFrame, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = frame["x0"].fillna(0) + 0.5 * frame["x1"].fillna(0) * frame["x2"].fillna(0) + (frame["segment"] == "young")
    return (z + rng.normal(size=len(frame)) > 0.5).astype(int).to_numpy()


def _model(kind: str):
    frame = _frame(1, 3_000)
    y = _label(frame, 2)
    if kind == "pooled_sigmoid":  # the propensity champion: one model, the action a feature, Platt
        pooled = CalibratedXGBClassifier({"n_estimators": 200, "max_depth": 2}, calibration="sigmoid", n_jobs=1)
        return ActionBoundClassifier(pooled, "loan").fit(frame, y)
    features = frame.drop(columns="action_id")
    if kind == "isotonic_deep":
        return CalibratedXGBClassifier({"n_estimators": 150, "max_depth": 6}, calibration="isotonic",
                                       n_jobs=1).fit(features, y)
    value = np.exp(3 + features["x0"].fillna(0)) * y  # many zeros, a long right tail (CLV)
    objective = "reg:tweedie" if kind == "tweedie" else "reg:squarederror"
    return XGBRegressorOnFrame({"n_estimators": 300, "max_depth": 3, "objective": objective}, n_jobs=1).fit(
        features, value)


def _own(model, frame: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(frame)[:, 1] if hasattr(model, "predict_proba") else model.predict(frame)


@pytest.mark.parametrize("kind", ["pooled_sigmoid", "isotonic_deep", "tweedie", "squarederror"])
def test_onnx_scores_equal_xgboost_on_both_sides_of_the_switch(kind: str):
    model = _model(kind)
    fast = FastModel(kind, model, to_onnx(model))
    test = _frame(3, 400)
    if fast.action is None:
        test = test.drop(columns="action_id")
    inner = model.model if isinstance(model, ActionBoundClassifier) else model
    X = inner.encoder_.transform(test)
    assert np.isnan(X).any(axis=1).mean() > 0.5  # most rows hold a missing value
    xgboost = fast.finish(fast.margin_xgboost(X))
    assert np.array_equal(fast.margin_onnx(X), fast.margin_xgboost(X))  # the same float32 sums, bit for bit
    assert 1 < fast.small <= SMALL
    for rows in (1, 7, fast.small, fast.small + 1, 400):  # ONNX Runtime up to `small` rows, XGBoost above
        got = np.concatenate([fast.predict(X[i:i + rows]) for i in range(0, len(X), rows)])
        assert np.abs(got - xgboost).max() <= ONNX_TOLERANCE, rows
    # and what the model itself predicts: XGBoost applies the link in float32, numpy in float64,
    # and a steep isotonic step can make that 1e-5 (the pooled model scores each row's own
    # action, the bound one always its action)
    assert np.allclose(fast.predict(X[:fast.small]), _own(inner, test[:fast.small]), rtol=1e-5, atol=1e-5)
    assert np.allclose(fast.predict(X), _own(inner, test), rtol=1e-5, atol=1e-5)
    assert check_onnx(kind, model, to_onnx(model)) <= ONNX_TOLERANCE


def _corrupt_a_threshold(onnx_model: bytes, fast: FastModel) -> bytes:
    """The converted graph with the threshold of the split most sample rows cross moved by 1.0."""
    graph = onnx.load_from_string(onnx_model)
    node = graph.graph.node[0]
    attrs = {a.name: a for a in node.attribute}
    values = list(helper.get_attribute_value(attrs["nodes_values"]))
    modes = helper.get_attribute_value(attrs["nodes_modes"])
    split = next(i for i, m in enumerate(modes) if m != b"LEAF")  # the first tree's root
    values[split] += 1.0
    node.attribute.remove(attrs["nodes_values"])
    node.attribute.append(helper.make_attribute("nodes_values", values))
    return graph.SerializeToString()


@pytest.mark.parametrize("kind", ["pooled_sigmoid", "tweedie"])
def test_the_bundle_build_refuses_a_graph_that_disagrees_with_xgboost(kind: str):
    model = _model(kind)
    good = to_onnx(model)
    bad = _corrupt_a_threshold(good, FastModel(kind, model, good))
    fast = FastModel(kind, model, bad)
    X = fast.check_sample()
    assert not np.array_equal(fast.margin_onnx(X), fast.margin_xgboost(X))  # it really disagrees
    with pytest.raises(BundleError) as exc:
        check_onnx(f"nba-{kind}", model, bad)
    msg = str(exc.value)
    assert f"model nba-{kind}:" in msg and "differ from XGBoost's by up to" in msg
    assert f"(tolerance {ONNX_TOLERANCE:g})" in msg and "the bundle is not built" in msg
    diff = float(msg.split("by up to ")[1].split(" ")[0])
    assert diff > ONNX_TOLERANCE
