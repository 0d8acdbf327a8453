"""Benchmark the uplift learners on Hillstrom: both e-mails, every learner, timed.

For each e-mail (against the No E-Mail hold-out) and each learner: the fit time on the
training part, the Qini on the validation part (what `nba train uplift` chooses by), the Qini
on the test part of that fit and of the refit on training + validation (what a run
reports), and, for scale, the standard deviation of the test Qini of random scores. Then
the whole `train_uplift` (Feast frame, every learner, refit, MLflow logging, registration)
is timed in a private MLflow store.

    NBA_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_uplift.py
    .venv/bin/python benchmarks/bench_uplift.py --outcome conversion
    .venv/bin/python benchmarks/bench_uplift.py --param max_depth=2 --param min_child_weight=300

Without `--work` it builds a throw-away work folder: a 2,000-customer simulated bank (the
feature repository needs the bank's sources too) and the real data sets, applied to Feast.
Our machine has 2 cores, and other jobs may share them: compare figures of one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml


def parse_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--param {text!r}: expected key=value")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None,
                        help="an existing work folder with the feature repository applied (default: build one)")
    parser.add_argument("--outcome", default=None, help="visit | conversion | spend [default: training/uplift.yaml]")
    parser.add_argument("--param", type=parse_param, action="append", default=[],
                        help="XGBoost parameter over the config's, key=value (repeat)")
    parser.add_argument("--learners", nargs="+", default=None, help="learners to compare [default: all]")
    parser.add_argument("--null-draws", type=int, default=100, help="random scorings for the Qini noise level")
    args = parser.parse_args(argv)

    root = Path(__file__).resolve().parents[1]
    data_dir = os.environ.get("NBA_DATA_DIR") or (root.parent / "shared" / "data")
    t_import = time.perf_counter()
    from nba.settings import Settings, disable_telemetry

    disable_telemetry()
    from nba.training import uplift, uplift_learners
    from nba.training.config import load_model_config
    from nba.training.metrics import qini_coefficient

    import_s = time.perf_counter() - t_import
    with tempfile.TemporaryDirectory(prefix="nba-bench-uplift-") as tmp:
        work = args.work or Path(tmp) / "var"
        settings = Settings(home=root, work_dir=work, data_dir=Path(data_dir), mlflow_dir=Path(tmp) / "mlflow")
        setup_s = 0.0
        if args.work is None:
            from nba.data.simulator import simulate_to_dir
            from nba.features import store

            t0 = time.perf_counter()
            simulate_to_dir(customers=2_000, seed=settings.seed, out_dir=settings.sim_dir, progress=False)
            store.apply(settings)
            setup_s = time.perf_counter() - t0

        cfg = load_model_config(root, uplift.FAMILY)
        options = {**cfg.options, "learners": args.learners or list(uplift_learners.LEARNERS),
                   **({"outcome": args.outcome} if args.outcome else {})}
        cfg = cfg.model_copy(update={"options": options, "params": {**cfg.params, **dict(args.param)}})
        params = uplift.model_params(cfg, "hillstrom")
        min_positives = int(cfg.options.get("min_positives", uplift.DEFAULT_MIN_POSITIVES))

        t0 = time.perf_counter()
        data = uplift.hillstrom_data(settings, cfg)
        frame_s = time.perf_counter() - t0

        print(f"outcome          {cfg.options.get('outcome', uplift.DEFAULT_OUTCOME)}")
        print(f"xgboost params   {params}")
        print(f"imports          {import_s:.1f} s; setup (simulate 2,000 + feast apply) {setup_s:.1f} s")
        print(f"feast frame      {frame_s:.1f} s for {sum(len(d.frame) for d in data.values()):,} rows "
              "(both e-mails; the No E-Mail rows are shared)")
        learners = list(cfg.options["learners"])
        for action, d in data.items():
            train, val, test = d.rows("train"), d.rows("validation"), d.rows("test")
            trainval = d.rows("train", "validation")
            feats = d.feature_columns
            y, t = test["label"].to_numpy(), test["treated"].to_numpy() == 1
            print(f"\n{action}: train {len(train):,}, validation {len(val):,}, test {len(test):,} rows; "
                  f"observed uplift on test {y[t].mean() - y[~t].mean():+.4f}; test Qini of random scores: "
                  f"sd {uplift.qini_null_sd(y, t, draws=args.null_draws):.5f}")
            print(f"  {'learner':<22}{'fit s':>7}{'val qini':>11}{'test qini':>11}{'refit s':>9}{'refit test':>12}")
            best, best_q = None, -np.inf
            for kind in learners:
                model = uplift_learners.make_learner(kind, params, min_positives=min_positives, random_state=settings.seed)
                t0 = time.perf_counter()
                model.fit(train[feats], train["treated"], train["label"])
                fit_s = time.perf_counter() - t0
                q_val = qini_coefficient(model.predict(val[feats]), val["label"], val["treated"])
                q_test = qini_coefficient(model.predict(test[feats]), y, t)
                refit = uplift_learners.make_learner(kind, params, min_positives=min_positives, random_state=settings.seed)
                t0 = time.perf_counter()
                refit.fit(trainval[feats], trainval["treated"], trainval["label"])
                refit_s = time.perf_counter() - t0
                q_refit = qini_coefficient(refit.predict(test[feats]), y, t)
                print(f"  {kind:<22}{fit_s:>7.1f}{q_val:>11.5f}{q_test:>11.5f}{refit_s:>9.1f}{q_refit:>12.5f}")
                if q_val > best_q:
                    best, best_q = kind, q_val
            print(f"  chosen by validation Qini: {best}")

        t0 = time.perf_counter()
        models = uplift.train_uplift(settings, "hillstrom", cfg=cfg)
        pipeline_s = time.perf_counter() - t0
        print(f"\ntrain_uplift (frame, {len(learners)} learners + refit, MLflow, registry), both e-mails: "
              f"{pipeline_s:.1f} s")
        for m in models:
            met = m.metrics
            print(f"  {m.name} v{m.version}: test qini {met['qini']:.5f} (random scores: sd "
                  f"{met['qini_null_sd']:.5f}), uplift in top 10 % {met['uplift_top10']:+.4f} "
                  f"(all: {met['observed_uplift']:+.4f}), test positives {met['positives']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
