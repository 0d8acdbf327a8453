"""The customer 360, the preference centre and erasure, for real: the BentoML service on a
loopback port over a bank of its own (`customers_bank`: erasure rewrites its sources), the
decision log, contact-policy state (SQLite, and Redis db 2), the Feast online store and the
offline Parquet sources on disk."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from nba.decisioning import experiment
from nba.settings import Settings
from nba.stores.decisions import read_log
from tests.conftest import ADMIN_TOKEN, PROJECT_ROOT
from tests.serving_env import DECISION_EPOCH, DECISION_TIME, call

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REDIS_DB_URL = "redis://127.0.0.1:6379/2"


def _catalog(settings: Settings):
    from nba.serving.bundle import load_catalog_from_bundle, read_manifest

    return load_catalog_from_bundle(settings.bundle_dir, read_manifest(settings.bundle_dir))


@pytest.fixture(scope="module")
def pool(customers_bank: Settings) -> list[int]:
    """Fresh customers (a snapshot in the last month) who consent to every channel and are not in
    the hold-out, in a fixed order; each test takes its own."""
    data = customers_bank.feast_repo / "data"
    consent = pd.read_parquet(data / "consent.parquet")
    last = consent[consent["event_timestamp"] == consent["event_timestamp"].max()]
    profile = pd.read_parquet(data / "profile.parquet")
    prof = profile[profile["event_timestamp"] == profile["event_timestamp"].max()]
    ok = last[(last["consent_email"] == 1) & (last["consent_sms"] == 1) & (last["consent_web"] == 1)
              & (last["consent_call_centre"] == 1)]
    ok = ok.merge(prof[["customer_id", "has_email"]], on="customer_id")
    ids = np.sort(ok.loc[ok["has_email"] == 1, "customer_id"].to_numpy())
    exp = _catalog(customers_bank).experiment
    ids = ids[~experiment.in_holdout(ids, exp.salt, exp.holdout_share)]
    assert ids.size > 60
    return [int(i) for i in ids]


def _decide(server, cid: int, channel: str, k: int = 3, ts: str = DECISION_TIME) -> dict:
    status, d = call(server.url, "/decide", {"customer_id": cid, "channel": channel, "k": k, "timestamp": ts})
    assert status == 200, d
    return d


def _view(server, cid: int, at: str = DECISION_TIME) -> dict:
    status, c = call(server.url, f"/customers/{cid}?at={at}")
    assert status == 200, c
    return c


def _offers(server, cid: int, channel: str, at: str = DECISION_TIME) -> list[dict]:
    """The preview's actions on a channel (no contact counted)."""
    return _view(server, cid, at)["next_best_actions"][channel]["actions"]


def _contacts(settings: Settings, cid: int) -> int:
    conn = sqlite3.connect(settings.policy_state_path)
    try:
        return conn.execute("SELECT count(*) FROM contacts WHERE customer_id = ?", (cid,)).fetchone()[0]
    finally:
        conn.close()


# --- the customer 360 ----------------------------------------------------------------------


