"""The uplift learners: estimators of tau(x) = E[y | x, treated] - E[y | x, not treated] from
randomised rows, on XGBoost, following the scikit-learn contract (`fit(X, treated, y)`,
`predict(X) -> uplift`; `get_params` / `clone` work): `TLearner`, `SLearner`, `XLearner` and
`ClassTransformationLearner`, by name in `LEARNERS` and built by `make_learner`.

They know nothing of frames, Feast or MLflow: `nba.training.uplift` builds the randomised
rows, fits every configured learner and picks one by Qini.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from nba.errors import ConfigError
from nba.training.models import FrameEncoder, ModelDataError, _xgb_params


def _xgb(kind: str, params: dict[str, Any] | None, n_jobs: int, random_state: int) -> Any:
    """An XGBoost classifier or regressor with the shared parameters; each component sets its
    own objective (a tuned `objective` for another family must not turn a classifier into a
    regressor)."""
    import xgboost as xgb

    p = _xgb_params(params, n_jobs, random_state)
    if kind == "classifier":
        p["objective"] = "binary:logistic"
        return xgb.XGBClassifier(**p)
    p["objective"] = "reg:squarederror"
    p.pop("tweedie_variance_power", None)
    return xgb.XGBRegressor(**p)


class _UpliftLearner(BaseEstimator):
    """Shared validation and encoding of the uplift learners (not used on its own)."""

    def __init__(self, params: dict[str, Any] | None = None, min_positives: int = 1, name: str = "uplift model",
                 outcome_type: str = "auto", n_jobs: int = 2, random_state: int = 0):
        self.params = params
        self.min_positives = min_positives
        self.name = name
        self.outcome_type = outcome_type
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _validate(self, X: pd.DataFrame, treated: Any, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encode X; check groups, labels and positives. Returns (matrix, treated bool, y float)."""
        if self.outcome_type not in ("auto", "binary", "continuous"):
            raise ModelDataError(f"{self.name}: outcome_type '{self.outcome_type}' is not one of "
                                 "auto, binary, continuous")
        t = np.asarray(treated)
        y = np.asarray(y, dtype="float64")
        if not (len(X) == len(t) == len(y)):
            raise ModelDataError(f"{self.name}: X has {len(X)} rows, treated {len(t)}, y {len(y)}; they must match")
        if len(y) == 0:
            raise ModelDataError(f"{self.name}: the training frame is empty")
        if not np.isin(t, (0, 1)).all():
            raise ModelDataError(f"{self.name}: treated must hold 0/1, got values {sorted(set(t.tolist()))[:5]}")
        if not np.isfinite(y).all():
            raise ModelDataError(f"{self.name}: the outcome has {int((~np.isfinite(y)).sum())} missing or "
                                 "infinite value(s)")
        t = t.astype(bool)
        binary = np.isin(y, (0.0, 1.0)).all()
        if self.outcome_type == "binary" and not binary:
            raise ModelDataError(f"{self.name}: outcome_type 'binary' but the outcome holds values other than 0/1")
        self.binary_ = bool(binary) if self.outcome_type == "auto" else self.outcome_type == "binary"
        for group, mask in (("treated", t), ("control", ~t)):
            rows = int(mask.sum())
            positives = int((y[mask] > 0).sum())
            if rows == 0:
                raise ModelDataError(f"{self.name}: the {group} group has no rows ({len(y)} rows in all); "
                                     "uplift needs treated and control rows")
            if positives < self.min_positives:
                raise ModelDataError(f"{self.name}: the {group} group has {positives} positive outcome(s) in "
                                     f"{rows} rows; at least {self.min_positives} needed (min_positives)")
            if self.binary_ and positives == rows:
                raise ModelDataError(f"{self.name}: every one of the {rows} rows of the {group} group is "
                                     "positive; a classifier needs both classes")
        self.encoder_ = FrameEncoder().fit(X)
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        self.treated_share_ = float(t.mean())
        return self.encoder_.transform(X), t, y

    def _outcome_model(self, Xm: np.ndarray, y: np.ndarray) -> Any:
        """E[y | x] within one group: a classifier for a binary outcome, else a regressor."""
        model = _xgb("classifier" if self.binary_ else "regressor", self.params, self.n_jobs, self.random_state)
        return model.fit(Xm, y.astype(int) if self.binary_ else y)

    def _expected(self, model: Any, Xm: np.ndarray) -> np.ndarray:
        if self.binary_:
            return model.predict_proba(Xm)[:, 1].astype("float64")
        return model.predict(Xm).astype("float64")

    def _share(self, propensity: float | None) -> float:
        e = self.treated_share_ if propensity is None else float(propensity)
        if not 0.0 < e < 1.0:
            raise ModelDataError(f"{self.name}: propensity {e} is not in (0, 1)")
        return e


