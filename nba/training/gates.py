"""Promotion gates: the check of a challenger against the thresholds of `evaluation/gates.yaml`.

The thresholds are data (reviewers read and change the YAML, never this module; its schema
is `nba.config.GatesConfig`). A challenger passes when every absolute gate of its family
holds (minimum positives, minimum ROC AUC / Gini / Qini, maximum calibration error) and, on
its own hold-out frame, its primary metric is not worse than the current champion's by more
than `margin`.

A gate whose figure is missing or NaN fails: a metric nobody computed proves nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from nba.config import FamilyGates, GatesConfig, gates_path, load_gates
from nba.settings import Settings

COMPARISON_GATE = "not_worse_than_champion"


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict with the figures behind it."""

    gate: str
    passed: bool
    observed: float | None
    threshold: float | None
    message: str


def _fmt(x: float | None) -> str:
    if x is None:
        return "none"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _bound(gate: str, observed: float | None, threshold: float, kind: Literal["min", "max"],
           what: str) -> GateResult:
    if observed is None or (isinstance(observed, float) and math.isnan(observed)):
        return GateResult(gate, False, observed, threshold,
                          f"{gate}: {what} is {'not recorded' if observed is None else 'NaN'}; "
                          f"needs {'>=' if kind == 'min' else '<='} {_fmt(threshold)}")
    passed = observed >= threshold if kind == "min" else observed <= threshold
    op = (">=" if passed else "<") if kind == "min" else ("<=" if passed else ">")
    return GateResult(gate, bool(passed), float(observed), float(threshold),
                      f"{gate}: {what} {_fmt(float(observed))} {op} {_fmt(float(threshold))}")


def check_gates(family: str, challenger_metrics: dict[str, float],
                champion_metric_on_same_frame: float | None, *,
                config: GatesConfig | None = None) -> list[GateResult]:
    """Every gate of `family`, each with its verdict (passed or not), in the YAML's order.

    `challenger_metrics` holds the challenger's hold-out figures without the `holdout_`
    prefix (`positives`, `roc_auc`, `ece`, `gini`, `qini`, and the primary metric recomputed
    on the hold-out frame). `champion_metric_on_same_frame` is the current champion's primary
    metric on the same frame, or None when there is no champion (the comparison passes).
    `config` defaults to `evaluation/gates.yaml` of the project folder (`NBA_HOME`).
    """
    if config is None:
        config = load_gates(gates_path(Settings().home))
    g = config.family(family)
    m = challenger_metrics
    out: list[GateResult] = []
    if g.min_positives is not None:
        out.append(_bound("min_positives", m.get("positives"), g.min_positives, "min", "hold-out positives"))
    if g.min_roc_auc is not None:
        out.append(_bound("min_roc_auc", m.get("roc_auc"), g.min_roc_auc, "min", "ROC AUC"))
    if g.max_ece is not None:
        out.append(_bound("max_ece", m.get("ece"), g.max_ece, "max", "expected calibration error"))
    if g.min_gini is not None:
        out.append(_bound("min_gini", m.get("gini"), g.min_gini, "min", "Gini"))
    if g.min_qini is not None:
        out.append(_bound("min_qini", m.get("qini"), g.min_qini, "min", "Qini coefficient"))
    for metric in g.beat_baseline:
        out.append(_beats_baseline(metric, m.get(metric), m.get(f"baseline_{metric}")))

    out.append(_compare(g, m.get(g.primary_metric), champion_metric_on_same_frame))
    return out


def _beats_baseline(metric: str, challenger: float | None, baseline: float | None) -> GateResult:
    """The challenger's hold-out error below its baseline's on the same rows (CLV: the
    classical BG/NBD + Gamma-Gamma model for CDNOW, the past margin rate for the bank)."""
    gate = f"beats_baseline_{metric}"
    if challenger is None or baseline is None or math.isnan(challenger) or math.isnan(baseline):
        return GateResult(gate, False, challenger, baseline,
                          f"{gate}: {metric} of the model {_fmt(challenger)} or of the baseline {_fmt(baseline)} "
                          "is not recorded")
    passed = challenger < baseline
    return GateResult(gate, bool(passed), float(challenger), float(baseline),
                      f"{gate}: {metric} {_fmt(float(challenger))} {'<' if passed else '>='} baseline "
                      f"{_fmt(float(baseline))}")


def _compare(g: FamilyGates, challenger: float | None, champion: float | None) -> GateResult:
    metric = g.primary_metric
    if champion is None:
        return GateResult(COMPARISON_GATE, True, challenger, None,
                          f"{COMPARISON_GATE}: no current champion to compare with")
    threshold = champion + g.margin if g.direction == "minimize" else champion - g.margin
    sign = "+" if g.direction == "minimize" else "-"
    if challenger is None or math.isnan(challenger) or math.isnan(champion):
        return GateResult(COMPARISON_GATE, False, challenger, threshold,
                          f"{COMPARISON_GATE}: {metric} of challenger {_fmt(challenger)} or champion "
                          f"{_fmt(champion)} is missing or NaN")
    passed = challenger <= threshold if g.direction == "minimize" else challenger >= threshold
    verdict = "within" if passed else "worse than"
    return GateResult(COMPARISON_GATE, bool(passed), float(challenger), float(threshold),
                      f"{COMPARISON_GATE}: {metric} {_fmt(float(challenger))} {verdict} champion "
                      f"{_fmt(float(champion))} {sign} margin {_fmt(g.margin)} = {_fmt(float(threshold))} "
                      f"({g.direction}, same hold-out frame)")
