"""Online read of `serving_v1` for one customer from the SQLite online store.

Simulates a bank, applies and materialises a real Feast repository in a temporary folder,
then times `get_online_features` through `nba.features.store.online_features` (one feature
service, one customer, with the request-time on-demand view) and prints median and p99.

    python benchmarks/bench_online_read.py [--customers 20000] [--reads 1000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--reads", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from nba.data.simulator import simulate_to_dir
    from nba.features import store
    from nba.settings import Settings, disable_telemetry

    disable_telemetry()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=root, work_dir=Path(tmp))
        t0 = time.perf_counter()
        simulate_to_dir(customers=args.customers, seed=args.seed, out_dir=settings.sim_dir, progress=False)
        t1 = time.perf_counter()
        store.apply(settings)
        t2 = time.perf_counter()
        store.materialize(settings)
        t3 = time.perf_counter()
        fs = store.get_store(settings)
        import pyarrow.parquet as pq

        ids = np.unique(pq.read_table(settings.feast_repo / "data" / "profile.parquet",
                                      columns=["customer_id"]).column(0).to_numpy())
        rng = np.random.default_rng(args.seed)
        request_ts = int(time.time())
        for c in rng.choice(ids, 50):  # warm-up: registry cache, sqlite pages
            store.online_features(settings, "serving_v1", [int(c)], request_ts, store=fs)
        times = []
        for c in rng.choice(ids, args.reads):
            s = time.perf_counter()
            row = store.online_features(settings, "serving_v1", [int(c)], request_ts, store=fs)
            times.append((time.perf_counter() - s) * 1000)
        assert row["credit_score"][0] is not None
        times.sort()
        n_features = len(row) - 1
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    print(f"simulate {args.customers:,} customers: {t1 - t0:.1f} s; feast apply: {t2 - t1:.1f} s; "
          f"materialize: {t3 - t2:.1f} s")
    print(f"online read serving_v1 ({n_features} features, 1 customer) over {args.reads} reads: "
          f"median {statistics.median(times):.2f} ms, p99 {times[int(0.99 * len(times)) - 1]:.2f} ms, "
          f"max {times[-1]:.2f} ms")


if __name__ == "__main__":
    main()
