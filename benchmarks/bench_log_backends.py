"""The decision log's write path alone: decisions/s appended (each committed before `append`
returns) by 1, 8 and 16 concurrent writer threads of one process, on the embedded SQLite file
(WAL, synchronous=FULL, group commit) and on Postgres (group commit, one COPY per table for
the group, synchronous_commit as the server has it), 3 runs each, with the spread and the load.

One decision per append, as `/decide` writes it: the decision row with its features (30
values), 10 candidates, 60 filtered actions. Postgres is the loopback server (a database of
the benchmark's own, dropped after); the SQLite file is in a temporary folder on the same disk.

Writers are threads of one process (group commit within the process: the brief's figure);
with `--processes 3` they are spread over 3 processes, as the decision service's 3 workers
write (SQLite's processes then also take turns on the file's write lock; Postgres has none).
The backends' runs are interleaved, so a change of the machine's load hits both.

    python benchmarks/bench_log_backends.py [--seconds 3] [--runs 3] [--writers 1,8,16] [--processes 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nba import records  # noqa: E402
from nba.records import Coded, Columns  # noqa: E402

ADMIN_DSN = os.environ.get("NBA_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
N_CAND, N_FILT, N_FEAT = 10, 60, 30


def one_decision(did: str) -> records.DecisionTables:
    z1 = np.zeros(1, dtype=np.int64)
    dec = Columns(records.DECISION, 1, {
        "decision_id": [did], "customer_id": np.array([42]), "channel": Coded(z1, ["web"]),
        "decided_at": np.array([time.time()]), "experiment_group": Coded(z1, ["nba"]), "action_id": Coded(z1, ["a0"]),
        "probability": np.array([0.9]), "propensity": np.array([0.1]), "value": np.array([10.0]),
        "lever": np.array([0.0]), "priority": np.array([1.0]), "uplift": np.array([np.nan]),
        "n_candidates": np.array([N_CAND]), "features_missing": z1, "catalog_version": Coded(z1, ["v1"]),
        "source": Coded(z1, ["api"])})
    c = np.zeros(N_CAND, dtype=np.int64)
    cand = Columns(records.CANDIDATE, N_CAND, {
        "decision_id": Coded(c, [did]), "action_id": Coded(np.arange(N_CAND), [f"a{i}" for i in range(N_CAND)]),
        "rank": np.minimum(np.arange(N_CAND), 3), "propensity": np.full(N_CAND, 0.1), "value": np.full(N_CAND, 10.0),
        "lever": np.zeros(N_CAND), "priority": np.linspace(1, 0, N_CAND), "uplift": np.full(N_CAND, np.nan)})
    f = np.zeros(N_FILT, dtype=np.int64)
    filt = Columns(records.FILTERED, N_FILT, {
        "decision_id": Coded(f, [did]), "action_id": Coded(np.arange(N_FILT), [f"f{i}" for i in range(N_FILT)]),
        "stage": Coded(f, ["eligibility"]), "rule": Coded(f, ["age >= 18"])})
    feats = Columns(records.FEATURES, 1, {"decision_id": [did], **{f"x{i}": np.array([i * 0.5]) for i in range(N_FEAT)}})
    return records.DecisionTables(dec, cand, filt, feats, {"nba-churn": "3"})


def run(log, writers: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * writers
    barrier = threading.Barrier(writers + 1)

    def work(w: int) -> None:
        barrier.wait()
        n = 0
        while time.monotonic() < stop:
            log.append(one_decision(uuid.uuid4().hex))
            n += 1
        counts[w] = n

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


def _child(backend: str, target: str, threads: int, seconds: float, start_at: float, out: Any) -> None:
    from nba.stores.decisions.postgres import PostgresDecisionLog
    from nba.stores.decisions.sqlite import DecisionLog

    log = DecisionLog(Path(target)) if backend == "sqlite" else PostgresDecisionLog(target, Path(tempfile.mkdtemp()))
    try:
        time.sleep(max(0.0, start_at - time.time()))
        out.put(run(log, threads, seconds) * seconds)
    finally:
        log.close()


def run_processes(backend: str, target: str, writers: int, processes: int, seconds: float) -> float:
    """`writers` threads spread over `processes` processes: decisions/s of them all."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    per = [writers // processes + (1 if i < writers % processes else 0) for i in range(processes)]
    start_at = time.time() + 2.0  # every process has opened its log by then
    procs = [ctx.Process(target=_child, args=(backend, target, n, seconds, start_at, q)) for n in per if n]
    for p in procs:
        p.start()
    total = sum(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--writers", default="1,8,16")
    ap.add_argument("--processes", type=int, default=1, help="spread the writers over this many processes")
    args = ap.parse_args()
    writer_counts = [int(w) for w in args.writers.split(",")]

    from nba.stores.decisions.postgres import PostgresDecisionLog
    from nba.stores.decisions.sqlite import DecisionLog
    from nba.stores.postgres import create_database, drop_database, migrate

    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"(1/5/15 min), {os.cpu_count()} cores")
    print(f"one decision per append: {N_CAND} candidates, {N_FILT} filtered, {N_FEAT} features; "
          f"{args.runs} runs of {args.seconds:g} s; writers in {args.processes} process(es)")
    name = f"nba_bench_log_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    dsn = create_database(ADMIN_DSN, name)
    results: dict[tuple[str, int], list[float]] = {}
    try:
        migrate(dsn)
        with tempfile.TemporaryDirectory() as tmp:
            backends = {"sqlite": lambda: DecisionLog(Path(tmp) / "log"),
                        "postgres": lambda: PostgresDecisionLog(dsn, Path(tmp) / "pg")}
            targets = {"sqlite": str(Path(tmp) / "log"), "postgres": dsn}
            for w in writer_counts:
                for _ in range(args.runs):
                    for backend, make in backends.items():  # interleaved: a load change hits both
                        if args.processes > 1:
                            rate = run_processes(backend, targets[backend], w, args.processes, args.seconds)
                        else:
                            log = make()
                            try:
                                rate = run(log, w, args.seconds)
                            finally:
                                log.close()
                        results.setdefault((backend, w), []).append(rate)
                print(f"  {w:>2} writers done, load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        drop_database(ADMIN_DSN, name)
    print(f"\n{'backend':<9} {'writers':>7} {'decisions/s (median)':>21} {'min':>8} {'max':>8}  runs")
    for (backend, w), v in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{backend:<9} {w:>7} {statistics.median(v):>21.0f} {min(v):>8.0f} {max(v):>8.0f}  "
              + ", ".join(f"{x:.0f}" for x in v))
    for w in writer_counts:
        s, p = statistics.median(results[("sqlite", w)]), statistics.median(results[("postgres", w)])
        print(f"postgres / sqlite at {w:>2} writers: {p / s:.2f}")
    print(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