def test_the_customer_360_holds_every_part_and_the_last_decisions(customers_server, customers_bank, pool):
    cid = pool[0]
    d = _decide(customers_server, cid, "web")
    shown = d["actions"][0]["action_id"] if d["actions"] else "do_nothing"
    status, r = call(customers_server.url, "/respond", {"decision_id": d["decision_id"], "action_id": shown,
                                                        "outcome": "rejected"})
    assert status == 200, r
    c = _view(customers_server, cid)
    assert c["customer_id"] == cid and c["features_missing"] is False and c["as_of"] == "2025-12-01T09:00:00.000Z"
    assert {"age", "income", "region", "tenure_months"} <= set(c["profile"])
    assert {"rfm_segment", "r_score", "f_score", "m_score", "recency_days"} <= set(c["segments"])
    assert 0 <= c["scores"]["churn_risk"] <= 1 and c["scores"]["clv"] >= 0
    assert set(c["holdings"]) == {"has_credit_card", "has_mortgage", "has_savings", "has_personal_loan",
                                  "num_products"}
    assert set(c["consents"]) == {"email", "sms", "push", "call_centre", "web", "agent"}  # agent: the inbound call
    assert c["consents"]["email"] == {"feature": 1, "preference_centre": None, "effective": True}
    assert c["preferences"] is None and c["preference_audit"] == []
    assert c["recent_events"] == [] and c["events_note"] is None  # the service takes events; this customer sent none
    # the decision just made is the latest, with its outcome and its reasons in words
    last = c["last_decisions"][0]
    assert last["decision_id"] == d["decision_id"] and last["channel"] == "web"
    assert last["action_id"] == shown
    assert last["outcomes"][0]["outcome"] == "rejected" and last["outcomes"][0]["action_id"] == shown
    assert last["reason_in_words"]
    assert all(f["reason_in_words"] for f in last["filtered"])
    # the next best action of every channel, previewed
    assert set(c["next_best_actions"]) == set(c["consents"])
    web = c["next_best_actions"]["web"]
    assert web["preview"] is True and web["direction"] == "inbound"
    # the rejected action is cooling down now, in words
    assert shown == "do_nothing" or any(f["action_id"] == shown and f["stage"] == "cooldown"
                                        and f["reason_in_words"].startswith("recently rejected")
                                        for f in web["filtered"])
    for a in web["actions"]:
        assert "likely to accept" in a["reason_in_words"] and "EUR" in a["reason_in_words"]
    consent = [f for ch in c["next_best_actions"].values() for f in ch["filtered"] if f["stage"] == "eligibility"]
    assert all(f["reason_in_words"].startswith("not eligible: requires ") for f in consent)


def test_a_preview_logs_nothing_and_counts_no_contact(customers_server, customers_bank, pool):
    cid = pool[1]
    before_log = read_log(customers_bank.decision_log_dir).decisions
    before = int((before_log["customer_id"] == cid).sum())
    for _ in range(3):
        c = _view(customers_server, cid)
    previews = c["next_best_actions"]
    assert any(p["actions"] for p in previews.values()), "the preview should propose something"
    assert all(p["preview"] for p in previews.values())
    after = read_log(customers_bank.decision_log_dir).decisions
    assert int((after["customer_id"] == cid).sum()) == before
    assert _contacts(customers_bank, cid) == 0
    # the same action once asked for and shown: logged and counted
    d = _decide(customers_server, cid, "web", k=1)
    assert d["decision_id"] and _contacts(customers_bank, cid) == (1 if d["actions"] else 0)


def test_an_unknown_customer_is_a_404_naming_the_id(customers_server):
    status, body = call(customers_server.url, "/customers/987654321")
    assert status == 404 and "customer 987654321 is unknown" in body["error"] and body["field"] == "customer_id"
    status, body = call(customers_server.url, "/customers/987654321/preferences",
                        {"consent": {"email": False}}, method="PUT")
    assert status == 404 and "987654321" in body["error"]
    status, body = call(customers_server.url, "/customers/abc")
    assert status == 400 and body["field"] == "customer_id" and "'abc'" in body["error"]
    status, body = call(customers_server.url, "/customers/5?at=yesterday")
    assert status == 400 and body["field"] == "at"


# --- the preference centre -----------------------------------------------------------------


def _put(server, cid: int, prefs: dict, by: str = "agent:jane") -> dict:
    status, body = call(server.url, f"/customers/{cid}/preferences", {**prefs, "updated_by": by}, method="PUT")
    assert status == 200, body
    return body


