"""Event ingestion over HTTP (`POST /events`): the list form's events/s, single events/s from 8
clients, and the time from an event's POST until a decision sees it.

Needs a bank with trained champions and a built bundle (`make quickstart`: `--work var`); with
`--build` it makes a small one first in a temporary folder (4,000 simulated customers, the
champions trained as the serving tests train them: about 2 minutes). Serves the Bento with
`bentoml serve` (3 workers, the default) on a private copy of the work folder (its own event
log, decision log, contact state and online store: the bank's are untouched), then:

1. one client posting lists of `--list` events (a mix of the declared types over random
   customers): events/s, and the p50 / p99 of a call;
2. 8 concurrent keep-alive clients posting one event per call for `--seconds`: events/s, p50,
   p99;
3. read-your-writes, one client: a page view for a customer, then at once `/decide` for that
   customer; the event's POST returns once its features are in the online store, so its
   latency is the time until a decision sees it (p50 / p99), and the decision log is checked
   afterwards: every decision counted the page view it followed (`page_views_7d`).

The client is asyncio on raw sockets and shares the two cores with the server.

    python benchmarks/bench_events.py [--work var | --build] [--seconds 20] [--list 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from bench_decide import Client, prologue, q, serving  # one HTTP client and one way to serve

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_764_579_600.0  # 2025-12-01T09:00:00Z: the simulated bank's "now"
TIMESTAMP = "2025-12-01T09:00:00Z"


def private_copy(bank: Path, own: Path) -> Path:
    """A work folder sharing the bank's models and bundle, with its own copy of the feature
    repository (pushes write its online store) and its own logs and state."""
    own.mkdir(parents=True)
    for name in ("sim", "bentoml", "bundle"):
        if (bank / name).exists():
            (own / name).symlink_to(bank / name, target_is_directory=True)
    shutil.copytree(bank / "feature_repo", own / "feature_repo", symlinks=True)
    return own


def build_bank(root: Path):
    """A small served bank (the serving tests' recipe)."""
    import sys

    sys.path.insert(0, str(ROOT))
    from nba.data.simulator import simulate_to_dir
    from nba.features import store
    from nba.settings import Settings
    from tests.serving_env import build_served_bank

    env = Settings(home=ROOT, work_dir=root / "env" / "var", mlflow_dir=root / "env" / "mlflow")
    simulate_to_dir(customers=4_000, seed=7, out_dir=env.sim_dir, progress=False)
    store.apply(env)
    return build_served_bank(env, root / "bank")


def event(rng: random.Random, customers: list[int], i: int) -> dict:
    cid = rng.choice(customers)
    ts = NOW - rng.uniform(60, 6 * 86400)
    kind = rng.random()
    if kind < 0.5:
        return {"customer_id": cid, "type": "page_view", "timestamp": ts, "event_id": f"b{i}",
                "properties": {"product": rng.choice(["credit_card", "mortgage", "savings", "personal_loan"])}}
    if kind < 0.8:
        return {"customer_id": cid, "type": "app_login", "timestamp": ts, "event_id": f"b{i}", "properties": {}}
    if kind < 0.9:
        return {"customer_id": cid, "type": "outage", "timestamp": ts, "event_id": f"b{i}",
                "properties": {"service": "mobile_app", "minutes": 20}}
    return {"customer_id": cid, "type": "card_search", "timestamp": ts, "event_id": f"b{i}", "properties": {}}


async def lists(port: int, customers: list[int], size: int, seconds: float, start: int) -> tuple[int, list[float]]:
    rng = random.Random(1)
    conn = Client(port)
    stop = time.perf_counter() + seconds
    lat: list[float] = []
    n = start
    while time.perf_counter() < stop:
        body = json.dumps([event(rng, customers, n + j) for j in range(size)]).encode()
        t0 = time.perf_counter()
        status, payload = await conn.request("/events", body)
        lat.append(time.perf_counter() - t0)
        assert status == 200, payload[:300]
        assert json.loads(payload)["stored"] == size
        n += size
    conn.close()
    return n - start, lat


async def singles(port: int, customers: list[int], clients: int, seconds: float, start: int
                  ) -> tuple[int, list[float], int]:
    stop = time.perf_counter() + seconds
    lat: list[float] = []
    errors = 0
    counter = [start]

    async def client(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        conn = Client(port)
        while time.perf_counter() < stop:
            counter[0] += 1
            body = json.dumps(event(rng, customers, counter[0])).encode()
            t0 = time.perf_counter()
            status, _ = await conn.request("/events", body)
            lat.append(time.perf_counter() - t0)
            errors += status != 200
        conn.close()

    await asyncio.gather(*(client(100 + i) for i in range(clients)))
    return len(lat), lat, errors


async def read_your_writes(port: int, customers: list[int], n: int) -> tuple[list[float], list[float], dict]:
    """A page view, then at once /decide; returns the POST latencies, event + decide latencies,
    and decision id -> the page views the customer had by then."""
    conn = Client(port)
    seen: dict[int, int] = {}
    expected: dict[str, int] = {}
    ev_lat, total = [], []
    for i in range(n):
        cid = customers[i % len(customers)]
        body = json.dumps({"customer_id": cid, "type": "page_view", "timestamp": NOW - 3600 - i,
                           "event_id": f"ryw{i}", "properties": {"product": "home_insurance"}}).encode()
        t0 = time.perf_counter()
        status, payload = await conn.request("/events", body)
        t1 = time.perf_counter()
        assert status == 200, payload[:300]
        status, payload = await conn.request("/decide", json.dumps(
            {"customer_id": cid, "channel": "web", "timestamp": TIMESTAMP}).encode())
        t2 = time.perf_counter()
        assert status == 200, payload[:300]
        seen[cid] = seen.get(cid, 0) + 1
        expected[json.loads(payload)["decision_id"]] = seen[cid]
        if i >= 20:  # warm-up
            ev_lat.append(t1 - t0)
            total.append(t2 - t0)
    conn.close()
    return ev_lat, total, expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "var")
    parser.add_argument("--mlflow", type=Path, default=ROOT / "mlflow")
    parser.add_argument("--build", action="store_true", help="build a small bank first (about 2 minutes)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--list", type=int, default=500, help="events per call in the list form")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ryw", type=int, default=500, help="event-then-decide pairs")
    args = parser.parse_args()

    import pandas as pd

    from nba.settings import Settings
    from nba.stores.decisions import read_log

    prologue(args.work)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.build:
            bank_settings = build_bank(tmp)
            bank, home, mlflow = bank_settings.work, bank_settings.home, bank_settings.mlflow_path
        else:
            bank, home, mlflow = args.work.resolve(), ROOT, args.mlflow
        profile = pd.read_parquet(bank / "feature_repo" / "data" / "profile.parquet",
                                  columns=["customer_id", "event_timestamp"])
        customers = profile.loc[profile["event_timestamp"] == profile["event_timestamp"].max(),
                                "customer_id"].tolist()
        settings = Settings(home=home, work_dir=private_copy(bank, tmp / "w"), mlflow_dir=mlflow)
        with serving(settings, tmp / "server.log") as port:
            n, lat = asyncio.run(lists(port, customers, args.list, args.seconds, 0))
            print(f"list form, one client, {args.list} events a call for {args.seconds:.0f} s: "
                  f"{n / args.seconds:,.0f} events/s; a call p50 {q(lat, .5):.0f} ms, p99 {q(lat, .99):.0f} ms")
            n1, lat1, errors = asyncio.run(singles(port, customers, args.clients, args.seconds, 10_000_000))
            print(f"single events, {args.clients} clients for {args.seconds:.0f} s: {n1 / args.seconds:,.0f} events/s, "
                  f"p50 {q(lat1, .5):.1f} ms, p99 {q(lat1, .99):.1f} ms, {errors} errors")
            ev, total, expected = asyncio.run(read_your_writes(port, customers[:200], args.ryw))
            print(f"event to decision, one client, {len(ev)} pairs: the event's POST (its features online on return) "
                  f"p50 {q(ev, .5):.1f} ms, p99 {q(ev, .99):.1f} ms; event + /decide p50 {q(total, .5):.1f} ms, "
                  f"p99 {q(total, .99):.1f} ms")
        feats = read_log(settings.decision_log_dir, with_features=True).features.set_index("decision_id")
        missed = [d for d, k in expected.items() if feats.loc[d, "views_home_insurance_7d"] < k]
        print(f"  decisions that did not see the page view they followed: {len(missed)} of {len(expected)}")


if __name__ == "__main__":
    main()
