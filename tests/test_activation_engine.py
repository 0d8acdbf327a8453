"""The real engine (trained champions, Feast online store, the bundle) with `deliver`: a
decision that shows an action on an outbound channel writes its outbox message with its
decision, `/decide`-style and batch alike, and the delivery worker sends them to a real
webhook receiver on loopback while the engine keeps deciding."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from nba.records import NO_ACTION
from nba.settings import Settings
from nba.stores.decisions import read_log
from nba.stores.outbox import Outbox
from tests.serving_env import DECISION_EPOCH, build_served_bank
from tests.test_activation import Receiver, _worker

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def served(feature_env: Settings, tmp_path_factory) -> Settings:
    return build_served_bank(feature_env, tmp_path_factory.mktemp("served_activation"))


@pytest.fixture(scope="module")
def engine(served: Settings):
    from nba.serving.bundle import load_engine

    eng = load_engine(served)
    yield eng
    eng.log.close()


@pytest.fixture(scope="module")
def customers(served: Settings) -> np.ndarray:
    profile = pd.read_parquet(served.feast_repo / "data" / "profile.parquet", columns=["customer_id", "event_timestamp"])
    last = profile[profile["event_timestamp"] == profile["event_timestamp"].max()]
    return np.sort(last["customer_id"].to_numpy())


def test_decisions_that_deliver_write_their_messages_and_the_worker_sends_them(served, engine, customers):
    from nba.activation.worker import outbox_path
    from nba.serving.engine import DecisionRequest

    ids = customers[:300]
    reqs = [DecisionRequest(int(c), "email", timestamp=DECISION_EPOCH, deliver=True) for c in ids]
    out = engine.decide(reqs, source="trigger:test")
    outbox = Outbox(outbox_path(served))
    messages = {m["decision_id"]: m for m in outbox.messages(limit=10_000)}
    shown = {d["decision_id"]: d for d in out if d["outbox"] is not None}
    assert set(messages) == set(shown) and len(shown) > 20  # one message per decision with an action
    log = read_log(served.decision_log_dir)
    dec = log.decisions.set_index("decision_id")
    for did, m in messages.items():
        assert dec.loc[did, "action_id"] == m["action_id"] != NO_ACTION and m["channel"] == "email"
        assert shown[did]["outbox"]["idempotency_key"] == m["idempotency_key"] == f"{did}-{m['action_id']}"
    silent = [d for d in out if d["outbox"] is None]
    assert silent and all(dec.loc[d["decision_id"], "action_id"] == NO_ACTION for d in silent)
    assert all(not d["actions"] for d in silent) and all(d["actions"] for d in shown.values())
    # a channel a customer is on (web, inbound) sends nothing; nor does a request without deliver
    web = engine.decide([DecisionRequest(int(c), "web", timestamp=DECISION_EPOCH, deliver=True) for c in ids[:20]])
    plain = engine.decide([DecisionRequest(int(c), "sms", timestamp=DECISION_EPOCH) for c in ids[:20]])
    assert all(d["outbox"] is None for d in web) and all("outbox" not in d for d in plain)
    assert outbox.count() == len(messages)

    receiver = Receiver()
    try:
        worker = _worker(served, receiver.url)
        worker.run(once=True)
        # the engine keeps deciding while the worker sends
        more = engine.decide([DecisionRequest(int(c), "email", timestamp=DECISION_EPOCH + 86400, deliver=True)
                              for c in customers[300:400]])
        worker.run(once=True)
        worker.close()
    finally:
        receiver.close()
    new = {d["outbox"]["idempotency_key"] for d in more if d["outbox"]}
    assert set(receiver.effects) == {m["idempotency_key"] for m in messages.values()} | new
    assert outbox.status(now=time.time())["email"]["delivered"] == len(messages) + len(new)
    outbox.close()


def test_a_batch_that_delivers_writes_its_messages_with_its_index(served, engine, customers, tmp_path):
    from nba.activation.worker import outbox_path
    from nba.serving.batch import decide_batch

    outbox = Outbox(outbox_path(served))
    before = outbox.count()
    ids = customers[400:700]
    pd.DataFrame({"customer_id": ids}).to_parquet(tmp_path / "c.parquet")
    summary = decide_batch(served, tmp_path / "c.parquet", "email", tmp_path / "out.parquet",
                           timestamp=DECISION_EPOCH + 2 * 86400, engine=engine, deliver=True, source="scan:test")
    ranked = pd.read_parquet(tmp_path / "out.parquet")
    sent = ranked[(ranked["rank"] == 1) & (ranked["action_id"] != NO_ACTION)]
    assert summary.messages == len(sent) == outbox.count() - before > 20
    batch = {m["decision_id"]: m for m in outbox.messages(limit=10_000) if m["decision_id"] in set(sent["decision_id"])}
    assert len(batch) == len(sent)
    assert all(batch[d]["action_id"] == a for d, a in zip(sent["decision_id"], sent["action_id"], strict=True))
    outbox.close()


def test_nba_serve_runs_the_delivery_worker_beside_the_service_and_stops_it(served, engine, customers, tmp_path):
    """`nba serve` the way a user starts it: the worker it starts sends what the decisions put
    in the outbox meanwhile; Ctrl-C stops both."""
    import os
    import re
    import signal
    import subprocess
    import sys

    import psutil

    from nba.serving.engine import DecisionRequest
    from tests.serving_env import call, free_port

    receiver = Receiver()
    port = free_port()
    env = {**os.environ, "NBA_HOME": str(served.home), "NBA_WORK_DIR": str(served.work),
           "NBA_MLFLOW_DIR": str(served.mlflow_path), "NBA_SERVE_WORKERS": "1", "NBA_WEBHOOK_URL": receiver.url}
    proc = subprocess.Popen([sys.executable, "-m", "nba", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    printed = []
    try:
        for line in proc.stdout:
            printed.append(line)
            if line.startswith("press Ctrl-C"):
                break
        text = "".join(printed)
        match = re.search(r"delivery worker:\s+pid (\d+)", text)
        assert match, text[-3000:]
        worker_pid = int(match.group(1))
        assert psutil.pid_exists(worker_pid)
        status, _ = call(f"http://127.0.0.1:{port}", "/readyz")
        assert status == 200
        out = engine.decide([DecisionRequest(int(c), "email", timestamp=DECISION_EPOCH + 3 * 86400, deliver=True)
                             for c in customers[700:800]])
        keys = {d["outbox"]["idempotency_key"] for d in out if d["outbox"]}
        assert len(keys) > 5
        deadline = time.monotonic() + 60
        while not keys <= set(receiver.effects):
            assert time.monotonic() < deadline, f"the worker of nba serve did not deliver: {text[-2000:]}"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=60)
        receiver.close()
    deadline = time.monotonic() + 20
    while psutil.pid_exists(worker_pid) and psutil.Process(worker_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the delivery worker outlived nba serve"
        time.sleep(0.1)
