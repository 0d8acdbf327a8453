"""Customer lifetime value (CLV): the value a customer brings over a future horizon.

One XGBoost regressor (Tweedie objective: many zeros, a long right tail) per population,
features read through a versioned Feast feature service only, labels from the outcome
tables, evaluated on a time-based hold-out against the simple baseline "past spend rate
times horizon", and registered as @challenger:

* CDNOW (`source="cdnow"`, `nba-clv-cdnow`): the 1997 Q1 cohort, features from
  `cdnow_clv_v1` (RFM of every customer at each month end), labels from
  `<work>/real/cdnow_transactions.parquet`.
* The simulated bank (`source="sim"`, `nba-clv`, the model the decision service reads):
  the bank's margin, features from `options.simulator_feature_service` (`clv_v1`).

CDNOW: calibration and hold-out
-------------------------------
The calibration period runs from the cohort start (the first purchase in the log,
1997-01-01) to `options.calibration_end` (1997-09-30, a month end: the RFM snapshots are
taken at month ends); the hold-out period is the `label.window_days` after it (273 days =
39 weeks, to 1998-06-30). The model learns from the calibration period alone:

* Training rows: every customer who has bought by a month-end cut-off c, for every month
  end c strictly inside the calibration period (1997-01-31 ... 1997-08-31; about 166,000
  rows). Features: the `cdnow_clv_v1` snapshot at c (purchases on or before c). Label: the
  spend in (c, calibration_end] turned into a 39-week equivalent, spend x 39 / h where h is
  the weeks from c to the calibration end, with sample weight h / 39: a rate observed over
  h weeks is worth h weeks of exposure (for a Poisson-like loss, weighting the rate by the
  exposure is the same as fitting the count with a log-exposure offset). No purchase after
  the calibration end touches a training label, and no purchase after c touches a
  training row's features.
* Hold-out rows: every customer of the cohort at the calibration end, features as of that
  day; label: the actual spend in (calibration_end, calibration_end + 273 days]. The model
  predicts it directly (its output is a 39-week value), so the logged model and the logged
  hold-out frame (`evaluation/holdout.parquet`, feature columns + `label`) are all
  `nba promote` needs to re-score a champion on the same rows.
* Baseline: the customer's spend up to the cut-off divided by the weeks since the
  customer's FIRST purchase (at least one week), times 39 weeks.

The design's main approximation: a weekly rate learnt over horizons of 4 to 35 weeks is
carried over 39 weeks, while customers' rates fall with time. Measured on the hold-out
(MAE per customer, cohort total / actual total): this design 33.6 and 0.94; the baseline
71.4 and 2.66; unweighted rates 32.5 and 0.85 (and a lower Gini); a fixed 13-week label
times 3 36.2 and 1.10; predicting zero for everyone 33.0 and 0 (see Metrics).

Simulator
---------
Entities are the monthly snapshots of the active customers (the `profile` table); the
label is the bank's margin (`monthly_value`) in the `options.simulator_horizon_months`
calendar months starting at the snapshot (the snapshot itself is computed from the months
before it). Rows whose horizon runs past the end of the simulation are censored with
`frames.censor` at the longest horizon in days among the rows (conservative: a row is
never kept with an incomplete label). The hold-out is the snapshots of the last
`options.simulator_holdout_days` (default 60: the last two monthly snapshots with a
complete label, about 7,500 rows at 4,000 customers; the yaml's `split.holdout_days` of
273 is CDNOW's 39 weeks: on 12 simulated months it would leave no training row after the
purge below). Training
rows whose label horizon reaches into the hold-out period are purged, so no outcome seen
in the hold-out period trains the model. Baseline: the customer's mean monthly margin over
the months observed before the snapshot, times the horizon. The Tweedie loss needs
non-negative labels: the negative margins (open collections; about 2 % of the rows) are
floored at 0 for the fit only; every metric uses the true value.

Metrics (MLflow, prefixed `holdout_`): MAE and RMSE per customer of the model and the
baseline, the relative MAE improvement over the baseline, Gini and top-decile capture of
both, the predicted and actual totals of the whole hold-out cohort and their ratio, the
customers with a positive hold-out value, and (for scale) the MAE of predicting zero for
everyone. Most CDNOW customers buy nothing in the hold-out (70 %), so the median of a
customer's future spend is usually 0 and MAE, which rewards medians, rewards predicting
zero: the model, which predicts the expected value, has about that MAE (33.6 vs 33.0),
and its gain over zero shows in RMSE (96.6 vs 129.0), ranking and the cohort total.

Tuning (`tuning_problem`) runs on the simulator, the model the decision service uses.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nba import schemas
from nba.errors import ConfigError
from nba.features import store
from nba.features.real import require_published
from nba.settings import Settings
from nba.training import btyd, tracking
from nba.training.classifier import HOLDOUT_ARTIFACT, TrainedModel, log_reference
from nba.training.config import ModelConfig, config_path, load_model_config
from nba.training.frames import DAY, LabelledFrame, _read_sim, censor, sim_data_end, split_by_time
from nba.training.metrics import gini_and_top_decile, importance_plot, save_figure
from nba.training.models import FrameEncoder, ModelDataError, XGBRegressorOnFrame, _xgb_params
from nba.training.problems import REPORT_EVERY, Report, TuningProblem

FAMILY = "clv"
SOURCES = ("cdnow", "sim")
CDNOW_KEY = "cdnow_id"
WEEK = pd.Timedelta(days=7)
DEFAULT_SIM_SERVICE = "clv_v1"
DEFAULT_SIM_HORIZON_MONTHS = 3
DEFAULT_SIM_HOLDOUT_DAYS = 60  # the last two monthly snapshots with a complete label
DEFAULT_SIM_VALIDATION_DAYS = 30  # tuning: the last monthly snapshot of the training part
# XGBoost threads (`options.n_jobs`). One by default: the CDNOW fit (166,000 rows x 13
# columns, depth-3 trees) costs about 3 s of CPU on one thread, and with two threads on a
# busy 2-core machine OpenMP's waits made it 5 to 7 times slower (measured: 4.7-7.9 s wall
# with one thread, 25-34 s with two, same load). Set 2 on a dedicated machine.
DEFAULT_N_JOBS = 1
# Columns the CLV frames carry beside the features (never model inputs).
WEIGHT = "weight"
BASELINE = "baseline"
LABEL_END = "label_end"
SPEND_RATE = "spend_rate_baseline"  # the earlier baseline: past spend rate x horizon (reported beside)
# The classical model's outputs at each row's cut-off (nba.training.btyd), fitted on the
# purchases up to the cut-off only: features of the champion, and its offset (BGNBD_SPEND).
BGNBD_SPEND = "bgnbd_spend"
BGNBD_FEATURES = ("bgnbd_p_alive", "bgnbd_mean_value", BGNBD_SPEND)
# Objectives whose loss is defined only for non-negative labels.
NON_NEGATIVE_OBJECTIVES = ("reg:tweedie", "count:poisson", "reg:gamma")


# --- configuration ---------------------------------------------------------------------


def _cfg_file(cfg: ModelConfig) -> str:
    return f"training/{cfg.model}.yaml"


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise ConfigError(f"clv: source '{source}' is unknown; expected one of {', '.join(SOURCES)}")
    return source


def registered_model(source: str) -> str:
    """`nba-clv` for the bank (what the decision service reads), `nba-clv-cdnow` for CDNOW."""
    return tracking.registered_name(FAMILY) if source == "sim" else tracking.registered_name(FAMILY, source)


def _int_option(cfg: ModelConfig, key: str, default: int) -> int:
    value = cfg.options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"clv ({_cfg_file(cfg)}): key 'options.{key}': expected a positive whole number, "
                          f"got {value!r}")
    return value


def calibration_end(cfg: ModelConfig) -> pd.Timestamp:
    """`options.calibration_end` as a UTC month end (the CDNOW RFM snapshots are monthly)."""
    raw = cfg.options.get("calibration_end")
    key = f"clv ({_cfg_file(cfg)}): key 'options.calibration_end'"
    if raw is None:
        raise ConfigError(f"{key} is missing: CDNOW needs the end of the calibration period (e.g. 1997-09-30)")
    try:
        ts = pd.Timestamp(str(raw))
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {raw!r} is not a date (expected YYYY-MM-DD)") from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if ts != ts.normalize() or not ts.is_month_end:
        raise ConfigError(f"{key}: {raw!r} is not a month end; the cdnow_rfm snapshots are taken at month "
                          "ends (e.g. 1997-09-30)")
    return ts


# --- frames ----------------------------------------------------------------------------


def _value_before(events: pd.DataFrame, key: str, column: str, rows: pd.DataFrame, at: str,
                  inclusive: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `rows`: the sum and the count of `events[column]` of its customer stamped
    before `rows[at]` (at or before it when `inclusive`). `events` holds one row per
    customer and timestamp (aggregate first)."""
    ev = events.sort_values(schemas.EVENT_TS, kind="stable")
    grouped = ev.groupby(key, sort=False)
    ev = ev.assign(_sum=grouped[column].cumsum(), _n=grouped.cumcount() + 1)
    ev = ev[[key, schemas.EVENT_TS, "_sum", "_n"]].rename(columns={schemas.EVENT_TS: "_ts"})
    ev["_ts"] = ev["_ts"].astype("datetime64[ns, UTC]")
    left = rows[[key, at]].reset_index(drop=True).rename(columns={at: "_at"})
    left["_at"] = left["_at"].astype("datetime64[ns, UTC]")
    left["_row"] = np.arange(len(left))
    merged = pd.merge_asof(left.sort_values("_at", kind="stable"), ev.sort_values("_ts", kind="stable"),
                           left_on="_at", right_on="_ts", by=key, direction="backward",
                           allow_exact_matches=inclusive).sort_values("_row")
    return merged["_sum"].fillna(0.0).to_numpy(dtype=float), merged["_n"].fillna(0).to_numpy(dtype=float)


