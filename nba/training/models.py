"""Estimators shared by the model families, following the scikit-learn contract
(parameters stored in `__init__`, validation in `fit`).

- `FrameEncoder`: a feature frame -> a float32 matrix (numeric columns as they are,
  string columns one-hot with the categories seen in `fit`). Cheap enough for the
  online path: one numpy array per request, no DataFrame per row downstream.
- `CalibratedXGBClassifier`: XGBoost fitted on the earlier rows, then an isotonic (or
  sigmoid) calibration fitted on the latest rows, so calibration is checked on data the
  trees never saw and in the time order it will be used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin

from nba.errors import NbaError


class ModelDataError(NbaError):
    """The training data cannot support the model (empty frame, no positives...)."""


class FrameEncoder(TransformerMixin, BaseEstimator):
    """Numeric columns pass through as float32; string columns become one-hot indicators."""

    def __init__(self, columns: list[str] | None = None):
        self.columns = columns

    def fit(self, X: pd.DataFrame, y: Any = None) -> FrameEncoder:
        cols = list(self.columns) if self.columns is not None else list(X.columns)
        missing = [c for c in cols if c not in X.columns]
        if missing:
            raise ModelDataError(f"feature frame lacks column(s) {missing}")
        self.numeric_: list[str] = [c for c in cols if pd.api.types.is_numeric_dtype(X[c]) or
                                    pd.api.types.is_bool_dtype(X[c])]
        self.categories_: dict[str, list[str]] = {
            c: sorted(X[c].dropna().astype(str).unique().tolist()) for c in cols if c not in self.numeric_
        }
        self.feature_names_out_: list[str] = self.numeric_ + [
            f"{c}={v}" for c, values in self.categories_.items() for v in values
        ]
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.numeric_ + list(self.categories_) if c not in X.columns]
        if missing:
            raise ModelDataError(f"feature frame lacks column(s) {missing}")
        parts = [X[self.numeric_].astype("float32").to_numpy()] if self.numeric_ else []
        for col, values in self.categories_.items():
            # a missing value (a customer without online features) is no category: all zeros
            v = X[col].astype("string").fillna("").to_numpy(dtype=object)
            parts.append(np.stack([(v == cat) for cat in values], axis=1).astype("float32")
                         if values else np.zeros((len(X), 0), dtype="float32"))
        return np.hstack(parts) if parts else np.zeros((len(X), 0), dtype="float32")

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self.feature_names_out_, dtype=object)


# Added to a prior prediction before its log is taken: a customer the prior gives 0 keeps a
# finite margin (a thousandth of a currency unit is below any value the models resolve).
OFFSET_FLOOR = 1e-3


def _xgb_params(params: dict[str, Any] | None, n_jobs: int, random_state: int) -> dict[str, Any]:
    out = {"tree_method": "hist", "n_jobs": n_jobs, "random_state": random_state, "verbosity": 0}
    out.update(params or {})
    return out


class CalibratedXGBClassifier(ClassifierMixin, BaseEstimator):
    """XGBoost + calibration on the latest `calibration_fraction` of rows (rows in time order)."""

    def __init__(self, params: dict[str, Any] | None = None, calibration: str = "isotonic",
                 calibration_fraction: float = 0.2, n_jobs: int = 2, random_state: int = 0,
                 min_positives: int = 1):
        self.params = params
        self.calibration = calibration
        self.calibration_fraction = calibration_fraction
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.min_positives = min_positives

    def fit(self, X: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> CalibratedXGBClassifier:
        """`sample_weight`: e.g. inverse logging probabilities, so rows a biased logging policy
        over-showed count less (training on logged decisions); used by the trees and the calibrator."""
        import xgboost as xgb
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression

        if self.calibration not in ("isotonic", "sigmoid"):
            raise ModelDataError(f"calibration: '{self.calibration}' is not one of isotonic, sigmoid")
        if not 0 < self.calibration_fraction < 0.5:
            raise ModelDataError(f"calibration_fraction: {self.calibration_fraction} is not in (0, 0.5)")
        y = np.asarray(y).astype(int)
        if len(y) == 0:
            raise ModelDataError("the training frame is empty")
        positives = int(y.sum())
        if positives < self.min_positives:
            raise ModelDataError(f"{positives} positive label(s) in {len(y)} rows; at least {self.min_positives} needed")
        if positives == len(y):
            raise ModelDataError(f"all {len(y)} labels are positive; a classifier needs both classes")
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if w is not None and (len(w) != len(y) or not np.isfinite(w).all() or (w <= 0).any()):
            raise ModelDataError(f"sample weights must be {len(y)} finite positive values")
        self.encoder_ = FrameEncoder().fit(X)
        Xm = self.encoder_.transform(X)
        cut = int(round(len(y) * (1 - self.calibration_fraction)))
        if y[:cut].sum() == 0 or y[cut:].sum() == 0 or y[:cut].min() == 1:
            raise ModelDataError(
                f"the fit part ({cut} rows, {int(y[:cut].sum())} positives) or the calibration part "
                f"({len(y) - cut} rows, {int(y[cut:].sum())} positives) lacks a class")
        self.booster_ = xgb.XGBClassifier(**_xgb_params(self.params, self.n_jobs, self.random_state))
        w_fit, w_cal = (None, None) if w is None else (w[:cut], w[cut:])
        self.booster_.fit(Xm[:cut], y[:cut], sample_weight=w_fit)
        raw = self.booster_.predict_proba(Xm[cut:])[:, 1]
        if self.calibration == "isotonic":
            self.calibrator_ = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(
                raw, y[cut:], sample_weight=w_cal)
        else:
            self.calibrator_ = LogisticRegression().fit(_logit(raw)[:, None], y[cut:], sample_weight=w_cal)
        self.classes_ = np.array([0, 1])
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        return self

    def raw_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.booster_.predict_proba(self.encoder_.transform(X))[:, 1]

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        if self.calibration == "isotonic":
            return np.clip(self.calibrator_.predict(raw), 0.0, 1.0)
        return self.calibrator_.predict_proba(_logit(raw)[:, None])[:, 1]

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p = self.calibrate(self.raw_proba(X))
        return np.column_stack([1 - p, p])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def feature_importance(self) -> tuple[list[str], np.ndarray]:
        """Gain per encoded feature (zero for features the trees never split on)."""
        scores = self.booster_.get_booster().get_score(importance_type="gain")
        names = list(self.encoder_.feature_names_out_)
        return names, np.array([scores.get(f"f{i}", 0.0) for i in range(len(names))])


class XGBRegressorOnFrame(RegressorMixin, BaseEstimator):
    """An XGBoost regressor that takes a feature frame (encoded like the classifiers).

    `offset`: the name of a column holding a prior prediction (e.g. the classical BG/NBD x
    Gamma-Gamma CLV) that the booster corrects multiplicatively: its log is the base margin
    of a log-link objective (Tweedie, Poisson, gamma), so the trees learn log(y / prior).
    `shrink` in [0, 1] moves the prediction back towards the prior: prior + shrink x
    (boosted - prior), a fixed-weight ensemble of the two. The column stays a feature too.
    """

    def __init__(self, params: dict[str, Any] | None = None, n_jobs: int = 2, random_state: int = 0,
                 offset: str | None = None, shrink: float = 1.0):
        self.params = params
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.offset = offset
        self.shrink = shrink

    def _prior(self, X: pd.DataFrame) -> np.ndarray | None:
        name = getattr(self, "offset", None)  # models pickled before the offset existed have none
        if name is None:
            return None
        if name not in X.columns:
            raise ModelDataError(f"the offset column '{name}' is not in the frame (columns: {list(X.columns)})")
        prior = np.asarray(X[name], dtype=float)
        if not np.isfinite(prior).all() or (prior < 0).any():
            raise ModelDataError(f"the offset column '{name}' must be finite and non-negative")
        return prior

    def fit(self, X: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> XGBRegressorOnFrame:
        """`sample_weight`: e.g. the exposure of a label observed over a shorter window than
        the horizon it is expressed in (CLV)."""
        import xgboost as xgb

        y = np.asarray(y, dtype=float)
        if len(y) == 0:
            raise ModelDataError("the training frame is empty")
        if not np.isfinite(y).all():
            raise ModelDataError(f"the label has {int((~np.isfinite(y)).sum())} missing or infinite value(s)")
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if w is not None and (len(w) != len(y) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0):
            raise ModelDataError(f"sample weights must be {len(y)} finite non-negative values, not all zero")
        if not 0.0 <= float(getattr(self, "shrink", 1.0)) <= 1.0:
            raise ModelDataError(f"shrink must be in [0, 1], not {self.shrink}")
        prior = self._prior(X)
        self.encoder_ = FrameEncoder().fit(X)
        self.booster_ = xgb.XGBRegressor(**_xgb_params(self.params, self.n_jobs, self.random_state))
        margin = None if prior is None else np.log(prior + OFFSET_FLOOR)
        self.booster_.fit(self.encoder_.transform(X), y, sample_weight=w, base_margin=margin)
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        prior = self._prior(X)
        if prior is None:
            return np.maximum(self.booster_.predict(self.encoder_.transform(X)), 0.0)
        boosted = self.booster_.predict(self.encoder_.transform(X), base_margin=np.log(prior + OFFSET_FLOOR))
        return np.maximum(prior + float(self.shrink) * (boosted - prior), 0.0)

    def feature_importance(self) -> tuple[list[str], np.ndarray]:
        scores = self.booster_.get_booster().get_score(importance_type="gain")
        names = list(self.encoder_.feature_names_out_)
        return names, np.array([scores.get(f"f{i}", 0.0) for i in range(len(names))])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


class ActionBoundClassifier(ClassifierMixin, BaseEstimator):
    """A pooled propensity model (the action is one of its features) seen as one action's model.

    Registered as `nba-propensity-<action>` so that whichever strategy won, the serving side
    reads one model per action. `fit` fits the pooled model on rows of every action.
    """

    def __init__(self, model: CalibratedXGBClassifier | None = None, action: str = ""):
        self.model = model
        self.action = action

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> ActionBoundClassifier:
        if self.model is None:
            raise ModelDataError("ActionBoundClassifier needs a pooled model")
        if "action_id" not in X.columns:
            raise ModelDataError("a pooled propensity model trains on rows with an 'action_id' column")
        self.model.fit(X, y)
        self.classes_ = np.array([0, 1])
        return self

    def _pooled(self) -> CalibratedXGBClassifier:
        if self.model is None:
            raise ModelDataError("ActionBoundClassifier needs a pooled model")
        return self.model

    def _with_action(self, X: pd.DataFrame) -> pd.DataFrame:
        return X.assign(action_id=pd.array([self.action] * len(X), dtype="string"))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self._pooled().predict_proba(self._with_action(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def feature_importance(self) -> tuple[list[str], np.ndarray]:
        return self._pooled().feature_importance()
