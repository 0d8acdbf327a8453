"""Propensity calibration against the simulator's truth (issue 12, item 8), per action.

Simulates the bank (`simulate_to_dir`, what `nba data simulate` runs), applies a real Feast
repository in a temporary folder, builds the propensity training frame (`propensity_frame`),
fits every action's model exactly as `train_propensity` does (`propensity.fit_models`, the
strategy and settings of training/propensity.yaml), and prints per action the error of the
predicted P(accept | shown) against the true one:

* on the population the arbitration scores (`frames.truth_frame`): every customer eligible
  for the action at the last snapshot, features as of that month's first decision moment.
  The last snapshot is inside the time-based hold-out, so no training row comes from it.
  This is the headline figure (the issue's "at most 0.02").
* on the hold-out contacts (what each MLflow run logs as `holdout_mae_vs_truth`), for scale:
  these over-represent whom the legacy campaign chose.
* the floor: the error of the best function of the same features, approximated by
  gradient boosting fitted to the TRUE probabilities (no label noise) of the eligible
  customers, cross-fitted on two halves of them. No model trained on 0/1 outcomes can beat
  it: the truth also depends on latent traits the bank never observes
  (nba/data/simulator.py).

`--variant NAME:SECTION.KEY=VALUE,...` (repeatable) also fits the models with those settings
over training/propensity.yaml on the same data and prints their table too, e.g. the
training before issue 12: `--variant before:options.strategy=pooled,options.weighting=none`.

    python benchmarks/bench_calibration.py [--customers 200000] [--seed 7] [--variant ...] [--no-floor]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any


def _override(cfg: Any, items: list[str]) -> Any:
    import yaml

    data = cfg.model_dump()
    for item in filter(None, items):
        key, _, raw = item.partition("=")
        section, _, name = key.partition(".")
        if section not in data or not name:
            raise SystemExit(f"--config {item!r}: expected SECTION.KEY=VALUE with SECTION one of {sorted(data)}")
        data[section][name] = yaml.safe_load(raw)
    return type(cfg).model_validate(data)


def floor(truth: Any, features: list[str]) -> dict[str, float]:
    """Per action, the MAE of boosting fitted to the true probabilities (2-fold by customer)."""
    import numpy as np
    import xgboost as xgb

    from nba.training.models import FrameEncoder

    out = {}
    for action, sub in truth.groupby("action_id"):
        enc = FrameEncoder().fit(sub[features])
        X = enc.transform(sub[features])
        t = np.clip(sub["true_p_treated"].to_numpy(), 1e-6, 1 - 1e-6)
        fold = (sub["customer_id"].to_numpy() % 2).astype(bool)
        p = np.zeros(len(t))
        for k in (False, True):
            reg = xgb.XGBRegressor(n_estimators=400, max_depth=4, learning_rate=0.05, n_jobs=2, tree_method="hist")
            reg.fit(X[fold != k], np.log(t[fold != k] / (1 - t[fold != k])))
            p[fold == k] = 1 / (1 + np.exp(-reg.predict(X[fold == k])))
        out[str(action)] = float(np.mean(np.abs(p - t)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:SECTION.KEY=VALUE,... over propensity.yaml, fitted on the same data")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor (saves ~1 min)")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd

    from nba import schemas
    from nba.console import quiet_libraries
    from nba.settings import Settings, disable_telemetry

    disable_telemetry()
    quiet_libraries()  # our table, not Feast's and ibis's warnings
    from nba.data.simulator import simulate_to_dir
    from nba.features import store
    from nba.training import propensity
    from nba.training.config import load_model_config
    from nba.training.frames import propensity_frame, truth_frame

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=root, work_dir=Path(tmp) / "var", mlflow_dir=Path(tmp) / "mlflow")
        t0 = time.perf_counter()
        simulate_to_dir(customers=args.customers, seed=args.seed, out_dir=settings.sim_dir, progress=False)
        store.apply(settings)
        base = load_model_config(root, "propensity")
        variants = [("configured", base)] + [
            (v.partition(":")[0], _override(base, v.partition(":")[2].split(","))) for v in args.variant]
        frame = propensity_frame(settings, base)
        truth = truth_frame(settings, base)
        t1 = time.perf_counter()
        floors = {} if args.no_floor else floor(truth, frame.feature_columns)
        results = []
        for name, cfg in variants:
            t2 = time.perf_counter()
            models, failures = propensity.fit_models(cfg, frame)
            fit_s = time.perf_counter() - t2
            table = propensity.truth_errors(models, truth, frame.feature_columns).set_index("action")
            holdout = frame.holdout
            for action, model in models.items():
                sub = holdout.loc[holdout["action_id"] == action]
                p = model.predict_proba(sub[frame.feature_columns])[:, 1]
                table.loc[action, "holdout_contacts_mae"] = float(np.mean(np.abs(p - sub["true_p_treated"].to_numpy())))
            for action, value in floors.items():
                if action in table.index:
                    table.loc[action, "floor_mae"] = value
            results.append((name, cfg, table, failures, fit_s))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} (1 min)")
    print(f"{args.customers:,} customers, seed {args.seed}: {len(frame.frame):,} contacts "
          f"({frame.info['train_rows']:,} training), {len(truth):,} eligible (customer, action) pairs at the last "
          f"snapshot {truth[schemas.EVENT_TS].iloc[0]}; setup {t1 - t0:.1f} s")
    cols = ["customers", "mean_true_p", "mean_predicted", "mae", "bias", "calibration_mae", "floor_mae",
            "holdout_contacts_mae"]
    for name, cfg, table, failures, fit_s in results:
        print(f"\n[{name}] strategy {cfg.options.get('strategy')}, weighting {cfg.options.get('weighting', 'ipw')}, "
              f"calibration {cfg.options.get('calibration')}, params {cfg.params}; fit {fit_s:.1f} s")
        if failures:
            print(f"not trained: {failures}")
        with pd.option_context("display.width", 200):
            print(table[[c for c in cols if c in table.columns]].round(4).to_string())
        worst = table["mae"].idxmax()
        print(f"max MAE over actions (eligible customers): {table['mae'].max():.4f} ({worst}); target <= 0.02")

if __name__ == "__main__":
    main()
