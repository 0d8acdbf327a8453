"""The decision service for real: champions trained on the simulated bank, the bundle built into
a Bento, `bentoml serve` answering HTTP on a free localhost port, Feast online reads, the decision
log and the contact-policy state on disk (and in Redis)."""

from __future__ import annotations

import http.client
import json
import math
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nba import records
from nba.decisioning import experiment
from nba.schemas import ACTIONS
from nba.settings import Settings
from nba.stores.decisions import read_log
from nba.stores.policy_state.redis import RedisPolicyStore
from nba.stores.policy_state.sqlite import SqlitePolicyStore
from tests.serving_env import DECISION_EPOCH, DECISION_TIME, build_served_bank, call, reply_json, start_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def served(feature_env: Settings, tmp_path_factory) -> Settings:
    return build_served_bank(feature_env, tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def server(served: Settings, tmp_path_factory):
    srv = start_server(served, tmp_path_factory.mktemp("logs") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def customers(served: Settings) -> np.ndarray:
    """Customers with a snapshot at the bank's last month (fresh online features)."""
    profile = pd.read_parquet(served.feast_repo / "data" / "profile.parquet", columns=["customer_id", "event_timestamp"])
    last = profile[profile["event_timestamp"] == profile["event_timestamp"].max()]
    return np.sort(last["customer_id"].to_numpy())


def _catalog(settings: Settings):
    from nba.serving.bundle import load_catalog_from_bundle, read_manifest

    return load_catalog_from_bundle(settings.bundle_dir, read_manifest(settings.bundle_dir))


def _not_holdout(settings: Settings, ids: np.ndarray) -> np.ndarray:
    exp = _catalog(settings).experiment
    return ids[~experiment.in_holdout(ids, exp.salt, exp.holdout_share)]


def test_health_readiness_and_the_openapi_page(server):
    from nba.serving.run import server_processes

    status, _ = call(server.url, "/healthz")
    assert status == 200
    status, ready = call(server.url, "/readyz")
    assert status == 200 and ready["ready"] is True
    # the server was reported ready once each of its two workers was: none answers "starting" now
    answers = [call(server.url, "/readyz") for _ in range(30)]
    assert {s for s, _ in answers} == {200}
    assert {b["worker"] for _, b in answers} <= set(server_processes(server.proc))
    assert set(ready["checks"]) == {"models", "feature_store", "policy_store", "decision_log", "event_log"}
    assert f"{len(ACTIONS) + 2} models loaded" in ready["checks"]["models"]["detail"]  # propensity per action, churn, CLV
    assert "serving_v2 (67 features)" in ready["checks"]["feature_store"]["detail"]
    status, spec = call(server.url, "/docs.json")
    assert status == 200 and {"/decide", "/decide_batch", "/respond"} <= set(spec["paths"])


def test_a_keep_alive_connection_is_recycled_after_its_hundredth_request(server):
    """Its answer says `connection: close`, so the client reconnects and the workers share the
    connections (`nba.serving.connections`); the 99 before keep the connection open."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        closing = []
        for _ in range(100):
            conn.request("GET", "/livez")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            closing.append(resp.getheader("connection"))
        assert closing[:99] == [None] * 99 and closing[99] == "close"
        conn.request("GET", "/livez")  # http.client reconnects by itself, as every client does
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_server_is_ready_once_every_worker_is(tmp_path):
    """Two workers behind one port, as BentoML runs them: the second is still building its
    engine (503 "starting") for its first answers. Ready means both answered 200."""
    import http.server
    import json
    import threading

    from nba.serving.run import ServerError, wait_ready

    answered: list[tuple[int, int]] = []

    class Workers(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            worker = 101 + len(answered) % 2  # the calls alternate between the two
            ready = worker == 101 or len(answered) >= 9
            body = {"ready": ready, "worker": worker,
                    "checks": {} if ready else {"engine": {"ok": False, "detail": "starting"}}}
            answered.append((worker, 200 if ready else 503))
            reply_json(self, 200 if ready else 503, json.dumps(body).encode())

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Workers)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        body = wait_ready(url, workers=2, timeout=30)
        assert body["ready"] is True and body["worker"] == 102  # it waited for the second worker
        assert (102, 503) in answered and answered[-1] == (102, 200)
        answered.clear()
        assert wait_ready(url, workers=1, timeout=30)["worker"] == 101  # one worker: the first 200 will do
        answered.clear()
        with pytest.raises(ServerError, match="2 of its 3 workers ready"):
            wait_ready(url, workers=3, timeout=1.5)
    finally:
        srv.shutdown()
        srv.server_close()


def test_concurrent_decide_calls_are_decided_together_each_with_its_own_answer(served, customers, tmp_path):
    """What a worker does with the /decide calls that arrive while it decides
    (`nba.serving.batching`): one engine call for all of them, each caller its own answer; a
    bad call alone refused; a customer twice decided one after the other, within the caps."""
    import asyncio
    import threading

    from nba.serving.batching import DecideBatcher
    from nba.serving.bundle import load_engine
    from nba.serving.engine import DecisionRequest, RequestError

    work = tmp_path / "var"  # the bank's features and bundle, a log and contact state of its own
    work.mkdir()
    for name in ("feature_repo", "sim", "bentoml", "bundle"):
        if (served.work / name).exists():
            (work / name).symlink_to(served.work / name, target_is_directory=True)
    own = served.model_copy(update={"work_dir": work})
    engine = load_engine(own)
    busy = threading.Event()  # while clear, the decider is held, as by a long decision

    def begin(reqs):
        busy.wait(30)
        return engine.begin_decide(reqs)

    batcher = DecideBatcher(begin)  # no commit thread: each batch committed by the decider
    ids = [int(c) for c in _not_holdout(own, customers)[:8]]

    async def together(reqs):
        busy.clear()
        calls = [asyncio.ensure_future(batcher.decide(r)) for r in reqs]
        await asyncio.sleep(0)  # one turn of the loop: every call has queued (or is with the held decider)
        assert batcher.waiting >= 1
        busy.set()
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 60)  # a lost answer fails

    try:
        out = asyncio.run(together([DecisionRequest(c, "web", {}, float(DECISION_EPOCH), 1) for c in ids]))
        assert batcher.calls == 8 and batcher.batches <= 2  # 8 alone would be 8
        assert sum(1 / d["timing"]["batch"] for d in out) == pytest.approx(batcher.batches)
        assert [d["customer_id"] for d in out] == ids and len({d["decision_id"] for d in out}) == 8
        assert engine.log.count() == 8

        bad = [DecisionRequest(c, "web", {}, float(DECISION_EPOCH), 1) for c in ids[:3]]
        bad.insert(2, DecisionRequest(ids[3], "fax", {}, float(DECISION_EPOCH), 1))
        out = asyncio.run(together(bad))
        assert isinstance(out[2], RequestError) and out[2].field == "channel" and "'fax'" in str(out[2])
        assert [d["customer_id"] for i, d in enumerate(out) if i != 2] == ids[:3]
        assert engine.log.count() == 11  # the three good ones, once each

        # one customer three times in one call: each decision sees the one before (an action
        # at most once in 7 days), so the three show different actions
        out = engine.decide([DecisionRequest(ids[4], "web", {}, float(DECISION_EPOCH + 60), 1)] * 3)
        shown = [d["actions"][0]["action_id"] for d in out if d["actions"]]
        assert len(shown) >= 2 and len(set(shown)) == len(shown), shown
        assert engine.log.count() == 14

        # decided, its contact reserved, not yet logged: the commit is the function returned
        req = DecisionRequest(ids[5], "web", {}, float(DECISION_EPOCH + 120), 1)
        commit = engine.begin_decide([req])
        assert engine.log.count() == 14
        again = engine.decide([req])  # the same customer meanwhile sees the first one's contact
        (first,) = commit()
        assert engine.log.count() == 16 and first["timing"]["commit_wait_ms"] >= 0
        assert first["actions"], first  # and the one decided meanwhile did not show it again
        assert first["actions"][0]["action_id"] not in [a["action_id"] for a in again[0]["actions"]]
    finally:
        engine.log.close()


def test_a_decision_follows_the_contract_and_is_logged(server, served, customers):
    cid = int(_not_holdout(served, customers)[3])
    status, d = call(server.url, "/decide", {"customer_id": cid, "channel": "web", "k": 3,
                                            "timestamp": DECISION_TIME})
    assert status == 200, d
    assert d["customer_id"] == cid and d["channel"] == "web" and d["features_missing"] is False
    assert d["decided_at"] == "2025-12-01T09:00:00.000Z"
    assert d["experiment_group"] in ("nba", "explore")
    assert len(d["decision_id"]) == 32
    assert d["versions"]["catalog"].startswith("bank-1+") and d["versions"]["bundle"].startswith("nba_decision:")
    assert len(d["versions"]["models"]) == len(ACTIONS) + 2 and set(d["versions"]["models"].values()) == {"1"}
    assert 1 <= len(d["actions"]) <= 3 or d["actions"] == []
    pri = [a["priority"] for a in d["actions"]]
    if d["experiment_group"] == "nba":
        assert pri == sorted(pri, reverse=True)
    for a in d["actions"]:
        assert a["priority"] == pytest.approx(a["propensity"] * a["value"] * (1 + a["lever"]))
        assert 0 < a["propensity"] < 1 and a["reason"]
    assert {f["stage"] for f in d["filtered"]} <= {"inactive", "channel", "eligibility", "applicability",
                                                    "suitability", "consent", "suppression", "cooldown", "cap",
                                                    "threshold"}
    assert all(f["rule"] for f in d["filtered"])
    shown = {a["action_id"] for a in d["actions"]}
    assert not shown & {f["action_id"] for f in d["filtered"]}
    # the log holds it, durably, with its candidates
    log = read_log(served.decision_log_dir, with_features=True)
    row = log.decisions.set_index("decision_id").loc[d["decision_id"]]
    assert row["customer_id"] == cid and row["source"] == "api"
    assert row["probability"] == pytest.approx(d["probability"])
    assert row["action_id"] == (d["actions"][0]["action_id"] if d["actions"] else records.NO_ACTION)
    cands = log.candidates[log.candidates["decision_id"] == d["decision_id"]]
    assert set(cands.loc[cands["rank"] > 0, "action_id"]) == shown
    feats = log.features.set_index("decision_id").loc[d["decision_id"]]
    assert 0 <= feats["churn_risk"] <= 1 and feats["clv"] >= 0 and not math.isnan(feats["age"])


BAD = [
    ("/decide", b"{not json", 400, "json_invalid"),
    ("/decide", b'{"channel": "web"}', 400, "customer_id"),
    ("/decide", b'{"customer_id": 5, "channel": "fax"}', 400, "channel 'fax' is not a channel"),
    ("/decide", b'{"customer_id": 5, "channel": "web", "k": 0}', 400, "k = 0 is out of range; expected 1 to 10"),
    ("/decide", b'{"customer_id": 5, "channel": "web", "k": 11}', 400, "k = 11 is out of range"),
    ("/decide", b'{"customer_id": "abc", "channel": "web"}', 400, "customer_id"),
    ("/decide", b'{"customer_id": -3, "channel": "web"}', 400, "greater_than_equal"),
    ("/decide", b'{"customer_id": 5, "channel": "web", "context": {"agee": 40}}', 400, "context key 'agee'"),
    ("/decide", b'{"customer_id": 5, "channel": "web", "context": {"age": "old"}}', 400, "context.age"),
    ("/decide", b'{"customer_id": 5, "channel": "web", "timestamp": "yesterday"}', 400, "timestamp"),
    ("/decide", b'{"customer_id": 5, "channel": "web", "actions": ["yacht"]}', 400,
     "actions: 'yacht' is not an action of the catalog"),
    ("/decide", b'{"customer_id": 5, "channel": "web", "actions": []}', 400, "actions"),
    ("/decide_batch", b'{"requests": []}', 400, "too_short"),
    ("/respond", b'{"decision_id": "0123", "action_id": "mortgage", "outcome": "accepted"}', 404,
     "decision_id '0123' is not in the decision log"),
    ("/respond", b'{"decision_id": "0123", "action_id": "mortgage", "outcome": "maybe"}', 400,
     "outcome 'maybe' is not one of accepted, rejected, ignored"),
    ("/respond", b'{"decision_id": "0123", "action_id": "yacht", "outcome": "accepted"}', 400,
     "action_id 'yacht' is not an action of the catalog"),
    ("/respond", b'{"decision_id": "0123", "action_id": "mortgage", "outcome": "accepted", "value": -1}', 400,
     "value"),
]


@pytest.mark.parametrize(("path", "body", "status", "fragment"), BAD)
def test_bad_input_is_a_4xx_naming_the_field(server, path, body, status, fragment):
    got, payload = call(server.url, path, raw=body)
    assert got == status, payload
    assert fragment in str(payload), payload


def test_a_customer_without_features_gets_a_flagged_decision_from_the_defaults(server):
    status, d = call(server.url, "/decide", {"customer_id": 987_654_321, "channel": "web",
                                            "timestamp": DECISION_TIME})
    assert status == 200 and d["features_missing"] is True
    # the defaults hold no consent but the bank's own site: e-mail has nothing to offer
    status, e = call(server.url, "/decide", {"customer_id": 987_654_321, "channel": "email",
                                            "timestamp": DECISION_TIME})
    assert status == 200 and e["actions"] == [] and e["features_missing"] is True
    assert {f["stage"] for f in e["filtered"]} <= {"consent", "channel", "eligibility", "applicability",
                                                    "suitability", "suppression"}


def test_outcomes_are_idempotent_and_a_rejection_starts_the_cooldown(server, served, customers):
    ids = _not_holdout(served, customers)
    for cid in ids[10:60]:  # a customer with at least two actions to choose from
        status, d = call(server.url, "/decide", {"customer_id": int(cid), "channel": "web", "k": 2,
                                                "timestamp": DECISION_TIME})
        if len(d["actions"]) == 2:
            break
    else:
        pytest.fail("no customer had two actions on the web")
    first, second = d["actions"][0]["action_id"], d["actions"][1]["action_id"]
    body = {"decision_id": d["decision_id"], "action_id": first, "outcome": "accepted", "value": 12.5,
            "timestamp": DECISION_TIME}
    status, r1 = call(server.url, "/respond", body)
    assert status == 200 and r1["recorded"] is True and r1["value"] == 12.5
    status, r2 = call(server.url, "/respond", {**body, "outcome": "ignored", "value": 0})
    assert status == 200 and r2["duplicate"] is True and r2["outcome"] == "accepted" and r2["value"] == 12.5
    status, r3 = call(server.url, "/respond", {"decision_id": d["decision_id"], "action_id": second,
                                               "outcome": "rejected", "timestamp": DECISION_TIME})
    assert status == 200 and r3["recorded"] is True
    log = read_log(served.decision_log_dir)
    mine = log.outcomes[log.outcomes["decision_id"] == d["decision_id"]].set_index("action_id")
    assert mine.loc[first, "outcome"] == "accepted" and mine.loc[second, "outcome"] == "rejected"
    assert len(mine) == 2
    # the rejected action is now cooling down for this customer, on every channel
    status, again = call(server.url, "/decide", {"customer_id": int(cid), "channel": "email", "k": 10,
                                                "timestamp": "2025-12-02T09:00:00Z"})
    stages = {f["action_id"]: f for f in again["filtered"]}
    assert stages[second]["stage"] == "cooldown"
    assert "rejected in the last" in stages[second]["rule"]


def _exhaust(url: str, cid: int, timestamp: str = DECISION_TIME) -> tuple[list[str], dict]:
    """Ask for the same customer on the web until nothing is left; the shown actions."""
    shown: list[str] = []
    for _ in range(12):
        status, d = call(url, "/decide", {"customer_id": cid, "channel": "web", "k": 1, "timestamp": timestamp})
        assert status == 200, d
        if not d["actions"]:
            return shown, d
        shown.append(d["actions"][0]["action_id"])
    raise AssertionError(f"customer {cid} was never capped: {shown}")


def _within_caps(settings: Settings, shown: list[str]) -> None:
    """Each action shown no more often than its tightest cap allows (all at one moment)."""
    cat = _catalog(settings)
    assert len(shown) >= 2
    for a in set(shown):
        tightest = min(c.count for c in cat.actions[cat.action_ids.index(a)].caps)
        assert shown.count(a) <= tightest, (a, shown)


def test_caps_hold_across_requests_and_across_a_restart(served, customers, tmp_path):
    srv = start_server(served, tmp_path / "a.log", workers=1)
    try:
        for cid in _not_holdout(served, customers)[100:160].tolist():
            shown, last = _exhaust(srv.url, cid)
            if len(shown) >= 2:
                break
        _within_caps(served, shown)
        assert {f["action_id"] for f in last["filtered"] if f["stage"] == "cap"} >= set(shown)
    finally:
        srv.stop()
    srv = start_server(served, tmp_path / "b.log", workers=1)
    try:
        status, d = call(srv.url, "/decide", {"customer_id": cid, "channel": "web", "k": 3,
                                             "timestamp": "2025-12-03T09:00:00Z"})
        assert status == 200 and d["actions"] == []
        capped = {f["action_id"] for f in d["filtered"] if f["stage"] == "cap"}
        assert capped >= set(shown)
        # a week later the per-action caps have expired (the 30-day caps still count)
        status, later = call(srv.url, "/decide", {"customer_id": cid, "channel": "web", "k": 3,
                                                 "timestamp": "2025-12-09T09:00:00Z"})
        assert status == 200
        assert {f["rule"] for f in later["filtered"] if f["stage"] == "cap"} != {
            f["rule"] for f in d["filtered"] if f["stage"] == "cap"}
    finally:
        srv.stop()


def test_the_holdout_share_is_the_setting_and_stable_per_customer(server, served, customers):
    ids = customers[:1000]
    reqs = [{"customer_id": int(c), "channel": "web", "timestamp": "2025-12-04T09:00:00Z"} for c in ids]
    status, first = call(server.url, "/decide_batch", {"requests": reqs})
    assert status == 200 and len(first) == 1000
    status, second = call(server.url, "/decide_batch", {"requests": reqs})
    hold1 = np.array([d["experiment_group"] == "holdout" for d in first])
    hold2 = np.array([d["experiment_group"] == "holdout" for d in second])
    assert (hold1 == hold2).all()
    exp = _catalog(served).experiment
    assert (hold1 == experiment.in_holdout(ids, exp.salt, exp.holdout_share)).all()
    share = exp.holdout_share
    assert abs(hold1.mean() - share) < 4 * math.sqrt(share * (1 - share) / len(ids))
    assert all(d["actions"] == [] and d["probability"] == 1.0 for d, h in zip(first, hold1, strict=True) if h)
    # the whole population: the share is within tolerance of the setting
    everyone = experiment.in_holdout(customers, exp.salt, share)
    assert abs(everyone.mean() - share) < 4 * math.sqrt(share * (1 - share) / len(customers))


def test_decide_batch_agrees_with_decide(server, served, customers, tmp_path):
    """The same customers at the same moment, from the same (empty) contact state: the same
    candidates with the same P, V, L and priority, the same hold-out, the same winner."""
    from nba.serving.batch import decide_batch

    ids = customers[200:260]
    ts = "2025-12-05T09:00:00Z"
    state = SqlitePolicyStore(served.policy_state_path)
    state.prune(before=float("inf"))
    api = [call(server.url, "/decide", {"customer_id": int(c), "channel": "email", "k": 3, "timestamp": ts})[1]
           for c in ids]
    state.prune(before=float("inf"))
    pd.DataFrame({"customer_id": ids}).to_parquet(tmp_path / "c.parquet")
    summary = decide_batch(served, tmp_path / "c.parquet", "email", tmp_path / "out.parquet", k=3,
                           timestamp=DECISION_EPOCH + 4 * 86400)
    assert summary.customers == len(ids) and summary.feature_source.startswith("the online store")
    log = read_log(served.decision_log_dir)
    dec = log.decisions.set_index("decision_id")
    batch_ids = dec[(dec["source"] == "batch") & dec["customer_id"].isin(ids)]
    assert len(batch_ids) == len(ids)
    cand = log.candidates
    for d in api:
        b = batch_ids[batch_ids["customer_id"] == d["customer_id"]]
        assert len(b) == 1
        assert (d["experiment_group"] == "holdout") == (b["experiment_group"].iloc[0] == "holdout")
        a_c = cand[cand["decision_id"] == d["decision_id"]].set_index("action_id").sort_index()
        b_c = cand[cand["decision_id"] == b.index[0]].set_index("action_id").sort_index()
        assert list(a_c.index) == list(b_c.index)
        for col in ("propensity", "value", "lever", "priority"):
            assert np.allclose(a_c[col].astype(float), b_c[col].astype(float), rtol=1e-5, equal_nan=True), col
        if d["experiment_group"] == "nba" and b["experiment_group"].iloc[0] == "nba":
            expected = d["actions"][0]["action_id"] if d["actions"] else records.NO_ACTION
            assert b["action_id"].iloc[0] == expected
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert set(out["customer_id"]) == set(ids.tolist())
    assert (out.groupby("customer_id")["rank"].min() == 1).all()
    # an outcome of an outbound (batch) decision is reported like any other
    sent = out[out["action_id"] != records.NO_ACTION].iloc[0]
    status, r = call(server.url, "/respond", {"decision_id": sent["decision_id"], "action_id": sent["action_id"],
                                              "outcome": "accepted", "value": 5.0, "timestamp": ts})
    assert status == 200 and r["recorded"] is True and r["customer_id"] == sent["customer_id"]


def test_the_service_answers_503_while_a_store_is_down_and_recovers(served, tmp_path):
    """A corrupt online store and an unreadable model in the BentoML store: readiness names both,
    /decide answers 503 with the reason; once the online store is back, it reads again."""
    work = tmp_path / "var"
    shutil.copytree(served.work, work, symlinks=True, ignore=shutil.ignore_patterns("decision_log", "policy"))
    broken = served.model_copy(update={"work_dir": work})
    online = work / "feature_repo" / "data" / "online.db"
    good = online.read_bytes()
    online.write_bytes(b"this is not a database" * 100)
    version = next(p for p in (work / "bentoml" / "models" / "nba-churn").iterdir() if p.is_dir())
    (version / "mlflow_model" / "model.pkl").write_bytes(b"truncated")  # an unreadable model file
    srv = start_server(broken, tmp_path / "down.log", workers=1, ready=False)
    try:
        status, ready = call(srv.url, "/readyz")
        assert status == 503 and ready["ready"] is False
        assert ready["checks"]["feature_store"]["ok"] is False
        assert "online store read" in ready["checks"]["feature_store"]["detail"]
        assert ready["checks"]["models"]["ok"] is False
        assert "nba-churn:v1" in ready["checks"]["models"]["detail"]
        status, d = call(srv.url, "/decide", {"customer_id": 1, "channel": "web", "timestamp": DECISION_TIME})
        assert status == 503 and "online store read of feature view" in d["error"]
        online.write_bytes(good)
        import time

        time.sleep(1.5)  # the engine retries a failed component at most once a second
        status, ready = call(srv.url, "/readyz")
        assert ready["checks"]["feature_store"]["ok"] is True and ready["checks"]["models"]["ok"] is False
    finally:
        srv.stop()


def test_caps_in_redis_hold_across_requests_and_a_restart(served, customers, tmp_path):
    """The production policy store. The first server is started the way a user does, with
    `nba serve`, which prints where it is and a curl to paste."""
    import os
    import signal
    import subprocess
    import sys

    from tests.serving_env import free_port

    prefix = f"nba-test-{uuid.uuid4().hex[:8]}"
    env = {"NBA_POLICY_STORE": "redis", "NBA_REDIS_PREFIX": prefix}
    port = free_port()
    cli_env = {**os.environ, **env, "NBA_HOME": str(served.home), "NBA_WORK_DIR": str(served.work),
               "NBA_MLFLOW_DIR": str(served.mlflow_path), "NBA_SERVE_WORKERS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nba", "serve", "--port", str(port)], env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    printed = []
    try:
        for line in proc.stdout:
            printed.append(line)
            if line.startswith("press Ctrl-C"):
                break
        text = "".join(printed)
        assert f"decision service:  http://127.0.0.1:{port}" in text, text[-3000:]
        assert f"http://127.0.0.1:{port}/docs.json" in text and f"curl -s -X POST http://127.0.0.1:{port}/decide" in text
        url = f"http://127.0.0.1:{port}"
        status, ready = call(url, "/readyz")
        assert ready["checks"]["policy_store"]["detail"] == "RedisPolicyStore"
        for cid in _not_holdout(served, customers)[160:220].tolist():
            shown, _ = _exhaust(url, cid, "2025-12-06T09:00:00Z")
            if len(shown) >= 2:
                break
        _within_caps(served, shown)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=60)
    srv = start_server(served, tmp_path / "r2.log", workers=1, extra_env=env)
    try:
        status, d = call(srv.url, "/decide", {"customer_id": cid, "channel": "web", "k": 3,
                                             "timestamp": "2025-12-06T10:00:00Z"})
        assert d["actions"] == [] and {f["action_id"] for f in d["filtered"] if f["stage"] == "cap"} >= set(shown)
        h = RedisPolicyStore(served.redis_url, prefix=f"{prefix}:policy").history([cid], since=0)
        assert sorted(h.contact_action) == sorted(shown)
    finally:
        srv.stop()
        RedisPolicyStore(served.redis_url, prefix=f"{prefix}:policy").clear()


def test_reject_mode_answers_404_for_a_customer_without_features(served, tmp_path):
    """`missing_features.mode: reject` in the policies: no decision from defaults."""
    import yaml

    from nba.serving.bundle import load_engine, read_manifest, write_bundle
    from nba.serving.engine import DecisionRequest, RequestError
    from nba.stores.decisions.sqlite import DecisionLog
    from tests.serving_env import make_home

    home = make_home(tmp_path, policies={"missing_features__mode": "reject"})
    strict = served.model_copy(update={"home": home})
    manifest = read_manifest(served.bundle_dir)
    from nba.serving.bundle import ResolvedModel, compile_for_build

    cat, fields, _ = compile_for_build(strict)
    models = [ResolvedModel(n, m["version"], m["run_id"], tuple(m["roles"])) for n, m in manifest["models"].items()]
    bundle = write_bundle(strict, cat, fields, models, target=tmp_path / "bundle")
    assert yaml.safe_load((bundle / "policies.yaml").read_text())["missing_features"]["mode"] == "reject"
    engine = load_engine(served, bundle)
    engine.log = DecisionLog(tmp_path / "log")
    with pytest.raises(RequestError) as exc:
        engine.decide([DecisionRequest(987_654_321, "web", {}, float(DECISION_EPOCH), 1)])
    assert exc.value.status == 404 and exc.value.field == "customer_id"
    assert "customer 987654321 has no online features in serving_v2" in str(exc.value)


def test_the_fast_paths_equal_feast_and_the_models_own_predictions(served, customers):
    """The online reader (one SQLite query; the provider's online_read otherwise) gives what
    Feast's get_online_features gives, and the champions scored on numpy (one row, a few rows)
    or by XGBoost (many rows) give what the models' own predict_proba / predict give."""
    from nba.features.online import OnlineFeatureReader
    from nba.features.store import online_features
    from nba.serving.bundle import load_models, read_manifest
    from nba.serving.models import SMALL
    from nba.training.models import ActionBoundClassifier
    from nba.training.tracking import configure

    ids = [*customers[:20].tolist(), 987_654_321, int(customers[0])]
    reader = OnlineFeatureReader(served, "serving_v1")
    cols, found = reader.read(ids, DECISION_EPOCH)
    reference = online_features(served, "serving_v1", ids, request_ts=DECISION_EPOCH)
    assert {k: v for k, v in cols.items()} == {k: v for k, v in reference.items() if k != "customer_id"}
    assert found == [True] * 20 + [False, True]
    public = OnlineFeatureReader(served, "serving_v1", fast=False)  # the provider's online_read, as for Redis
    assert reader.fast and not public.fast
    assert public.read(ids, DECISION_EPOCH) == (cols, found)

    configure(served)
    manifest = read_manifest(served.bundle_dir)
    cat = _catalog(served)
    models = load_models(served, cat, manifest)
    frame = pd.DataFrame({k: v for k, v in cols.items()})[:20]
    numbers = {f.name for f in reader.fields if f.kind == "number"}
    env = {k: (frame[k].astype(float).to_numpy() if k in numbers else frame[k].to_numpy(dtype=object))
           for k in frame.columns}
    import mlflow

    big = {k: np.tile(v, 20) for k, v in env.items()}  # 400 customers: XGBoost's own predictor
    kinds: Counter[str] = Counter()
    expected_of: dict[int, np.ndarray] = {}
    for j, action in enumerate(cat.action_ids):
        bento = manifest["models"][cat.actions[j].model]["bento_model"]
        import bentoml

        own = mlflow.sklearn.load_model(bentoml.models.get(bento).path_of("mlflow_model"))
        kinds[type(own).__name__] += 1  # its own model, or the pooled one bound to a thin action
        fitted = own.model if isinstance(own, ActionBoundClassifier) else own
        inputs = [c for c in fitted.feature_names_in_ if c != "action_id"]
        expected = own.predict_proba(frame[inputs])[:, 1]
        rows = np.arange(20)
        few = models.propensity(env, 20, rows, np.full(20, j))
        one = [models.propensity({k: (v[i] if k not in numbers else float(v[i])) for k, v in env.items()}, 1,
                                 np.zeros(1, int), np.array([j]))[0] for i in range(20)]
        many = models.propensity(big, 400, np.arange(400), np.full(400, j))
        assert SMALL < 400  # "many" really takes the XGBoost path
        assert np.allclose(few, expected, rtol=1e-5, atol=1e-7), action
        assert np.allclose(one, expected, rtol=1e-5, atol=1e-7), action
        assert np.allclose(many, np.tile(expected, 20), rtol=1e-5, atol=1e-7), action
        expected_of[j] = expected
    assert kinds["CalibratedXGBClassifier"] >= 8 and sum(kinds.values()) == len(cat.action_ids), kinds
    # one customer's every action: the per-action models in the bundle's one joint graph, one call
    assert manifest["joint"]["models"] == [m.name for m in models.joint_models()] and models.joint is not None
    calls = []
    predict = models.joint.predict
    models.joint.predict = lambda X: calls.append(len(X)) or predict(X)
    A = len(cat.action_ids)
    for i in range(5):
        every = models.propensity({k: (v[i] if k not in numbers else float(v[i])) for k, v in env.items()}, 1,
                                  np.zeros(A, int), np.arange(A))
        assert np.allclose(every, [expected_of[j][i] for j in range(A)], rtol=1e-5, atol=1e-7), i
    assert calls == [1] * 5
    for name, model in models.score_models.items():
        own = mlflow.sklearn.load_model(bentoml.models.get(manifest["models"][model.name]["bento_model"])
                                        .path_of("mlflow_model"))
        inputs = list(own.feature_names_in_)
        expected = own.predict_proba(frame[inputs])[:, 1] if name == "churn_risk" else own.predict(frame[inputs])
        got = models.score(env, 20)[name]
        one = [models.score({k: (v[i] if k not in numbers else float(v[i])) for k, v in env.items()}, 1)[name][0]
               for i in range(20)]
        assert np.allclose(got, expected, rtol=1e-4, atol=1e-6), name
        assert np.allclose(one, expected, rtol=1e-4, atol=1e-6), name


def _private_work(served: Settings, work: Path) -> Settings:
    """The served bank's features, models and bundle with an empty decision log and contact state."""
    work.mkdir()
    for name in ("sim", "feature_repo", "bundle", "bentoml"):
        (work / name).symlink_to(served.work / name, target_is_directory=True)
    return served.model_copy(update={"work_dir": work})


def test_a_crash_loses_no_acknowledged_decision_or_outcome(served, customers, tmp_path):
    """Eight clients decide and report outcomes against two workers; the server is killed
    (SIGKILL, no shutdown) while requests are in flight. Every decision and outcome that was
    answered is in the log with its candidates, and every shown action counts as a contact."""
    import threading
    import time

    import psutil

    from nba.serving.run import kill, server_processes

    private = _private_work(served, tmp_path / "crash")
    srv = start_server(private, tmp_path / "crash.log", workers=2)
    decided: list[dict] = []
    responded: list[tuple[str, str]] = []
    stop = threading.Event()
    ids = _not_holdout(served, customers)[400:1400].tolist()

    def client(k: int) -> None:
        i = k
        while not stop.is_set():
            try:
                status, d = call(srv.url, "/decide", {"customer_id": ids[i % len(ids)], "channel": "web",
                                                      "timestamp": DECISION_TIME})
            except (OSError, http.client.HTTPException):  # the server is gone (a reply cut mid-body too): never answered
                return
            i += 8
            if status != 200:
                continue
            decided.append(d)
            if d["actions"]:
                try:
                    status, r = call(srv.url, "/respond", {"decision_id": d["decision_id"], "action_id":
                                                           d["actions"][0]["action_id"], "outcome": "rejected"})
                except (OSError, http.client.HTTPException):
                    return
                if status == 200:
                    responded.append((d["decision_id"], d["actions"][0]["action_id"]))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    time.sleep(4)
    workers = server_processes(srv.proc)[1:]
    assert len(workers) >= 2
    kill(srv.proc)  # the whole server, workers included, mid-request

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 10
    while any(running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if running(p)], "a worker outlived the crash"
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert len(decided) > 50 and len(responded) > 5, (len(decided), len(responded))
    log = read_log(private.decision_log_dir)
    logged = set(log.decisions["decision_id"])
    assert {d["decision_id"] for d in decided} <= logged
    cands = set(zip(log.candidates["decision_id"], log.candidates["action_id"], strict=True))
    assert all((d["decision_id"], a["action_id"]) in cands for d in decided for a in d["actions"])
    outcomes = set(zip(log.outcomes["decision_id"], log.outcomes["action_id"], strict=True))
    assert set(responded) <= outcomes
    state = SqlitePolicyStore(private.policy_state_path)
    h = state.history([d["customer_id"] for d in decided], since=0)
    contacts = set(zip(h.contact_row.tolist(), h.contact_action, strict=True))
    assert all((i, a["action_id"]) in contacts for i, d in enumerate(decided) for a in d["actions"])
    rejections = set(state.db.read(lambda c: c.execute("SELECT decision_id, action_id FROM rejections").fetchall()))
    assert set(responded) <= rejections  # each answered rejection starts its cool-down


def _by_customer(log_dir: Path, dsn: str | None = None) -> dict[int, dict[str, Any]]:
    """Per customer (one decision each): its features, candidates and filtered actions."""
    log = read_log(log_dir, with_features=True, dsn=dsn)
    dec = log.decisions.set_index("decision_id")["customer_id"]
    out: dict[int, dict[str, Any]] = {}
    for did, cid in dec.items():
        cand = log.candidates[log.candidates["decision_id"] == did].set_index("action_id").sort_index()
        filt = log.filtered[log.filtered["decision_id"] == did]
        feats = log.features[log.features["decision_id"] == did].drop(columns="decision_id").iloc[0]
        out[int(cid)] = {"candidates": cand[["propensity", "value", "lever", "priority"]].astype(float),
                         "filtered": sorted(zip(filt["action_id"], filt["stage"], filt["rule"], strict=True)),
                         "features": feats.to_dict()}
    return out


def test_the_production_profile_serves_from_redis_and_a_postgres_registry(served, customers, tmp_path):
    """NBA_PROFILE=production end to end: `apply` registers the Feast repository in a Postgres
    registry (a database of its own), `materialize` loads the Redis online store, and the
    decision service started under the profile reads its features from Redis, keeps its
    contact state in Redis and its decision log in Postgres (refusing to start, in one line,
    before `nba stores migrate`). It decides as the embedded profile does for the same
    customers at the same moment: the same features, the same candidates with the same P, V,
    L and priority, the same filtered actions with the same stage and rule."""
    import psycopg

    from nba.features import store
    from nba.features.online import OnlineFeatureReader
    from nba.serving.bundle import load_engine
    from nba.serving.engine import DecisionRequest

    tag = uuid.uuid4().hex[:8]
    dbname = f"nba_test_{tag}"
    with psycopg.connect(served.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    work = tmp_path / "production"
    work.mkdir()
    for name in ("sim", "bundle", "bentoml"):
        (work / name).symlink_to(served.work / name, target_is_directory=True)
    prod = served.model_copy(update={
        "profile": "production", "work_dir": work, "redis_url": "redis://127.0.0.1:6379/9",
        "postgres_dsn": served.postgres_dsn.rsplit("/", 1)[0] + "/" + dbname, "redis_prefix": f"nba-test-{tag}"})
    srv = None
    try:
        assert "serving_v1" in store.apply(prod).feature_services
        assert store.materialize(prod).online_store == "redis"
        with psycopg.connect(prod.postgres_dsn) as conn:  # the registry really is in that database
            views = {r[0] for r in conn.execute("SELECT feature_view_name FROM feature_views")}
        assert {"customer_profile", "customer_rfm"} <= views

        ids = [int(c) for c in _not_holdout(served, customers)[300:330]]
        from_redis = OnlineFeatureReader(prod, "serving_v1")
        assert str(from_redis.config.online_store.type) == "redis"
        assert from_redis.read([*ids, 987_654_321], DECISION_EPOCH) == \
            OnlineFeatureReader(served, "serving_v1").read([*ids, 987_654_321], DECISION_EPOCH)
        # the adapter's one round trip (one HMGET per customer) and the provider's online_read (a
        # pipeline per view) agree: for one customer, many, an unknown one, one asked for twice,
        # and at request times past the views' TTL
        public = OnlineFeatureReader(prod, "serving_v1", fast=False)
        assert from_redis.fast and not public.fast
        asked = [*ids, 987_654_321, ids[0]]
        times = [DECISION_EPOCH if i % 2 else DECISION_EPOCH + 400 * 86400 for i in range(len(asked))]
        mixed = from_redis.read(asked, times)
        assert mixed == public.read(asked, times) and mixed[1] == [bool(i % 2) for i in range(len(ids))] + [False, True]
        assert from_redis.read(ids[:1], DECISION_EPOCH) == public.read(ids[:1], DECISION_EPOCH)
        assert from_redis.read(ids[:1], DECISION_EPOCH)[1] == [True]
        from nba.features.streaming import FeaturePusher

        for fast in (True, False):  # Feast's public online_read answers an unknown customer with an empty row
            assert FeaturePusher(store.get_store(prod), fast=fast).known([ids[0], 987_654_321]) == [True, False]

        from nba.errors import NbaError
        from nba.serving.bundle import load_engine as load_prod

        with pytest.raises(NbaError, match=r"^decision log: the Postgres schema at postgresql://.* is not migrated"):
            load_prod(prod, served.bundle_dir)  # the service refuses at start, naming what to run
        from nba.stores.postgres import MIGRATIONS, migrate

        assert [m.version for m in migrate(prod.postgres_dsn)] == [m.version for m in MIGRATIONS]
        srv = start_server(prod, tmp_path / "production.log", workers=1)
        status, ready = call(srv.url, "/readyz")
        assert status == 200 and ready["checks"]["policy_store"]["detail"] == "RedisPolicyStore"
        shown = {}
        for cid in ids:
            status, d = call(srv.url, "/decide", {"customer_id": cid, "channel": "email", "k": 3,
                                                  "timestamp": DECISION_TIME})
            assert status == 200 and d["features_missing"] is False, d
            shown[cid] = sorted(a["action_id"] for a in d["actions"])
        h = RedisPolicyStore(prod.redis_url, prefix=f"{prod.redis_prefix}:policy").history(ids, since=0)
        assert sorted(h.contact_action) == sorted(a for acts in shown.values() for a in acts)

        # the embedded profile, in process, from an empty contact state and its own log
        embedded = _private_work(served, tmp_path / "embedded")
        engine = load_engine(embedded, served.bundle_dir)
        for cid in ids:
            engine.decide([DecisionRequest(cid, "email", {}, float(DECISION_EPOCH), 3)])
        assert not (prod.decision_log_dir / "log.db").exists()  # the production log is in Postgres
        a, b = _by_customer(prod.decision_log_dir, prod.postgres_dsn), _by_customer(embedded.decision_log_dir)
        assert set(a) == set(b) == set(ids)
        assert sum(len(a[c]["candidates"]) for c in ids) > 0 and sum(len(a[c]["filtered"]) for c in ids) > 0
        for cid in ids:
            assert a[cid]["features"] == pytest.approx(b[cid]["features"], nan_ok=True), cid
            assert a[cid]["filtered"] == b[cid]["filtered"], cid
            assert list(a[cid]["candidates"].index) == list(b[cid]["candidates"].index), cid
            assert np.allclose(a[cid]["candidates"], b[cid]["candidates"], rtol=1e-6, equal_nan=True), cid

        # under the production profile (preferences in Postgres), what the customer set in the
        # preference centre a moment ago is what the next decision obeys
        eng = load_prod(prod, served.bundle_dir)
        try:
            t = float(DECISION_EPOCH + 30 * 86400)  # past the email decisions' cool-downs
            cid, before = next((c, d) for c in ids for d in eng.decide([DecisionRequest(c, "web", {}, t, 3)])
                               if d["actions"])
            issues = sorted({x["issue"] for x in before["actions"]})
            eng.preferences.put(cid, json.dumps({"topics_blocked": issues}), "customer", t)
            after = eng.decide([DecisionRequest(cid, "web", {}, t + 60, 3)])[0]
            assert not {x["issue"] for x in after["actions"]} & set(issues), after["actions"]
            assert {f["stage"] for f in after["filtered"]} >= {"preference"}
        finally:
            eng.log.close()
    finally:
        if srv is not None:
            srv.stop()
        RedisPolicyStore(prod.redis_url, prefix=f"{prod.redis_prefix}:policy").clear()
        if (prod.feast_repo / "feature_store.yaml").is_file():
            store.get_store(prod).teardown()  # the online store's keys and the registry's tables
        with psycopg.connect(served.postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def test_a_batcher_answers_each_call_on_its_own_event_loop():
    """Two event loops share one batcher in turn: a call queued from the second while the
    decider is busy with the first's is answered on its own loop. It used to be settled on the
    first loop, closed by then, and its caller waited forever (the CI run of 2026-12-07 hung
    on it in the test above)."""
    import asyncio
    import threading

    from nba.serving.batching import DecideBatcher

    first_in, release, first_done = threading.Event(), threading.Event(), threading.Event()

    def begin(reqs):
        if reqs == ["a"]:
            first_in.set()
            release.wait(10)  # until "b" is queued behind it
        else:
            first_done.wait(10)  # until the first loop is closed
        return lambda: [f"answer {r}" for r in reqs]

    batcher = DecideBatcher(begin)
    second: list = []

    def other_loop() -> None:
        first_in.wait(10)

        async def call():
            waiting = asyncio.ensure_future(batcher.decide("b"))
            await asyncio.sleep(0.05)  # queued: the decider, busy with "a", takes it next
            release.set()
            return await asyncio.wait_for(waiting, 10)

        try:
            second.append(asyncio.run(call()))
        except Exception as exc:  # TimeoutError: the answer was lost
            second.append(exc)

    t = threading.Thread(target=other_loop)
    t.start()

    async def first():
        return await asyncio.wait_for(batcher.decide("a"), 10)

    assert asyncio.run(first()) == "answer a"
    first_done.set()
    t.join(30)
    assert second == ["answer b"] and batcher.batches == 2


def test_a_batcher_decides_the_next_batch_while_the_last_commits_and_answers_only_once_committed():
    """With a commit thread, the decider hands a decided batch's commit over and decides the
    next one while it is in flight; no caller is answered before its own batch is committed,
    and a failed commit is the answer of every call of its batch (not of the next one)."""
    import asyncio
    import threading

    from nba.errors import NotWritten
    from nba.serving.batching import DecideBatcher

    decided: list[list[str]] = []
    committed: list[list[str]] = []
    hold_first, second_decided = threading.Event(), threading.Event()

    def begin(reqs):
        decided.append(list(reqs))
        if len(decided) == 2:
            second_decided.set()

        def commit():
            if reqs == ["a"]:
                assert hold_first.wait(10)  # the first commit is in flight until released
            if "bad" in reqs:
                raise NotWritten("the log refused the batch")
            committed.append(list(reqs))
            return [f"answer {r}" for r in reqs]

        return commit

    batcher = DecideBatcher(begin, commits=1)

    async def run():
        first = asyncio.ensure_future(batcher.decide("a"))
        await asyncio.sleep(0.05)  # the decider took "a" and its commit is held
        second = asyncio.ensure_future(batcher.decide("b"))
        # "b" is decided while "a" is still committing ...
        assert await asyncio.get_running_loop().run_in_executor(None, second_decided.wait, 10)
        await asyncio.sleep(0.05)
        assert not first.done() and not second.done() and committed == []  # ... and nobody is answered yet
        hold_first.set()
        out = await asyncio.wait_for(asyncio.gather(first, second), 10)
        bad = await asyncio.wait_for(asyncio.gather(batcher.decide("bad"), return_exceptions=True), 10)
        after = await asyncio.wait_for(batcher.decide("c"), 10)
        return out, bad, after

    out, bad, after = asyncio.run(run())
    assert out == ["answer a", "answer b"] and decided[:2] == [["a"], ["b"]] and committed[:2] == [["a"], ["b"]]
    assert isinstance(bad[0], NotWritten) and "refused" in str(bad[0])
    assert after == "answer c" and batcher.batches == 4
    with pytest.raises(ValueError, match="commits: -1"):
        DecideBatcher(begin, commits=-1)


def test_a_warm_worker_freezes_what_it_has_loaded_and_still_collects_what_comes_later():
    """`freeze_loaded_heap` (a worker calls it once warm): the objects alive then leave the
    collector's generations, so no full collection walks them again; garbage made afterwards,
    cycles included, is still collected. In a process of its own (the freeze is for good)."""
    import subprocess
    import sys

    code = """
import gc, weakref
from nba.serving.engine import freeze_loaded_heap

class Node:
    pass

loaded = [Node() for _ in range(1000)]
n = freeze_loaded_heap()
tracked = {id(o) for o in gc.get_objects()}
assert n >= 1000 and not any(id(o) in tracked for o in loaded), n
later = Node(); later.self = later  # a cycle made after the freeze
gone = weakref.ref(later)
del later
gc.collect()
assert gone() is None
print("frozen", n)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) >= 1000


def test_a_worker_commits_beside_its_decider_when_the_logs_are_on_postgres(tmp_path):
    """`Settings.commit_threads`: one commit thread with the logs on Postgres (the production
    profile's, or chosen with NBA_LOG_STORE), none on SQLite; NBA_SERVE_COMMIT_THREADS wins."""
    from nba.settings import Settings

    def threads(**kw):
        return Settings(work_dir=tmp_path, **kw).commit_threads

    assert threads() == 0 and threads(profile="production") == 1
    assert threads(log_store="postgres") == 1 and threads(profile="production", log_store="sqlite") == 0
    assert threads(profile="production", serve_commit_threads=0) == 0 and threads(serve_commit_threads=2) == 2
