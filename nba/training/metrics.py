"""Model quality metrics and the plots reviewers look at.

Classification: ROC AUC, log loss, Brier score and expected calibration error (the
arbitration multiplies probabilities, so calibration matters more than ranking).
Uplift: the Qini curve and coefficient (per customer, and normalised as scikit-uplift's
`qini_auc_score`), the uplift curve and its area (AUUC). Regression (CLV):
error, Gini and top-decile capture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Weighted mean |observed rate - mean prediction| over equal-width probability bins."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.sum() * abs(y[mask].mean() - p[mask].mean())
    return float(total / len(y))


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    out = {
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
        "positives": float(y.sum()),
        "rows": float(len(y)),
        "base_rate": float(y.mean()) if len(y) else float("nan"),
        "mean_prediction": float(p.mean()) if len(p) else float("nan"),
    }
    out["roc_auc"] = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    return out


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as a PNG artifact (creating the folder).

    The figures are `matplotlib.figure.Figure`s made without pyplot: no backend is chosen or
    switched (a notebook keeps its inline plots) and nothing is kept in pyplot's registry."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def calibration_plot(y: np.ndarray, p: np.ndarray, path: Path, title: str, truth: np.ndarray | None = None,
                     bins: int = 10) -> Path:
    """Reliability diagram (quantile bins), with the simulator's true probabilities when known."""
    from matplotlib.figure import Figure

    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    mean_p = np.array([p[idx == b].mean() for b in np.unique(idx)])
    rate = np.array([y[idx == b].mean() for b in np.unique(idx)])
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    hi = max(float(mean_p.max(initial=0)), float(rate.max(initial=0))) * 1.1 or 1.0
    ax.plot([0, hi], [0, hi], color="grey", linestyle="--", label="perfect calibration")
    ax.plot(mean_p, rate, marker="o", label="observed rate")
    if truth is not None:
        t = np.asarray(truth, dtype=float)
        ax.plot(mean_p, [t[idx == b].mean() for b in np.unique(idx)], marker="x", label="true probability")
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed rate")
    ax.set_title(title)
    ax.legend(loc="upper left")
    return save_figure(fig, path)


def importance_plot(names: list[str], gains: np.ndarray, path: Path, title: str, top: int = 20) -> Path:
    from matplotlib.figure import Figure

    order = np.argsort(gains)[::-1][:top][::-1]
    fig = Figure(figsize=(6, 0.3 * len(order) + 1))
    ax = fig.subplots()
    ax.barh([names[i] for i in order], np.asarray(gains)[order])
    ax.set_xlabel("gain")
    ax.set_title(title)
    return save_figure(fig, path)


def qini_curve(uplift: np.ndarray, y: np.ndarray, treated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve: targeting the top x customers by predicted uplift, the incremental
    responders  Y_t(x) - Y_c(x) * N_t(x) / N_c(x).  Returns (fraction targeted, qini)."""
    uplift = np.asarray(uplift, dtype=float)
    y = np.asarray(y, dtype=float)
    t = np.asarray(treated).astype(bool)
    order = np.argsort(-uplift, kind="stable")
    y, t = y[order], t[order]
    n_t = np.cumsum(t)
    n_c = np.cumsum(~t)
    y_t = np.cumsum(y * t)
    y_c = np.cumsum(y * ~t)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = y_t - np.where(n_c > 0, y_c * n_t / n_c, 0.0)
    x = np.arange(1, len(y) + 1) / len(y)
    return np.concatenate([[0.0], x]), np.concatenate([[0.0], q])


def qini_coefficient(uplift: np.ndarray, y: np.ndarray, treated: np.ndarray) -> float:
    """Area between the model's Qini curve and the random-targeting line, per customer.

    Positive: the model ranks customers better than random; zero: no better than random.
    """
    x, q = qini_curve(uplift, y, treated)
    random_line = x * q[-1]
    return float(np.trapezoid(q - random_line, x) / len(np.asarray(y)))


def _qini_points(uplift: np.ndarray, y: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Qini curve at each distinct score (ties form one step), counted in customers, from (0, 0)."""
    order = np.argsort(uplift, kind="mergesort")[::-1]  # descending; equal scores as scikit-uplift orders them
    u, y, t = uplift[order], y[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(u)), len(u) - 1]  # the last row of each run of equal scores
    n_t = np.cumsum(t)[last].astype(float)
    n_all = (last + 1).astype(float)
    n_c = n_all - n_t
    y_t = np.cumsum(y * t)[last]
    y_c = np.cumsum(y * ~t)[last]
    q = y_t - y_c * np.divide(n_t, n_c, out=np.zeros_like(n_t), where=n_c != 0)
    return np.r_[0.0, n_all], np.r_[0.0, q]


