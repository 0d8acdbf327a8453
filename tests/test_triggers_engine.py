"""Triggers in the engine, for real: champions trained on the simulated bank, Feast online
reads, the decision log and the trigger state on disk. Events start decisions through the
whole core (the engine chooses the channel among the trigger's), near misses start none,
dedup windows hold across calls, and a scheduled scan decides for the population it finds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba.settings import Settings
from nba.stores.decisions import read_log
from tests.serving_env import DECISION_EPOCH, build_served_bank

pytestmark = [pytest.mark.slow, pytest.mark.integration]
DAY = 86400.0


@pytest.fixture(scope="module")
def served(feature_env: Settings, tmp_path_factory) -> Settings:
    return build_served_bank(feature_env, tmp_path_factory.mktemp("served_triggers"))


@pytest.fixture(scope="module")
def snapshot(served: Settings) -> pd.DataFrame:
    """Every stored feature of the bank's newest snapshot, one row per customer."""
    data = served.feast_repo / "data"
    frame = None
    for name in ("profile", "rfm", "engagement", "risk", "consent"):
        t = pd.read_parquet(data / f"{name}.parquet")
        t = t[t["event_timestamp"] == t["event_timestamp"].max()].drop(columns=["event_timestamp"])
        t = t.drop(columns=[c for c in t.columns if c == "created_timestamp"])
        frame = t if frame is None else frame.merge(t, on="customer_id")
    return frame.sort_values("customer_id").reset_index(drop=True)


def _engine(served: Settings, work: Path):
    from nba.serving.bundle import load_engine

    work.mkdir()
    for name in ("sim", "feature_repo", "bundle", "bentoml"):
        (work / name).symlink_to(served.work / name, target_is_directory=True)
    private = served.model_copy(update={"work_dir": work})
    return private, load_engine(private)


def _event(eid, cid, type_, ts, **props):
    return {"event_id": eid, "customer_id": int(cid), "type": type_, "timestamp": float(ts), "properties": props,
            "known_customer": True}


def test_events_start_decisions_near_misses_do_not_and_dedup_holds(served, snapshot, tmp_path):
    settings, engine = _engine(served, tmp_path / "var")
    ids = snapshot["customer_id"].to_numpy()[:400]
    cols, found = engine.features.read(ids.tolist(), DECISION_EPOCH)
    env, _ = engine.environment(ids.tolist(), cols, found)
    low = ids[np.asarray(env["clv"]) <= 1000]  # the payment-default trigger's CLV bound
    assert low.size >= 6
    a, b, c, d, e, f = low[:6].tolist()
    t = float(DECISION_EPOCH)
    events = [
        _event("e1", a, "payment_missed", t, days_late=31, amount=120.0),  # fires
        _event("e2", b, "payment_missed", t, days_late=30, amount=120.0),  # near miss: 30 days late
        _event("e3", c, "life_event", t, kind="marriage"),  # fires
        _event("e4", d, "life_event", t, kind="new_job"),  # not a moment the trigger serves
        _event("e5", e, "geofence_entered", t, branch_id="b-1", distance_m=400.0),  # fires
        _event("e6", f, "geofence_entered", t, branch_id="b-1", distance_m=501.0),  # outside the zone
        _event("e7", a, "consent_changed", t, channel="sms", granted=True),  # no trigger listens
    ]
    fired = engine.on_events(events)
    by_event = {x["event_id"]: x for x in fired}
    assert set(by_event) == {"e1", "e3", "e5"}
    expected = {"e1": "payment_default", "e3": "life_moment", "e5": "geofence_crossed"}
    allowed = {"payment_default": ({"sms", "email", "call_centre"}, {"account_lock_reminder", "payment_plan"}),
               "life_moment": ({"email", "push", "call_centre"}, {"mortgage", "home_insurance", "finance_course"}),
               "geofence_crossed": ({"push", "sms"}, {"branch_appointment"})}
    for eid, tid in expected.items():
        x = by_event[eid]
        assert x["trigger_id"] == tid and x["decision_id"] == x["decision"]["decision_id"]
        dec = x["decision"]
        channels, actions = allowed[tid]
        assert dec["channel"] in channels and dec["trigger_id"] == tid and dec["event_id"] == eid
        assert dec["deliver"] is True and dec["channel_reason"]
        assert dec["channel_reason"].startswith((f"{dec['channel']} has the highest net priority", "no channel"))
        shown = [r["action_id"] for r in dec["actions"]]
        if actions is not None:
            assert set(shown) <= actions
            # the actions the trigger does not propose are removed (at the trigger stage, unless the
            # chosen channel does not offer them at all)
            removed = {r["action_id"]: r["stage"] for r in dec["filtered"]}
            assert all(removed.get(x) in ("channel", "trigger") for x in set(engine.catalog.action_ids) - actions)
            assert "trigger" in removed.values()
    log = read_log(settings.decision_log_dir).decisions
    assert sorted(log["source"]) == sorted(f"trigger:{tid}" for tid in expected.values())
    assert set(log["customer_id"]) == {a, c, e}

    # two days later the same customer misses again: the 7-day window holds the trigger back
    again = engine.on_events([_event("e8", a, "payment_missed", t + 2 * DAY, days_late=33, amount=120.0)])
    assert again[0]["trigger_id"] is None and again[0]["decision"] is None
    assert again[0]["triggers"][0]["state"].startswith("held back")
    # after the window it fires again, and a repeated event id in one call starts one decision
    later = engine.on_events([_event("e9", a, "payment_missed", t + 8 * DAY, days_late=39, amount=120.0),
                              _event("e10", a, "payment_missed", t + 8 * DAY + 1, days_late=39, amount=120.0)])
    assert [x["trigger_id"] for x in later] == ["payment_default", None]
    assert later[1]["triggers"][0]["state"].startswith("held back")
    assert len(read_log(settings.decision_log_dir).decisions) == 4


