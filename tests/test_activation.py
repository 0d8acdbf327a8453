"""Outbound activation: decisions that send an action write an outbox message in their own
transaction, and the delivery worker sends each at least once through real connectors (a
webhook receiver on loopback inside the test, a Redis stream, JSONL files, NATS JetStream),
retrying, dead-lettering with the reason, and losing nothing when it is SIGKILLed mid-batch."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from nba.activation.config import Retry, WebhookSpec, channel_directions, load_activation
from nba.activation.connectors import FileConnector, RedisStreamConnector, WebhookConnector, build_connectors
from nba.activation.worker import DeliveryWorker, backoff_s, make_worker, outbox_path
from nba.decisioning.core import ContactHistory, MatrixScorer, decide
from nba.decisioning.tables import decision_tables
from nba.errors import ConfigError
from nba.settings import Settings
from nba.stores.decisions import open_decision_log
from nba.stores.decisions.sqlite import DecisionLog
from nba.stores.outbox import Outbox
from nba.stores.outbox_postgres import open_outbox
from tests.conftest import PROJECT_ROOT
from tests.serving_env import free_port, reply_json
from tests.test_decisioning import NOW, _bank, _batch, _customer

REDIS_URL = "redis://127.0.0.1:6379/5"  # this module's Redis database (HELPERS.md)


# --- a real webhook receiver ---------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """`ThreadingHTTPServer` with a listen backlog a real receiver has (nginx: 511). With the
    standard library's 5, the worker's 16 concurrent first connections overflow the accept
    queue: 13 to 16 of 160 such requests waited 1 s for a retransmitted handshake, none with
    128. A handshake is retried after 1, 3 and 7 s, so three drops in a row outlast the
    connector's 5 s timeout: a run under load once delivered 19 of 20."""

    request_queue_size = 128
    daemon_threads = True


