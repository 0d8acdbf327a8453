"""Delivery throughput of the outbox worker: messages/s to a local webhook receiver (and, for
comparison, to JSONL files and a Redis stream).

Writes N outbox messages (the decision log's SQLite file, as a decision with `deliver` writes
them: a realistic ~450-byte payload each) and times `DeliveryWorker.run(once=True)` until
every one is delivered and settled (claimed with a lease, sent, receipt and state committed
with synchronous=FULL). The webhook receiver is a separate process on loopback
(`http.server.ThreadingHTTPServer`, HTTP/1.1 keep-alive) that deduplicates by Idempotency-Key;
the run checks it counted exactly one effect per message. Target: >= 500 messages/s.

    flock /tmp/nba-heavy.lock python benchmarks/bench_activation.py [--messages 20000] [--repeats 3]
        [--concurrency 16] [--batch 500] [--connectors webhook,file,redis]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REDIS_URL = "redis://127.0.0.1:6379/5"


def _receiver(conn) -> None:  # a process of its own: the receiver does not share the worker's GIL
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    lock = threading.Lock()
    effects: set[str] = set()
    seen = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as real servers do (uvicorn, nginx): no 40 ms delayed-ACK stall

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                seen[0] += 1
                effects.add(self.headers["Idempotency-Key"])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_GET(self) -> None:  # noqa: N802
            with lock:
                body = json.dumps({"effects": len(effects), "requests": seen[0]}).encode()
                if self.path == "/reset":
                    effects.clear()
                    seen[0] = 0
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # as a real receiver (the standard library's 5 drops concurrent first handshakes)
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    conn.send(server.server_address[1])
    server.serve_forever()


def _get(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def _fill(db: Path, n: int) -> None:
    from nba.records import OUTBOX
    from nba.stores.decisions.sqlite import DecisionLog
    from nba.stores.sqlite import insert_sql

    log = DecisionLog(db.parent)  # the decision log's file, with the outbox in it
    channels = ("email", "sms", "push", "call_centre")
    rows = []
    for i in range(n):
        did = os.urandom(16).hex()
        ch = channels[i % 4]
        payload = json.dumps({"decision_id": did, "customer_id": 100_000 + i, "channel": ch, "action_id": "rewards_card",
                              "name": "Rewards credit card", "issue": "sales", "group": "cards",
                              "actions": ["rewards_card", "travel_insurance"], "decided_at": "2025-12-01T09:00:00.000Z",
                              "experiment_group": "nba", "probability": 0.95, "propensity": 0.0731, "value": 120.0,
                              "lever": 0.0, "priority": 8.772, "source": "trigger:abandoned_application",
                              "catalog_version": "bank-1+9cbc1c4b"}, sort_keys=True)
        rows.append((f"{did}-rewards_card", did, 100_000 + i, "rewards_card", ch, 1_764_579_600.0, payload, "pending",
                     0, 0.0, 0.0, None, None, None))
    log.db.submit(lambda conn: conn.executemany(insert_sql(OUTBOX), rows))
    log.close()


def _run(kind: str, n: int, batch: int, concurrency: int, url: str, tmp: Path, i: int) -> tuple[float, int]:
    from nba.activation.config import RedisStreamSpec, Retry, WebhookSpec
    from nba.activation.connectors import FileConnector, RedisStreamConnector, WebhookConnector
    from nba.activation.worker import DeliveryWorker
    from nba.stores.outbox import Outbox

    db = tmp / f"{kind}-{i}" / "log.db"
    _fill(db, n)
    channels = ("email", "sms", "push", "call_centre")
    if kind == "webhook":
        hook = WebhookConnector(WebhookSpec(connector="webhook", url=url, concurrency=concurrency))
        connectors = dict.fromkeys(channels, hook)
    elif kind == "file":
        connectors = {c: FileConnector(db.parent / f"{c}.jsonl") for c in channels}
    else:
        import redis

        connectors = {c: RedisStreamConnector(RedisStreamSpec(connector="redis_stream"), REDIS_URL,
                                              f"nba-bench:activation:{c}") for c in channels}
        redis.Redis.from_url(REDIS_URL).delete(*(f"nba-bench:activation:{c}" for c in channels))
    worker = DeliveryWorker(Outbox(db), connectors, dict.fromkeys(channels, Retry()), batch=batch)
    t0 = time.perf_counter()
    totals = worker.run(once=True)
    seconds = time.perf_counter() - t0
    delivered = worker.outbox.count("delivered")
    worker.close()
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        client.delete(*(f"nba-bench:activation:{c}" for c in channels))
    assert totals.delivered == delivered == n, (totals, delivered)
    return seconds, delivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--connectors", default="webhook,file,redis")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(child,), daemon=True)
    proc.start()
    port = parent.recv()
    base = f"http://127.0.0.1:{port}"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{args.messages:,} messages per run, batch {args.batch}, webhook concurrency {args.concurrency}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for kind in args.connectors.split(","):
                rates = []
                for i in range(args.repeats):
                    _get(f"{base}/reset")
                    seconds, n = _run(kind, args.messages, args.batch, args.concurrency, f"{base}/hook", Path(tmp), i)
                    rates.append(n / seconds)
                    if kind == "webhook":
                        got = _get(f"{base}/count")
                        assert got["effects"] == args.messages, got  # one effect per message
                        extra = f"; receiver: {got['effects']:,} effects, {got['requests']:,} requests"
                    else:
                        extra = ""
                    print(f"  {kind:<8} run {i + 1}: {n:,} delivered in {seconds:.2f} s = {n / seconds:,.0f} msg/s{extra}")
                print(f"{kind}: median {statistics.median(rates):,.0f} msg/s (min {min(rates):,.0f}, "
                      f"max {max(rates):,.0f})")
    finally:
        proc.terminate()
        proc.join(5)


if __name__ == "__main__":
    main()
