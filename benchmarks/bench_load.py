"""Throughput under load: 16 and 64 concurrent clients against one and two replicas of the
decision service, for the embedded and the production profiles, beside the floor service in
the same run.

Needs a quickstart bank (`make quickstart`: features, champions, the built bundle). Every
scenario runs in a private copy of the work folder (its own log and contact state), one after
the other on the same machine:

* floor: `benchmarks/floor_service.py` (BentoML's request path answering a fixed body);
* embedded: SQLite log and contact state, the SQLite online store;
* production (`--profiles embedded,production`): Postgres log and Feast registry, Redis online
  store and contact state; a database and Redis keys of its own, dropped afterwards.

Each scenario prints decisions/s and p50 / p99 at each client count; one client's `/decide`
p50 against the floor's `/decide` p50 (the 4x target); the ratios the issue sets (16 clients:
decisions/s >= 40 % of the floor's, p99 <= 50 ms; production >= 80 % of embedded). Two
replicas are two `bentoml serve` processes on two ports, the clients split between them.

    python benchmarks/bench_load.py [--work var] [--seconds 15] [--clients 16,64]
        [--profiles embedded,production] [--replicas 1,2] [--workers 2] [--stagger-ms 0]

A profile suffixed `:alone` (`--profiles embedded:alone,embedded`) runs with
`NBA_SERVE_BATCH=1`: each `/decide` call decided alone, as before `nba.serving.batching`; the
before and after of that change in one run, one after the other; suffixed `:inline`, with
`NBA_SERVE_COMMIT_THREADS=0` (the decider waits for each batch's commit, the embedded default),
and `:deferred`, with 1 (a commit thread, the production default); suffixed `:workers=N`, with
N workers per replica instead of `--workers`; suffixed `:nofreeze`, with
`NBA_SERVE_GC_FREEZE=0` (the workers' loaded heap left to the full garbage collections, as
before). A profile suffixed `@TAG`
(`--profiles embedded@4fkekchr3c3aiax4,embedded`) serves that Bento of the bank's model store
(`nba_decision:TAG`, built by an earlier `nba bundle build`) instead of the latest: code before
and after a change, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decide import Client, bodies, private_work, prologue, q, sequential  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def replicas(settings, logs: Path, count: int, *, workers: int, target: str | None = None,
             env: dict[str, str] | None = None, procs_out: list | None = None) -> Iterator[list[int]]:
    """`count` servers of the same settings on free ports, ready; stopped on leaving (their
    processes appended to `procs_out`)."""
    import socket

    from nba.serving.run import start, stop, wait_ready

    procs: list = procs_out if procs_out is not None else []
    ports: list[int] = []
    try:
        for i in range(count):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            proc = start(settings, port=port, workers=workers, log_file=logs / f"replica-{i}.log", target=target,
                         extra_env=env)
            procs.append(proc)
            wait_ready(f"http://127.0.0.1:{port}", proc, timeout=240)
            ports.append(port)
        yield ports
    finally:
        for p in procs:
            stop(p)


def worker_cpu(procs: list) -> list[float]:
    """CPU seconds of each worker of these servers so far. A worker takes the connections it
    accepts for their lifetime, and one that wakes first can accept a whole burst of them: the
    split shows whether a run's clients were shared by its workers or held by one."""
    import psutil

    from nba.serving.run import server_processes

    out = []
    for proc in procs:
        for pid in server_processes(proc)[1:]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = psutil.Process(pid).cpu_times()
                out.append(t.user + t.system)
    return out


async def load(ports: list[int], customers: list[int], clients: int, seconds: float,
               stagger_ms: float = 0.0) -> tuple[int, list[float], int]:
    """`clients` keep-alive clients, split over the ports, for `seconds`; each opens its
    connection `stagger_ms` after the one before (0: all at once, a burst one worker may take)."""
    stop = time.perf_counter() + seconds
    lat: list[float] = []
    errors = 0

    async def client(i: int) -> None:
        nonlocal errors
        await asyncio.sleep(i * stagger_ms / 1e3)
        conn = Client(ports[i % len(ports)])
        gen = bodies(customers, 500 + i)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            status, _ = await conn.request("/decide", next(gen))
            lat.append(time.perf_counter() - t0)
            errors += status != 200
        conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return len(lat), lat, errors


def production_env(settings, tag: str):
    """A Postgres database and Redis keys of the run's own, the feature store applied and
    materialised into them; the settings and the server environment."""
    import shutil

    import psycopg

    from nba.features import store

    repo = settings.work / "feature_repo"  # a copy of its own: staging the production store must not touch the bank's
    if repo.is_symlink():
        target = repo.resolve()
        repo.unlink()
        shutil.copytree(target, repo)
    dbname = f"nba_bench_{tag}"
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    prod = settings.model_copy(update={"profile": "production",
                                       "postgres_dsn": settings.postgres_dsn.rsplit("/", 1)[0] + "/" + dbname,
                                       "redis_url": "redis://127.0.0.1:6379/8", "redis_prefix": f"nba-bench-{tag}"})
    store.apply(prod)
    store.materialize(prod)
    from nba.stores.postgres import migrate

    migrate(prod.decision_log_dsn)  # what `nba stores migrate` does
    env = {"NBA_PROFILE": "production", "NBA_POSTGRES_DSN": prod.postgres_dsn, "NBA_REDIS_URL": prod.redis_url,
           "NBA_REDIS_PREFIX": prod.redis_prefix}
    return prod, env, dbname