class Receiver:
    """An HTTP server on loopback that honours the Idempotency-Key: each key's effect happens
    once, however often it is delivered. `fail_first` answers 500 to each key's first n
    attempts; `status` answers that status to everything; `delay_s` is the work per request."""

    def __init__(self, *, fail_first: int = 0, status: int = 200, delay_s: float = 0.0):
        self.fail_first = fail_first
        self.status = status
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.effects: dict[str, dict] = {}  # key -> body of the one effect
        self.seen: Counter[str] = Counter()  # key -> requests received
        self.times: dict[str, list[float]] = {}
        self.headers: dict[str, dict[str, str]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver
            disable_nagle_algorithm = True  # as real servers do: no 40 ms wait for a delayed ACK

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                key = self.headers.get("Idempotency-Key")
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                with receiver.lock:
                    receiver.seen[key] += 1
                    receiver.times.setdefault(key, []).append(time.time())
                    receiver.headers[key] = dict(self.headers)
                    if receiver.status != 200:
                        code = receiver.status
                    elif receiver.seen[key] <= receiver.fail_first:
                        code = 500
                    else:
                        code = 200
                        receiver.effects.setdefault(key, json.loads(body))  # the dedup: one effect per key
                answer = b'{"ok": true}' if code == 200 else b'{"error": "try later"}'
                reply_json(self, code, answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


# --- decisions that deliver ----------------------------------------------------------------


def _decisions(cat, n: int, channel: str, *, deliver: Any = True, first_id: int = 0, k: int = 2):
    """n real decisions of the core for customers to whom most actions apply; their tables."""
    rows = [_customer() for _ in range(n)]
    ids = np.arange(first_id, first_id + n, dtype=np.int64) + 1000
    ch = np.full(n, cat.channel_names.index(channel))
    d = decide(cat, _batch(rows), n, channel=ch, now=np.full(n, NOW), history=ContactHistory.empty(),
               scorer=MatrixScorer(np.full((n, len(cat.actions)), 0.3)), customer_ids=ids,
               decision_keys=np.arange(first_id, first_id + n) + 1, k=k)
    dids = [f"{i:032x}" for i in range(first_id, first_id + n)]
    tables = decision_tables(cat, d, decision_ids=dids, customer_ids=ids, channel=ch, now=NOW,
                             features_missing=np.zeros(n), k=k, source="test", env=_batch(rows),
                             model_versions={"nba-churn": "1"}, deliver=deliver)
    return d, tables


@pytest.fixture
def cat(tmp_path):
    return _bank(tmp_path, experiment__holdout_share=0.1, experiment__exploration_share=0.05)


@pytest.fixture
def env(tmp_path) -> Settings:
    return Settings(home=PROJECT_ROOT, work_dir=tmp_path / "var", mlflow_dir=tmp_path / "mlflow")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def log_env(request, env: Settings):
    """The settings of a log on the embedded SQLite file, or on Postgres (a database of the
    test's own: the production profile's outbox, claimed and settled by the same worker)."""
    if request.param == "sqlite":
        yield env
        return
    from tests.pg_env import pg_database

    with pg_database("test_activation") as dsn:
        yield env.model_copy(update={"log_store": "postgres", "log_dsn": dsn})


def _fill(settings: Settings, cat, n: int, channels=("email",)) -> list[str]:
    """n decisions per channel with their outbox messages in the settings' decision log; the keys."""
    log = open_decision_log(settings)
    keys: list[str] = []
    for i, channel in enumerate(channels):
        _, tables = _decisions(cat, n, channel, first_id=i * n)
        log.append(tables)
        keys += tables.outbox.pylist("idempotency_key")
    log.close()
    return keys


def _worker(settings: Settings, url: str | None = None, *, retry: Retry | None = None, **kw) -> DeliveryWorker:
    directions = channel_directions(settings.home)
    activation = load_activation(settings.home, directions, webhook_url=url)
    retry_by = {c: retry or r for c, r in activation.retry.items()}
    return DeliveryWorker(open_outbox(settings), build_connectors(activation, settings), retry_by, **kw)


def _drain(worker: DeliveryWorker, until, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"not done after {timeout} s: {worker.outbox.status(now=time.time())}"
        if worker.cycle() == 0:
            time.sleep(0.01)


# --- the outbox is written with its decision --------------------------------------------------


def test_deliver_writes_one_message_per_decision_that_sends_an_action(cat, tmp_path):
    d, tables = _decisions(cat, 400, "email")
    dec = tables.decisions
    shown = np.asarray(d.shown) >= 0
    groups = np.asarray(dec.pylist("experiment_group"))
    assert (groups == "holdout").sum() > 10 and not shown[groups == "holdout"].any()  # the hold-out shows nothing
    out = tables.outbox
    assert out.n == int(shown.sum()) > 300  # one per decision with an action; none for "no action"
    assert set(out.pylist("decision_id")) == {did for did, s in zip(dec.pylist("decision_id"), shown, strict=True) if s}
    assert "do_nothing" not in out.pylist("action_id")
    assert set(out.pylist("state")) == {"pending"} and set(out.pylist("channel")) == {"email"}
    first = json.loads(out.pylist("payload")[0])
    i = dec.pylist("decision_id").index(first["decision_id"])
    assert first["action_id"] == dec.pylist("action_id")[i] == out.pylist("action_id")[0]
    assert first["actions"][0] == first["action_id"] and len(first["actions"]) <= 2
    assert first["customer_id"] == dec.pylist("customer_id")[i] and first["decided_at"] == "2025-12-01T09:00:00.000Z"
    assert out.pylist("idempotency_key")[0] == f"{first['decision_id']}-{first['action_id']}"

    assert _decisions(cat, 50, "web")[1].outbox is None  # an inbound channel: nothing is sent
    assert _decisions(cat, 50, "email", deliver=False)[1].outbox is None
    flags = np.arange(50) % 2 == 0  # per decision, as a mixed call of /decide and a trigger passes them
    _, mixed = _decisions(cat, 50, "email", deliver=flags)
    sent = {int(did, 16) for did in mixed.outbox.pylist("decision_id")}
    assert sent and all(i % 2 == 0 for i in sent)


def test_the_outbox_message_is_in_the_transaction_of_its_decision(cat, tmp_path):
    log = DecisionLog(tmp_path / "log")
    _, tables = _decisions(cat, 30, "sms")
    key = tables.outbox.pylist("idempotency_key")[-1]
    db = sqlite3.connect(tmp_path / "log" / "log.db")
    # a failure between the decision rows and the outbox rows: the last message's key is taken
    db.execute("INSERT INTO outbox SELECT ?, 'x', 1, 'a', 'sms', 0, '{}', 'delivered', 1, 0, 0, NULL, NULL, 0",
               (key,))
    db.commit()
    with pytest.raises(sqlite3.IntegrityError):
        log.append(tables)
    count = lambda table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: E731
    assert (count("decisions"), count("candidates"), count("outbox")) == (0, 0, 1)  # neither was written
    db.execute("DELETE FROM outbox")
    db.commit()
    assert log.append(tables) == 30
    assert count("decisions") == 30 and count("outbox") == tables.outbox.n > 20

    # the batch path: its index and its messages in one transaction, too
    _, batch = _decisions(cat, 20, "email", first_id=100)
    dids = batch.decisions.pylist("decision_id")
    bad = batch.outbox.pylist("idempotency_key")[0]
    db.execute("INSERT INTO outbox SELECT ?, 'x', 1, 'a', 'sms', 0, '{}', 'delivered', 1, 0, 0, NULL, NULL, 0", (bad,))
    db.commit()
    with pytest.raises(sqlite3.IntegrityError):
        log.index_batch("b1", dids, batch.decisions.pylist("customer_id"), "email", [batch.outbox])
    assert count("batch_index") == 0
    db.execute("DELETE FROM outbox WHERE idempotency_key = ?", (bad,))
    db.commit()
    log.index_batch("b1", dids, batch.decisions.pylist("customer_id"), "email", [batch.outbox])
    assert count("batch_index") == 20 and count("outbox") == tables.outbox.n + batch.outbox.n
    log.close()
    db.close()


# --- webhook ------------------------------------------------------------------------------


def test_a_webhook_gets_each_message_once_with_its_idempotency_key_and_receipts(log_env, cat, receiver):
    keys = _fill(log_env, cat, 300, ("email", "sms"))
    worker = _worker(log_env, receiver.url)
    totals = worker.run(once=True)
    worker.close()
    assert totals.delivered == len(keys) and totals.failed == totals.dead == 0
    assert sorted(receiver.effects) == sorted(keys) and set(receiver.seen.values()) == {1}
    key = keys[0]
    body = receiver.effects[key]
    assert receiver.headers[key]["Idempotency-Key"] == key == body["idempotency_key"]
    assert receiver.headers[key]["Content-Type"] == "application/json"
    assert body["channel"] == "email" and body["attempt"] == 1 and body["payload"]["action_id"] == body["action_id"]
    outbox = open_outbox(log_env)
    status = outbox.status(now=time.time())
    by_channel = Counter(b["channel"] for b in receiver.effects.values())
    assert {c: (s["delivered"], s["pending"], s["failed"], s["dead"]) for c, s in status.items()} == {
        c: (by_channel[c], 0, 0, 0) for c in ("email", "sms")}
    assert by_channel["email"] > 250 and by_channel["sms"] > 250
    receipt = outbox.receipts(key)
    assert [(r["attempt"], r["outcome"], r["connector"], r["detail"]) for r in receipt] == [
        (1, "delivered", "webhook", "HTTP 200")]
    assert outbox.messages(state="delivered", limit=1)[0]["delivered_at"] > NOW
    outbox.close()


def test_500s_are_retried_with_backoff_then_delivered(log_env, cat):
    receiver = Receiver(fail_first=2)  # each key: 500, 500, then 200
    try:
        keys = _fill(log_env, cat, 40)
        worker = _worker(log_env, receiver.url, retry=Retry(max_attempts=5, backoff_s=0.2, max_backoff_s=5))
        _drain(worker, lambda: worker.outbox.count("delivered") == len(keys))
        failed_meanwhile = worker.outbox.messages(state="failed")
        receipts = worker.outbox.receipts(keys[0])
        worker.close()
    finally:
        receiver.close()
    assert not failed_meanwhile
    assert sorted(receiver.effects) == sorted(keys) and set(receiver.seen.values()) == {3}
    assert [(r["attempt"], r["outcome"]) for r in receipts] == [(1, "failed"), (2, "failed"), (3, "delivered")]
    assert receipts[0]["detail"].startswith("HTTP 500")
    gaps = np.diff(receiver.times[keys[0]])
    assert gaps[0] >= 0.2 * 0.5 and gaps[1] >= 0.4 * 0.5  # exponential: ~0.2 s, then ~0.4 s (x 0.5-1.5)
    retry = Retry(backoff_s=1, max_backoff_s=10)
    pauses = {a: [backoff_s(retry, a) for _ in range(200)] for a in (1, 2, 3, 4, 5, 6)}
    assert 0.5 <= min(pauses[1]) < max(pauses[1]) <= 1.5  # jitter around 1 s
    assert min(pauses[3]) >= 2.0 and max(pauses[3]) <= 6.0  # 4 s x 0.5-1.5
    assert min(pauses[6]) >= 5.0 and max(pauses[6]) <= 15.0  # capped at 10 s x 0.5-1.5


def test_a_receiver_that_is_down_dead_letters_with_the_reason_while_decisions_go_on(log_env, cat):
    keys = _fill(log_env, cat, 30)
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    worker = _worker(log_env, down, retry=Retry(max_attempts=3, backoff_s=0.05, max_backoff_s=1), poll_s=0.01)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    log = open_decision_log(log_env)  # the decision side keeps answering meanwhile
    took, more = [], 0
    for i in range(20):
        _, tables = _decisions(cat, 1, "email", first_id=10_000 + i)
        t0 = time.perf_counter()
        assert log.append(tables) == 1
        took.append(time.perf_counter() - t0)
        more += tables.outbox.n if tables.outbox is not None else 0
    assert more > 10
    deadline = time.monotonic() + 30
    while worker.outbox.count("dead") < len(keys) + more:
        assert time.monotonic() < deadline, worker.outbox.status(now=time.time())
        time.sleep(0.05)
    worker.stopping.set()
    thread.join(10)
    dead = worker.outbox.messages(state="dead", limit=1000)
    receipts = worker.outbox.receipts(keys[0])
    worker.close()
    log.close()
    assert max(took) < 5.0  # every decision was logged while the worker failed (no timing claim beyond that)
    assert len(dead) == len(keys) + more and all(m["attempts"] == 3 for m in dead)
    assert "ConnectionRefusedError" in dead[0]["error"] and "attempt 3 of 3" in dead[0]["error"]
    assert [r["outcome"] for r in receipts] == ["failed", "failed", "dead"]


def test_a_4xx_answer_is_dead_at_once_and_retry_dead_sends_it_again(log_env, cat):
    keys = _fill(log_env, cat, 10)
    receiver = Receiver(status=422)
    try:
        worker = _worker(log_env, receiver.url)
        worker.run(once=True)
        dead = worker.outbox.messages(state="dead", limit=100)
        assert len(dead) == len(keys) and all(m["attempts"] == 1 for m in dead)
        assert "HTTP 422" in dead[0]["error"] and "not retried" in dead[0]["error"]
        receiver.status = 200
        assert worker.outbox.retry_dead() == len(keys)
        worker.run(once=True)
        assert worker.outbox.count("delivered") == len(keys) and sorted(receiver.effects) == sorted(keys)
        worker.close()
    finally:
        receiver.close()


# --- Redis stream, files, NATS -------------------------------------------------------------


@pytest.mark.integration
def test_a_redis_stream_per_channel_gets_one_entry_per_message(env, cat, tmp_path):
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"nba-test-{os.getpid()}"
    streams = {c: f"{prefix}:activation:{c}" for c in ("email", "sms")}
    client.delete(*streams.values())
    home = _home(tmp_path, {"channels": {c: {"connector": "redis_stream", "url": REDIS_URL, "stream": s}
                                         for c, s in streams.items()}})
    settings = env.model_copy(update={"home": home})
    try:
        keys = _fill(settings, cat, 120, ("email", "sms"))
        worker = make_worker(settings)
        assert all(isinstance(worker.connectors[c], RedisStreamConnector) for c in streams)
        assert isinstance(worker.connectors["push"], FileConnector)  # not listed: the embedded default
        totals = worker.run(once=True)
        receipt = worker.outbox.receipts(keys[0])[0]
        worker.close()
        assert totals.delivered == len(keys)
        entries = {c: client.xrange(s) for c, s in streams.items()}
        got = {c: [e[1][b"idempotency_key"].decode() for e in es] for c, es in entries.items()}
        assert sorted(got["email"] + got["sms"]) == sorted(keys)
        assert {c: len(v) for c, v in got.items()} == {c: r["delivered"] for c, r in totals.per_channel.items()}
        first = entries["email"][0][1]
        assert json.loads(first[b"payload"])["channel"] == "email" and first[b"channel"] == b"email"
        assert receipt["detail"] == f"{streams['email']} {entries['email'][0][0].decode()}"
    finally:
        client.delete(*streams.values())
        client.close()


def test_the_embedded_default_writes_one_jsonl_file_per_channel(env, cat):
    keys = _fill(env, cat, 50, ("email", "call_centre"))
    worker = make_worker(env)  # serving/activation.yaml: every channel to its file
    assert {c.kind for c in worker.connectors.values()} == {"file"}
    worker.run(once=True)
    worker.close()
    lines = {c: [json.loads(x) for x in (env.activation_dir / f"{c}.jsonl").read_text().splitlines()]
             for c in ("email", "call_centre")}
    assert sorted(m["idempotency_key"] for ls in lines.values() for m in ls) == sorted(keys)
    assert {m["channel"] for m in lines["call_centre"]} == {"call_centre"}
    assert not (env.activation_dir / "sms.jsonl").exists()


@pytest.mark.integration
def test_nats_jetstream_gets_one_subject_per_channel_and_drops_duplicates(env, cat, tmp_path):
    import asyncio

    import nats

    stream = f"NBA_TEST_{os.getpid()}"
    home = _home(tmp_path, {"channels": {c: {"connector": "nats", "stream": stream,
                                             "subject": f"nbatest{os.getpid()}.activation.{c}"}
                                         for c in ("email", "sms")}})
    settings = env.model_copy(update={"home": home})

    async def counts() -> dict[str, int]:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        info = await js.stream_info(stream, subjects_filter=">")
        await nc.close()
        return {s.split(".")[-1]: n for s, n in (info.state.subjects or {}).items()}

    async def delete() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        with contextlib.suppress(Exception):  # not created
            await nc.jetstream().delete_stream(stream)
        await nc.close()

    try:
        keys = _fill(settings, cat, 60, ("email", "sms"))
        worker = make_worker(settings)
        totals = worker.run(once=True)
        assert totals.delivered == len(keys)
        assert asyncio.run(counts()) == {c: r["delivered"] for c, r in totals.per_channel.items()}
        # the same messages again (a worker killed after publishing, before settling): deduplicated
        worker.outbox.db.submit(lambda conn: conn.execute("UPDATE outbox SET state = 'pending'"))
        worker.run(once=True)
        receipt = worker.outbox.receipts(keys[0])
        worker.close()
        assert asyncio.run(counts()) == {c: r["delivered"] for c, r in totals.per_channel.items()}
        assert receipt[0]["detail"].startswith(stream) and receipt[1]["detail"].endswith("(duplicate)")
    finally:
        asyncio.run(delete())


# --- a SIGKILL mid-batch ----------------------------------------------------------------------


def test_a_sigkill_mid_batch_loses_no_message_and_the_receiver_sees_each_once(env, cat):
    from nba.serving.run import start_worker, stop_worker

    receiver = Receiver(delay_s=0.005)
    try:
        keys = _fill(env, cat, 1600, ("email", "sms"))
        n = len(keys)
        extra = {"NBA_WEBHOOK_URL": receiver.url, "NBA_WORK_DIR": str(env.work)}
        args = ("--batch", "400", "--lease", "2", "--poll", "0.05")
        proc = start_worker(env, args=args, extra_env=extra, log_file=env.work / "worker1.log")
        deadline = time.monotonic() + 60
        while len(receiver.effects) < 500:  # into its second batch
            assert proc.poll() is None, (env.work / "worker1.log").read_text()
            assert time.monotonic() < deadline, "the worker delivered nothing"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        outbox = Outbox(outbox_path(env))
        at_kill = outbox.status(now=time.time())
        assert sum(s["delivered"] for s in at_kill.values()) < n
        assert sum(s["in_flight"] for s in at_kill.values()) > 0  # the killed batch's claims are still held
        proc = start_worker(env, args=args, extra_env=extra, log_file=env.work / "worker2.log")
        deadline = time.monotonic() + 120
        while outbox.count("delivered") < n:
            assert proc.poll() is None, (env.work / "worker2.log").read_text()
            assert time.monotonic() < deadline, outbox.status(now=time.time())
            time.sleep(0.05)
        stop_worker(proc)
        assert proc.returncode == 0, (env.work / "worker2.log").read_text()
        final = outbox.status(now=time.time())
        outbox.close()
    finally:
        receiver.close()
    assert sorted(receiver.effects) == sorted(keys)  # every message had its one effect
    assert sum(s["delivered"] for s in final.values()) == n and not any(s["dead"] + s["failed"] for s in final.values())
    # the killed batch's sent-but-unsettled messages were sent again: at least once, and the key
    # made it once (the worker was killed with between 100 and 400 of its second batch sent)
    redelivered = sum(receiver.seen.values()) - n
    assert 0 < redelivered <= 400 and max(receiver.seen.values()) == 2


# --- bad activation files ----------------------------------------------------------------------


def _home(tmp_path: Path, activation: dict | str) -> Path:
    home = tmp_path / "home"
    (home / "serving").mkdir(parents=True, exist_ok=True)
    for name in ("actions.yaml", "policies.yaml", "events.yaml"):
        (home / "serving" / name).write_text((PROJECT_ROOT / "serving" / name).read_text())
    text = activation if isinstance(activation, str) else yaml.safe_dump(activation)
    (home / "serving" / "activation.yaml").write_text(text)
    return home


@pytest.mark.parametrize(("activation", "fragments"), [
    ({"channels": {"fax": {"connector": "file"}}}, ["channels.fax", "'fax' is not a channel", "email"]),
    ({"channels": {"web": {"connector": "file"}}}, ["channels.web", "inbound"]),
    ({"channels": {"email": {"connector": "pigeon"}}}, ["channels.email", "pigeon"]),
    ({"channels": {"email": {"connector": "webhook", "url": "http://x/h", "retires": 3}}},
     ["channels.email.webhook.retires", "unknown key"]),
    ({"channels": {"email": {"connector": "webhook", "url": "ftp://x/h"}}}, ["channels.email", "not an http(s) URL"]),
    ({"channels": {"email": {"connector": "webhook"}}}, ["channels.email.webhook.url", "Field required"]),
    ({"retry": {"max_attempts": 0}}, ["retry.max_attempts", "greater than or equal to 1"]),
])
def test_a_bad_activation_file_is_refused_at_load_naming_the_file_entry_and_reason(tmp_path, activation, fragments):
    home = _home(tmp_path, activation)
    with pytest.raises(ConfigError) as err:
        load_activation(home, channel_directions(home))
    msg = str(err.value)
    assert str(home / "serving" / "activation.yaml") in msg
    for f in fragments:
        assert f in msg, msg


def test_the_cli_refuses_a_bad_file_before_delivering_and_reports_status(env, cat, tmp_path, receiver):
    home = _home(tmp_path, {"channels": {"web": {"connector": "file"}}})
    base = {**os.environ, "NBA_HOME": str(home), "NBA_WORK_DIR": str(env.work), "PYTHONPATH": str(PROJECT_ROOT)}
    bad = subprocess.run([sys.executable, "-m", "nba", "activation", "run", "--once"], env=base, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "channels.web" in bad.stderr and "inbound" in bad.stderr
    assert not outbox_path(env).exists()  # refused before the outbox was opened

    keys = _fill(env, cat, 20)
    ok = {**base, "NBA_HOME": str(PROJECT_ROOT), "NBA_WEBHOOK_URL": receiver.url}
    run = subprocess.run([sys.executable, "-m", "nba", "activation", "run", "--once"], env=ok, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"{len(keys)} delivered" in run.stdout and "NBA_WEBHOOK_URL" in run.stdout
    status = subprocess.run([sys.executable, "-m", "nba", "activation", "status", "--json"], env=ok,
                            capture_output=True, text=True, timeout=120)
    body = json.loads(status.stdout)
    assert body["channels"]["email"]["delivered"] == len(keys) and body["channels"]["email"]["pending"] == 0
    table = subprocess.run([sys.executable, "-m", "nba", "activation", "status"], env=ok, capture_output=True,
                           text=True, timeout=120).stdout
    assert "email" in table and "delivered" in table and str(len(keys)) in table


def test_erasing_a_customer_removes_their_messages_and_receipts(log_env, cat, receiver):
    keys = _fill(log_env, cat, 20)
    worker = _worker(log_env, receiver.url)
    worker.run(once=True)
    outbox = worker.outbox
    customer = outbox.messages(limit=1)[0]["customer_id"]
    mine = [m for m in outbox.messages(limit=100) if m["customer_id"] == customer]
    assert outbox.erase_customer(customer) == 2 * len(mine)  # each message and its one receipt
    assert all(m["customer_id"] != customer for m in outbox.messages(limit=100))
    assert outbox.count() == len(keys) - len(mine) and outbox.receipts(mine[0]["idempotency_key"]) == []
    assert outbox.erase_customer(customer) == 0
    worker.close()


def test_the_webhook_override_and_shared_connectors(env):
    activation = load_activation(env.home, channel_directions(env.home), webhook_url="http://127.0.0.1:9/x")
    assert set(activation.channels) == {"email", "sms", "push", "call_centre"}  # every outbound channel, not web
    assert all(isinstance(s, WebhookSpec) and s.url == "http://127.0.0.1:9/x" for s in activation.channels.values())
    connectors = build_connectors(activation, env)
    assert len({id(c) for c in connectors.values()}) == 1 and isinstance(connectors["sms"], WebhookConnector)
    # a claim outlives a batch whose every request times out (500 / 16 concurrent x 5 s x 2 tries)
    worker = DeliveryWorker(Outbox(outbox_path(env)), connectors, activation.retry, batch=500)
    assert worker.lease_s == 32 * 5 * 2 + 5
    assert DeliveryWorker(worker.outbox, connectors, activation.retry, lease_s=2.0).lease_s == 2.0
    worker.close()
    assert isinstance(build_connectors(load_activation(env.home, channel_directions(env.home)), env)["email"],
                      FileConnector)