def test_withdrawn_consent_is_honoured_from_the_next_decision_and_audited(customers_server, pool):
    cid = next(c for c in pool[2:20] if _offers(customers_server, c, "email"))
    _put(customers_server, cid, {"consent": {"email": False}}, by="customer:self-service")
    d = _decide(customers_server, cid, "email", ts="2025-12-01T10:05:00Z")
    assert d["actions"] == []
    reasons = {(f["stage"], f["rule"]) for f in d["filtered"]}
    assert ("consent", "email: consent withdrawn in the preference centre") in reasons
    # other channels are untouched; the 360 shows the override
    c = _view(customers_server, cid, "2025-12-01T10:06:00Z")
    assert c["consents"]["email"] == {"feature": 1, "preference_centre": False, "effective": False}
    assert c["consents"]["sms"]["effective"] is True
    assert c["next_best_actions"]["email"]["actions"] == []
    # given again: offered again
    _put(customers_server, cid, {"consent": {"email": True}}, by="customer:self-service")
    assert _decide(customers_server, cid, "email", ts="2025-12-01T10:10:00Z")["actions"]
    status, p = call(customers_server.url, f"/customers/{cid}/preferences")
    assert status == 200 and [a["changed_by"] for a in p["audit"]] == ["customer:self-service"] * 2
    assert p["audit"][0]["before"] is None and p["audit"][0]["after"]["consent"] == {"email": False}
    assert p["audit"][1]["before"]["consent"] == {"email": False} and p["audit"][1]["after"]["consent"] == {"email": True}
    assert all(a["changed_at"].endswith("Z") for a in p["audit"])


def test_a_frequency_limit_quiet_hours_and_topics_are_honoured(customers_server, pool):
    # frequency: at most one contact on the web per 30 days (the catalog allows 20 a day)
    cid = next(c for c in pool[30:50] if _offers(customers_server, c, "web"))
    _put(customers_server, cid, {"frequency": {"web": {"count": 1, "days": 30}}})
    first = _decide(customers_server, cid, "web", k=1, ts="2025-12-01T09:00:00Z")
    assert first["actions"]
    second = _decide(customers_server, cid, "web", k=1, ts="2025-12-01T09:30:00Z")
    assert second["actions"] == []
    assert {f["rule"] for f in second["filtered"] if f["stage"] == "cap"} == {
        "web: the customer's own frequency limit (preference centre)"}
    # quiet hours 21:00-10:00 in Amsterdam: 09:00 UTC is 10:00 there in December (outside), 08:00 UTC inside
    cid2 = next(c for c in pool[50:70] if _offers(customers_server, c, "sms", "2025-11-21T08:00:00Z"))
    _put(customers_server, cid2, {"quiet_hours": {"start": "21:00", "end": "10:00"}, "timezone": "Europe/Amsterdam"})
    inside = _decide(customers_server, cid2, "sms", ts="2025-11-21T08:00:00Z")
    assert inside["actions"] == [] and any(
        f["stage"] == "preference" and f["rule"] == "sms: the customer's quiet hours (no outbound contact)"
        for f in inside["filtered"])
    assert _decide(customers_server, cid2, "web", ts="2025-11-21T08:00:00Z")["actions"]  # inbound: not quiet
    assert _decide(customers_server, cid2, "sms", ts="2025-11-22T09:00:00Z")["actions"]  # 10:00 local: allowed
    # topics: no sales messages at all
    cid3 = next(c for c in pool[70:] if any(a["issue"] == "sales" for a in _offers(customers_server, c, "web")))
    _put(customers_server, cid3, {"topics_blocked": ["sales"]})
    d = _decide(customers_server, cid3, "web", k=10)
    assert not [a for a in d["actions"] if a["issue"] == "sales"]
    assert any(f["rule"] == "the customer does not want 'sales' messages (preference centre)" for f in d["filtered"])


