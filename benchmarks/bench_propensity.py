"""Propensity models for all 10 actions on a simulated bank, end to end.

Simulates the bank, applies a real Feast repository in a temporary folder, then times
`nba.training.propensity.train_propensity` for every action: the point-in-time frame from
Feast (DuckDB), the fits, the MLflow logging and registration. Prints each phase.

    python benchmarks/bench_propensity.py [--customers 200000] [--strategy pooled|per_action]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--strategy", default=None, help="default: training/propensity.yaml")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from nba.settings import Settings, disable_telemetry

    disable_telemetry()
    from nba.data.simulator import simulate_to_dir
    from nba.features import store
    from nba.training import propensity
    from nba.training.config import load_model_config
    from nba.training.frames import propensity_frame

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=root, work_dir=Path(tmp) / "var", mlflow_dir=Path(tmp) / "mlflow")
        t0 = time.perf_counter()
        simulate_to_dir(customers=args.customers, seed=args.seed, out_dir=settings.sim_dir, progress=False)
        store.apply(settings)
        t1 = time.perf_counter()
        cfg = load_model_config(root, "propensity")
        frame = propensity_frame(settings, cfg)
        t2 = time.perf_counter()
        try:
            models = propensity.train_propensity(settings, strategy=args.strategy)
        except propensity.TrainingIncomplete as exc:
            models = exc.trained
            print(f"not trained: {exc.failures}")
        t3 = time.perf_counter()
    print(f"machine: {platform.machine()}, python {platform.python_version()}, 2 cores")
    print(f"setup (simulate {args.customers:,} customers + feast apply): {t1 - t0:.1f} s")
    print(f"point-in-time frame from Feast: {len(frame.frame):,} contacts x {len(frame.feature_columns)} "
          f"features in {t2 - t1:.1f} s")
    print(f"train_propensity ({args.strategy or cfg.options.get('strategy')}), {len(models)} models "
          f"(frame + fit + MLflow + registry): {t3 - t2:.1f} s")
    for m in models:
        print(f"  {m.name:<38} auc {m.metrics['roc_auc']:.3f}  ece {m.metrics['ece']:.4f}  "
              f"mae vs truth {m.metrics['mae_vs_truth']:.4f}")


if __name__ == "__main__":
    main()