def _service_frame(settings: Settings, service: str, entities: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Feast's point-in-time frame and its feature columns: exactly the columns the service
    added to the entity rows (carried columns, keys and timestamps are never features)."""

    frame = store.training_frame(settings, service, entities)
    carried = set(entities.columns) | {schemas.REQUEST_TS, schemas.EVENT_TS, schemas.CREATED_TS}
    return frame, [c for c in frame.columns if c not in carried]


def _check_features(frame: pd.DataFrame, features: list[str], what: str, service: str) -> None:
    missing = frame[features].isna().all(axis=1)
    if missing.any():
        first = frame.loc[missing].iloc[0]
        raise ModelDataError(
            f"{what}: {int(missing.sum())} entity row(s) got no features from '{service}' (first: "
            f"{first.to_dict()}); run `nba features apply` on the current data")


def cdnow_transactions(settings: Settings) -> pd.DataFrame:
    """The CDNOW purchases (the label table `nba features apply` writes), or an error saying
    how to publish them."""
    tx_path = require_published(settings, "clv", "CDNOW_master.txt.gz", "cdnow")["labels"]
    tx = pd.read_parquet(tx_path, columns=[schemas.ENTITY_KEY, schemas.EVENT_TS, "amount"])
    if tx.empty:
        raise ModelDataError(f"clv (cdnow): {tx_path} has no purchases")
    return tx


def bgnbd_columns(tx: pd.DataFrame, entities: pd.DataFrame, horizon_weeks: float) -> pd.DataFrame:
    """For each entity row (CDNOW_KEY, cut-off EVENT_TS, LABEL_END): BG/NBD + Gamma-Gamma
    fitted on the purchases up to the row's cut-off (one fit per cut-off), the probability
    the customer is still active, the expected mean purchase value, and the expected spend
    over (cut-off, label end] as a `horizon_weeks` equivalent (like the label). The fitted
    parameters of the last cut-off are in `attrs["params"]`."""
    out = pd.DataFrame(index=entities.index, columns=list(BGNBD_FEATURES), dtype=float)
    params: dict[str, float] = {}
    for cut, rows in entities.groupby(schemas.EVENT_TS, sort=True):
        summary = btyd.rfm_summary(tx, cut)
        model = btyd.ClassicalCLV.fit(summary)
        ids = rows[CDNOW_KEY].to_numpy()
        s = summary.reindex(ids)
        if s["frequency"].isna().any():
            raise ModelDataError(f"clv (cdnow): {int(s['frequency'].isna().sum())} customer(s) at cut-off "
                                 f"{pd.Timestamp(cut).date()} have no purchase on or before it")
        window_weeks = ((rows[LABEL_END] - rows[schemas.EVENT_TS]) / WEEK).to_numpy(dtype=float)
        n = model.purchases.expected_purchases(window_weeks, s["frequency"], s["recency"], s["T"])
        value = model.spend.expected_value(s["frequency"], s["monetary"])
        out.loc[rows.index, "bgnbd_p_alive"] = model.purchases.probability_alive(s["frequency"], s["recency"], s["T"])
        out.loc[rows.index, "bgnbd_mean_value"] = value
        out.loc[rows.index, BGNBD_SPEND] = np.asarray(n * value) * horizon_weeks / window_weeks
        params = model.params()
    out.attrs["params"] = params
    return out


def cdnow_frame(settings: Settings, cfg: ModelConfig) -> LabelledFrame:
    """Training rows at the month ends inside the calibration period, hold-out rows at its
    end (see the module docstring). `is_holdout` marks the rows at the calibration end."""
    what = "clv (cdnow)"
    service = cfg.feature_service
    cal_end = calibration_end(cfg)
    window = cfg.label.window_days
    horizon_weeks = window / 7
    tx = cdnow_transactions(settings)
    cohort_start = tx[schemas.EVENT_TS].min().normalize()
    data_end = tx[schemas.EVENT_TS].max()
    holdout_end = cal_end + window * DAY
    if holdout_end > data_end:
        raise ConfigError(
            f"{what} ({_cfg_file(cfg)}): key 'label.window_days' = {window} after options.calibration_end "
            f"{cal_end.date()} ends the hold-out on {holdout_end.date()}, past the end of the CDNOW data "
            f"({data_end.date()}); the calibration_end must be {(data_end - window * DAY).date()} or earlier")
    if cal_end <= cohort_start:
        raise ConfigError(f"{what} ({_cfg_file(cfg)}): key 'options.calibration_end' = {cal_end.date()} is not "
                          f"after the cohort start {cohort_start.date()}")

    first = tx.groupby(schemas.ENTITY_KEY)[schemas.EVENT_TS].min()
    cutoffs = [c for c in pd.date_range(cohort_start, cal_end, freq="ME", tz="UTC") if c < cal_end]
    parts = [pd.DataFrame({CDNOW_KEY: first.index[first <= c].to_numpy(), schemas.EVENT_TS: c,
                           LABEL_END: cal_end}) for c in cutoffs]
    train = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if train.empty:
        raise ModelDataError(
            f"{what}: the training frame is empty: no customer has bought by a month end between the cohort "
            f"start {cohort_start.date()} and options.calibration_end {cal_end.date()} ({_cfg_file(cfg)})")
    holdout = pd.DataFrame({CDNOW_KEY: first.index[first <= cal_end].to_numpy(), schemas.EVENT_TS: cal_end,
                            LABEL_END: holdout_end})
    entities = pd.concat([train, holdout], ignore_index=True)
    entities[schemas.EVENT_TS] = entities[schemas.EVENT_TS].astype("datetime64[ns, UTC]")
    entities[LABEL_END] = entities[LABEL_END].astype("datetime64[ns, UTC]")

    daily = (tx.groupby([schemas.ENTITY_KEY, schemas.EVENT_TS], sort=False)["amount"].sum().reset_index()
             .rename(columns={schemas.ENTITY_KEY: CDNOW_KEY}))
    spent, _ = _value_before(daily, CDNOW_KEY, "amount", entities, schemas.EVENT_TS, inclusive=True)
    spent_by_end, _ = _value_before(daily, CDNOW_KEY, "amount", entities, LABEL_END, inclusive=True)
    future = spent_by_end - spent
    label_weeks = ((entities[LABEL_END] - entities[schemas.EVENT_TS]) / WEEK).to_numpy()
    since_first = ((entities[schemas.EVENT_TS] - entities[CDNOW_KEY].map(first)) / WEEK).to_numpy(dtype=float)
    entities["label"] = future * horizon_weeks / label_weeks
    entities[WEIGHT] = label_weeks / horizon_weeks
    entities[SPEND_RATE] = spent / np.maximum(since_first, 1.0) * horizon_weeks
    classical = bgnbd_columns(tx, entities, horizon_weeks)
    for col in BGNBD_FEATURES:
        entities[col] = classical[col]
    entities[BASELINE] = entities[BGNBD_SPEND]

    frame, features = _service_frame(settings, service, entities)
    features = [*features, *BGNBD_FEATURES]
    _check_features(frame, features, what, service)
    ts = frame[schemas.EVENT_TS]
    is_holdout = (ts == cal_end).to_numpy()
    label_definition = (
        f"training rows (month ends c inside the calibration period): spend in (c, {cal_end.date()}] x "
        f"{horizon_weeks:g} / weeks(c, {cal_end.date()}), weight weeks / {horizon_weeks:g}; hold-out rows: spend "
        f"in ({cal_end.date()}, {holdout_end.date()}] ({window} days)")
    info = {
        "model": "clv-cdnow",
        "source": "cdnow",
        "feature_service": service,
        "feature_service_version": service.rsplit("_", 1)[1],
        "label_definition": label_definition,
        "label_window_days": window,
        "cohort_start": str(cohort_start.date()),
        "calibration_end": str(cal_end.date()),
        "holdout_end": str(holdout_end.date()),
        "data_end": str(data_end.date()),
        "cutoffs": ",".join(str(c.date()) for c in cutoffs),
        "entities_from": str(ts.min()),
        "entities_to": str(ts.max()),
        "holdout_from": str(cal_end),
        "rows": len(frame),
        "train_rows": int((~is_holdout).sum()),
        "holdout_rows": int(is_holdout.sum()),
        "positives": int(frame.loc[~is_holdout, "label"].gt(0).sum()),
        "holdout_positives": int(frame.loc[is_holdout, "label"].gt(0).sum()),
        "features": len(features),
        "baseline": (f"BG/NBD + Gamma-Gamma fitted on the purchases up to each row's cut-off, expected spend "
                     f"over the row's label window as a {horizon_weeks:g}-week equivalent"),
        "bgnbd_params": json.dumps(classical.attrs.get("params", {})),
        "digest": tracking.frame_digest(frame),
    }
    return LabelledFrame(frame=frame, feature_columns=features, is_holdout=is_holdout, info=info)


def sim_frame(settings: Settings, cfg: ModelConfig) -> LabelledFrame:
    """Monthly snapshots of the active customers; label = margin over the next
    `options.simulator_horizon_months` months; time-based hold-out with a purge gap."""
    what = "clv (sim)"
    service = str(cfg.options.get("simulator_feature_service", DEFAULT_SIM_SERVICE))
    months = _int_option(cfg, "simulator_horizon_months", DEFAULT_SIM_HORIZON_MONTHS)
    holdout_days = _int_option(cfg, "simulator_holdout_days", DEFAULT_SIM_HOLDOUT_DAYS)
    data_end = sim_data_end(settings)
    snaps = _read_sim(settings, "profile", [schemas.ENTITY_KEY, schemas.EVENT_TS])
    value = _read_sim(settings, "monthly_value", [schemas.ENTITY_KEY, schemas.EVENT_TS, "margin"])
    if snaps.empty:
        raise ModelDataError(f"{what}: the training frame is empty: the simulator's profile table has no rows")
    snaps = snaps.assign(**{LABEL_END: snaps[schemas.EVENT_TS] + pd.DateOffset(months=months)})
    # Calendar months differ in length: censor at the longest horizon in days (never keeps
    # an incomplete label), then drop any row whose own horizon ends past the data.
    window_days = int(math.ceil(((snaps[LABEL_END] - snaps[schemas.EVENT_TS]) / DAY).max()))
    entities, censored = censor(snaps, window_days, data_end, what)
    entities = entities.loc[entities[LABEL_END] <= data_end].reset_index(drop=True)

    before, n_before = _value_before(value, schemas.ENTITY_KEY, "margin", entities, schemas.EVENT_TS,
                                     inclusive=False)
    by_end, _ = _value_before(value, schemas.ENTITY_KEY, "margin", entities, LABEL_END, inclusive=False)
    entities["label"] = by_end - before
    entities[WEIGHT] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        entities[BASELINE] = np.where(n_before > 0, before / np.maximum(n_before, 1) * months, np.nan)

    frame, features = _service_frame(settings, service, entities)
    _check_features(frame, features, what, service)
    is_holdout = split_by_time(frame, holdout_days, what)
    ts = frame[schemas.EVENT_TS]
    holdout_start = ts[is_holdout].min()
    purged = (~is_holdout) & (frame[LABEL_END] > holdout_start).to_numpy()
    if (~is_holdout & ~purged).sum() == 0:
        raise ModelDataError(
            f"{what}: the training frame is empty: every snapshot before the hold-out (from {holdout_start}) has "
            f"a {months}-month label reaching into it; simulate more months or shorten "
            "options.simulator_horizon_months")
    frame = frame.loc[~purged].reset_index(drop=True)
    is_holdout = is_holdout[~purged]
    ts = frame[schemas.EVENT_TS]
    info = {
        "model": "clv-sim",
        "source": "sim",
        "feature_service": service,
        "feature_service_version": service.rsplit("_", 1)[1],
        "label_definition": f"sum of monthly_value.margin over the {months} calendar months from the snapshot",
        "label_window_days": window_days,
        "horizon_months": months,
        "data_end": str(data_end),
        "censored_rows": censored,
        "purged_rows": int(purged.sum()),
        "holdout_days": holdout_days,
        "entities_from": str(ts.min()),
        "entities_to": str(ts.max()),
        "holdout_from": str(holdout_start),
        "rows": len(frame),
        "train_rows": int((~is_holdout).sum()),
        "holdout_rows": int(is_holdout.sum()),
        "positives": int(frame.loc[~is_holdout, "label"].gt(0).sum()),
        "holdout_positives": int(frame.loc[is_holdout, "label"].gt(0).sum()),
        "negative_labels": int(frame["label"].lt(0).sum()),
        "features": len(features),
        "baseline": f"mean monthly margin over the months observed before the snapshot x {months}",
        "digest": tracking.frame_digest(frame),
    }
    return LabelledFrame(frame=frame, feature_columns=features, is_holdout=is_holdout, info=info)


def load_frame(settings: Settings, cfg: ModelConfig, source: str) -> LabelledFrame:
    return cdnow_frame(settings, cfg) if check_source(source) == "cdnow" else sim_frame(settings, cfg)


# --- fit and evaluate --------------------------------------------------------------------


def fit_label(cfg: ModelConfig, label: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
    """The label the loss sees: floored at 0 for objectives defined on non-negative values."""
    objective = str((params if params is not None else cfg.params).get("objective", ""))
    label = np.asarray(label, dtype=float)
    return np.maximum(label, 0.0) if objective in NON_NEGATIVE_OBJECTIVES else label


def n_jobs(cfg: ModelConfig) -> int:
    return _int_option(cfg, "n_jobs", DEFAULT_N_JOBS)


def offset_of(cfg: ModelConfig, source: str) -> tuple[str | None, float]:
    """The prior the CDNOW model corrects (`options.cdnow_offset`, the BG/NBD spend) and the
    weight of the correction (`options.cdnow_offset_shrink`); none for the simulator."""
    if source != "cdnow":
        return None, 1.0
    name = cfg.options.get("cdnow_offset")
    if name is not None and name not in BGNBD_FEATURES:
        raise ConfigError(f"clv ({_cfg_file(cfg)}): key 'options.cdnow_offset' = {name!r} is not one of "
                          f"{list(BGNBD_FEATURES)}")
    shrink = cfg.options.get("cdnow_offset_shrink", 1.0)
    if not isinstance(shrink, int | float) or not 0.0 <= float(shrink) <= 1.0:
        raise ConfigError(f"clv ({_cfg_file(cfg)}): key 'options.cdnow_offset_shrink' = {shrink!r}: expected a "
                          "number in [0, 1]")
    return (str(name) if name else None), float(shrink)


def params_of(cfg: ModelConfig, source: str) -> dict[str, Any]:
    """The XGBoost parameters of a source: `params`, with `options.cdnow_params` over them
    for CDNOW (the booster that corrects BG/NBD wants other settings than the bank's model)."""
    extra = cfg.options.get("cdnow_params", {}) if source == "cdnow" else {}
    if not isinstance(extra, dict):
        raise ConfigError(f"clv ({_cfg_file(cfg)}): key 'options.cdnow_params' = {extra!r}: expected a mapping "
                          "of XGBoost parameters")
    return {**cfg.params, **extra}


def fit_clv(cfg: ModelConfig, train: pd.DataFrame, features: list[str], seed: int = 0,
            params: dict[str, Any] | None = None, *, offset: str | None = None,
            shrink: float = 1.0) -> XGBRegressorOnFrame:
    params = params if params is not None else cfg.params
    model = XGBRegressorOnFrame(params=params, n_jobs=n_jobs(cfg), random_state=seed, offset=offset,
                                shrink=shrink)
    return model.fit(train[features], fit_label(cfg, train["label"].to_numpy(), params),
                     sample_weight=train[WEIGHT].to_numpy())


def clv_metrics(actual: np.ndarray, predicted: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """Per-customer error, ranking and cohort total of the model and the baseline."""
    y = np.asarray(actual, dtype=float)
    p = np.asarray(predicted, dtype=float)
    b = np.nan_to_num(np.asarray(baseline, dtype=float), nan=0.0)
    out: dict[str, float] = {"rows": float(len(y)), "positives": float((y > 0).sum())}
    for prefix, pred in (("", p), ("baseline_", b)):
        rank = gini_and_top_decile(y, pred)
        out.update({
            f"{prefix}mae": float(np.mean(np.abs(pred - y))),
            f"{prefix}rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
            f"{prefix}gini": rank["gini"],
            f"{prefix}top_decile_capture": rank["top_decile_capture"],
            f"{prefix}predicted_total": float(pred.sum()),
        })
    out["actual_total"] = float(y.sum())
    out["total_ratio"] = out["predicted_total"] / out["actual_total"] if out["actual_total"] else float("nan")
    out["baseline_total_ratio"] = (out["baseline_predicted_total"] / out["actual_total"]
                                   if out["actual_total"] else float("nan"))
    out["mae_improvement"] = 1.0 - out["mae"] / out["baseline_mae"] if out["baseline_mae"] else float("nan")
    out["rmse_improvement"] = 1.0 - out["rmse"] / out["baseline_rmse"] if out["baseline_rmse"] else float("nan")
    out["zero_predictor_mae"] = float(np.mean(np.abs(y)))
    return out


def decile_table(actual: np.ndarray, predicted: np.ndarray, baseline: np.ndarray) -> pd.DataFrame:
    """Customers in ten equal groups by predicted value (1 = highest): mean predicted, mean
    actual and the baseline's mean, and the cumulative share of the actual value."""
    y = np.asarray(actual, dtype=float)
    order = np.argsort(-np.asarray(predicted, dtype=float), kind="stable")
    decile = np.empty(len(y), dtype=int)
    decile[order] = np.arange(len(y)) * 10 // max(len(y), 1) + 1
    t = pd.DataFrame({"decile": decile, "predicted": predicted, "actual": y,
                      "baseline": np.nan_to_num(np.asarray(baseline, dtype=float))})
    out = t.groupby("decile").agg(customers=("actual", "size"), mean_predicted=("predicted", "mean"),
                                  mean_actual=("actual", "mean"), mean_baseline=("baseline", "mean"),
                                  actual_total=("actual", "sum")).reset_index()
    total = y.sum()
    out["cumulative_capture"] = out["actual_total"].cumsum() / total if total else np.nan
    return out


def value_plot(actual: np.ndarray, predicted: np.ndarray, baseline: np.ndarray, path: Path, title: str) -> Path:
    """Left: mean predicted vs actual value by decile of prediction. Right: cumulative
    capture of the actual value, customers ranked by the model, the baseline, perfectly."""
    from matplotlib.figure import Figure

    y = np.asarray(actual, dtype=float)
    table = decile_table(y, predicted, baseline)
    fig = Figure(figsize=(11, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    x = table["decile"].to_numpy()
    ax1.bar(x - 0.2, table["mean_predicted"], width=0.4, label="predicted (model)")
    ax1.bar(x + 0.2, table["mean_actual"], width=0.4, label="actual")
    ax1.plot(x, table["mean_baseline"], color="grey", marker="x", linestyle="--", label="baseline")
    ax1.set_xticks(x)
    ax1.set_xlabel("decile of predicted value (1 = highest)")
    ax1.set_ylabel("mean value per customer")
    ax1.legend()
    share = np.arange(len(y) + 1) / max(len(y), 1)
    total = y.sum() or 1.0
    for label, score in (("model", predicted), ("baseline", np.nan_to_num(np.asarray(baseline, dtype=float))),
                         ("perfect", y)):
        order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
        ax2.plot(share, np.concatenate([[0.0], np.cumsum(y[order]) / total]), label=label)
    ax2.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    ax2.set_xlabel("share of customers, ranked by score")
    ax2.set_ylabel("share of actual value captured")
    ax2.legend(loc="lower right")
    fig.suptitle(title)
    return save_figure(fig, path)


def _log_evaluation(model: XGBRegressorOnFrame, holdout: pd.DataFrame, features: list[str],
                    predicted: np.ndarray, key: str, title: str) -> None:
    import mlflow

    y, b = holdout["label"].to_numpy(), holdout[BASELINE].to_numpy()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        value_plot(y, predicted, b, out / "value_by_decile.png", title)
        decile_table(y, predicted, b).to_csv(out / "deciles.csv", index=False)
        names, gains = model.feature_importance()
        importance_plot(names, gains, out / "feature_importance.png", title)
        pd.DataFrame({"feature": names, "gain": gains}).sort_values("gain", ascending=False).to_csv(
            out / "feature_importance.csv", index=False)
        keep = [key, schemas.EVENT_TS, *features, "label", BASELINE]
        holdout[keep].assign(predicted=predicted).to_parquet(out / Path(HOLDOUT_ARTIFACT).name, index=False)
        mlflow.log_artifacts(tmp, artifact_path=str(Path(HOLDOUT_ARTIFACT).parent))


def train_clv(settings: Settings, source: str = "sim", register: bool = True, *,
              cfg: ModelConfig | None = None) -> TrainedModel:
    """Build the frame, fit on the training part, evaluate on the hold-out against the
    baseline, log everything to MLflow and register the model as @challenger (`nba-clv` for
    the simulator, `nba-clv-cdnow` for CDNOW). Any error ends the run FAILED with the
    reason, before anything is registered. `cfg` overrides `training/clv.yaml`."""
    import mlflow

    known = source in SOURCES
    name = registered_model(source) if known else ""
    tags = {"nba.source": str(source), **({"nba.registered_model": name} if known else {})}
    with tracking.training_run(settings, FAMILY, f"clv-{source}", tags=tags) as run:
        check_source(source)
        cfg = cfg or load_model_config(settings.home, FAMILY, settings.work)
        frame = load_frame(settings, cfg, source)
        tracking.log_frame_info(frame.info)
        params = params_of(cfg, source)
        mlflow.log_params({f"xgb.{k}": v for k, v in params.items()})
        mlflow.log_params({"source": source, "config": str(config_path(settings.home, FAMILY)),
                           "seed": settings.seed, "n_jobs": n_jobs(cfg)})
        train, holdout = frame.train, frame.holdout
        positives = int((holdout["label"] > 0).sum()) if len(holdout) else 0
        if positives == 0:
            raise ModelDataError(f"clv ({source}): the hold-out has {len(holdout)} rows and no customer with a "
                                 "positive value; nothing to evaluate on")
        offset, shrink = offset_of(cfg, source)
        mlflow.log_params({"offset": str(offset), "offset_shrink": shrink})
        model = fit_clv(cfg, train, frame.feature_columns, settings.seed, params, offset=offset, shrink=shrink)
        predicted = model.predict(holdout[frame.feature_columns])
        metrics = clv_metrics(holdout["label"].to_numpy(), predicted, holdout[BASELINE].to_numpy())
        if SPEND_RATE in holdout.columns:  # the earlier, simpler baseline, for scale
            rate = clv_metrics(holdout["label"].to_numpy(), holdout[SPEND_RATE].to_numpy(),
                               holdout[SPEND_RATE].to_numpy())
            metrics.update({f"spend_rate_{k}": rate[k] for k in ("mae", "rmse", "gini", "total_ratio")})
        mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
        key = CDNOW_KEY if source == "cdnow" else schemas.ENTITY_KEY
        _log_evaluation(model, holdout, frame.feature_columns, predicted, key,
                        f"{name}: hold-out value, model vs baseline")
        log_reference(train[[key, schemas.EVENT_TS, *frame.feature_columns, "label", BASELINE]], settings.seed)
        uri = tracking.log_model(model, train[frame.feature_columns], predict_fn="predict")
        version = ""
        if register:
            version = tracking.register(settings, uri, name, tags={
                "feature_service": str(frame.info["feature_service"]), "run_id": run.info.run_id,
                "source": source}).version
    return TrainedModel(name, str(version), run.info.run_id, metrics)


# --- tuning ----------------------------------------------------------------------------


def tuning_problem(settings: Settings, cfg: ModelConfig, action: str | None = None) -> TuningProblem:
    """MAE of the simulator's CLV model (`nba-clv`) on a validation part of the training
    rows: the last `options.simulator_validation_days` of snapshots (default 30: the last
    monthly snapshot before the hold-out), fitted on the earlier snapshots whose label
    horizon ends before it (the same purge as the hold-out). The hold-out is never used.
    The MAE is reported every `REPORT_EVERY` boosting rounds (predictions with the first k
    trees), so the pruner can stop a trial while it trains."""
    if action is not None:
        raise ConfigError(f"clv has no actions (got action '{action}'); --action applies to propensity and uplift")
    what = "clv (sim) tuning"
    if cfg.tuning.metric != "mae" or cfg.tuning.direction != "minimize":
        raise ConfigError(f"clv ({_cfg_file(cfg)}): key 'tuning.metric': the CLV tuning problem minimises 'mae' "
                          f"(got {cfg.tuning.metric!r}, {cfg.tuning.direction!r})")
    frame = sim_frame(settings, cfg)
    train = frame.train
    validation_days = _int_option(cfg, "simulator_validation_days", DEFAULT_SIM_VALIDATION_DAYS)
    is_val = split_by_time(train, validation_days, what)
    val_start = train.loc[is_val, schemas.EVENT_TS].min()
    fit_rows = train.loc[~is_val & (train[LABEL_END] <= val_start).to_numpy()].reset_index(drop=True)
    val_rows = train.loc[is_val].reset_index(drop=True)
    if fit_rows.empty:
        raise ModelDataError(f"{what}: no training snapshot has a label horizon ending before the validation "
                             f"part (from {val_start}); simulate more months")
    feats = frame.feature_columns
    encoder = FrameEncoder().fit(fit_rows[feats])
    X_fit, X_val = encoder.transform(fit_rows[feats]), encoder.transform(val_rows[feats])
    y_val = val_rows["label"].to_numpy(dtype=float)
    w_fit = fit_rows[WEIGHT].to_numpy(dtype=float)
    threads = n_jobs(cfg)

    def score(params: dict[str, Any], report: Report) -> float:
        import xgboost as xgb
        from xgboost.callback import TrainingCallback

        merged = {**cfg.params, **params}
        y_fit = fit_label(cfg, fit_rows["label"].to_numpy(), merged)

        class Checkpoints(TrainingCallback):
            def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
                k = epoch + 1
                if k % REPORT_EVERY == 0:
                    p = np.maximum(model.inplace_predict(X_val, iteration_range=(0, k)), 0.0)
                    report(float(np.mean(np.abs(p - y_val))), k)
                return False

        model = xgb.XGBRegressor(**_xgb_params(merged, threads, settings.seed), callbacks=[Checkpoints()])
        model.fit(X_fit, y_fit, sample_weight=w_fit)
        return float(np.mean(np.abs(np.maximum(model.predict(X_val), 0.0) - y_val)))

    info = {**frame.info, "tuning_fit_rows": len(fit_rows), "tuning_validation_rows": len(val_rows),
            "tuning_validation": f"snapshots of the last {validation_days} days of the training part (from "
                                 f"{val_start}); fitted on snapshots whose label ends before it; the hold-out "
                                 "is never used"}
    return TuningProblem(family=FAMILY, metric=cfg.tuning.metric, direction=cfg.tuning.direction, score=score,
                         info=info)
