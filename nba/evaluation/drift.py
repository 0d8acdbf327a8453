"""Drift: served features and scores against the training frame of each champion model.

Reference: the champion run's `evaluation/reference.parquet` (a seeded sample of its training
frame, `nba.training.classifier.log_reference`); runs trained before it was logged fall back
to their `evaluation/holdout.parquet`. The champion scores the reference, so the prediction
has a reference distribution too.

Current: the decision log (`nba.stores.decisions.read_log`): the features each decision was
made on, within a time window, and the score served for the model's action (the candidate's
propensity for `nba-propensity-<action>`, its uplift for `nba-uplift-<action>`; other models
are scored on the served features); or a batch frame (`--current FILE`, Parquet or CSV) with
the model's inputs and optionally a `prediction` column.

The comparison is one Evidently report: `DataDriftPreset` over the model's input features
with the method and threshold of `evaluation/gates.yaml` (`monitoring.drift`) per column type
(a numeric feature with few distinct values counts as categorical), `ValueDrift` of the
prediction, and two metrics of ours that label the verdict with the model so the dashboard
plots one line per model: `FeatureDriftShare` and `PredictionDrift`. Both frames are sampled
to `sample_rows` rows (seeded, uniform, without replacement); the report says so.

The check fails (`DriftResult.exceeded`, exit code `EXIT_DRIFT` = 3 at the CLI) when more than
`max_drift_share` of the features drift or the prediction drifts.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from evidently.core.datasets import Dataset
from evidently.core.metric_types import SingleValue, SingleValueCalculation, SingleValueMetric, TestStatus

from nba.config import DriftLimits, DriftTest, gates_path, load_gates
from nba.errors import ConfigError, NbaError, SchemaError
from nba.evaluation import dashboards
from nba.evaluation.champions import Champion, champion_names, evaluate_each, load_champion
from nba.evaluation.reporting import _naive_utc, publish_snapshot
from nba.io import read_table
from nba.settings import Settings

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

EXIT_DRIFT = 3  # the CLI's exit code when a drift limit is exceeded (2 stays "bad input")
PREDICTION = "prediction"
DEFAULT_DAYS = 30


class DriftError(NbaError):
    """Drift cannot be evaluated as asked (no champion, no served data, too few rows)."""


# --- Evidently metrics of ours: the verdict, labelled by model ------------------------------


class FeatureDriftShare(SingleValueMetric):
    """Share of `columns` whose `ValueDrift` (method and threshold per column) detects drift."""

    model: str
    columns: list[str]
    methods: dict[str, str]
    thresholds: dict[str, float]


class FeatureDriftShareCalculation(SingleValueCalculation[FeatureDriftShare]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> SingleValue:
        drifted = [_drifted(context, c, self.metric.methods[c], self.metric.thresholds[c])
                   for c in self.metric.columns]
        return self.result(float(np.mean(drifted)) if drifted else 0.0)

    def display_name(self) -> str:
        return f"Share of drifted features ({self.metric.model})"


class PredictionDrift(SingleValueMetric):
    """Drift score of the model's output column (the `ValueDrift` of it, labelled by model)."""

    model: str
    column: str
    method: str
    threshold: float


