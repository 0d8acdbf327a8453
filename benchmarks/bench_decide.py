"""The decision service over HTTP: latency of one client, throughput of 16, a 200-action catalog.

Needs a work folder with a materialised feature store, trained champions and a built bundle
(`make quickstart`). Starts the built Bento with `bentoml serve` on a free localhost port
(3 workers, the default, features from the SQLite online store, contact state and decision log in a private
copy of the work folder so the bank's own are untouched), then:

1. one client, sequential keep-alive requests: `/decide` p50 / p99 and, interleaved in the same
   run, `/healthz` p50 and the ratio of the two;
2. 16 concurrent keep-alive clients for `--seconds`: decisions per second and latency;
3. the floor: `benchmarks/floor_service.py`, the same BentoML configuration and `/decide`
   signature answering a fixed body, one client as in 1 (what BentoML's request path costs
   before any deciding, against its own `/healthz`);
4. the same catalog grown to 200 actions (each of the ten bank actions in 20 variants with their
   own rules; the variants share the ten registered propensity models), bundled and served:
   `/decide` p50.

The client is asyncio on raw sockets (about 0.1 ms of CPU per request) and shares the two
cores with the server.

    python benchmarks/bench_decide.py [--work var] [--requests 2000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TIMESTAMP = "2025-12-01T09:00:00Z"
CHANNELS = ("web", "email", "sms", "push", "call_centre")


def private_work(bank: Path, own: Path, share_bundle: bool = True) -> Path:
    """A work folder sharing the bank's feature store (and models and bundle), with its own
    decision log and contact state: a benchmark must not cap the bank's customers."""
    own.mkdir(parents=True)
    for name in ("feature_repo", "sim", *(("bentoml", "bundle") if share_bundle else ())):
        if (bank / name).exists():
            (own / name).symlink_to(bank / name, target_is_directory=True)
    return own


def prologue(work: Path) -> Path:
    """Telemetry off and a quiet console; print the machine line; the bank's folder."""
    from nba.console import quiet_libraries
    from nba.settings import disable_telemetry

    disable_telemetry()
    quiet_libraries()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"load {os.getloadavg()[0]:.1f}")
    return work.resolve()


@contextlib.contextmanager
def serving(settings, log: Path, *, target: str | None = None, timeout: float = 180) -> Iterator[int]:
    """The built Bento (or `target`) under `bentoml serve` on a free localhost port, ready;
    stopped on leaving."""
    from nba.serving.run import start, stop, wait_ready

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = start(settings, port=port, log_file=log, target=target)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=timeout)
        yield port
    finally:
        stop(proc)


def one_client(label: str, decide: list[float], health: list[float], timings: dict[str, float]) -> None:
    print(f"{label}, one client, {len(decide):,} sequential /decide: p50 {q(decide, .5):.2f} ms, "
          f"p99 {q(decide, .99):.2f} ms; /healthz p50 {q(health, .5):.2f} ms; ratio /decide : /healthz p50 = "
          f"{q(decide, .5) / q(health, .5):.2f}")
    if timings:
        print("  inside the engine (median ms): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))


def q(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))] * 1e3


async def _request(reader, writer, path: str, body: bytes | None) -> tuple[int, bytes, bool]:
    """One exchange on an open connection: the status, the body, and whether the server closes
    the connection after it (`connection: close`)."""
    if body is None:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    else:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"content-length:\s*(\d+)", head, re.I)
    payload = await reader.readexactly(int(m.group(1))) if m else b""
    return status, payload, re.search(rb"\r\nconnection:\s*close", head, re.I) is not None


