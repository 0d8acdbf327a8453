"""Triggers: event -> trigger -> decision latency in process, and a scheduled scan of 1,000,000
customers.

Needs a work folder with a materialised feature store and a built bundle (`nba quickstart
--no-serve`). The latency part calls `DecisionEngine.ingest` with one event at a time (what
`POST /events`, `nba events ingest` and `nba events consume` run): validation, the event log
(SQLite, durable), the Feast push, online features and scores, the triggers' conditions, the
dedup claim (SQLite), the decision through the whole core with the channel chosen among the
trigger's, the decision log with the decision's outbox message in the same transaction
(SQLite, durable) and the contacts; the clock stops once a reader of its own sees the
committed outbox row. Half the events fire (a payment 31 days late to a customer in arrears
the payment plan reaches, a marriage), half are near misses (30 days late, a new job).

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


def _reachable_in_arrears(engine, ids: np.ndarray, now: float) -> np.ndarray:
    """Customers a payment 31 days late sends something to: the payment-default trigger's CLV
    bound, its action's applicability (arrears) and a consent on one of its channels."""
    cols, found = engine.features.read(ids.tolist(), int(now))
    env, _ = engine.environment(ids.tolist(), cols, found)

    def a(name: str) -> np.ndarray:
        return np.asarray(env[name], dtype=np.float64)

    ok = ((a("clv") <= 1000) & ((a("missed_payments_90d") >= 1) | (a("collections_open") == 1))
          & (((a("consent_email") == 1) & (a("has_email") == 1)) | (a("consent_sms") == 1)
             | (a("consent_call_centre") == 1)))
    return ids[ok]


def latency(work: Path, events: int, tmp: Path) -> None:
    import uuid
    from datetime import datetime

    import pandas as pd

    from nba.serving.bundle import load_engine
    from nba.settings import Settings
    from nba.stores.outbox import Outbox

    own = private_work(work, tmp / "latency")
    settings = Settings(home=ROOT, work_dir=own)
    engine = load_engine(settings)
    engine.warm()
    now = datetime.fromisoformat(TIMESTAMP.replace("Z", "+00:00")).timestamp()
    profile = pd.read_parquet(work / "feature_repo" / "data" / "profile.parquet", columns=["customer_id"])
    ids = np.unique(profile["customer_id"].to_numpy())
    rng = np.random.default_rng(7)
    arrears = rng.permutation(_reachable_in_arrears(engine, ids, now))
    others = rng.permutation(np.setdiff1d(ids, arrears))
    run = uuid.uuid4().hex[:6]
    # a firing payment (to a customer it sends a payment plan to), a marriage, and their near misses
    kinds = [("payment_missed", {"days_late": 31, "amount": 90.0}, arrears),
             ("life_event", {"kind": "marriage"}, others),
             ("payment_missed", {"days_late": 30, "amount": 90.0}, others),
             ("life_event", {"kind": "new_job"}, others)]
    used = {0: 0, 1: 0, 2: 0, 3: 0}
    engine.ingest({"event_id": f"warm-{run}", "customer_id": int(ids[0]), "type": "life_event", "timestamp": now,
                   "properties": {"kind": "new_job"}})
    box = Outbox(engine.log.path)  # the outbox is in the decision log's file
    sent, quiet, missed = [], [], []
    stages: dict[str, list[float]] = {}
    for i in range(events):
        j = i % 4
        type_, props, pool = kinds[j]
        if j == 0 and used[0] >= pool.size:
            continue  # every customer in arrears has had one
        cid = int(pool[used[j] % pool.size] if j else pool[used[0]])
        used[j] += 1
        ev = {"event_id": f"{run}-{i}", "customer_id": cid, "type": type_, "timestamp": now, "properties": props}
        t0 = time.perf_counter()
        result = engine.ingest(ev)  # stored, pushed, triggered, decided, logged with its outbox row
        dec = result.triggers[0]["decision"] if result.triggers else None
        if dec is not None and dec.get("outbox"):
            rows = box.of_decisions([dec["decision_id"]])  # a reader of its own sees the committed row
            dt = (time.perf_counter() - t0) * 1e3
            assert len(rows) == 1 and rows[0]["state"] == "pending", rows
            sent.append(dt)
            stored = sum(result.timing.values())  # validated, in the event log, pushed
            stages.setdefault("from the stored event", []).append(dt - stored)
            # what `on_events` spends before the decision: features read, scores, conditions, dedup claim
            stages.setdefault("triggers", []).append(dt - stored - dec["timing"]["total_ms"])
            for k, v in {**{f"event {k}": v for k, v in result.timing.items()},
                         **{f"decision {k}": v for k, v in dec["timing"].items()}}.items():
                stages.setdefault(k, []).append(v)
        else:
            dt = (time.perf_counter() - t0) * 1e3
            (quiet if j < 2 else missed).append(dt)
    for name, xs in (("to the committed outbox row", sent), ("fired, nothing to send (do nothing)", quiet),
                     ("near misses (no trigger)", missed)):
        if not xs:
            print(f"{name}: none")
            continue
        x = np.array(xs)
        print(f"event -> trigger -> decision -> {name}: {x.size} events, p50 {np.percentile(x, 50):.2f} ms, "
              f"p90 {np.percentile(x, 90):.2f} ms, p99 {np.percentile(x, 99):.2f} ms, max {x.max():.1f} ms")
    if stages:
        x = np.array(stages.pop("from the stored event"))
        print(f"  of which from the stored event (triggers, decision, log + outbox, contacts; what POST /events "
              f"does after storing and pushing): p50 {np.percentile(x, 50):.2f} ms, p99 {np.percentile(x, 99):.2f} ms")
        print("  stages, p50 ms: " + ", ".join(f"{k.replace('_ms', '')} {np.percentile(v, 50):.2f}"
                                             for k, v in stages.items() if not k.endswith("total_ms")))
    print(f"  {len(sent)} outbox rows committed (each read back by a reader of its own before the clock stops); "
          f"{arrears.size} customers in arrears reachable")


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
    # the other streaming features the feature service stores, as a customer without such events
    # has them: without every stored column the scan reads the online store, which does not know
    # these new ids (every decision then "do nothing"; its summary says "features from")
    from nba.triggers import STREAMING_NUMBERS, STREAMING_STRINGS

    for c in STREAMING_STRINGS:
        if c not in frame.columns:
            frame[c] = None
    for c in (*STREAMING_NUMBERS, "application_started_s"):
        if c not in frame.columns:
            frame[c] = np.nan
    frame.to_parquet(path, index=False)
    env = {**os.environ, "NBA_WORK_DIR": str(own), "NBA_HOME": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nba", "triggers", "scan", "--customers", str(path), "--at",
                           TIMESTAMP], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"triggers scan failed:\n{proc.stderr[-3000:]}")
    if "features from the file;" not in proc.stdout:
        raise SystemExit(f"the scan did not take the population's features from the file:\n{proc.stdout[-2000:]}")
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
