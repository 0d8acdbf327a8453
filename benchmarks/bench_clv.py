"""CLV on the full CDNOW cohort: features through Feast, fit, evaluate, MLflow logging and
registration (`nba.training.clv.train_clv(settings, "cdnow")`). Target: under 30 s on 2 cores.

Builds a throw-away work folder (a small simulated bank, which `nba features apply` needs,
and the real data sets from NBA_DATA_DIR, default ../shared/data), applies the Feast
repository, imports the stack, initialises a fresh MLflow store, then times one
`train_clv` call (the headline: what `nba train clv --source cdnow` costs after start-up)
and its phases on a second, warm pass. Wall time and CPU time (this process and its
children: MLflow inspects the logged model in a subprocess) are printed side by side,
because on a shared machine the wall time depends on the neighbours.

    python benchmarks/bench_clv.py [--repeat 1] [--n-jobs 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path


class Clock:
    """Wall and CPU seconds (own threads + finished children) since `start()`."""

    def start(self) -> Clock:
        self.wall = time.perf_counter()
        self.cpu = self._cpu()
        return self

    @staticmethod
    def _cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, self._cpu() - self.cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="timed train_clv calls after the first")
    parser.add_argument("--customers", type=int, default=1_000, help="simulated customers (apply needs a bank)")
    parser.add_argument("--n-jobs", type=int, default=None, help="XGBoost threads [default: options.n_jobs or 1]")
    args = parser.parse_args()

    root = Path(__file__).resolve().parents[1]
    data_dir = Path(os.environ.get("NBA_DATA_DIR", root.parent / "shared" / "data")).resolve()
    clock = Clock().start()
    from nba.settings import Settings, disable_telemetry

    disable_telemetry()
    import feast  # noqa: F401  (the stack, imported before timing: start-up is not training)
    import mlflow  # noqa: F401
    import xgboost  # noqa: F401

    from nba.data.simulator import simulate_to_dir
    from nba.features import store
    from nba.training import clv, tracking
    from nba.training.config import load_model_config

    t_import, _ = clock.stop()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=root, work_dir=Path(tmp) / "var", data_dir=data_dir, mlflow_dir=Path(tmp) / "mlflow")
        clock.start()
        simulate_to_dir(customers=args.customers, seed=settings.seed, out_dir=settings.sim_dir, progress=False)
        store.apply(settings)
        t_setup, _ = clock.stop()
        clock.start()
        tracking.experiment_id(settings, clv.FAMILY)  # a fresh SQLite store: schema migrations
        t_store, c_store = clock.stop()

        cfg = load_model_config(settings.home, clv.FAMILY, settings.work)
        if args.n_jobs is not None:
            cfg = cfg.model_copy(update={"options": {**cfg.options, "n_jobs": args.n_jobs}})
        clock.start()
        trained = clv.train_clv(settings, "cdnow", cfg=cfg)
        wall, cpu = clock.stop()
        runs = [(wall, cpu)]
        for _ in range(args.repeat):
            clock.start()
            clv.train_clv(settings, "cdnow", cfg=cfg)
            runs.append(clock.stop())

        clock.start()
        frame = clv.cdnow_frame(settings, cfg)
        t_frame = clock.stop()
        clock.start()
        model = clv.fit_clv(cfg, frame.train, frame.feature_columns, settings.seed)
        t_fit = clock.stop()
        clock.start()
        holdout = frame.holdout
        clv.clv_metrics(holdout["label"].to_numpy(), model.predict(holdout[frame.feature_columns]),
                        holdout[clv.BASELINE].to_numpy())
        t_eval = clock.stop()

    m = trained.metrics
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          f"(1 min), xgboost n_jobs={clv.n_jobs(cfg)}")
    print(f"imports {t_import:.1f} s; simulate + features apply {t_setup:.1f} s; fresh MLflow store "
          f"{t_store:.1f} s (cpu {c_store:.1f} s) - all outside the timed call")
    print(f"rows: {frame.info['train_rows']:,} training (cut-offs {frame.info['cutoffs']}), "
          f"{frame.info['holdout_rows']:,} hold-out")
    for i, (w, c) in enumerate(runs):
        label = "first call" if i == 0 else f"repeat {i}"
        print(f"train_clv(cdnow) {label}: {w:.1f} s wall, {c:.1f} s cpu (target < 30 s)")
    print("phases (warm): " + ", ".join(f"{n} {w:.1f} s wall / {c:.1f} s cpu" for n, (w, c) in
                                        (("features via Feast + labels", t_frame), ("fit", t_fit),
                                         ("predict + metrics", t_eval))))
    print(f"hold-out: MAE {m['mae']:.2f} vs baseline {m['baseline_mae']:.2f} ({m['mae_improvement']:.1%} better), "
          f"Gini {m['gini']:.3f}, top decile {m['top_decile_capture']:.3f}, predicted total "
          f"{m['predicted_total']:,.0f} vs actual {m['actual_total']:,.0f} (ratio {m['total_ratio']:.3f})")


if __name__ == "__main__":
    main()