class Client:
    """A keep-alive HTTP/1.1 client on raw sockets (about 0.1 ms of CPU per request) that opens
    a new connection when the server closed the last one, as every HTTP client does (the
    service recycles a connection after `NBA_SERVE_KEEPALIVE_REQUESTS` requests)."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        status, payload, closing = await _request(self.reader, self.writer, path, body)
        if closing:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def bodies(customers: list[int], seed: int):
    rng = random.Random(seed)
    while True:
        yield json.dumps({"customer_id": rng.choice(customers), "channel": rng.choice(CHANNELS),
                          "timestamp": TIMESTAMP}).encode()


async def sequential(port: int, customers: list[int], n: int) -> tuple[list[float], list[float], dict]:
    conn = Client(port)
    gen = bodies(customers, 1)
    decide, health = [], []
    timings: dict[str, list[float]] = {}
    for i in range(n + 200):
        t0 = time.perf_counter()
        status, payload = await conn.request("/decide", next(gen))
        t1 = time.perf_counter()
        assert status == 200, payload[:300]
        await conn.request("/healthz", None)
        t2 = time.perf_counter()
        if i >= 200:  # warm-up
            decide.append(t1 - t0)
            health.append(t2 - t1)
            for k, v in json.loads(payload)["timing"].items():
                timings.setdefault(k, []).append(v)
    conn.close()
    return decide, health, {k: statistics.median(v) for k, v in timings.items()}


async def concurrent(port: int, customers: list[int], clients: int, seconds: float) -> tuple[int, list[float], int]:
    stop = time.perf_counter() + seconds
    lat: list[float] = []
    errors = 0

    async def client(seed: int) -> None:
        nonlocal errors
        conn = Client(port)
        gen = bodies(customers, seed)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            status, _ = await conn.request("/decide", next(gen))
            lat.append(time.perf_counter() - t0)
            errors += status != 200
        conn.close()

    await asyncio.gather(*(client(100 + i) for i in range(clients)))
    return len(lat), lat, errors


def catalog_200(home: Path) -> None:
    """serving/actions.yaml with 20 variants of each bank action (distinct rules, values, levers)."""
    src = yaml.safe_load((ROOT / "serving" / "actions.yaml").read_text())
    out = []
    for a in src["actions"]:
        for v in range(20):
            # a copy of its own: shared lists would be written as YAML aliases, which the loader refuses
            b = copy.deepcopy({k: val for k, val in a.items() if k != "uplift_model"})
            b["id"] = f"{a['id']}_{v:02d}"
            b["suitability"] = [*([a["suitability"]] if isinstance(a.get("suitability"), str) else
                                  a.get("suitability", [])), f"credit_score >= {300 + 7 * v}"]
            b["lever"] = round(a.get("lever", 0.0) + 0.05 * v, 2)
            if not isinstance(a["value"], str):
                b["value"] = a["value"] * (1 + 0.01 * v)
            out.append(b)
    (home / "serving" / "actions.yaml").write_text(yaml.safe_dump({"version": "bank-200", "actions": out},
                                                                   sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "var")
    parser.add_argument("--mlflow", type=Path, default=ROOT / "mlflow", help="the tracking store of the bank's models")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--skip-200", action="store_true", help="leave out the 200-action catalog (3 minutes)")
    args = parser.parse_args()

    import pandas as pd

    from nba.serving.bundle import build
    from nba.settings import Settings

    bank = prologue(args.work)
    profile = pd.read_parquet(bank / "feature_repo" / "data" / "profile.parquet",
                              columns=["customer_id", "event_timestamp"])
    customers = profile.loc[profile["event_timestamp"] == profile["event_timestamp"].max(), "customer_id"].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        settings = Settings(home=ROOT, work_dir=private_work(bank, tmp / "w10"), mlflow_dir=args.mlflow)
        with serving(settings, tmp / "server.log") as port:
            one_client("10 actions", *asyncio.run(sequential(port, customers, args.requests)))
            n, lat, errors = asyncio.run(concurrent(port, customers, args.clients, args.seconds))
            print(f"{args.clients} concurrent clients for {args.seconds:.0f} s: {n / args.seconds:,.0f} decisions/s, "
                  f"p50 {q(lat, .5):.1f} ms, p99 {q(lat, .99):.1f} ms, {errors} errors")
        with serving(settings, tmp / "floor.log", target="benchmarks.floor_service:FloorService", timeout=120) as port:
            one_client("floor (a @bentoml.api /decide answering a fixed body)",
                       *asyncio.run(sequential(port, customers, args.requests)))
        if args.skip_200:
            return

        home = tmp / "home200"
        (home / "serving").mkdir(parents=True)
        for name in ("features", "training", "evaluation"):
            (home / name).symlink_to(ROOT / name, target_is_directory=True)
        # readiness checks the event ingestion (POST /events), which needs the declaration
        for name in ("policies.yaml", "events.yaml"):  # triggers name the bank's own actions: none here
            shutil.copyfile(ROOT / "serving" / name, home / "serving" / name)
        catalog_200(home)
        s200 = Settings(home=home, work_dir=private_work(bank, tmp / "w200", share_bundle=False),
                        mlflow_dir=args.mlflow)
        result = build(s200)
        print(f"200-action bundle {result.bento_tag} (catalog {result.catalog_version})")
        with serving(s200, tmp / "server200.log", timeout=240) as port:
            one_client("200 actions", *asyncio.run(sequential(port, customers, args.requests // 2)))


if __name__ == "__main__":
    main()
