"""Uplift evaluation as Evidently metrics: Qini and uplift curves, Qini coefficient, AUUC, the
observed uplift in the top k %, and (where the simulator knows it) recovery of the true uplift.

The metrics are Evidently 0.7 custom metrics (`SingleValueMetric` + `SingleValueCalculation`)
over a frame of randomised rows with the predicted uplift, the treatment (0/1) and the outcome,
so uplift lives in the same snapshots, HTML reports and dashboards as drift. The figures are
computed by the functions the training runs use (`nba.training.metrics.qini_coefficient`,
`auuc`, `nba.training.uplift.uplift_at_top`), so a champion's evaluation here and its training
run's `holdout_*` metrics agree on the same rows.

Data (`evaluate_uplift`): each `nba-uplift-*` champion scored on its run's hold-out part
(`evaluation/holdout.parquet`: randomised rows no choice was made on): for
`nba-uplift-hillstrom-<action>` the Hillstrom e-mail arm against the No E-Mail hold-out; for
`nba-uplift-<action>` the simulator's exploration decisions (contacted or not at random),
whose `true_uplift` column (= true_p_treated - true_p_control) the prediction must recover;
or a randomised frame of the user's (`--current FILE`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from evidently.core.datasets import Dataset
from evidently.core.metric_types import SingleValue, SingleValueCalculation, SingleValueMetric

from nba.config import gates_path, load_gates
from nba.errors import ConfigError, NbaError, SchemaError
from nba.evaluation import dashboards
from nba.evaluation.champions import HOLDOUT_ARTIFACT, champion_names, evaluate_each, load_champion
from nba.evaluation.reporting import _naive_utc, publish_snapshot
from nba.settings import Settings
from nba.training.metrics import auuc, qini_coefficient, qini_curve, uplift_curve

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

UPLIFT = "uplift"
TREATED = "treated"
LABEL = "label"
TRUTH = "true_uplift"


class UpliftEvaluationError(NbaError):
    """Uplift cannot be evaluated on the data given (columns, groups, rows)."""


# --- Evidently metrics ---------------------------------------------------------------------


class QiniCoefficient(SingleValueMetric):
    """Area between the Qini curve and random targeting, per customer (0 = random)."""

    model: str = ""
    data: str = ""
    uplift_column: str = UPLIFT
    treatment_column: str = TREATED
    target_column: str = LABEL


class AUUC(SingleValueMetric):
    """Area between the uplift (cumulative gain) curve and random targeting, per customer."""

    model: str = ""
    data: str = ""
    uplift_column: str = UPLIFT
    treatment_column: str = TREATED
    target_column: str = LABEL


class UpliftAtTop(SingleValueMetric):
    """Observed uplift (treated rate - control rate) among the top `share` by predicted uplift."""

    model: str = ""
    data: str = ""
    share: float = 0.1
    uplift_column: str = UPLIFT
    treatment_column: str = TREATED
    target_column: str = LABEL


class UpliftTruthCorrelation(SingleValueMetric):
    """Pearson correlation of the predicted with the true uplift (the simulator knows it)."""

    model: str = ""
    data: str = ""
    uplift_column: str = UPLIFT
    truth_column: str = TRUTH


class UpliftTruthMAE(SingleValueMetric):
    """Mean absolute error of the predicted against the true uplift."""

    model: str = ""
    data: str = ""
    uplift_column: str = UPLIFT
    truth_column: str = TRUTH


def _arrays(data: Dataset, *columns: str) -> list[np.ndarray]:
    frame = data.as_dataframe()
    return [frame[c].to_numpy(dtype=float) for c in columns]


def _curve_widget(title: str, x: np.ndarray, y: np.ndarray, ylabel: str) -> list[Any]:
    import plotly.graph_objects as go
    from evidently.widgets import GraphData, plotly_graph

    step = max(1, len(x) // 400)  # a few hundred points draw the same curve
    xs, ys = x[::step], y[::step]
    if xs[-1] != x[-1]:
        xs, ys = np.append(xs, x[-1]), np.append(ys, y[-1])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="model"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, float(y[-1])], mode="lines", name="random targeting",
                             line={"dash": "dash", "color": "grey"}))
    fig.update_layout(xaxis_title="share of customers targeted (by predicted uplift)", yaxis_title=ylabel)
    return [plotly_graph(graph_data=GraphData.figure(title, fig))]


class QiniCoefficientCalculation(SingleValueCalculation[QiniCoefficient]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> SingleValue:
        m = self.metric
        u, y, t = _arrays(current_data, m.uplift_column, m.target_column, m.treatment_column)
        value = qini_coefficient(u, y, t)
        result = self.result(value)
        x, q = qini_curve(u, y, t)
        result.widget = _curve_widget(f"{self.display_name()}: {value:.5f}", x, q, "incremental responders (Qini)")
        return result

    def display_name(self) -> str:
        return f"Qini coefficient, {self.metric.model} ({self.metric.data})"


class AUUCCalculation(SingleValueCalculation[AUUC]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> SingleValue:
        m = self.metric
        u, y, t = _arrays(current_data, m.uplift_column, m.target_column, m.treatment_column)
        value = auuc(u, y, t)
        result = self.result(value)
        x, g = uplift_curve(u, y, t)
        result.widget = _curve_widget(f"{self.display_name()}: {value:.5f}", x, g,
                                      "incremental responders if the top x were treated (uplift curve)")
        return result

    def display_name(self) -> str:
        return f"AUUC, {self.metric.model} ({self.metric.data})"


class UpliftAtTopCalculation(SingleValueCalculation[UpliftAtTop]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> SingleValue:
        from nba.training.uplift import uplift_at_top

        m = self.metric
        u, y, t = _arrays(current_data, m.uplift_column, m.target_column, m.treatment_column)
        return self.result(_finite(uplift_at_top(u, y, t, m.share)))

    def display_name(self) -> str:
        return f"Observed uplift in the top {self.metric.share:.0%}, {self.metric.model}"


class UpliftTruthCorrelationCalculation(SingleValueCalculation[UpliftTruthCorrelation]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> SingleValue:
        u, truth = _arrays(current_data, self.metric.uplift_column, self.metric.truth_column)
        ok = len(u) > 1 and np.std(u) > 0 and np.std(truth) > 0
        return self.result(float(np.corrcoef(u, truth)[0, 1]) if ok else 0.0)

    def display_name(self) -> str:
        return f"Correlation with the true uplift, {self.metric.model}"


class UpliftTruthMAECalculation(SingleValueCalculation[UpliftTruthMAE]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> SingleValue:
        u, truth = _arrays(current_data, self.metric.uplift_column, self.metric.truth_column)
        return self.result(float(np.mean(np.abs(u - truth))))

    def display_name(self) -> str:
        return f"Mean absolute error vs the true uplift, {self.metric.model}"


def _finite(x: float) -> float:
    """A figure that cannot be computed (no treated or control row in the top k) is stored as 0
    with the table saying n/a: a snapshot value must be a number."""
    return float(x) if math.isfinite(x) else 0.0


# --- the evaluation --------------------------------------------------------------------------


@dataclass(frozen=True)
class UpliftResult:
    model: str
    data: str
    rows: int
    treated_rows: int
    control_rows: int
    positives: int
    observed_uplift: float
    mean_predicted_uplift: float
    metrics: dict[str, float]
    champion_version: str | None = None
    html: str | None = None
    snapshot_id: str | None = None
    mlflow_run_id: str | None = None

    def summary(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        m = self.metrics
        version = f" v{self.champion_version}" if self.champion_version else ""
        tops = ", ".join(f"top {k.removeprefix('uplift_top')} % {v:+.4f}" for k, v in m.items()
                         if k.startswith("uplift_top"))
        out = [f"{self.model}{version} on {self.data}: {self.rows:,} rows ({self.treated_rows:,} treated, "
               f"{self.control_rows:,} control, {self.positives:,} positive outcomes)",
               f"  Qini {m['qini']:.5f}, AUUC {m['auuc']:.5f}; observed uplift {self.observed_uplift:+.4f} overall, "
               f"{tops}"]
        if "truth_corr" in m:
            out.append(f"  true uplift recovered: correlation {m['truth_corr']:.3f}, MAE {m['truth_mae']:.4f} "
                       f"(mean predicted {self.mean_predicted_uplift:+.4f})")
        return out


def check_frame(frame: pd.DataFrame, source: str, *, min_rows: int = 1) -> None:
    """Randomised rows with a 0/1 treatment, a numeric outcome, both groups and enough rows."""
    missing = [c for c in (UPLIFT, TREATED, LABEL) if c not in frame.columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {missing}; an uplift evaluation needs '{TREATED}' (0/1), "
                          f"'{LABEL}' (the outcome) and the model's inputs")
    t = frame[TREATED]
    bad = sorted(set(pd.unique(t.dropna())) - {0, 1})
    if bad or t.isna().any():
        raise SchemaError(f"{source}: column '{TREATED}' holds {bad[:5] or ['missing values']}; expected 0 or 1")
    if not pd.api.types.is_numeric_dtype(frame[LABEL]) or frame[LABEL].isna().any():
        raise SchemaError(f"{source}: column '{LABEL}' must be a number on every row (the outcome)")
    for group, n in (("treated", int((t == 1).sum())), ("control", int((t == 0).sum()))):
        if n == 0:
            raise UpliftEvaluationError(f"{source}: no {group} row; uplift needs randomised treated and control rows")
    if len(frame) < min_rows:
        raise UpliftEvaluationError(f"{source}: {len(frame):,} rows; uplift evaluation needs at least {min_rows:,} "
                                    "(monitoring.uplift.min_rows in evaluation/gates.yaml)")


def uplift_report(frame: pd.DataFrame, *, model: str, data: str, top_shares: Sequence[float] = (0.1,),
                  source: str = "", family: str = "uplift", timestamp: datetime | None = None,
                  min_rows: int = 1) -> tuple[UpliftResult, Snapshot]:
    """The Evidently report of one model's uplift on randomised rows (`uplift`, `treated`,
    `label`, optionally `true_uplift`) and its figures."""
    from evidently import DataDefinition, Report

    from nba.evaluation.evidently_metrics import NbaTable

    check_frame(frame, source or data, min_rows=min_rows)
    has_truth = TRUTH in frame.columns and frame[TRUTH].notna().all()
    cols = [UPLIFT, TREATED, LABEL, *([TRUTH] if has_truth else [])]
    cur = frame[cols].astype("float64").reset_index(drop=True)
    label = {"model": model, "data": data}
    items: list[Any] = [QiniCoefficient(**label), AUUC(**label),
                        *[UpliftAtTop(**label, share=float(s)) for s in top_shares]]
    if has_truth:
        items += [UpliftTruthCorrelation(**label), UpliftTruthMAE(**label)]
    t = cur[TREATED].to_numpy() == 1
    y = cur[LABEL].to_numpy()
    observed = float(y[t].mean() - y[~t].mean())
    table = pd.DataFrame({
        "figure": ["rows", "treated rows", "control rows", "positive outcomes", "observed uplift (treated - control)",
                   "mean predicted uplift", *(["mean true uplift"] if has_truth else [])],
        "value": [len(cur), int(t.sum()), int((~t).sum()), int((y > 0).sum()), round(observed, 5),
                  round(float(cur[UPLIFT].mean()), 5), *([round(float(cur[TRUTH].mean()), 5)] if has_truth else [])],
    })
    table["value"] = table["value"].astype(str)
    items.insert(0, NbaTable(key="data", title=f"{model} on {data}"))
    report = Report(items, tags=[family, model, "uplift"],
                    metadata={"model": model, "data": data, "evaluation": "uplift", "source": source or data})
    definition = DataDefinition(numerical_columns=cols)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        snapshot = report.run(Dataset.from_pandas(cur, definition), None,
                              additional_data={"data": Dataset.from_pandas(table)},
                              timestamp=_naive_utc(timestamp), name=f"uplift {model}")
    values = _values(snapshot)
    metrics = {"qini": values["QiniCoefficient"], "auuc": values["AUUC"]}
    for s in top_shares:
        metrics[f"uplift_top{round(s * 100)}"] = values[f"UpliftAtTop:{float(s)}"]
    if has_truth:
        metrics["truth_corr"] = values["UpliftTruthCorrelation"]
        metrics["truth_mae"] = values["UpliftTruthMAE"]
    result = UpliftResult(model=model, data=data, rows=len(cur), treated_rows=int(t.sum()),
                          control_rows=int((~t).sum()), positives=int((y > 0).sum()), observed_uplift=observed,
                          mean_predicted_uplift=float(cur[UPLIFT].mean()), metrics=metrics)
    return result, snapshot


def _values(snapshot: Snapshot) -> dict[str, float]:
    """Metric type (with `:share` for UpliftAtTop) -> value, read back from the snapshot."""
    out = {}
    for result in snapshot.metric_results.values():
        loc = result.metric_value_location
        if loc is None:
            continue
        kind = str(loc.metric.params.get("type", "")).rsplit(":", 1)[-1]
        if kind == "UpliftAtTop":
            kind += f":{float(loc.metric.params['share'])}"
        out[kind] = float(result.value)
    return out


def _data_label(tags: dict[str, str], name: str) -> str:
    source = tags.get("nba.source", "")
    if source == "hillstrom" or "-hillstrom-" in name:
        return "Hillstrom test part (e-mail arm vs No E-Mail)"
    if source == "sim":
        return "simulator exploration decisions, test part"
    return "the run's hold-out part"


def uplift_limits(settings: Settings):

    config = load_gates(gates_path(settings.home))
    if config.monitoring is None:
        raise ConfigError(f"{gates_path(settings.home)}: no 'monitoring' section; uplift needs monitoring.uplift "
                          "(top_shares, min_rows)")
    return config.monitoring.uplift


def evaluate_model(settings: Settings, name: str, *, current: pd.DataFrame | None = None, current_source: str = "",
                   publish: bool = True, timestamp: datetime | None = None) -> UpliftResult:
    """One uplift champion on its run's hold-out part (or on `current`), published to the
    `uplift` project, the HTML logged to the champion's run."""
    limits = uplift_limits(settings)
    champion = load_champion(settings, name, artifacts=(HOLDOUT_ARTIFACT,))
    if champion.family != "uplift":
        raise UpliftEvaluationError(f"model '{name}' is a {champion.family} model; uplift evaluation takes "
                                    "nba-uplift-* models")
    frame = champion.frame if current is None else current
    source = champion.source if current is None else current_source
    missing = [c for c in champion.inputs if c not in frame.columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {missing[:10]}, input(s) of {name}")
    data = _data_label(champion.tags, name) if current is None else f"{Path(current_source).name}"
    check_frame(frame.assign(**{UPLIFT: 0.0}), source, min_rows=limits.min_rows)
    scored = frame.assign(**{UPLIFT: champion.predict(frame)})
    result, snapshot = uplift_report(scored, model=name, data=data, top_shares=limits.top_shares, source=source,
                                     timestamp=timestamp, min_rows=limits.min_rows)
    result = replace(result, champion_version=champion.version)
    if not publish:
        return result

    published = publish_snapshot(settings, project="uplift", snapshot=snapshot, panels=dashboards.uplift_panels(),
                                 run_id=champion.run_id)
    result = replace(result, html=str(published.html), snapshot_id=published.snapshot_id,
                     mlflow_run_id=published.mlflow_run_id)
    from nba.evaluation.drift import write_summary

    write_summary(result, Path(published.html).with_suffix(".json"))
    return result


@dataclass(frozen=True)
class UpliftRun:
    results: tuple[UpliftResult, ...]
    skipped: tuple[tuple[str, str], ...]


def evaluate_uplift(settings: Settings, models: Sequence[str] | None = None, *, current: Path | None = None,
                    publish: bool = True, progress: Callable[[str], None] | None = None) -> UpliftRun:
    """Every uplift champion (or the named ones) on its randomised hold-out part, or the named
    model(s) on a randomised frame `current`."""
    from nba.evaluation.drift import read_frame

    named = list(models or [])
    if current is not None and not named:
        raise UpliftEvaluationError(f"--current {current}: name the model it evaluates with --model")
    names = named or champion_names(settings, ["uplift"])
    if not names:
        raise UpliftEvaluationError("no nba-uplift-* model has a @champion; train and promote one first "
                                    "(nba train uplift; nba promote NAME)")
    frame = read_frame(current) if current is not None else None
    results, skipped = evaluate_each(
        names, bool(named), lambda name: evaluate_model(settings, name, current=frame, current_source=str(current or ""),
                                                        publish=publish), progress)
    if not results:
        raise UpliftEvaluationError("no uplift champion could be evaluated: "
                                    + "; ".join(f"{n}: {why}" for n, why in skipped))
    return UpliftRun(tuple(results), tuple(skipped))