def test_a_scan_starts_decisions_for_the_customers_in_the_state_once(served, snapshot, tmp_path):
    from nba.serving.scan import scan

    settings, engine = _engine(served, tmp_path / "var")
    frame = snapshot.iloc[:300].copy()
    t = float(DECISION_EPOCH)
    n = len(frame)
    # streaming features the feature service does not serve yet: given as columns of the file
    frame["last_interaction_s"] = np.where(np.arange(n) % 3 == 0, t - 31 * DAY, t - 20 * DAY)
    frame["card_expires_at_s"] = 0.0
    frame["application_open"] = 0.0
    path = tmp_path / "population.parquet"
    frame.to_parquet(path, index=False)
    first = scan(settings, path, at=t, engine=engine, trigger_ids=["no_interaction", "product_expiry"])
    due = int((np.arange(n) % 3 == 0).sum())
    assert first.fired == {"no_interaction": due} and first.held_back == 0
    log = read_log(settings.decision_log_dir).decisions
    assert len(log) == due and set(log["source"]) == {"scan:no_interaction"}
    assert set(log["customer_id"]) == set(frame["customer_id"].to_numpy()[np.arange(n) % 3 == 0])
    assert set(log["channel"]) <= {"email", "sms", "push"}
    assert first.decisions_with_action == int((log["action_id"] != "do_nothing").sum()) > 0
    assert first.to_deliver == first.decisions_with_action
    # the file lacks some stored (streaming) features: every feature is read online, and the summary says so
    assert first.features_missing == 0 and first.feature_source.startswith("the online store")
    assert "the file has feature columns but lacks" in first.feature_source
    # the next day the same customers are still inactive: their 30-day window holds
    second = scan(settings, path, at=t + DAY, engine=engine)
    assert second.fired.get("no_interaction", 0) == 0 and second.held_back == due
    assert len(read_log(settings.decision_log_dir).decisions) == due
    # customers the store does not know: counted and said, not scanned silently as if they had features
    strangers = frame.assign(customer_id=frame["customer_id"] + 10**9)
    strangers.to_parquet(tmp_path / "strangers.parquet", index=False)
    third = scan(settings, tmp_path / "strangers.parquet", at=t, engine=engine, trigger_ids=["no_interaction"])
    assert third.features_missing == n and third.fired == {"no_interaction": due}
    assert f"{n:,} customers without features (the triggers and rules saw no stored feature" in third.describe()


def test_a_request_for_the_best_channel_lets_the_engine_choose_and_says_why(served, snapshot, tmp_path):
    from nba.serving.engine import DecisionRequest, RequestError

    _, engine = _engine(served, tmp_path / "var")
    cid = int(snapshot["customer_id"].iloc[0])
    best, among = engine.decide([DecisionRequest(cid, "best", timestamp=float(DECISION_EPOCH)),
                                 DecisionRequest(cid + 1, "email", timestamp=float(DECISION_EPOCH),
                                                 channels=("email", "sms"))])
    outbound = {c.name for c in engine.catalog.channels if c.direction == "outbound"}
    assert best["channel"] in outbound and among["channel"] in {"email", "sms"}
    for d in (best, among):
        assert d["channel_reason"].startswith((f"{d['channel']} has the highest net priority", "no channel"))
    one = engine.decide([DecisionRequest(cid, "web", timestamp=float(DECISION_EPOCH))])[0]
    assert one["channel"] == "web" and "channel_reason" not in one  # a channel that asks is answered on it
    with pytest.raises(RequestError) as exc:
        engine.decide([DecisionRequest(cid, "best", channels=("email", "fax"))])
    assert exc.value.field == "channels" and "'fax' is not a channel" in str(exc.value)
