"""The numpy walk of XGBoost trees (`nba.serving.models.TreeEnsemble`) against XGBoost itself,
missing values included, for the objectives the serving path handles."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from nba.serving.models import TreeEnsemble


def _data(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] * X[:, 2] - 0.3 * X[:, 3] > 0).astype(np.float32)
    X[rng.random(X.shape) < 0.15] = np.nan  # XGBoost learns a default direction per split
    return X, y


@pytest.mark.parametrize(("objective", "depth"), [("binary:logistic", 6), ("reg:squarederror", 3),
                                                  ("reg:tweedie", 4)])
def test_numpy_trees_predict_what_xgboost_predicts(objective: str, depth: int):
    X, y = _data(1)
    target = y + 0.1 if objective == "reg:tweedie" else y
    booster = xgb.train({"objective": objective, "max_depth": depth, "eta": 0.3, "nthread": 1, "seed": 3},
                        xgb.DMatrix(X, label=target, missing=np.nan), num_boost_round=40)
    trees = TreeEnsemble(booster)
    assert trees.supported and trees.depth == depth
    test, _ = _data(2, 50)
    expected = booster.predict(xgb.DMatrix(test, missing=np.nan))
    assert np.isnan(test).any(axis=1).sum() > 10  # rows with missing values are walked
    assert np.allclose(trees.predict(test), expected, rtol=1e-5, atol=1e-6)
    one = [trees.predict(test[i:i + 1])[0] for i in range(len(test))]
    assert np.allclose(one, expected, rtol=1e-5, atol=1e-6)
    full = test[~np.isnan(test).any(axis=1)]  # rows without a missing value take the short walk
    assert np.allclose(trees.predict(full), booster.predict(xgb.DMatrix(full)), rtol=1e-5, atol=1e-6)


def test_an_unhandled_objective_is_left_to_xgboost():
    X, y = _data(3)
    booster = xgb.train({"objective": "multi:softprob", "num_class": 2, "nthread": 1},
                        xgb.DMatrix(X, label=y), num_boost_round=3)
    assert TreeEnsemble(booster).supported is False