class _PropensityLearner(_UpliftLearner):
    """A learner that uses the assignment probability: `propensity`, or the treated share."""

    def __init__(self, params: dict[str, Any] | None = None, min_positives: int = 1, name: str = "uplift model",
                 outcome_type: str = "auto", n_jobs: int = 2, random_state: int = 0,
                 propensity: float | None = None):
        super().__init__(params=params, min_positives=min_positives, name=name, outcome_type=outcome_type,
                         n_jobs=n_jobs, random_state=random_state)
        self.propensity = propensity


class TLearner(_UpliftLearner):
    """Two models, one per group: tau(x) = mu_1(x) - mu_0(x) (causalml's BaseTLearner shape).

    Simple and unbiased under randomisation; its weakness is that each model regularises on
    its own, so the difference of two noisy fits can rank customers by noise when the effect
    is small next to the outcome's own variation."""

    def fit(self, X: pd.DataFrame, treated: Any, y: Any) -> TLearner:
        Xm, t, y = self._validate(X, treated, y)
        self.model_treated_ = self._outcome_model(Xm[t], y[t])
        self.model_control_ = self._outcome_model(Xm[~t], y[~t])
        return self

    def predict_outcomes(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(E[y | x, control], E[y | x, treated]): the propensity beside the uplift."""
        Xm = self.encoder_.transform(X)
        return self._expected(self.model_control_, Xm), self._expected(self.model_treated_, Xm)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        mu0, mu1 = self.predict_outcomes(X)
        return mu1 - mu0


class SLearner(_UpliftLearner):
    """One model with the treatment as one more input: tau(x) = mu(x, 1) - mu(x, 0)
    (causalml's BaseSLearner shape).

    Trees that split on the treatment only where the data supports it shrink the effect
    toward a constant on the logit scale, which in probability is an uplift growing with the
    response rate: the right default when heterogeneity is weak (Hillstrom's Mens e-mail).
    Its known weakness is the other side of that: regularised hard, it may never split on
    the treatment and predict no uplift at all."""

    def fit(self, X: pd.DataFrame, treated: Any, y: Any) -> SLearner:
        Xm, t, y = self._validate(X, treated, y)
        self.model_ = self._outcome_model(np.column_stack([Xm, t.astype("float32")]), y)
        return self

    def predict_outcomes(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(E[y | x, control], E[y | x, treated])."""
        Xm = self.encoder_.transform(X)
        ones = np.ones((len(Xm), 1), dtype="float32")
        return (self._expected(self.model_, np.hstack([Xm, 0 * ones])),
                self._expected(self.model_, np.hstack([Xm, ones])))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        mu0, mu1 = self.predict_outcomes(X)
        return mu1 - mu0


class XLearner(_PropensityLearner):
    """Kuenzel et al. (2019): outcome models per group as in the T-learner, then the imputed
    effects D1 = y - mu_0(x) on the treated and D0 = mu_1(x) - y on the controls, each
    regressed on x (tau_1, tau_0), combined as tau(x) = g tau_0(x) + (1 - g) tau_1(x).

    g is the probability of treatment. On randomised data it is a known constant: pass it as
    `propensity`, or leave None to use the treated share of the training rows (its estimate
    under a constant assignment probability; 1/2 on Hillstrom's arm-vs-hold-out pairs and on
    the simulator's exploration)."""

    def fit(self, X: pd.DataFrame, treated: Any, y: Any) -> XLearner:
        Xm, t, y = self._validate(X, treated, y)
        self.propensity_ = self._share(self.propensity)
        mu1 = self._outcome_model(Xm[t], y[t])
        mu0 = self._outcome_model(Xm[~t], y[~t])
        d1 = y[t] - self._expected(mu0, Xm[t])
        d0 = self._expected(mu1, Xm[~t]) - y[~t]
        self.effect_treated_ = _xgb("regressor", self.params, self.n_jobs, self.random_state).fit(Xm[t], d1)
        self.effect_control_ = _xgb("regressor", self.params, self.n_jobs, self.random_state).fit(Xm[~t], d0)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        Xm = self.encoder_.transform(X)
        tau1 = self.effect_treated_.predict(Xm).astype("float64")
        tau0 = self.effect_control_.predict(Xm).astype("float64")
        g = self.propensity_
        return g * tau0 + (1.0 - g) * tau1


class ClassTransformationLearner(_PropensityLearner):
    """One model of a transformed target whose expectation is (a function of) the uplift.

    Binary outcome (Jaskowski & Jaroszewicz 2012): z = y t + (1 - y)(1 - t), 1 for a treated
    responder or a control non-responder. With treatment share e = 1/2,
    P(z = 1 | x) = (p_1(x) + 1 - p_0(x)) / 2, so tau(x) = 2 P(z = 1 | x) - 1. For another
    share e the rows are weighted 1 / (2e) (treated) and 1 / (2(1 - e)) (control): both
    groups then carry half the weight at every x and the same identity holds.

    Numeric outcome (the transformed outcome of Athey & Imbens 2016):
    y* = y (t - e) / (e (1 - e)) has E[y* | x] = tau(x); a regressor on y* predicts tau.

    e is `propensity` if given, else the treated share of the training rows."""

    def fit(self, X: pd.DataFrame, treated: Any, y: Any) -> ClassTransformationLearner:
        Xm, t, y = self._validate(X, treated, y)
        e = self.propensity_ = self._share(self.propensity)
        tf = t.astype("float64")
        if self.binary_:
            z = (y * tf + (1 - y) * (1 - tf)).astype(int)
            weight = np.where(t, 1 / (2 * e), 1 / (2 * (1 - e)))
            self.model_ = _xgb("classifier", self.params, self.n_jobs, self.random_state).fit(
                Xm, z, sample_weight=weight)
        else:
            self.model_ = _xgb("regressor", self.params, self.n_jobs, self.random_state).fit(
                Xm, y * (tf - e) / (e * (1 - e)))
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        Xm = self.encoder_.transform(X)
        if self.binary_:
            return 2.0 * self.model_.predict_proba(Xm)[:, 1].astype("float64") - 1.0
        return self.model_.predict(Xm).astype("float64")


LEARNERS: dict[str, type[_UpliftLearner]] = {
    "t_learner": TLearner,
    "s_learner": SLearner,
    "x_learner": XLearner,
    "class_transformation": ClassTransformationLearner,
}


def make_learner(kind: str, params: dict[str, Any] | None, *, min_positives: int = 1, name: str = "uplift model",
                 random_state: int = 0) -> _UpliftLearner:
    if kind not in LEARNERS:
        raise ConfigError(f"uplift learner '{kind}' is unknown; expected one of {', '.join(LEARNERS)}")
    return LEARNERS[kind](params=dict(params or {}), min_positives=min_positives, name=name,
                          random_state=random_state)
