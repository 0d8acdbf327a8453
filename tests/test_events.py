"""Events in real time: the declaration and its validator, the event log (durable, deduplicated),
the streaming features pushed to the real Feast online store, POST /events on the real BentoML
server (read-your-writes, bad input, unknown customers, duplicates), holdings and consents fed
back, `nba events ingest FILE`, and the NATS JetStream consumer killed mid-stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nba.errors import ConfigError
from nba.events import EventError, load_event_types, validate_events
from nba.settings import Settings
from nba.stores.decisions import read_log
from tests.conftest import PROJECT_ROOT
from tests.serving_env import DECISION_EPOCH, DECISION_TIME, build_served_bank, call, start_server

TYPES = load_event_types(PROJECT_ROOT / "serving" / "events.yaml")
NOW = float(DECISION_EPOCH)
DAY = 86400.0


def iso(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").isoformat()


# --- the declaration and the validator ------------------------------------------------------------


def test_the_declaration_loads_and_its_products_are_the_views():
    from nba.features.store import collect_objects

    assert "page_view" in TYPES.types and TYPES.types["page_view"].interaction is True
    assert TYPES.types["outage"].interaction is False
    products = TYPES.enum("page_view", "product")
    objects = collect_objects(PROJECT_ROOT / "features")
    odfv = next(v for v in objects["on_demand_feature_views"] if v.name == "realtime_context")
    assert sorted(f.name for f in odfv.features if f.name.startswith("views_")) == \
        sorted(f"views_{p}_7d" for p in products)


@pytest.mark.parametrize("edit, where", [
    (lambda d: d["types"]["page_view"]["properties"].update(product={"type": "uuid"}),
     "key 'types.page_view.properties.product.type'"),
    (lambda d: d["types"]["outage"].update(colour="red"), "key 'types.outage.colour': unknown key"),
    (lambda d: d["types"].update({"Bad-Name": {"interaction": True}}), "event type name(s) ['Bad-Name']"),
    (lambda d: d["types"]["life_event"]["properties"].update(kind=[]), "an enum needs at least one allowed value"),
])
def test_a_bad_declaration_fails_at_load_naming_file_entry_and_reason(tmp_path: Path, edit, where):
    data = yaml.safe_load((PROJECT_ROOT / "serving" / "events.yaml").read_text())
    edit(data)
    path = tmp_path / "events.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_event_types(path)
    assert str(path) in str(exc.value) and where in str(exc.value)


def test_valid_events_are_typed_and_their_ids_derived_deterministically():
    one = {"customer_id": 5, "type": "product_expiry", "timestamp": "2025-11-30T10:00:00Z",
           "properties": {"product": "credit_card", "expires_at": "2026-01-31"}}
    [e] = validate_events(one, TYPES, NOW)
    assert e["timestamp"] == pd.Timestamp("2025-11-30T10:00:00Z").timestamp()
    assert e["properties"]["expires_at"] == pd.Timestamp("2026-01-31", tz="UTC").timestamp()
    assert len(e["event_id"]) == 32 and validate_events(dict(one), TYPES, NOW)[0]["event_id"] == e["event_id"]
    other = validate_events({**one, "timestamp": "2025-11-30T10:00:01Z"}, TYPES, NOW)[0]
    assert other["event_id"] != e["event_id"]
    given = validate_events([{"customer_id": 1, "type": "app_login", "event_id": "abc"}], TYPES, NOW)[0]
    assert given["event_id"] == "abc" and given["timestamp"] == NOW  # default: now
    loan = validate_events({"customer_id": 1, "type": "payment_missed", "properties": {"days_late": 3, "amount": 10}},
                           TYPES, NOW)[0]
    assert loan["properties"] == {"days_late": 3, "amount": 10.0}


BAD_EVENTS = [
    ({"customer_id": 1, "type": "teleport"}, "event.type", "unknown event type; expected one of page_view"),
    ({"type": "app_login"}, "event.customer_id", "missing"),
    ({"customer_id": "7", "type": "app_login"}, "event.customer_id", "expected an integer >= 0"),
    ({"customer_id": True, "type": "app_login"}, "event.customer_id", "expected an integer >= 0"),
    ({"customer_id": 1, "type": "payment_missed", "properties": {"amount": 5.0}}, "event.properties.days_late",
     "missing; 'payment_missed' needs it (an integer)"),
    ({"customer_id": 1, "type": "payment_missed", "properties": {"days_late": "3", "amount": 5.0}},
     "event.properties.days_late", "'3': expected an integer"),
    ({"customer_id": 1, "type": "payment_missed", "properties": {"days_late": 2.5, "amount": 5.0}},
     "event.properties.days_late", "expected an integer"),
    ({"customer_id": 1, "type": "consent_changed", "properties": {"channel": "email", "granted": "no"}},
     "event.properties.granted", "expected true or false"),
    ({"customer_id": 1, "type": "page_view", "properties": {"product": "yacht"}}, "event.properties.product",
     "expected one of credit_card, card_upgrade"),
    ({"customer_id": 1, "type": "page_view", "properties": {"product": "savings", "colour": "red"}},
     "event.properties.colour", "not a property of 'page_view'"),
    ({"customer_id": 1, "type": "app_login", "timestamp": "tomorrow"}, "event.timestamp", "expected an ISO 8601"),
    ({"customer_id": 1, "type": "app_login", "timestamp": iso(NOW + 3600)}, "event.timestamp",
     "3600 s in the future; expected at most 300 s"),
    ({"customer_id": 1, "type": "app_login", "when": "now"}, "event.when", "unknown field"),
    ([], "events", "the list is empty"),
    ("hello", "events", "expected an event object or a list"),
    ([{"customer_id": 1, "type": "app_login"}, {"customer_id": 2, "type": "outage", "properties": {"service": "x"}}],
     "events[1].properties.service", "expected one of card_payments"),
]


@pytest.mark.parametrize("payload, field, message", BAD_EVENTS)
def test_bad_events_name_the_field_and_what_was_expected(payload, field, message):
    with pytest.raises(EventError) as exc:
        validate_events(payload, TYPES, NOW)
    assert exc.value.field == field and message in str(exc.value)


def test_a_timestamp_just_inside_the_future_bound_is_accepted():
    [e] = validate_events({"customer_id": 1, "type": "app_login", "timestamp": iso(NOW + 299)}, TYPES, NOW)
    assert e["timestamp"] == NOW + 299


# --- the event log and the derivation -----------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def event_log_backend(request, tmp_path: Path):
    """(open the log, read it as a frame) on the embedded SQLite file or on Postgres."""
    if request.param == "sqlite":
        from nba.stores.events.sqlite import EventLog, read_events

        path = tmp_path / "events.db"
        yield (lambda: EventLog(path)), (lambda: read_events(path))
        return
    from nba.stores.events.postgres import PostgresEventLog, read_events_pg
    from tests.pg_env import pg_database

    with pg_database("test_events") as dsn:
        yield (lambda: PostgresEventLog(dsn)), (lambda: read_events_pg(dsn))


def test_the_event_log_appends_dedupes_reads_and_erases(event_log_backend):
    open_log, read_frame = event_log_backend
    log = open_log()
    evs = validate_events([{"customer_id": 1, "type": "app_login", "timestamp": NOW - 10},
                           {"customer_id": 2, "type": "outage", "timestamp": NOW - 5,
                            "properties": {"service": "atm", "minutes": 30}},
                           {"customer_id": 1, "type": "app_login", "timestamp": NOW - 10}], TYPES, NOW)
    evs[1]["known_customer"] = False
    first = log.append(evs, NOW)
    assert len(first.new) == 2 and first.duplicates == (evs[2]["event_id"],)  # twice in one call: once stored
    again = log.append(evs[:2], NOW)
    assert again.new == () and set(again.duplicates) == {evs[0]["event_id"], evs[1]["event_id"]}
    assert log.count() == 2 and log.count_unknown() == 1
    hist = log.history([1, 2, 3])
    assert [e.type for e in hist[1]] == ["app_login"] and hist[3] == []
    assert hist[2][0].properties == {"service": "atm", "minutes": 30}
    frame = read_frame()
    assert list(frame.columns[:6]) == ["event_id", "customer_id", "type", "timestamp", "known_customer", "ingested_at"]
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert frame.set_index("customer_id").loc[2, "minutes"] == 30 and frame["known_customer"].tolist() == [1, 0]
    assert log.erase_customer(1) == 1 and log.count() == 1 and log.history([1])[1] == []
    log.close()


def test_events_appended_pending_stay_pending_until_marked_triggered(event_log_backend):
    """The triggers' outbox: pending rows commit with the append, are read by id or by age,
    go when marked (alone or in a later append's transaction), and go with an erasure."""
    open_log, _ = event_log_backend
    log = open_log()
    evs = validate_events([{"customer_id": 1, "type": "app_login", "timestamp": NOW - 30},
                           {"customer_id": 2, "type": "outage", "timestamp": NOW - 20,
                            "properties": {"service": "atm", "minutes": 30}},
                           {"customer_id": 3, "type": "app_login", "timestamp": NOW - 10}], TYPES, NOW)
    ids = [e["event_id"] for e in evs]
    log.append(evs[:2], NOW - 100, pending=True)
    log.append(evs[2:], NOW, pending=False)  # an ingest without triggers leaves nothing pending
    both = log.pending(ids)
    assert [e["event_id"] for e in both] == ids[:2]  # in time order, as stored
    assert both[1] == {"event_id": ids[1], "customer_id": 2, "type": "outage", "timestamp": NOW - 20,
                       "properties": {"service": "atm", "minutes": 30}}
    assert [e["event_id"] for e in log.pending(before=NOW - 50)] == ids[:2]
    assert log.pending(before=NOW - 200) == [] and len(log.pending(before=NOW, limit=1)) == 1
    # a redelivery of the first, with the second marked in the same transaction
    again = log.append(evs[:1], NOW, pending=True, triggered=[ids[1]])
    assert again.duplicates == (ids[0],) and [e["event_id"] for e in log.pending(ids)] == [ids[0]]
    assert log.erase_customer(1) == 1 and log.pending(ids) == []
    log.append(evs[:1], NOW, pending=True)
    assert log.triggered(ids) == 1 and log.pending() == []
    log.close()



def test_the_state_follows_the_events_and_the_windows_forget():
    from nba.features.streaming import realtime_rows
    from nba.stores.events import LoggedEvent as E

    hist = {7: [E("outage", NOW - 40 * DAY, {"service": "atm"}), E("outage", NOW - 20 * DAY, {"service": "atm"}),
                E("application_started", NOW - 3 * DAY, {"application_id": "a1", "product": "mortgage"}),
                E("payment_missed", NOW - 2 * DAY, {"days_late": 12, "amount": 50.0}),
                E("application_completed", NOW - 2 * DAY, {"application_id": "other", "product": "savings"}),
                E("page_view", NOW - 8 * DAY, {"product": "savings"}), E("page_view", NOW - DAY, {"product": "mortgage"}),
                E("life_event", NOW - DAY, {"kind": "home_purchase"}),
                E("product_expiry", NOW - DAY, {"product": "credit_card", "expires_at": NOW + 20 * DAY})]}
    hist[7].sort(key=lambda e: e.timestamp)
    [row] = realtime_rows(hist, TYPES)
    assert row["outage_ts"] == [int(NOW - 20 * DAY)]  # 40 days before the newest event: gone
    assert row["page_view_ts"] == [int(NOW - DAY)] and row["page_view_product"] == ["mortgage"]
    assert row["application_open"] == 1 and row["application_product"] == "mortgage"  # another id completed
    assert row["days_late"] == 12 and row["last_life_event"] == "home_purchase"
    assert row["card_expires_at_s"] == int(NOW + 20 * DAY)
    assert row["last_interaction_s"] == int(NOW - DAY)  # the page view; an outage is no interaction
    hist[7].append(E("payment_made", NOW, {"amount": 50.0}))
    hist[7].append(E("application_completed", NOW, {"application_id": "a1", "product": "mortgage"}))
    [row] = realtime_rows(hist, TYPES)
    assert row["days_late"] == 0 and row["application_open"] == 0 and row["application_product"] == ""


# --- the served bank ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(feature_env: Settings, tmp_path_factory) -> Settings:
    return build_served_bank(feature_env, tmp_path_factory.mktemp("events_bank"))


@pytest.fixture(scope="module")
def server(served: Settings, tmp_path_factory):
    srv = start_server(served, tmp_path_factory.mktemp("events_logs") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def customers(served: Settings) -> list[int]:
    """Customers with a snapshot at the bank's last month, outside the hold-out."""
    from nba.decisioning import experiment
    from nba.serving.bundle import load_catalog_from_bundle, read_manifest

    profile = pd.read_parquet(served.feast_repo / "data" / "profile.parquet", columns=["customer_id", "event_timestamp"])
    ids = np.sort(profile.loc[profile["event_timestamp"] == profile["event_timestamp"].max(), "customer_id"].to_numpy())
    exp = load_catalog_from_bundle(served.bundle_dir, read_manifest(served.bundle_dir)).experiment
    return [int(c) for c in ids[~experiment.in_holdout(ids, exp.salt, exp.holdout_share)]]


def _features(served: Settings, decision_id: str) -> pd.Series:
    log = read_log(served.decision_log_dir, with_features=True)
    return log.features.set_index("decision_id").loc[decision_id]


_READERS: dict[str, object] = {}


def _online(served: Settings, cid: int, at: float = NOW) -> dict:
    """What /decide reads for the customer at `at` (the real reader of serving_v2)."""
    from nba.features.online import OnlineFeatureReader

    key = str(served.work)
    if key not in _READERS:
        _READERS[key] = OnlineFeatureReader(served, "serving_v2")
    cols, _ = _READERS[key].read([cid], int(at))
    return {k: v[0] for k, v in cols.items()}


@pytest.mark.slow
@pytest.mark.integration
def test_read_your_writes_a_decision_right_after_an_event_sees_it(server, served, customers):
    cid = customers[0]
    events = [{"customer_id": cid, "type": "page_view", "timestamp": iso(NOW - 3600), "properties": {"product": "mortgage"}},
              {"customer_id": cid, "type": "page_view", "timestamp": iso(NOW - 8 * DAY), "properties": {"product": "mortgage"}},
              {"customer_id": cid, "type": "outage", "timestamp": iso(NOW - 31 * DAY), "properties": {"service": "atm"}},
              {"customer_id": cid, "type": "outage", "timestamp": iso(NOW - 29 * DAY), "properties": {"service": "atm"}},
              {"customer_id": cid, "type": "payment_missed", "timestamp": iso(NOW - 2 * DAY),
               "properties": {"days_late": 9, "amount": 120.5}}]
    status, out = call(server.url, "/events", events)
    assert status == 200, out
    assert out["received"] == 5 and out["stored"] == 5 and out["duplicates"] == [] and out["unknown_customers"] == []
    assert {"page_views_7d", "views_mortgage_7d", "outages_30d", "days_late", "days_since_interaction"} <= \
        set(out["features_updated"])
    assert out["triggers"] == [] and len(out["event_ids"]) == 5
    status, d = call(server.url, "/decide", {"customer_id": cid, "channel": "web", "timestamp": DECISION_TIME})
    assert status == 200, d
    f = _features(served, d["decision_id"])
    assert f["page_views_7d"] == 1 and f["views_mortgage_7d"] == 1 and f["views_savings_7d"] == 0  # 8 days: out
    assert f["outages_30d"] == 1  # the outage 31 days before the decision does not count
    assert f["days_late"] == 9 and f["days_since_interaction"] == pytest.approx(1 / 24)
    # the same state a day later: the counts follow the decision's own time
    later = _online(served, cid, NOW + 7 * DAY)
    assert later["page_views_7d"] == 0 and later["outages_30d"] == 0
    assert later["days_since_interaction"] == pytest.approx(7 + 1 / 24)


@pytest.mark.slow
@pytest.mark.integration
def test_one_event_duplicates_and_unknown_customers(server, served, customers):
    from nba.stores.events.sqlite import read_events

    cid = customers[1]
    one = {"customer_id": cid, "type": "app_login", "timestamp": iso(NOW - 60), "properties": {"device": "ios"},
           "event_id": f"login-{cid}"}
    status, out = call(server.url, "/events", one)
    assert status == 200 and out["stored"] == 1 and out["event_ids"] == [f"login-{cid}"], out
    status, again = call(server.url, "/events", [one, one])
    assert status == 200 and again["stored"] == 0 and again["duplicates"] == [f"login-{cid}"] * 2
    assert _online(served, cid)["logins_7d"] == 1  # not counted twice
    # an event id another customer's event holds is a duplicate too: nothing of it is stored or
    # pushed, a consent withdrawal included (schemathesis found it answering 500 after 60 s)
    other = customers[2]
    consent = _online(served, other)["consent_sms"]
    status, out = call(server.url, "/events", {"customer_id": other, "type": "consent_changed", "timestamp": iso(NOW - 30),
                                               "properties": {"channel": "sms", "granted": not consent},
                                               "event_id": f"login-{cid}"})
    assert status == 200 and out["stored"] == 0 and out["duplicates"] == [f"login-{cid}"], out
    assert _online(served, other)["consent_sms"] == consent
    stranger = 987_654_321
    status, out = call(server.url, "/events", {"customer_id": stranger, "type": "complaint", "timestamp": iso(NOW - 5)})
    assert status == 200 and out["stored"] == 1 and out["unknown_customers"] == [stranger]
    frame = read_events(served.event_log_path)
    row = frame[frame["customer_id"] == stranger].iloc[0]
    assert row["known_customer"] == 0 and row["type"] == "complaint"
    status, d = call(server.url, "/decide", {"customer_id": stranger, "channel": "web", "timestamp": DECISION_TIME})
    assert status == 200 and d["features_missing"] is True  # its events alone do not make it a customer
    assert _features(served, d["decision_id"])["complaints_30d"] == 1


BAD_BODIES = [
    (b"{not json", 400, "events", "not valid JSON"),
    (b'{"customer_id": 1, "type": "teleport"}', 400, "event.type", "unknown event type"),
    (b'[{"customer_id": 1, "type": "app_login"}, {"type": "app_login"}]', 400, "events[1].customer_id", "missing"),
    (b'{"customer_id": 1, "type": "payment_missed", "properties": {"days_late": "x", "amount": 1}}', 400,
     "event.properties.days_late", "expected an integer"),
    (b'{"customer_id": 1, "type": "app_login", "timestamp": "2100-01-01T00:00:00Z"}', 400, "event.timestamp",
     "in the future"),
    (b'{"customer_id": 1, "type": "geofence_entered", "properties": {"branch_id": 12}}', 400,
     "event.properties.branch_id", "expected a string"),
    (b'"app_login"', 400, "events", "expected an event object or a list"),
]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("body, status, field, message", BAD_BODIES)
def test_bad_events_answer_400_naming_the_field(server, served, body, status, field, message):
    before = _count(served)
    got, out = call(server.url, "/events", raw=body)
    assert got == status, out
    assert out["field"] == field and message in out["error"]
    assert _count(served) == before  # nothing of a bad call is stored


def _count(served: Settings) -> int:
    from nba.stores.events.sqlite import EventLog

    return EventLog(served.event_log_path).count() if served.event_log_path.is_file() else 0


def _offered(server, customers, action: str, channel: str = "web") -> tuple[int, dict]:
    for cid in customers[10:]:
        status, d = call(server.url, "/decide", {"customer_id": cid, "channel": channel, "k": 10,
                                                 "timestamp": DECISION_TIME})
        assert status == 200, d
        if any(a["action_id"] == action for a in d["actions"]):
            return cid, d
    raise AssertionError(f"no customer is offered {action} on {channel}")


@pytest.mark.slow
@pytest.mark.integration
def test_an_accepted_product_is_held_at_once_and_not_offered_again(server, served, customers):
    cid, d = _offered(server, customers, "rewards_card")
    assert _online(served, cid)["has_credit_card"] == 0
    status, out = call(server.url, "/respond", {"decision_id": d["decision_id"], "action_id": "rewards_card",
                                                "outcome": "accepted", "value": 150, "timestamp": DECISION_TIME})
    assert status == 200 and out["holding_set"] == "has_credit_card", out
    status, d2 = call(server.url, "/decide", {"customer_id": cid, "channel": "web", "k": 10,
                                              "timestamp": DECISION_TIME})
    assert status == 200
    assert "rewards_card" not in {a["action_id"] for a in d2["actions"]}
    assert {"action_id": "rewards_card", "stage": "eligibility", "rule": "has_credit_card == 0"} in d2["filtered"]
    assert _online(served, cid)["has_credit_card"] == 1


@pytest.mark.slow
@pytest.mark.integration
def test_a_consent_withdrawal_holds_from_the_next_decision(server, served, customers):
    def shown_on_email(pool):
        for c in pool:
            f = _online(served, c)
            if f["consent_email"] != 1 or f["has_email"] != 1:
                continue
            status, d = call(server.url, "/decide", {"customer_id": c, "channel": "email", "k": 10,
                                                     "timestamp": DECISION_TIME})
            assert status == 200, d
            if d["actions"]:
                return c, d
        raise AssertionError("no consenting customer is shown anything by e-mail")

    cid, d = shown_on_email(customers[40:400])
    sms_before = _online(served, cid)["consent_sms"]
    shown = [a["action_id"] for a in d["actions"]]
    status, out = call(server.url, "/events", {"customer_id": cid, "type": "consent_changed", "timestamp": iso(NOW - 1),
                                               "properties": {"channel": "email", "granted": False}})
    assert status == 200 and "consent_email" in out["features_updated"], out
    status, d = call(server.url, "/decide", {"customer_id": cid, "channel": "email", "k": 10,
                                             "timestamp": DECISION_TIME})
    assert status == 200 and d["actions"] == []
    stage = {f["action_id"]: f["stage"] for f in d["filtered"]}
    assert all(stage[a] == "consent" for a in shown), stage  # what was shown a moment ago: refused for consent
    assert _online(served, cid)["consent_email"] == 0 and _online(served, cid)["consent_sms"] == sms_before
    # an opt-out reported with the outcome of a decision withdraws that decision's channel
    other, d = shown_on_email([c for c in customers[40:400] if c != cid])
    action = d["actions"][0]["action_id"]
    status, out = call(server.url, "/respond", {"decision_id": d["decision_id"], "action_id": action,
                                                "outcome": "rejected", "opt_out": True, "timestamp": DECISION_TIME})
    assert status == 200 and out["opted_out"] == "email", out
    assert _online(served, other)["consent_email"] == 0
    status, d = call(server.url, "/decide", {"customer_id": other, "channel": "email", "timestamp": DECISION_TIME})
    assert status == 200 and d["actions"] == []
    assert {f["action_id"]: f["stage"] for f in d["filtered"]}[action] == "consent"


@pytest.mark.slow
@pytest.mark.integration
def test_the_fast_push_leaves_what_feast_push_leaves(served, customers):
    from nba.features.store import get_store
    from nba.features.streaming import REALTIME_PUSH, REALTIME_VIEW, FeaturePusher, realtime_rows
    from nba.stores.events import LoggedEvent as E

    a, b = customers[300], customers[301]
    hist = {a: [E("card_search", NOW - 100, {}), E("geofence_entered", NOW - 50, {"branch_id": "b-7"})],
            b: [E("service_contact", NOW - 10, {"reason": "card"})]}
    rows = realtime_rows(hist, TYPES)
    fast, public = FeaturePusher(get_store(served)), FeaturePusher(get_store(served), fast=False)
    fast.push(REALTIME_PUSH, rows)
    got_fast = fast.current(REALTIME_VIEW, [a, b])
    for r in rows:
        r["geofence_branch"] = "changed"
    public.push(REALTIME_PUSH, rows)
    got_public = public.current(REALTIME_VIEW, [a, b])
    assert got_public[0][1]["geofence_branch"] == "changed"
    for (t1, v1), (t2, v2) in zip(got_fast, got_public, strict=True):
        assert t1 == t2 and {**v1, "geofence_branch": "changed"} == v2
    assert got_fast[0][1]["card_search_ts"] == [int(NOW - 100)] and got_fast[1][1]["service_contact_ts"] == [int(NOW - 10)]


@pytest.mark.slow
@pytest.mark.integration
def test_nba_events_ingest_replays_csv_jsonl_and_parquet(served, customers, tmp_path, monkeypatch):
    from nba.cli.events import ingest_file

    for key, value in {"NBA_HOME": served.home, "NBA_WORK_DIR": served.work_dir, "NBA_MLFLOW_DIR": served.mlflow_dir}.items():
        monkeypatch.setenv(key, str(value))
    a, b, c = customers[400:403]
    flat = pd.DataFrame([
        {"customer_id": a, "type": "life_event", "timestamp": iso(NOW - DAY), "event_id": "f1", "kind": "marriage",
         "application_id": None, "product": None},
        {"customer_id": a, "type": "application_started", "timestamp": iso(NOW - 5 * 3600), "event_id": "f2",
         "kind": None, "application_id": "1234", "product": "mortgage"},
        {"customer_id": b, "type": "page_view", "timestamp": iso(NOW - 60), "event_id": "f3", "kind": None,
         "application_id": None, "product": "savings"},
    ])
    flat.to_csv(tmp_path / "events.csv", index=False)
    out = ingest_file(tmp_path / "events.csv", chunk=2, progress=False)
    counts = ("received", "stored", "duplicates", "unknown_customers", "customers_updated")
    assert {k: out[k] for k in counts} == {"received": 3, "stored": 3, "duplicates": 0, "unknown_customers": 0,
                                          "customers_updated": 2}
    # the marriage fires the life-moment trigger, as POST /events would (one decision started)
    assert out["triggers"]["life_moment"]["fired"] == out["triggers"]["life_moment"]["decisions"] == 1
    assert set(out["triggers"]) <= {"life_moment", "purchase_propensity"}  # a page view may fire the latter
    flat.to_parquet(tmp_path / "events.parquet")
    again = ingest_file(tmp_path / "events.parquet", progress=False)
    assert again["duplicates"] == 3 and again["triggers"] == {}  # the same ids: stored once, triggered once
    lines = [json.dumps({"customer_id": c, "type": "card_search", "timestamp": iso(NOW - 30), "properties": {}}),
             json.dumps({"customer_id": c, "type": "page_view", "timestamp": iso(NOW - 20), "product": "mortgage"})]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    assert ingest_file(tmp_path / "events.jsonl", progress=False)["stored"] == 2
    fa, fb, fc = (_online(served, x) for x in (a, b, c))
    assert fa["last_life_event"] == "marriage" and fa["days_since_life_event"] == pytest.approx(1.0)
    assert fa["application_open"] == 1 and fa["application_product"] == "mortgage"
    assert fa["application_open_hours"] == pytest.approx(5.0)
    assert fb["views_savings_7d"] == 1 and fc["card_searches_7d"] == 1 and fc["views_mortgage_7d"] == 1
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n" + '{"customer_id": 1, "type": "nope"}\n')
    with pytest.raises(EventError) as exc:
        ingest_file(tmp_path / "bad.jsonl", progress=False)
    assert exc.value.field == "events[1].type"


@pytest.fixture(scope="module")
def collections(served: Settings, customers: list[int]) -> list[int]:
    """Customers the payment-default trigger serves (CLV <= 1,000 EUR, by the served CLV model),
    to whom its action applies (a missed payment in 90 days or an open case) and who consent to
    one of its channels: a payment 45 days late starts a decision that sends a payment plan."""
    from nba.serving.bundle import load_engine

    engine = load_engine(served)
    pool = customers[1000:]
    cols, found = engine.features.read(pool, DECISION_EPOCH)
    env, _ = engine.environment(pool, cols, found)
    ok = ((np.asarray(env["clv"]) <= 1000)
          & ((np.asarray(env["missed_payments_90d"]) >= 1) | (np.asarray(env["collections_open"]) == 1))
          & (((np.asarray(env["consent_email"]) == 1) & (np.asarray(env["has_email"]) == 1))
             | (np.asarray(env["consent_sms"]) == 1)))
    picked = [c for c, good in zip(pool, ok.tolist(), strict=True) if good]
    assert len(picked) >= 5, "the bank has too few low-value customers in arrears"
    return picked


def _outbox(served: Settings, decision_ids: list[str]) -> list[dict]:
    from nba.stores.decisions import DB_FILE
    from nba.stores.outbox import Outbox

    box = Outbox(served.decision_log_dir / DB_FILE)
    try:
        return box.of_decisions(decision_ids)
    finally:
        box.close()


def _triggered(served: Settings, cids: list[int]) -> pd.DataFrame:
    """The trigger-started decisions of these customers in the log."""
    log = read_log(served.decision_log_dir).decisions
    return log[log["customer_id"].isin(cids) & log["source"].astype(str).str.startswith("trigger:")]


def _payments(tag: str, fires: int, near: int) -> list[dict]:
    """A payment 45 days late (the trigger: late > 30 days) and its near miss (30 days late)."""
    return [{"event_id": f"{tag}-late", "customer_id": fires, "type": "payment_missed", "timestamp": iso(NOW - 60),
             "properties": {"days_late": 45, "amount": 80.0}},
            {"event_id": f"{tag}-near", "customer_id": near, "type": "payment_missed", "timestamp": iso(NOW - 60),
             "properties": {"days_late": 30, "amount": 80.0}}]


@pytest.mark.slow
@pytest.mark.integration
def test_a_replayed_file_starts_decisions_and_outbox_messages_as_post_events_does(served, collections, tmp_path,
                                                                                  monkeypatch):
    from nba.cli.events import ingest_file

    for key, value in {"NBA_HOME": served.home, "NBA_WORK_DIR": served.work_dir, "NBA_MLFLOW_DIR": served.mlflow_dir}.items():
        monkeypatch.setenv(key, str(value))
    fires, near = collections[0], collections[1]
    rows = [{"customer_id": e["customer_id"], "type": e["type"], "timestamp": e["timestamp"],
             "event_id": e["event_id"], **e["properties"]} for e in _payments("file", fires, near)]
    pd.DataFrame(rows).to_parquet(tmp_path / "payments.parquet")
    out = ingest_file(tmp_path / "payments.parquet", progress=False)
    assert out["stored"] == 2 and out["decisions"] == 1 and out["outbox_messages"] == 1, out
    t = out["triggers"]["payment_default"]
    assert t["fired"] == 1 and t["held_back"] == 0 and t["decisions"] == 1 and t["with_action"] == 1
    dec = _triggered(served, [fires, near])
    assert dec["customer_id"].tolist() == [fires]  # the near miss started nothing
    row = dec.iloc[0]
    assert row["source"] == "trigger:payment_default" and row["action_id"] == "payment_plan"
    assert row["channel"] in {"sms", "email", "call_centre"}
    [msg] = _outbox(served, [row["decision_id"]])
    assert msg["channel"] == row["channel"] and msg["state"] == "pending"  # the worker sends it
    assert t["messages"] == {row["channel"]: 1}
    # --no-triggers stores and pushes only
    rows[0]["event_id"], rows[0]["customer_id"] = "file-late-2", collections[2]
    pd.DataFrame(rows[:1]).to_parquet(tmp_path / "quiet.parquet")
    quiet = ingest_file(tmp_path / "quiet.parquet", progress=False, triggers=False)
    assert quiet["stored"] == 1 and quiet["triggers"] == {} and quiet["decisions"] == 0
    assert _triggered(served, [collections[2]]).empty


@pytest.mark.slow
@pytest.mark.integration
def test_the_offline_source_is_derived_from_the_event_log(served, customers):
    """The realtime view's offline source is the event log's derivation at each event's time:
    a point-in-time frame through serving_v2 sees, at a moment, what a decision then saw."""
    from nba.features import store

    cid = customers[0]  # its page views and outages from the read-your-writes test
    # `nba features apply` publishes the derivation beside the other sources (and registers the
    # repository's own paths: this one is a copy of the shared one)
    assert store.apply(served).sources["realtime"] >= _count(served) > 0
    entities = pd.DataFrame({"customer_id": [cid, cid], "event_timestamp": pd.to_datetime(
        [NOW - 2 * 3600, NOW], unit="s", utc=True)})
    frame = store.training_frame(served, "serving_v2", entities)
    assert frame["page_views_7d"].tolist() == [0, 1]  # the view an hour before the decision is not seen before
    assert frame["outages_30d"].tolist() == [1, 1]


# --- the stream consumer ---------------------------------------------------------------------------


def _env(served: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(NBA_HOME=str(served.home), NBA_WORK_DIR=str(served.work_dir), NBA_MLFLOW_DIR=str(served.mlflow_dir),
               PYTHONPATH=str(PROJECT_ROOT))
    return env


@pytest.mark.slow
@pytest.mark.integration
def test_the_consumer_killed_mid_stream_loses_nothing_and_counts_nothing_twice(served, customers, tmp_path):
    from nba.features.store import get_store
    from nba.features.streaming import REALTIME_VIEW, FeaturePusher
    from nba.serving.consumer import delete_stream, publish
    from nba.stores.events.sqlite import EventLog

    tag = uuid.uuid4().hex[:8]
    stream, subject, durable = f"NBA_TEST_INGEST_{tag}", f"nba.test.ingest.{tag}", f"ingest-{tag}"
    who = customers[500:540]
    n = 2_000
    events = [{"customer_id": who[i % len(who)], "type": "app_login", "timestamp": NOW - 3 * DAY + i,
               "event_id": f"{tag}-{i}", "properties": {}} for i in range(n)]
    log = EventLog(served.event_log_path)
    before = log.count()
    cmd = [sys.executable, "-m", "nba", "events", "consume", "--stream", stream, "--subject", subject,
           "--durable", durable, "--batch", "25", "--ack-wait", "2", "--idle-exit", "4"]
    try:
        asyncio.run(publish(events, stream=stream, subject=subject))
        proc = subprocess.Popen(cmd, env=_env(served), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while log.count() - before < 300 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        mid = log.count() - before
        assert 300 <= mid < n, f"the consumer was not killed mid-stream ({mid} of {n} stored)"
        again = subprocess.run(cmd, env=_env(served), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        stats = json.loads(again.stdout.strip().splitlines()[-1])
        assert log.count() - before == n  # nothing lost, nothing stored twice
        assert stats["stored"] == n - mid and stats["rejected"] == 0
        current = FeaturePusher(get_store(served)).current(REALTIME_VIEW, who)
        for cid, (_, vals) in zip(who, current, strict=True):
            assert len(vals["login_ts"]) == sum(1 for e in events if e["customer_id"] == cid)  # each login once
    finally:
        asyncio.run(delete_stream(stream))


@pytest.mark.slow
@pytest.mark.integration
def test_a_broker_message_starts_decisions_and_outbox_messages_as_post_events_does(served, collections):
    from nba.serving.consumer import delete_stream, publish

    tag = uuid.uuid4().hex[:8]
    stream, subject, durable = f"NBA_TEST_EVENTS_TRIGGERS_{tag}", f"nba.test.events.triggers.{tag}", f"trig-{tag}"
    fires, near = collections[3], collections[4]
    cmd = [sys.executable, "-m", "nba", "events", "consume", "--stream", stream, "--subject", subject,
           "--durable", durable, "--batch", "10", "--idle-exit", "3"]
    try:
        # event ids fixed, as the file test's: a decision's id is derived from its event's, and its
        # exploration draw from that id, so a random id explored now and then (another action shown)
        asyncio.run(publish(_payments("broker", fires, near), stream=stream, subject=subject))
        proc = subprocess.run(cmd, env=_env(served), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        stats = json.loads(proc.stdout.strip().splitlines()[-1])
        assert stats["stored"] == 2 and stats["decisions"] == 1 and stats["messages"] == 1, stats
    finally:
        asyncio.run(delete_stream(stream))
    dec = _triggered(served, [fires, near])
    assert dec["customer_id"].tolist() == [fires]  # the near miss started nothing
    assert dec.iloc[0]["source"] == "trigger:payment_default" and dec.iloc[0]["action_id"] == "payment_plan"
    [msg] = _outbox(served, dec["decision_id"].tolist())
    assert msg["channel"] == dec.iloc[0]["channel"] and msg["state"] == "pending"


@pytest.mark.slow
@pytest.mark.integration
def test_the_triggers_of_events_a_killed_process_stored_run_once_on_redelivery_or_at_the_consumers_start(
        served, collections):
    """Nothing is lost between the append and the triggers: the state a SIGKILL leaves at each
    point (the engine's own steps, then the engine dropped) is recovered, and nothing is decided twice."""
    from nba.serving.bundle import load_engine
    from nba.serving.consumer import delete_stream
    from nba.serving.triggering import trigger_decision_id
    from nba.stores.events.sqlite import EventLog

    assert len(collections) >= 8, "the bank has too few low-value customers in arrears"
    tag = uuid.uuid4().hex[:8]
    who = dict(zip("abc", collections[5:8], strict=True))

    def late(k: str) -> dict:
        return {"event_id": f"{tag}-{k}", "customer_id": who[k], "type": "payment_missed",
                "timestamp": iso(NOW - 60), "properties": {"days_late": 45, "amount": 80.0}}

    def did(k: str) -> str:
        return trigger_decision_id("payment_default", f"{tag}-{k}")

    log = EventLog(served.event_log_path)
    # 1. Killed after the append, before the triggers (what `DecisionEngine.ingest` has done by then).
    load_engine(served).events.ingest([late("a")], pending=True)
    assert [e["event_id"] for e in log.pending([f"{tag}-a"])] == [f"{tag}-a"] and _triggered(served, [who["a"]]).empty
    engine = load_engine(served)
    redelivered = engine.ingest([late("a")])  # the broker's redelivery, a client's retry
    assert redelivered.stored == [] and redelivered.duplicates == [f"{tag}-a"]
    [fired] = redelivered.triggers
    assert fired["trigger_id"] == "payment_default" and fired["decision_id"] == did("a")
    assert fired["decision"]["outbox"]["state"] == "pending"
    # 2. Killed after the decision was logged, before the event was marked triggered (the mark
    # goes with the next append: this engine never makes one).
    first = load_engine(served).ingest([late("b")])
    assert first.triggers[0]["decision_id"] == did("b") and log.pending([f"{tag}-b"])
    again = engine.ingest([late("b")])
    [held] = again.triggers
    assert held["decision"] is None and held["decision_id"] == did("b")  # found, not decided again
    assert [w["state"] for w in held["triggers"] if w["trigger_id"] == "payment_default"] == [
        "decided before a restart, or by another process at the same moment (found in the decision log): "
        "not decided again"]
    assert log.pending([f"{tag}-a"]) == []  # marked triggered in the transaction of this engine's next append
    assert engine.flush_triggered() == 1 and log.pending([f"{tag}-b"]) == []  # at a clean stop
    # 3. Stored and never delivered again (a POST /events whose client gave up): a consumer's
    # start runs it.
    # Other tests of this module share the bank and may have left events pending (an engine
    # dropped before its next append marked them): run them first, so the consumer's count is c's.
    load_engine(served).recover_triggers(older_than_s=0)
    load_engine(served).events.ingest([late("c")], pending=True)
    assert [e["event_id"] for e in log.pending()] == [f"{tag}-c"]
    stream = f"NBA_TEST_RECOVER_{tag}"
    cmd = [sys.executable, "-m", "nba", "events", "consume", "--stream", stream, "--subject", f"nba.test.recover.{tag}",
           "--durable", f"recover-{tag}", "--idle-exit", "1", "--recover-after", "0"]
    try:
        proc = subprocess.run(cmd, env=_env(served), capture_output=True, text=True, timeout=300)
    finally:
        asyncio.run(delete_stream(stream))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ran the triggers of 1 event(s) a stopped process had left pending: 1 decision(s) started" in proc.stdout
    assert log.pending([f"{tag}-{k}" for k in "abc"]) == []
    # One decision per event, each with its one outbox message.
    dec = _triggered(served, list(who.values()))
    assert sorted(dec["decision_id"]) == sorted(did(k) for k in "abc")
    assert sorted(m["decision_id"] for m in _outbox(served, [did(k) for k in "abc"])) == sorted(did(k) for k in "abc")
    log.close()


@pytest.mark.slow
@pytest.mark.integration
def test_two_processes_running_the_same_pending_events_at_once_decide_each_once(served, collections):
    """Two engines (two consumers started together after a crash, two replicas given the same
    redelivery) run the triggers of the same pending events at the same moment: both find no
    decision logged, both decide, and the log refuses the second append of each derived id. The
    loser answers with the winner's decision, gives its contacts back, and nobody sees an error."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from nba.serving.bundle import load_engine
    from nba.serving.triggering import trigger_decision_id

    tag = uuid.uuid4().hex[:8]
    who = collections[8:12]
    assert len(who) == 4, "the bank has too few low-value customers in arrears"
    events = [{"event_id": f"{tag}-{k}", "customer_id": c, "type": "payment_missed", "timestamp": iso(NOW - 60),
               "properties": {"days_late": 45, "amount": 80.0}} for k, c in enumerate(who)]
    dids = {trigger_decision_id("payment_default", e["event_id"]) for e in events}
    load_engine(served).events.ingest(events, pending=True)  # stored, then the process was killed
    engines = [load_engine(served), load_engine(served)]
    for e in engines:
        e.warm()
    barrier = threading.Barrier(2)

    def rerun(k: int) -> list[dict]:
        pending = engines[k].events.log.pending([e["event_id"] for e in events])
        barrier.wait()  # both have read the pending events; neither has decided
        return engines[k].triggering.on_events(pending, again=[e["event_id"] for e in pending])

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(rerun, range(2)))  # an error in either is raised here
    for got in answers:  # each engine answers for every event, with the one decision id
        assert sorted(a["decision_id"] for a in got) == sorted(dids), got
    made = [a["decision_id"] for got in answers for a in got if a["decision"] is not None]
    assert sorted(made) == sorted(dids)  # each decided by exactly one of the two
    dec = _triggered(served, who)
    assert sorted(dec["decision_id"]) == sorted(dids)
    shown = dec[dec["action_id"] != "do_nothing"]
    assert len(shown) >= 1
    # the contacts are the logged decisions' and nothing else (the losers gave theirs back)
    h = engines[0].policy.history(who, since=NOW - 3600)
    assert sorted(zip([who[r] for r in h.contact_row.tolist()], h.contact_action, strict=True)) == sorted(
        zip(shown["customer_id"].astype(int).tolist(), shown["action_id"].astype(str).tolist(), strict=True))


def test_an_action_holds_a_feature_of_the_feature_service(tmp_path: Path):
    from nba.catalog import load_catalog
    from tests.test_catalog import FEATURES, _write

    actions = yaml.safe_load((PROJECT_ROOT / "serving" / "actions.yaml").read_text())
    cat = load_catalog(PROJECT_ROOT, FEATURES, actions=_write(tmp_path, actions)[0])
    assert {a.id: a.holds for a in cat.actions if a.holds} == {
        "rewards_card": "has_credit_card", "mortgage": "has_mortgage", "add_email": "has_email",
        "mobile_app": "has_mobile_app"}
    actions["actions"][0]["holds"] = "has_creditcard"
    with pytest.raises(ConfigError) as exc:
        load_catalog(PROJECT_ROOT, FEATURES, actions=_write(tmp_path, actions)[0])
    assert "action 'rewards_card': holds 'has_creditcard' is not a feature of serving_v2" in str(exc.value)
    assert "did you mean 'has_credit_card'" in str(exc.value)
