"""Triggers: event -> trigger -> decision latency in process, and a scheduled scan of 1,000,000
customers.

Needs a work folder with a materialised feature store and a built bundle (`nba quickstart
--no-serve`). The latency part calls `DecisionEngine.on_events` with one stored event at a
time (what `POST /events` does after storing and pushing it): online features, scores, the
triggers' conditions, the dedup claim (SQLite), the decision through the whole core with the
channel chosen among the trigger's, the decision log (SQLite, durable) and the contacts. Half
the events fire (a payment 31 days late, a marriage), half are near misses (30 days late, a
new job), each on its own customer. The outbox message of a delivered decision is written by
the activation part in the same transaction as the log (not measured here).

The scan part writes the bank's newest snapshot resampled to `--customers` rows with new ids,
plus the streaming features a scan reads (last interaction, card expiry, an open application)
drawn at random, and runs `nba triggers scan` on it in a child process (its peak RSS its own).

    python benchmarks/bench_triggers.py [--work var] [--events 2000] [--customers 1000000]
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
from bench_decide import private_work, prologue
from bench_decide_batch import TIMESTAMP, snapshot_file

ROOT = Path(__file__).resolve().parents[1]
DAY = 86400.0


def latency(work: Path, events: int, tmp: Path) -> None:
    from datetime import datetime

    from nba.serving.bundle import load_engine
    from nba.settings import Settings

    own = private_work(work, tmp / "latency")
    settings = Settings(home=ROOT, work_dir=own)
    engine = load_engine(settings)
    engine.warm()
    now = datetime.fromisoformat(TIMESTAMP.replace("Z", "+00:00")).timestamp()
    import pandas as pd

    profile = pd.read_parquet(work / "feature_repo" / "data" / "profile.parquet", columns=["customer_id"])
    ids = np.unique(profile["customer_id"].to_numpy())
    rng = np.random.default_rng(7)
    pick = rng.choice(ids, size=min(events, ids.size), replace=False)
    kinds = [("payment_missed", {"days_late": 31, "amount": 90.0}), ("life_event", {"kind": "marriage"}),
             ("payment_missed", {"days_late": 30, "amount": 90.0}), ("life_event", {"kind": "new_job"})]
    engine.on_events([{"event_id": "warm", "customer_id": int(ids[0]), "type": "life_event", "timestamp": now,
                       "properties": {"kind": "new_job"}, "known_customer": True}])
    fired, missed = [], []
    started = 0
    for i, cid in enumerate(pick):
        type_, props = kinds[i % 4]
        ev = {"event_id": f"b{i}", "customer_id": int(cid), "type": type_, "timestamp": now, "properties": props,
              "known_customer": True}
        t0 = time.perf_counter()
        out = engine.on_events([ev])
        dt = (time.perf_counter() - t0) * 1e3
        (fired if i % 4 < 2 else missed).append(dt)
        started += sum(1 for x in out if x["decision"] is not None)
    for name, xs in (("firing events", fired), ("near misses", missed)):
        a = np.array(xs)
        print(f"{name}: {a.size} events, event -> trigger -> decision -> log p50 {np.percentile(a, 50):.2f} ms, "
              f"p90 {np.percentile(a, 90):.2f} ms, p99 {np.percentile(a, 99):.2f} ms, max {a.max():.1f} ms")
    print(f"  {started} decisions started (a firing event whose customer's CLV exceeds the payment trigger's "
          "bound starts none)")


def scan(work: Path, customers: int, tmp: Path) -> None:
    import pandas as pd

    from nba.settings import Settings

    own = private_work(work, tmp / "scan")
    settings = Settings(home=ROOT, work_dir=work)
    path = snapshot_file(settings, customers, tmp / "population.parquet")
    frame = pd.read_parquet(path)
    rng = np.random.default_rng(11)
    from datetime import datetime

    now = datetime.fromisoformat(TIMESTAMP.replace("Z", "+00:00")).timestamp()
    frame["last_interaction_s"] = now - rng.uniform(0, 60, len(frame)) * DAY
    frame["card_expires_at_s"] = np.where(rng.random(len(frame)) < 0.05, now - rng.uniform(0, 20, len(frame)) * DAY,
                                          now + 365 * DAY)
    frame["application_open"] = (rng.random(len(frame)) < 0.02).astype(np.float64)
    frame["application_open_hours"] = rng.uniform(0, 5, len(frame))
    frame.to_parquet(path, index=False)
    env = {**os.environ, "NBA_WORK_DIR": str(own), "NBA_HOME": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nba", "triggers", "scan", "--customers", str(path), "--at",
                           TIMESTAMP], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"triggers scan failed:\n{proc.stderr[-3000:]}")
    rss = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 2**20
    print(f"scan of {customers:,} customers: {wall:.1f} s for the whole command (imports, bundle), peak RSS "
          f"{rss:.2f} GiB")
    print(proc.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "var")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--skip-scan", action="store_true")
    args = parser.parse_args()
    work = prologue(args.work)
    with tempfile.TemporaryDirectory(prefix="bench-triggers-") as tmp:
        latency(work, args.events, Path(tmp))
        if not args.skip_scan:
            scan(work, args.customers, Path(tmp))


if __name__ == "__main__":
    main()