BAD_PREFERENCES = [
    ({"consent": {"fax": True}}, "consent.fax", "'fax' is not a channel"),
    ({"consent": {"email": "no"}}, "consent.email", "expected true or false"),
    ({"frequency": {"pigeon": {"count": 1, "days": 7}}}, "frequency.pigeon", "'pigeon' is not a channel"),
    ({"frequency": {"email": {"count": -1, "days": 7}}}, "frequency.email.count", "whole number >= 0"),
    ({"frequency": {"email": {"count": 2, "days": 0}}}, "frequency.email.days", "days > 0"),
    ({"quiet_hours": {"start": "25:00", "end": "08:00"}}, "quiet_hours.start", "expected a time HH:MM"),
    ({"quiet_hours": {"start": "21:00", "end": "8am"}}, "quiet_hours.end", "'8am'"),
    ({"quiet_hours": {"start": "21:00"}}, "quiet_hours", "expected {\"start\""),
    ({"quiet_hours": {"start": "21:00", "end": "21:00"}}, "quiet_hours.end", "an empty range"),
    ({"timezone": "Mars/Olympus"}, "timezone", "IANA time zone"),
    ({"topics_blocked": ["yachts"]}, "topics_blocked", "'yachts' is not an issue or group"),
    ({"colour": "red"}, "colour", "unknown field 'colour'"),
]


@pytest.mark.parametrize(("payload", "field", "fragment"), BAD_PREFERENCES)
def test_a_bad_preference_payload_is_a_400_naming_the_field(customers_server, pool, payload, field, fragment):
    status, body = call(customers_server.url, f"/customers/{pool[-1]}/preferences", payload, method="PUT")
    assert status == 400, body
    assert body["field"] == field and fragment in body["error"], body


def test_a_malformed_body_is_a_400(customers_server, pool):
    status, body = call(customers_server.url, f"/customers/{pool[-1]}/preferences", raw=b"{nope", method="PUT")
    assert status == 400 and body["field"] == "body"
    status, body = call(customers_server.url, f"/customers/{pool[-1]}/preferences", {"updated_by": 5}, method="PUT")
    assert status == 400 and body["field"] == "updated_by"


# --- erasure -------------------------------------------------------------------------------


def _cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {**os.environ, "NBA_HOME": str(settings.home), "NBA_WORK_DIR": str(settings.work),
           "NBA_MLFLOW_DIR": str(settings.mlflow_path), "PYTHONPATH": str(PROJECT_ROOT),
           "BENTOML_HOME": str(settings.bentoml_home), **extra}
    return env


def _sqlite_files(root: Path) -> list[Path]:
    out = []
    for p in root.rglob("*.db"):
        if "bentoml" in p.parts:
            continue
        with p.open("rb") as f:
            if f.read(16) == b"SQLite format 3\x00":
                out.append(p)
    return out


def _sqlite_hits(path: Path, cid: int, decision_ids: set[str]) -> list[str]:
    """Every (table, column) of the file holding the id (a number, or inside text: JSON) or one
    of the customer's former decision ids."""
    hits = []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for t in tables:
            cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')]
            for c in cols:
                if c in ("customer_id",) and conn.execute(f'SELECT count(*) FROM "{t}" WHERE "{c}" = ?',
                                                          (cid,)).fetchone()[0]:
                    hits.append(f"{path.name}:{t}.{c}")
                rows = conn.execute(f'SELECT "{c}" FROM "{t}" WHERE typeof("{c}") = \'text\'').fetchall()
                if any(r[0] in decision_ids for r in rows):
                    hits.append(f"{path.name}:{t}.{c} (decision id)")
                if any(f'"customer_id": {cid}' in r[0] for r in rows):
                    hits.append(f"{path.name}:{t}.{c} (JSON)")
    finally:
        conn.close()
    return hits


def _parquet_hits(root: Path, cid: int, decision_ids: set[str]) -> list[str]:
    hits = []
    for p in root.rglob("*.parquet"):
        if "bentoml" in p.parts:
            continue
        table = pq.read_table(p)
        if "customer_id" in table.column_names and (table.column("customer_id").to_numpy() == cid).any():
            hits.append(str(p))
        if "decision_id" in table.column_names and set(
                table.column("decision_id").cast("string").to_pylist()) & decision_ids:
            hits.append(f"{p} (decision id)")
    return hits


