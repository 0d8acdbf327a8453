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
from nba.serving.models import (
    JOINT_TREES_PER_CALL,
    ONNX_TOLERANCE,
    SMALL,
    FastModel,
    JointTrees,
    JointTreesMismatch,
    ModelLoadError,
    ModelSet,
    feature_matrix,
    to_onnx,
)
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


def _per_action_models() -> dict[str, FastModel]:
    """Three per-action models on two column layouts, calibrated two ways."""
    frame = _frame(1, 3_000).drop(columns="action_id")
    y = _label(frame, 2)
    fits = {"card": (CalibratedXGBClassifier({"n_estimators": 120, "max_depth": 3}, calibration="sigmoid", n_jobs=1),
                     frame),
            "loan": (CalibratedXGBClassifier({"n_estimators": 80, "max_depth": 5}, calibration="isotonic", n_jobs=1),
                     frame.drop(columns=["x7", "segment"])),
            "savings": (CalibratedXGBClassifier({"n_estimators": 200, "max_depth": 2}, calibration="sigmoid",
                                                n_jobs=1), frame)}
    out = {}
    for action, (model, features) in fits.items():
        model.fit(features, y)
        out[action] = FastModel(f"nba-propensity-{action}", model, to_onnx(model))
    return out


def test_a_joint_graph_scores_each_per_action_model_as_its_own_graph_does():
    """One ONNX Runtime call for the per-action models of a customer's row: the same numbers,
    bit for bit, as each model scored on its own; and the ModelSet's propensities with and
    without it are equal wherever the joint call is used or not."""
    models = _per_action_models()
    joint = JointTrees(list(models.values()))  # merged and checked against each model's own graph
    assert len(joint.columns) == len(models["card"].columns)  # the union of the two layouts
    test = _frame(3, 60).drop(columns="action_id")
    env = {c: test[c].to_numpy(dtype=object if c == "segment" else np.float64) for c in test.columns}
    X = feature_matrix(joint.columns, env, len(test))
    for rows in (1, 7, 60):
        scored = joint.predict(X[:rows])
        assert scored.shape == (rows, 3)
        for t, m in enumerate(joint.models):
            assert np.array_equal(scored[:, t], m.predict(feature_matrix(m.columns, env, len(test))[:rows])), m.name
    apart = ModelSet(ACTIONS, models, {})
    together = ModelSet(ACTIONS, models, {}, joint=([m.name for m in apart.joint_models()], joint.graph))
    assert apart.joint is None and together.joint is not None
    calls = []
    predict = together.joint.predict
    together.joint.predict = lambda X: calls.append(len(X)) or predict(X)  # type: ignore[method-assign]
    one = {c: v[0] for c, v in env.items()}  # one customer (scalars): one joint call for 3 models
    rows, cols = np.zeros(3, dtype=np.int64), np.array([2, 0, 1])
    assert np.array_equal(together.propensity(one, 1, rows, cols), apart.propensity(one, 1, rows, cols))
    assert calls == [1]
    # 60 customers x 3 models > JOINT_TREES_PER_CALL x the 2 calls it would save: each model on its own
    rows, cols = np.repeat(np.arange(60), 2), np.tile([0, 2], 60)
    assert np.array_equal(together.propensity(env, 60, rows, cols), apart.propensity(env, 60, rows, cols))
    assert calls == [1] and JOINT_TREES_PER_CALL < 60 * 3 / 2
    p = together.propensity(one, 1, np.zeros(1, dtype=np.int64), np.array([1]))
    assert np.array_equal(p, models["loan"].predict(feature_matrix(models["loan"].columns, one, 1)))


def test_a_joint_graph_that_disagrees_or_holds_other_models_is_refused():
    models = _per_action_models()
    joint = JointTrees(list(models.values()))
    with pytest.raises(ModelLoadError, match=r"the bundle's joint graph holds models .*nba-propensity-savings.*"
                                             r"rebuild the bundle"):
        ModelSet(ACTIONS, models, {}, joint=(["nba-propensity-card", "nba-propensity-loan"], joint.graph))
    bad = _corrupt_a_threshold(joint.graph, models["card"])
    with pytest.raises(JointTreesMismatch, match=r"model nba-propensity-card: the joint graph's margins differ "
                                                 r"from its own by up to [0-9.e-]+"):
        JointTrees(list(models.values()), bad).check()
    with pytest.raises(ModelLoadError, match="the joint graph reads .* columns into 3 models, its models .* into 2"):
        JointTrees([models["card"], models["loan"]], joint.graph)