def qini_auc_score(uplift: np.ndarray, y: np.ndarray, treated: np.ndarray) -> float:
    """The normalised Qini coefficient as scikit-uplift's `qini_auc_score` (negative_effect=True)
    defines it: the area between the model's Qini curve and the random line, divided by the
    same area of the perfect curve (treated responders first, control responders last).

    1: a perfect ranking; 0: no better than random. Unlike `qini_coefficient` (an area per
    customer, in units of the outcome) it is comparable across data sets and with the field's
    libraries. Equal scores form one step of the curve, as in scikit-uplift.
    """
    uplift = np.asarray(uplift, dtype=float)
    y = np.asarray(y, dtype=float)
    t = np.asarray(treated).astype(bool)
    x_m, q_m = _qini_points(uplift, y, t)
    x_p, q_p = _qini_points(y * t - y * ~t, y, t)
    baseline = x_p[-1] * q_p[-1] / 2.0  # the straight line from (0, 0) to the curve's end
    perfect = float(np.trapezoid(q_p, x_p)) - baseline
    if perfect == 0:
        return float("nan")
    return (float(np.trapezoid(q_m, x_m)) - baseline) / perfect


def uplift_curve(uplift: np.ndarray, y: np.ndarray, treated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uplift (cumulative gain) curve: targeting the top x customers by predicted uplift, the
    incremental responders if all x were treated,  (Y_t(x) / N_t(x) - Y_c(x) / N_c(x)) * x
    (0 until both groups are present). Returns (fraction targeted, gain)."""
    uplift = np.asarray(uplift, dtype=float)
    y = np.asarray(y, dtype=float)
    t = np.asarray(treated).astype(bool)
    order = np.argsort(-uplift, kind="stable")
    y, t = y[order], t[order]
    n_t, n_c = np.cumsum(t), np.cumsum(~t)
    y_t, y_c = np.cumsum(y * t), np.cumsum(y * ~t)
    k = np.arange(1, len(y) + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where((n_t > 0) & (n_c > 0), (y_t / n_t - y_c / n_c) * k, 0.0)
    return np.concatenate([[0.0], k / len(y)]), np.concatenate([[0.0], gain])


def auuc(uplift: np.ndarray, y: np.ndarray, treated: np.ndarray) -> float:
    """Area between the model's uplift curve and the random-targeting line, per customer (the
    uplift curve's counterpart of `qini_coefficient`; 0: no better than random)."""
    x, g = uplift_curve(uplift, y, treated)
    return float(np.trapezoid(g - x * g[-1], x) / len(np.asarray(y)))


def gini_and_top_decile(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Normalised Gini of the ranking by prediction, and the share of actual value captured
    by the top 10 % of customers ranked by prediction."""
    actual = np.asarray(actual, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    total = actual.sum()
    if total <= 0:
        return {"gini": float("nan"), "top_decile_capture": float("nan")}

    def _gini(order: np.ndarray) -> float:
        cum = np.cumsum(actual[order]) / total
        return float(np.mean(cum) - (len(actual) + 1) / (2 * len(actual)))

    model = _gini(np.argsort(-predicted, kind="stable"))
    perfect = _gini(np.argsort(-actual, kind="stable"))
    k = max(1, len(actual) // 10)
    top = np.argsort(-predicted, kind="stable")[:k]
    return {"gini": model / perfect if perfect else float("nan"), "top_decile_capture": float(actual[top].sum() / total)}