def drop_production(settings, prod, dbname: str) -> None:
    import psycopg
    import redis

    from nba.features import store

    with contextlib.suppress(Exception):
        store.get_store(prod).teardown()
    r = redis.Redis.from_url(prod.redis_url)
    keys = list(r.scan_iter(f"{prod.redis_prefix}:*", count=1000))
    if keys:
        r.delete(*keys)
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "var")
    parser.add_argument("--mlflow", type=Path, default=ROOT / "mlflow")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--requests", type=int, default=1000, help="one client's sequential requests")
    parser.add_argument("--clients", default="16,64")
    parser.add_argument("--profiles", default="embedded,production")
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--workers", type=int, default=2, help="workers per replica")
    parser.add_argument("--stagger-ms", type=float, default=0.0,
                        help="open the clients' connections this far apart (a worker keeps the connections it "
                             "accepts, and the first awake can take a whole burst: the CPU split shows it)")
    args = parser.parse_args()
    bank = prologue(args.work)
    from nba.serving.run import example_request
    from nba.settings import Settings

    clients = [int(c) for c in args.clients.split(",")]
    counts = [int(c) for c in args.replicas.split(",")]
    base = Settings(work_dir=bank, mlflow_dir=args.mlflow.resolve())
    customers = list(range(1, 30_001))
    _, ts = example_request(base)
    print(f"bank {bank}; {args.workers} workers per replica; {args.seconds:.0f} s per point; decision time {ts}")
    rows: dict[tuple[str, int, int], tuple[float, float, float]] = {}
    one: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="nba-load-") as tmp_s:
        tmp = Path(tmp_s)
        scenarios: list[tuple[str, str | None]] = [("floor", "benchmarks.floor_service:FloorService")]
        for p in args.profiles.split(","):
            tag = p.partition("@")[2]
            scenarios.append((p, f"nba_decision:{tag}" if tag else None))
        for index, (name, target) in enumerate(scenarios):  # a profile may be named twice: runs alternated
            profile, _, mode = name.partition("@")[0].partition(":")
            folder = tmp / f"{index}-{name.replace(':', '-').replace('@', '-')}"
            work = private_work(bank, folder)
            settings = base.model_copy(update={"work_dir": work})
            env = None
            cleanup = None
            workers = args.workers
            if profile == "production":
                settings, env, dbname = production_env(settings, uuid.uuid4().hex[:8])
                cleanup = (settings, dbname)
            if mode == "alone":
                env = {**(env or {}), "NBA_SERVE_BATCH": "1"}
            elif mode in ("inline", "deferred"):
                env = {**(env or {}), "NBA_SERVE_COMMIT_THREADS": "0" if mode == "inline" else "1"}
            elif mode == "nofreeze":
                env = {**(env or {}), "NBA_SERVE_GC_FREEZE": "0"}
            elif mode.startswith("workers=") and mode[8:].isdigit() and int(mode[8:]) > 0:
                workers = int(mode[8:])
            elif mode:
                raise SystemExit(f"--profiles: '{name}': the suffixes are ':alone', ':inline', ':deferred', "
                                 "':nofreeze' and ':workers=N'")
            try:
                for count in (counts if name != "floor" else [1, *[c for c in counts if c > 1]]):
                    procs: list = []
                    with replicas(settings, folder, count, workers=workers, target=target,
                                  env=env, procs_out=procs) as ports:
                        if count == 1:
                            dec, _, _ = asyncio.run(sequential(ports[0], customers, args.requests))
                            one[name] = q(dec, .5)
                            print(f"{name}: one client /decide p50 {one[name]:.2f} ms, p99 {q(dec, .99):.2f} ms")
                        for c in clients:
                            before = worker_cpu(procs)
                            n, lat, errors = asyncio.run(load(ports, customers, c, args.seconds, args.stagger_ms))
                            split = " / ".join(f"{b - a:.1f}" for a, b in zip(before, worker_cpu(procs), strict=True))
                            rows[(name, count, c)] = (n / args.seconds, q(lat, .5), q(lat, .99))
                            print(f"{name}, {count} replica(s), {c} clients: {n / args.seconds:,.0f} decisions/s, "
                                  f"p50 {q(lat, .5):.1f} ms, p99 {q(lat, .99):.1f} ms, errors {errors}; "
                                  f"workers' CPU s {split}; load {os.getloadavg()[0]:.1f}", flush=True)
            finally:
                if cleanup is not None:
                    drop_production(base, *cleanup)
    print("\ntargets (16 clients; floor on the same replica count):")
    for (name, count, c), (rate, _, p99) in sorted(rows.items()):
        if name == "floor" or c != 16:
            continue
        floor = rows.get(("floor", count, 16))
        if floor:
            print(f"  {name}, {count} replica(s): {rate / floor[0]:.0%} of the floor's decisions/s (target >= 40 %), "
                  f"p99 {p99:.1f} ms (target <= 50 ms)")
        embedded = (name.replace("production", "embedded", 1), count, 16)  # with the same suffixes
        if name.startswith("production") and embedded in rows:
            print(f"  {name} / {embedded[0]}, {count} replica(s): {rate / rows[embedded][0]:.0%} (target >= 80 %)")
    for name in one:
        if name != "floor" and "floor" in one:
            print(f"  {name}: one client /decide p50 = {one[name] / one['floor']:.1f} x the floor's (target <= 4)")


if __name__ == "__main__":
    main()
