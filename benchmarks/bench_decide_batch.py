"""Outbound batch decisions: 1,000,000 customers x 10 actions, and the speed-up over the
single-customer path.

Needs a work folder with a materialised feature store and a built bundle (`make quickstart`,
or `nba quickstart` then `nba bundle build`). The customer file is the bank's newest snapshot
(every stored feature of serving_v1) resampled to the requested size with new customer ids, so
the batch reads its features from the file; the ratio is measured on 10,000 customers against
`DecisionEngine.decide` called once per customer (online features from Feast, one log write
each), and also against the batch reading the online store.

    python benchmarks/bench_decide_batch.py [--work var] [--customers 1000000] [--ratio-customers 10000]

Each batch runs as `nba decide-batch` in a child process, so its peak memory (RSS) is its own.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_decide import private_work, prologue  # one way to share the bank and keep the log private

ROOT = Path(__file__).resolve().parents[1]
TIMESTAMP = "2025-12-01T09:00:00Z"


def snapshot_file(settings, customers: int, out: Path, seed: int = 7) -> Path:
    """The newest snapshot of every feature view, joined, resampled to `customers` rows."""
    data = settings.feast_repo / "data"
    frame = None
    for name in ("profile", "rfm", "engagement", "risk", "consent"):
        t = pd.read_parquet(data / f"{name}.parquet")
        t = t[t["event_timestamp"] == t["event_timestamp"].max()].drop(columns=["event_timestamp"])
        t = t.drop(columns=[c for c in t.columns if c == "created_timestamp"])
        frame = t if frame is None else frame.merge(t, on="customer_id")
    rng = np.random.default_rng(seed)
    rows = frame.iloc[rng.integers(0, len(frame), customers)].reset_index(drop=True)
    rows["customer_id"] = np.arange(10_000_000, 10_000_000 + customers, dtype=np.int64)
    rows.to_parquet(out, index=False)
    return out


def run_batch(work: Path, customers: Path, out: Path, extra_env: dict[str, str]) -> tuple[float, float, str]:
    env = {**os.environ, "NBA_WORK_DIR": str(work), "NBA_HOME": str(ROOT), **extra_env}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nba", "decide-batch", "--customers", str(customers),
                           "--channel", "email", "--out", str(out), "--timestamp", TIMESTAMP],
                          env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"decide-batch failed:\n{proc.stderr[-3000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(rss, before) / 1024 / 1024, proc.stdout.strip().splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "var")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--ratio-customers", type=int, default=10_000)
    args = parser.parse_args()

    from nba.serving.bundle import load_engine
    from nba.serving.engine import DecisionRequest
    from nba.settings import Settings

    bank = prologue(args.work)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        work = private_work(bank, tmp / "work")
        settings = Settings(home=ROOT, work_dir=work)
        log_env: dict[str, str] = {}
        big = snapshot_file(settings, args.customers, tmp / "big.parquet")
        small = snapshot_file(settings, args.ratio_customers, tmp / "small.parquet", seed=8)
        wall, rss, line = run_batch(work, big, tmp / "big_out.parquet", log_env)
        print(f"batch, {args.customers:,} customers x 10 actions (features from the file): {wall:.1f} s wall "
              f"(process incl. imports), peak RSS {rss:.2f} GiB")
        print(f"  {line}")
        wall_small, _, line_small = run_batch(work, small, tmp / "small_out.parquet", log_env)
        print(f"batch, {args.ratio_customers:,} customers (file): {wall_small:.1f} s wall; {line_small}")

        engine = load_engine(settings)
        engine.warm()
        ids = pd.read_parquet(small, columns=["customer_id"])["customer_id"].to_numpy()
        # the single-customer path on customers that exist in the online store (the same count)
        real = pd.read_parquet(settings.feast_repo / "data" / "profile.parquet", columns=["customer_id"])
        real_ids = np.unique(real["customer_id"].to_numpy())[: len(ids)]
        ts = pd.Timestamp(TIMESTAMP).timestamp()
        t0 = time.perf_counter()
        for cid in real_ids:
            engine.decide([DecisionRequest(int(cid), "email", {}, ts, 1)])
        single = time.perf_counter() - t0
        print(f"single-customer path, {len(real_ids):,} customers one at a time (online features, one log "
              f"write each): {single:.1f} s ({single / len(real_ids) * 1e3:.2f} ms per decision)")
        pd.DataFrame({"customer_id": real_ids}).to_parquet(tmp / "online.parquet")
        wall_online, _, line_online = run_batch(work, tmp / "online.parquet", tmp / "online_out.parquet", log_env)
        print(f"batch, the same {len(real_ids):,} customers with online features: {wall_online:.1f} s; {line_online}")
        in_batch = float(line_small.split(" in ")[1].split(" s")[0])
        in_batch_online = float(line_online.split(" in ")[1].split(" s")[0])
        print(f"speed-up of the batch over the single-customer loop: {single / in_batch:.0f}x (features from the "
              f"file), {single / in_batch_online:.0f}x (online store); both exclude loading the bundle, which the "
              f"loop did once before it started")


if __name__ == "__main__":
    main()
