"""The quickstart's always-on step: a simulated day of events through POST /events of a served
bundle, the triggers' decisions, and the delivery of their outbox (`nba.simulation.replay`).

Needs a work folder with a materialised feature store and a built bundle (`nba quickstart
--no-serve`). The day is the simulator's `events.parquet` (its newest day) when the work folder
has one; otherwise a synthetic day in the same contract: each customer of the bank draws a
Poisson number of events (`--rate` a customer a day, about what the simulator's month gives),
their types weighted as below, properties drawn at random (a payment late by 1-60 days, an
outage on one service, a geofence 0-1,000 m from a branch...). The service runs on a free
loopback port with its own decision log and event log (the feature store is the bank's).

    python benchmarks/bench_replay.py [--work var] [--rate 0.33] [--concurrency 2] [--batch 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_decide import private_work, prologue

ROOT = Path(__file__).resolve().parents[1]
DAY = "2025-11-30"  # the bank's last day before the decision moment the other benchmarks use

# event type -> share of a day's events
MIX = {"page_view": 0.30, "app_login": 0.34, "card_search": 0.05, "application_started": 0.03,
       "application_completed": 0.01, "geofence_entered": 0.08, "payment_missed": 0.03, "payment_made": 0.03,
       "outage": 0.05, "life_event": 0.01, "service_contact": 0.04, "complaint": 0.01, "consent_changed": 0.02}


def synthetic_day(ids: np.ndarray, rate: float, seed: int = 5):
    """A day of events for `ids` in the events.parquet contract (one column per property)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    counts = rng.poisson(rate, ids.size)
    cid = np.repeat(ids, counts)
    n = cid.size
    types = np.array(list(MIX))
    typ = rng.choice(types, size=n, p=np.array(list(MIX.values())) / sum(MIX.values()))
    ts = pd.Timestamp(DAY, tz="UTC") + pd.to_timedelta(rng.uniform(0, 86_399, n), unit="s")
    products = np.array(["credit_card", "card_upgrade", "mortgage", "savings", "personal_loan", "home_insurance"])
    frame = pd.DataFrame({"customer_id": cid, "type": typ, "timestamp": ts})

    def where(*names: str) -> np.ndarray:
        return np.isin(typ, names)

    frame["product"] = np.where(where("page_view", "application_started", "application_completed"),
                                rng.choice(products, n), None)
    frame["application_id"] = np.where(where("application_started", "application_completed"),
                                       (cid % 997).astype(str), None)
    frame["device"] = np.where(where("app_login"), rng.choice(["ios", "android", "web"], n), None)
    frame["branch_id"] = np.where(where("geofence_entered"), "b-" + (cid % 50).astype(str), None)
    frame["distance_m"] = np.where(where("geofence_entered"), rng.uniform(0, 1000, n).round(1), np.nan)
    frame["days_late"] = np.where(where("payment_missed"), rng.integers(1, 61, n), np.nan)
    frame["amount"] = np.where(where("payment_missed", "payment_made"), rng.uniform(10, 500, n).round(2), np.nan)
    frame["service"] = np.where(where("outage"), rng.choice(["card_payments", "online_banking", "mobile_app", "atm",
                                                             "transfers"], n), None)
    frame["kind"] = np.where(where("life_event"), rng.choice(["marriage", "birth", "home_purchase", "new_job"], n),
                             None)
    frame["channel"] = np.where(where("consent_changed"), rng.choice(["email", "sms", "push", "call_centre"], n),
                                None)
    frame["granted"] = np.where(where("consent_changed"), rng.random(n) < 0.5, None)
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def main() -> None:
    import pandas as pd

    from nba.settings import Settings
    from nba.simulation import replay

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "var")
    parser.add_argument("--rate", type=float, default=0.33, help="events a customer a day (synthetic day)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--batch", type=int, default=replay.BATCH)
    args = parser.parse_args()
    work = prologue(args.work)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        own = private_work(work, Path(tmp) / "var")
        settings = Settings(home=ROOT, work_dir=own)
        sim_events = replay.events_path(Settings(home=ROOT, work_dir=work))
        if sim_events.is_file():
            frame = replay.read_events(sim_events)
            print(f"the simulator's events: {len(frame):,} in {sim_events}")
        else:
            profile = pd.read_parquet(work / "feature_repo" / "data" / "profile.parquet", columns=["customer_id"])
            ids = np.unique(profile["customer_id"].to_numpy())
            frame = synthetic_day(ids, args.rate)
            print(f"no {sim_events}: a synthetic day of {len(frame):,} events for {ids.size:,} customers")
        t0 = time.perf_counter()
        with replay.served(settings, log_file=Path(tmp) / "service.log") as url:
            started = time.perf_counter() - t0
            s = replay.replay_day(settings, url, frame, batch=args.batch, concurrency=args.concurrency)
        total = time.perf_counter() - t0
        print(f"service start {started:.1f} s; replay {s.post_s:.1f} s ({s.events / max(s.post_s, 1e-9):,.0f} "
              f"events/s, {args.concurrency} connections, batches of "
              f"{args.batch}); delivery {s.deliver_s:.1f} s; the whole step {total:.1f} s")
        for line in replay.summary_lines(s):
            print(f"  {line}")


if __name__ == "__main__":
    main()
