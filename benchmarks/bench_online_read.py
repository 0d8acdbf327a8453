"""Online read of `serving_v1` from the SQLite online store: Feast's own call and the reader's paths.

Simulates a bank, applies and materialises a real Feast repository in a temporary folder,
then times, for one customer at a time (with the request-time on-demand view):

* `get_online_features` through `nba.features.store.online_features`;
* the decision service's `OnlineFeatureReader` on its fast path (one SQLite query, in
  `nba.features.feast_adapter`);
* the same reader on the public path (the provider's `online_read`, once per view), which it
  falls back to outside the tested Feast versions or with `fast=False`;

and both reader paths for a batch of customers (`--batch`, as `nba decide-batch` reads them).
Prints median and p99 of each.

    python benchmarks/bench_online_read.py [--customers 20000] [--reads 1000] [--batch 500]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _timed(fn: Callable[[int], object], ids: np.ndarray, reads: int, rng: np.random.Generator) -> list[float]:
    for c in rng.choice(ids, 50):  # warm-up: registry cache, sqlite pages, decoded values
        fn(int(c))
    times = []
    for c in rng.choice(ids, reads):
        s = time.perf_counter()
        fn(int(c))
        times.append((time.perf_counter() - s) * 1000)
    return sorted(times)


def _line(label: str, times: list[float]) -> str:
    return (f"{label}: median {statistics.median(times):.3f} ms, p99 {times[int(0.99 * len(times)) - 1]:.3f} ms, "
            f"max {times[-1]:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--reads", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from nba.data.simulator import simulate_to_dir
    from nba.features import store
    from nba.features.online import OnlineFeatureReader
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
        end = store.materialize(settings).end
        t3 = time.perf_counter()
        fs = store.get_store(settings)
        import pyarrow.parquet as pq

        ids = np.unique(pq.read_table(settings.feast_repo / "data" / "profile.parquet",
                                      columns=["customer_id"]).column(0).to_numpy())
        request_ts = int(end.timestamp())  # a decision at the newest snapshot: every value fresh
        fast = OnlineFeatureReader(settings, "serving_v1", store=fs)
        public = OnlineFeatureReader(settings, "serving_v1", store=fs, fast=False)
        assert fast.fast and not public.fast
        probe = [int(c) for c in ids[:20]]
        reference = store.online_features(settings, "serving_v1", probe, request_ts, store=fs)
        assert fast.read(probe, request_ts)[0] == public.read(probe, request_ts)[0] == \
            {k: v for k, v in reference.items() if k != "customer_id"}
        n_features = len(reference) - 1

        rng = np.random.default_rng(args.seed)
        feast_t = _timed(lambda c: store.online_features(settings, "serving_v1", [c], request_ts, store=fs),
                         ids, args.reads, rng)
        fast_t = _timed(lambda c: fast.read([c], request_ts), ids, args.reads, rng)
        public_t = _timed(lambda c: public.read([c], request_ts), ids, args.reads, rng)
        batches = [rng.choice(ids, args.batch, replace=False).tolist() for _ in range(20)]
        batch_t = {}
        for name, reader in (("fast", fast), ("public", public)):
            reader.read(batches[0], request_ts)
            t = []
            for b in batches:
                s = time.perf_counter()
                reader.read(b, request_ts)
                t.append((time.perf_counter() - s) * 1000)
            batch_t[name] = sorted(t)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    print(f"simulate {args.customers:,} customers: {t1 - t0:.1f} s; feast apply: {t2 - t1:.1f} s; "
          f"materialize: {t3 - t2:.1f} s")
    print(f"online read serving_v1 ({n_features} features), 1 customer, {args.reads} reads each:")
    print("  " + _line("get_online_features            ", feast_t))
    print("  " + _line("reader, fast (one SQLite query)", fast_t))
    print("  " + _line("reader, public (online_read)   ", public_t))
    print(f"online read serving_v1, {args.batch} customers, {len(batches)} reads each:")
    print("  " + _line("reader, fast  ", batch_t["fast"]))
    print("  " + _line("reader, public", batch_t["public"]))


if __name__ == "__main__":
    main()