class PredictionDriftCalculation(SingleValueCalculation[PredictionDrift]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> SingleValue:
        return self.result(float(_value_drift(context, self.metric.column, self.metric.method,
                                              self.metric.threshold).value))

    def display_name(self) -> str:
        return f"Prediction drift score ({self.metric.model})"


def _value_drift(context: Any, column: str, method: str, threshold: float) -> SingleValue:
    """Evidently's ValueDrift of a column; the same parameters as the preset's, so the
    context returns the result it already computed."""
    from evidently.metrics import ValueDrift

    return context.calculate_metric(ValueDrift(column=column, method=method, threshold=threshold).to_calculation())


def _drifted(context: Any, column: str, method: str, threshold: float) -> bool:
    result = _value_drift(context, column, method, threshold)
    return any(t.status == TestStatus.FAIL for t in result.tests)


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numerical | categorical
    method: str
    threshold: float
    score: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    """One model's drift check: every feature's verdict, the prediction's, and the sampling."""

    model: str
    family: str
    reference_source: str
    current_source: str
    reference_rows: int
    current_rows: int
    compared_reference_rows: int
    compared_current_rows: int
    sampling: str
    features: tuple[FeatureDrift, ...]
    prediction: FeatureDrift | None
    max_drift_share: float
    skipped_features: tuple[str, ...] = ()
    ignored_features: tuple[str, ...] = ()
    champion_version: str | None = None
    html: str | None = None
    snapshot_id: str | None = None
    mlflow_run_id: str | None = None
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def drifted_features(self) -> list[FeatureDrift]:
        return sorted((f for f in self.features if f.drifted), key=lambda f: -abs(f.score))

    @property
    def drift_share(self) -> float:
        return len(self.drifted_features) / len(self.features) if self.features else 0.0

    @property
    def prediction_drifted(self) -> bool:
        return bool(self.prediction and self.prediction.drifted)

    @property
    def exceeded(self) -> bool:
        """More than the allowed share of features drifted, or the prediction drifted."""
        return self.drift_share > self.max_drift_share or self.prediction_drifted

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(drift_share=self.drift_share, exceeded=self.exceeded,
                   drifted=[f.feature for f in self.drifted_features], prediction_drifted=self.prediction_drifted)
        return out

    def lines(self) -> list[str]:
        """A human summary: the verdict, then each drifted feature and the prediction."""
        verdict = "DRIFT" if self.exceeded else "ok"
        version = f" v{self.champion_version}" if self.champion_version else ""
        head = (f"{self.model}{version}: {verdict}: {len(self.drifted_features)} of {len(self.features)} features "
                f"drifted ({self.drift_share:.0%}, limit {self.max_drift_share:.0%})")
        if self.prediction is not None:
            head += (f"; prediction {self.prediction.method} {self.prediction.score:.3g} "
                     f"({'drifted' if self.prediction.drifted else 'no drift'}, threshold {self.prediction.threshold:g})")
        out = [head, f"  reference: {self.reference_source}; current: {self.current_source}",
               f"  compared {self.compared_reference_rows:,} reference and {self.compared_current_rows:,} current "
               f"rows ({self.sampling})"]
        out += [f"  drifted: {f.feature} ({f.kind}) {f.method} {f.score:.3g} (threshold {f.threshold:g})"
                for f in self.drifted_features]
        if self.skipped_features:
            out.append(f"  not compared (no values in one frame): {', '.join(self.skipped_features)}")
        if self.ignored_features:
            out.append(f"  not compared (monitoring.drift.ignore): {', '.join(self.ignored_features)}")
        return out


# --- the comparison --------------------------------------------------------------------------


def drift_limits(settings: Settings) -> DriftLimits:
    config = load_gates(gates_path(settings.home))
    if config.monitoring is None:
        raise ConfigError(f"{gates_path(settings.home)}: no 'monitoring' section; drift needs monitoring.drift "
                          "(methods, thresholds, max_drift_share)")
    return config.monitoring.drift


def column_kinds(reference: pd.DataFrame, features: Sequence[str], limits: DriftLimits) -> dict[str, str]:
    """numerical or categorical per feature: strings, booleans and numbers with at most
    `categorical_max_values` distinct values in the reference are categorical."""
    kinds = {}
    for col in features:
        s = reference[col]
        numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        kinds[col] = "numerical" if numeric and s.nunique(dropna=True) > limits.categorical_max_values \
            else "categorical"
    return kinds


def test_for(feature: str, kind: str, limits: DriftLimits) -> DriftTest:
    return limits.features.get(feature) or (limits.numerical if kind == "numerical" else limits.categorical)


def sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """At most `rows` rows: a seeded uniform random sample without replacement."""
    if len(frame) <= rows:
        return frame.reset_index(drop=True)
    return frame.sample(n=rows, random_state=seed).reset_index(drop=True)


def _prepared(frame: pd.DataFrame, kinds: dict[str, str], prediction: str | None,
              coded: set[str]) -> pd.DataFrame:
    """Only the compared columns: numbers as float; categories as pandas categoricals (value
    counts of a category column are ~10x faster than of strings), of the number for a coded
    category (`coded`: numeric in the reference, so 1 and 1.0 are one category) and of the
    text otherwise."""
    cols = list(kinds) + ([prediction] if prediction else [])
    out = pd.DataFrame(index=frame.index)
    for col in cols:
        s = frame[col]
        if col == prediction or kinds.get(col) == "numerical":
            out[col] = pd.to_numeric(s, errors="coerce").astype("float64")
        elif col in coded:
            out[col] = pd.to_numeric(s, errors="coerce").astype("float64").astype("category")
        else:
            out[col] = s.astype(str).where(s.notna(), None).astype("category")
    return out


def compare(reference: pd.DataFrame, current: pd.DataFrame, features: Sequence[str], limits: DriftLimits, *,
            model: str, family: str = "", prediction: str | None = PREDICTION, seed: int = 0,
            reference_source: str = "reference frame", current_source: str = "current frame",
            timestamp: datetime | None = None) -> tuple[DriftResult, Snapshot]:
    """Run the Evidently drift report of `features` (and `prediction`, if given) and read its
    verdict. Raises `SchemaError` naming the frame and the column when one is missing."""
    from evidently import DataDefinition, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    from nba.evaluation.evidently_metrics import NbaTable

    wanted = [*features, *([prediction] if prediction else [])]
    for frame, source in ((reference, reference_source), (current, current_source)):
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise SchemaError(f"{source}: missing column(s) {missing[:10]} of {model}; expected the model's inputs "
                              f"{list(features)[:10]}{'...' if len(features) > 10 else ''}"
                              + (f" and '{prediction}'" if prediction else ""))
    for frame, source in ((reference, reference_source), (current, current_source)):
        if len(frame) < limits.min_rows:
            raise DriftError(f"{model}: {source} has {len(frame):,} rows; drift needs at least {limits.min_rows:,} "
                             "(monitoring.drift.min_rows in evaluation/gates.yaml)")
    # Everything below works on the samples (typing a million-row column alone costs seconds).
    ref_sample = sample(reference[wanted], limits.sample_rows, seed)
    cur_sample = sample(current[wanted], limits.sample_rows, seed + 1)
    skipped = tuple(c for c in features if ref_sample[c].isna().all() or cur_sample[c].isna().all())
    compared = [c for c in features if c not in skipped]
    if not compared:
        raise DriftError(f"{model}: no feature has values in both frames ({reference_source}; {current_source})")
    kinds = column_kinds(ref_sample, compared, limits)
    tests = {c: test_for(c, kinds[c], limits) for c in compared}

    coded = {c for c in compared if kinds[c] == "categorical" and pd.api.types.is_numeric_dtype(ref_sample[c])}
    ref = _prepared(ref_sample, kinds, prediction, coded)
    cur = _prepared(cur_sample, kinds, prediction, coded)
    sampled = len(ref) < len(reference) or len(cur) < len(current)
    sampling = (f"seeded uniform random sample without replacement of at most {limits.sample_rows:,} rows per "
                f"frame (seed {seed})" if sampled else f"all rows (at most {limits.sample_rows:,} per frame)")

    numerical = [c for c in compared if kinds[c] == "numerical"] + ([prediction] if prediction else [])
    categorical = [c for c in compared if kinds[c] == "categorical"]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    methods = {c: t.method for c, t in tests.items()}
    thresholds = {c: float(t.threshold) for c, t in tests.items()}
    items: list[Any] = [
        DataDriftPreset(columns=compared, per_column_method=methods, per_column_threshold=thresholds,
                        drift_share=limits.max_drift_share),
        FeatureDriftShare(model=model, columns=compared, methods=methods, thresholds=thresholds),
    ]
    if prediction:
        p = limits.prediction
        items += [ValueDrift(column=prediction, method=p.method, threshold=float(p.threshold)),
                  PredictionDrift(model=model, column=prediction, method=p.method, threshold=float(p.threshold))]
    sampling_table = pd.DataFrame({
        "frame": ["reference", "current"],
        "source": [reference_source, current_source],
        "rows": [len(reference), len(current)],
        "compared rows": [len(ref), len(cur)],
        "sampling": [sampling, sampling],
    })
    items.append(NbaTable(key="sampling", title="Data compared (sampling)"))
    report = Report(items, include_tests=True, tags=[t for t in (family, model, "drift") if t],
                    metadata={"model": model, "family": family, "evaluation": "drift", "sampling": sampling,
                              "reference": reference_source, "current": current_source})

    with warnings.catch_warnings():  # pandas' downcasting notice from inside Evidently, once per column
        warnings.simplefilter("ignore", FutureWarning)
        snapshot = report.run(Dataset.from_pandas(cur, definition), Dataset.from_pandas(ref, definition),
                              additional_data={"sampling": Dataset.from_pandas(sampling_table)},
                              timestamp=_naive_utc(timestamp), name=f"drift {model}")

    verdicts = _verdicts(snapshot)
    feats = tuple(FeatureDrift(c, kinds[c], methods[c], thresholds[c], *verdicts[c]) for c in compared)
    pred = None
    if prediction:
        score, drifted = verdicts[prediction]
        pred = FeatureDrift(prediction, "numerical", limits.prediction.method, float(limits.prediction.threshold),
                            score, drifted)
    result = DriftResult(model=model, family=family, reference_source=reference_source, current_source=current_source,
                         reference_rows=len(reference), current_rows=len(current), compared_reference_rows=len(ref),
                         compared_current_rows=len(cur), sampling=sampling, features=feats, prediction=pred,
                         max_drift_share=limits.max_drift_share, skipped_features=skipped)
    return result, snapshot


def _verdicts(snapshot: Snapshot) -> dict[str, tuple[float, bool]]:
    """column -> (drift score, drifted) from the snapshot's ValueDrift results."""
    out = {}
    for result in snapshot.metric_results.values():
        loc = result.metric_value_location
        if loc is None or not str(loc.metric.params.get("type", "")).endswith(":ValueDrift"):
            continue
        column = loc.metric.params["column"]
        drifted = any(t.status == TestStatus.FAIL for t in result.tests)
        out[column] = (float(result.value), bool(drifted))
    return out


# --- the current side ----------------------------------------------------------------------


def read_frame(path: Path) -> pd.DataFrame:
    """A batch frame from Parquet or CSV; errors name the file."""
    return read_table(path, "current frame")


@dataclass
class ServedData:
    """The decision log within a window: one row per decision with its served features, and
    the candidates (per-action scores)."""

    features: pd.DataFrame
    candidates: pd.DataFrame
    source: str


def served_data(log_dir: Path, since: datetime | None = None, days: int | None = DEFAULT_DAYS) -> ServedData:
    """Decisions of the log from `since` (default: `days` before its newest decision)."""
    from nba.stores.decisions import read_log

    log = read_log(log_dir, with_features=True, decision_columns=["decision_id", "decided_at"])
    decisions = log.decisions
    if decisions.empty:
        raise DriftError(f"decision log {log_dir} holds no decision; nothing was served to compare with")
    newest = decisions["decided_at"].max()
    start = pd.Timestamp(since) if since is not None else (newest - pd.Timedelta(days=days) if days else None)
    if start is not None and start.tzinfo is None:
        start = start.tz_localize("UTC")
    if start is not None:
        decisions = decisions[decisions["decided_at"] >= start]
    if decisions.empty:
        raise DriftError(f"decision log {log_dir}: no decision since {start} (the newest is {newest})")
    ids = set(decisions["decision_id"].astype(str))
    assert log.features is not None
    features = log.features[log.features["decision_id"].astype(str).isin(ids)]
    candidates = log.candidates[log.candidates["decision_id"].astype(str).isin(ids)]
    window = f"{decisions['decided_at'].min():%Y-%m-%d %H:%M} to {decisions['decided_at'].max():%Y-%m-%d %H:%M}"
    return ServedData(features.reset_index(drop=True), candidates.reset_index(drop=True),
                      f"decision log {log_dir} ({len(decisions):,} decisions, {window})")


def current_for(champion: Champion, served: ServedData) -> tuple[pd.DataFrame, str]:
    """The served rows relevant to a model, with its served (or recomputed) prediction."""
    action = champion.action
    missing = [c for c in champion.inputs if c not in served.features.columns]
    if missing:
        raise DriftError(f"{champion.name}: the decision log's features lack its input(s) {missing[:10]}; "
                         "no served data for this model")
    frame = served.features
    source = served.source
    if action is not None:
        cands = served.candidates[served.candidates["action_id"].astype(str) == action]
        if cands.empty:
            raise DriftError(f"{champion.name}: action '{action}' is not among the candidates of any decision in "
                             f"{served.source}")
        score = "uplift" if champion.family == "uplift" else "propensity"
        cands = cands[["decision_id", score]].rename(columns={score: "_served"})
        frame = frame.merge(cands, on="decision_id", how="inner")
        source += f", {len(frame):,} with '{action}' as a candidate"
        served_scores = frame["_served"].notna()
        if served_scores.all():
            return frame.drop(columns=["_served"]).assign(**{PREDICTION: frame["_served"].to_numpy()}), \
                source + f"; prediction = the served {score}"
    return frame.assign(**{PREDICTION: champion.predict(frame)}), source + f"; prediction = {champion.name} " \
        f"v{champion.version} on the served features"


# --- the command's function --------------------------------------------------------------


def evaluate_model(settings: Settings, name: str, *, current: pd.DataFrame | None = None,
                   current_source: str = "", served: ServedData | None = None, publish: bool = True,
                   limits: DriftLimits | None = None, timestamp: datetime | None = None) -> DriftResult:
    """Drift of one champion: against a batch frame `current`, or the `served` decision log.
    With `publish`, the snapshot goes to the model family's project, the HTML and a JSON
    summary to the reports folder, and the HTML to the champion's MLflow run."""
    limits = limits or drift_limits(settings)
    champion = load_champion(settings, name)
    reference = champion.frame.assign(**{PREDICTION: champion.predict(champion.frame)})
    if current is not None:
        missing = [c for c in champion.inputs if c not in current.columns]
        if missing:
            raise SchemaError(f"{current_source}: missing column(s) {missing[:10]}, input(s) of {name}; "
                              f"expected its inputs {champion.inputs[:10]}{'...' if len(champion.inputs) > 10 else ''}")
        if PREDICTION in current.columns:
            frame, source = current, f"{current_source} (prediction column as given)"
        else:
            frame = current.assign(**{PREDICTION: champion.predict(current)})
            source = f"{current_source} (prediction = {name} v{champion.version})"
    elif served is not None:
        frame, source = current_for(champion, served)
    else:
        raise DriftError(f"{name}: nothing to compare with: give a current frame or a decision log")
    ignored = tuple(c for c in champion.inputs if c in limits.ignore)
    features = [c for c in champion.inputs if c != "action_id" and c not in ignored]
    result, snapshot = compare(reference, frame, features, limits, model=name, family=champion.family,
                               seed=settings.seed, reference_source=champion.source,
                               current_source=source, timestamp=timestamp)
    result = replace(result, champion_version=champion.version, ignored_features=ignored)
    if not publish:
        return result

    published = publish_snapshot(settings, project=champion.family, snapshot=snapshot,
                                 panels=dashboards.drift_panels(name), run_id=champion.run_id)
    result = replace(result, html=str(published.html), snapshot_id=published.snapshot_id,
                     mlflow_run_id=published.mlflow_run_id)
    write_summary(result, Path(published.html).with_suffix(".json"))
    return result


def write_summary(result: Any, path: Path) -> Path:
    """One result's `summary()` (or a list of them) as JSON; a figure that is not finite is null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [r.summary() for r in result] if isinstance(result, Sequence) else result.summary()
    path.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False))
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str | bytes):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, bool | int | float | str):
        return x
    return str(x)


@dataclass(frozen=True)
class DriftRun:
    results: tuple[DriftResult, ...]
    skipped: tuple[tuple[str, str], ...]  # (model, why)

    @property
    def exceeded(self) -> bool:
        return any(r.exceeded for r in self.results)


def evaluate_drift(settings: Settings, models: Sequence[str] | None = None, *, current: Path | None = None,
                   log_dir: Path | None = None, since: datetime | None = None, days: int | None = DEFAULT_DAYS,
                   publish: bool = True, progress: Callable[[str], None] | None = None) -> DriftRun:
    """Drift of the named champions (default: every champion; those without served data are
    skipped with the reason) against a batch frame or the decision log."""
    limits = drift_limits(settings)
    named = list(models or [])
    names = named or champion_names(settings)
    if not names:
        raise DriftError("no registered model has a @champion; train and promote one first (nba quickstart)")
    frame = read_frame(current) if current is not None else None
    served = None
    if frame is None:
        served = served_data(log_dir or settings.decision_log_dir, since, days)
    results, skipped = evaluate_each(
        names, bool(named), lambda name: evaluate_model(settings, name, current=frame, current_source=str(current or ""),
                                                        served=served, publish=publish, limits=limits), progress)
    if not results:
        raise DriftError("no champion could be compared: " + "; ".join(f"{n}: {why}" for n, why in skipped))
    return DriftRun(tuple(results), tuple(skipped))