def test_erasure_leaves_no_trace_and_the_next_model_never_sees_the_rows(customers_server, customers_bank, pool,
                                                                        tmp_path):
    import redis

    from nba.serving.batch import decide_batch
    from nba.stores.policy_state.redis import RedisPolicyStore
    from nba.training import churn
    from nba.training.config import load_model_config
    from nba.training.frames import churn_frame
    from nba.training.tracking import configure, frame_digest

    settings = customers_bank
    cid = pool[20]
    # the customer is in every store: decisions with outcomes, a batch run, contacts (SQLite and
    # Redis), preferences with their audit, the online store, the offline sources
    d = _decide(customers_server, cid, "web")
    shown = d["actions"][0]["action_id"] if d["actions"] else "do_nothing"
    call(customers_server.url, "/respond", {"decision_id": d["decision_id"], "action_id": shown, "outcome": "rejected"})
    _put(customers_server, cid, {"consent": {"sms": False}, "topics_blocked": ["risk"]})
    batch_in = tmp_path / "batch.parquet"
    pd.DataFrame({"customer_id": [cid, pool[21], pool[22]]}).to_parquet(batch_in)
    decide_batch(settings, batch_in, "email", tmp_path / "batch_out.parquet", timestamp=float(DECISION_EPOCH),
                 deliver=True)  # outbox messages for those shown an action
    status, ingested = call(customers_server.url, "/events", [
        {"customer_id": cid, "type": "app_login", "timestamp": DECISION_TIME},
        {"customer_id": cid, "type": "outage", "timestamp": DECISION_TIME, "properties": {"service": "atm"}}])
    assert status == 200 and ingested["stored"] == 2, ingested  # the event log holds the customer too
    from nba.stores.decisions import DB_FILE
    from nba.stores.outbox import Outbox

    box = Outbox(settings.decision_log_dir / DB_FILE)
    messages_before = sum(1 for m in box.messages(limit=10_000) if m["customer_id"] == cid)
    box.close()
    log = read_log(settings.decision_log_dir)
    decision_ids = set(log.decisions.loc[log.decisions["customer_id"] == cid, "decision_id"])
    assert len(decision_ids) >= 2 and (log.outcomes["decision_id"].isin(decision_ids)).any()
    prefix = f"nba-faces-{uuid.uuid4().hex[:8]}"
    rstore = RedisPolicyStore(REDIS_DB_URL, prefix=f"{prefix}:policy")
    rstore.record_contacts([(cid, "mortgage", "lending", "email", float(DECISION_EPOCH), "d1"),
                            (pool[21], "mortgage", "lending", "email", float(DECISION_EPOCH), "d2")])
    rstore.record_rejection(cid, "mortgage", float(DECISION_EPOCH), "d1")
    cfg = load_model_config(settings.home, churn.FAMILY, settings.work)
    before = churn_frame(settings, cfg)
    assert (before.frame["customer_id"] == cid).sum() > 0
    sources_before = {p: pq.read_table(p) for p in (settings.sim_dir / "profile.parquet",)}
    online_before = _online_rows(settings, cid)
    assert online_before > 0
    kept_ids = int((log.decisions["customer_id"] != cid).sum())

    # refused without the admin token (401: no credential, or one the service does not know); done with it
    status, body = call(customers_server.url, f"/customers/{cid}", method="DELETE")
    assert status == 401 and "NBA_ADMIN_TOKEN" in body["error"] and body["field"] == "authorization"
    status, receipt = _delete(customers_server.url, cid, "Bearer wrong")
    assert status == 401 and receipt["error"] == "the API key is not known to this service"
    status, receipt = _delete(customers_server.url, cid, f"Bearer {ADMIN_TOKEN}")
    assert status == 200, receipt
    assert receipt["customer_id"] == cid and receipt["erased_by"] == "api:admin" and receipt["rows"] > 0
    assert receipt["stores"]["online_store"]["rows"] == online_before
    assert receipt["stores"]["decision_log"]["treatment"] == "pseudonymised"
    assert receipt["stores"]["offline_sources"]["rows"] > 0 and receipt["stores"]["preferences"]["rows"] == 2
    assert receipt["stores"]["event_log"]["rows"] == 2 and receipt["stores"]["event_log"]["treatment"] == "deleted"
    assert receipt["stores"]["outbox"]["rows"] == messages_before and receipt["stores"]["outbox"]["treatment"] == "deleted"
    assert json.loads(Path(receipt["receipt"]).read_text())["rows"] == receipt["rows"]
    # the Redis policy state through the CLI (a second run for the other stores: nothing was left in them)
    out = subprocess.run([sys.executable, "-m", "nba", "customers", "erase", str(cid), "--json"],
                         env=_cli_env(settings, NBA_POLICY_STORE="redis", NBA_REDIS_URL=REDIS_DB_URL,
                                      NBA_REDIS_PREFIX=prefix), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    second = json.loads(out.stdout)
    assert second["stores"]["contact_policy_state_redis"]["rows"] == 2
    assert {k: v["rows"] for k, v in second["stores"].items() if k != "contact_policy_state_redis"} == {
        k: 0 for k in second["stores"] if k != "contact_policy_state_redis"}
    # a third run: nothing was left anywhere, exit 0
    out = subprocess.run([sys.executable, "-m", "nba", "customers", "erase", str(cid)],
                         env=_cli_env(settings, NBA_POLICY_STORE="redis", NBA_REDIS_URL=REDIS_DB_URL,
                                      NBA_REDIS_PREFIX=prefix), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"customer {cid}: nothing was left to erase (erased before, at " in out.stdout

    # no store holds the id: every SQLite table, every Parquet file, Redis db 2, the online store
    hits = [h for p in _sqlite_files(settings.work) if p.name != "erasures.db" for h in _sqlite_hits(p, cid, decision_ids)]
    assert hits == []
    assert _parquet_hits(settings.work, cid, decision_ids) == []
    r = redis.Redis.from_url(REDIS_DB_URL)
    try:
        keys = [k.decode() for k in r.scan_iter(f"{prefix}:*")]
        # the other customer's contacts (and their state's version) stay
        assert sorted(keys) == [f"{prefix}:policy:c:{pool[21]}", f"{prefix}:policy:v:{pool[21]}"]
    finally:
        r.delete(*r.keys(f"{prefix}:*"))
        r.close()
    assert _online_rows(settings, cid) == 0
    status, body = call(customers_server.url, f"/customers/{cid}?at={DECISION_TIME}")
    assert status == 404
    # the aggregates survive: the decisions are there, under a pseudonym, without features
    after = read_log(settings.decision_log_dir, with_features=True)
    assert len(after.decisions) == len(log.decisions)
    pseudo = after.decisions.loc[~after.decisions["customer_id"].isin(log.decisions["customer_id"])]
    assert len(pseudo) == len(decision_ids) and (pseudo["customer_id"] < 0).all()
    assert pseudo["customer_id"].nunique() == 1 and int((after.decisions["customer_id"] >= 0).sum()) == kept_ids
    feats = after.features.set_index("decision_id").loc[pseudo["decision_id"]]
    assert feats.isna().all().all()  # the features the decisions were made on are gone
    assert (after.outcomes["decision_id"].isin(pseudo["decision_id"])).any()  # the outcome is still counted

    # a model trained afterwards never saw the rows, even when a source brings them back
    for path, table in sources_before.items():
        pq.write_table(table, path)  # a re-published simulator output still holding the customer
    frame = churn_frame(settings, cfg)
    assert (frame.frame["customer_id"] == cid).sum() == 0
    assert len(frame.frame) == len(before.frame) - int((before.frame["customer_id"] == cid).sum())
    assert frame.info["erased_customers_excluded"] == 1
    trained = churn.train_churn(settings, register=False)
    params = configure(settings).get_run(trained.run_id).data.params
    assert params["frame.digest"] == frame_digest(frame.frame) != frame_digest(before.frame)
    assert params["frame.rows"] == str(len(frame.frame))

    # nothing new is made of the erased customer: a decision is refused (404, as the 360) before anything is
    # written, their events are neither stored nor pushed, a batch skips them
    decisions_before = len(read_log(settings.decision_log_dir).decisions)
    status, body = call(customers_server.url, "/decide", {"customer_id": cid, "channel": "web",
                                                          "timestamp": DECISION_TIME})
    assert status == 404 and body["field"] == "customer_id", body
    assert body["error"].startswith(f"customer {cid} was erased at 20") and "no decision is made" in body["error"]
    status, body = call(customers_server.url, "/decide_batch", {"requests": [
        {"customer_id": pool[23], "channel": "web", "timestamp": DECISION_TIME},
        {"customer_id": cid, "channel": "web", "timestamp": DECISION_TIME}]})
    assert status == 404 and f"customer {cid} was erased" in body["error"], body
    status, ingested = call(customers_server.url, "/events", [
        {"customer_id": cid, "type": "app_login", "timestamp": DECISION_TIME},
        {"customer_id": pool[23], "type": "app_login", "timestamp": DECISION_TIME}])
    assert status == 200, ingested
    assert ingested["received"] == 2 and ingested["stored"] == 1 and ingested["erased_customers"] == [cid]
    assert ingested["unknown_customers"] == []  # the erased one is not reported as a new customer
    assert _online_rows(settings, cid) == 0
    from nba.stores.events.sqlite import EventLog

    events = EventLog(settings.event_log_path)
    try:
        assert events.history([cid]).get(cid, []) == [] and len(events.history([pool[23]])[pool[23]]) >= 1
    finally:
        events.close()
    assert len(read_log(settings.decision_log_dir).decisions) == decisions_before  # the refused ones wrote nothing
    pd.DataFrame({"customer_id": [cid, pool[24]]}).to_parquet(batch_in)
    summary = decide_batch(settings, batch_in, "email", tmp_path / "batch_out2.parquet",
                           timestamp=float(DECISION_EPOCH))
    assert summary.erased == 1 and summary.customers == 1
    assert pd.read_parquet(tmp_path / "batch_out2.parquet")["customer_id"].tolist() == [pool[24]]
    pd.DataFrame({"customer_id": [cid]}).to_parquet(batch_in)
    from nba.errors import DataFileError

    with pytest.raises(DataFileError, match="every one of its 1 rows is an erased customer"):
        decide_batch(settings, batch_in, "email", tmp_path / "batch_out3.parquet", timestamp=float(DECISION_EPOCH))


def _delete(url: str, cid: int, auth: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{url}/customers/{cid}", method="DELETE", headers={"Authorization": auth})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _online_rows(settings: Settings, cid: int) -> int:
    """Rows of the customer in Feast's SQLite online store (every view's table)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from nba.features.store import get_store

    store = get_store(settings)
    key = serialize_entity_key(EntityKey(join_keys=["customer_id"], entity_values=[Value(int64_val=cid)]),
                               entity_key_serialization_version=store.config.entity_key_serialization_version)
    conn = sqlite3.connect(settings.feast_repo / "data" / "online.db")
    try:
        n = 0
        for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            if "entity_key" in {r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')}:
                n += conn.execute(f'SELECT count(*) FROM "{t}" WHERE entity_key = ?', (key,)).fetchone()[0]
        return n
    finally:
        conn.close()
