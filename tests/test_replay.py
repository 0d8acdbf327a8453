"""The always-on loop over real HTTP, on the served bank of the customer tests (`customers_bank`
and `customers_server`, session fixtures: no bank of its own). `channel: best` on /decide lets
the engine choose the channel over action x channel pairs and say why; a simulated day of
events (the simulator's events.parquet contract) replayed through POST /events by
`nba.simulation.replay` starts the triggers' decisions, the delivery worker drains their
outbox into the channels' JSONL files, and the summary equals what the stores hold.

The customers used here do not consent to SMS in the bank's last snapshot, so none is in the
customer tests' pool (which consents to every channel)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from nba.settings import Settings
from nba.stores.decisions import DB_FILE, read_log
from tests.serving_env import DECISION_EPOCH, DECISION_TIME, call


@pytest.fixture(scope="module")
def engine(customers_bank: Settings):
    """The served bank's engine in this process (to read the customers' features and scores)."""
    from nba.serving.bundle import load_engine

    return load_engine(customers_bank)


@pytest.fixture(scope="module")
def outsiders(customers_bank: Settings, engine) -> pd.DataFrame:
    """Customers of the last snapshot who do not consent to SMS (outside the customer tests'
    pool) and are not in the hold-out, with their served features and scores."""
    from nba.decisioning import experiment

    data = customers_bank.feast_repo / "data"
    consent = pd.read_parquet(data / "consent.parquet")
    last = consent[consent["event_timestamp"] == consent["event_timestamp"].max()]
    ids = np.sort(last.loc[last["consent_sms"] == 0, "customer_id"].to_numpy())
    exp = engine.catalog.experiment
    ids = [int(c) for c in ids[~experiment.in_holdout(ids, exp.salt, exp.holdout_share)]]
    cols, found = engine.features.read(ids, DECISION_EPOCH)
    env, _ = engine.environment(ids, cols, found)
    frame = pd.DataFrame({k: np.asarray(env[k]) for k in ("clv", "churn_risk", "missed_payments_90d",
                                                           "collections_open", "consent_email", "has_email",
                                                           "consent_call_centre")})
    frame.insert(0, "customer_id", ids)
    assert len(frame) > 300
    return frame


# --- the engine chooses the channel, over HTTP -----------------------------------------------------

# The request names the mortgage as the only action it may propose (`actions`), and under this
# context only e-mail and the call centre may carry it: the value is the mortgage's declared formula,
# 0.04 x income, so the income sets how much the contact is worth.
ONLY_MORTGAGE = {"has_mortgage": 0, "age": 40, "credit_score": 720, "debt_to_income": 0.2, "missed_payments_90d": 0,
                 "collections_open": 0, "has_credit_card": 1, "tenure_months": 6, "recency_days": 3,
                 "logins_30d": 10, "travels_abroad": 0, "on_sick_leave": 0, "has_email": 1, "has_mobile_app": 1,
                 "consent_email": 1, "consent_call_centre": 1, "consent_sms": 0, "consent_push": 0}
CALL, EMAIL = (1.5, 4.0), (1.0, 0.01)  # serving/policies.yaml: weight and cost per contact


def _best(url: str, cid: int, **context) -> dict:
    status, d = call(url, "/decide", {"customer_id": cid, "channel": "best", "timestamp": DECISION_TIME,
                                      "actions": ["mortgage"], "context": {**ONLY_MORTGAGE, **context}})
    assert status == 200, d
    return d


def _net(priority: float, channel: tuple[float, float]) -> float:
    return priority * channel[0] - channel[1]


@pytest.mark.slow
@pytest.mark.integration
def test_best_channel_a_valuable_customer_at_risk_gets_the_call_centre_a_low_value_one_an_email(
        customers_server, customers_bank, outsiders):
    # the customers most at risk first; each takes one income (one mortgage a month: the lending cap)
    by_risk = outsiders.iloc[200:].sort_values(["churn_risk", "customer_id"], ascending=[False, True])
    who = [int(c) for c in by_risk["customer_id"]]
    incomes = (150_000, 40_000, 10_000, 2_500, 600, 190)  # the mortgage is worth 6,000 ... 7.60 EUR
    chosen: dict[int, tuple[str, float]] = {}
    decisions = []
    for cid, income in zip(who, incomes, strict=False):
        d = _best(customers_server.url, cid, income=income)
        decisions.append(d)
        if d["channel_reason"].startswith("no channel has an action worth a contact"):
            # below the do-nothing threshold: nothing shown (unless the exploration share drew it)
            assert not d["actions"] or d["experiment_group"] == "explore", d
            continue
        [a] = d["actions"]
        p = a["priority"]
        assert a["action_id"] == "mortgage" and a["value"] == pytest.approx(0.04 * income)
        # the rule: the call centre only when its net beats the e-mail's (P x V x 1.5 - 4 > P x V - 0.01)
        want = "call_centre" if _net(p, CALL) > _net(p, EMAIL) else "email"
        assert d["channel"] == want, (income, p, d["channel_reason"])
        call_text = f"call_centre: mortgage priority {p:.2f} x weight 1.5 - cost 4.00 = {_net(p, CALL):.2f}"
        mail_text = f"email: mortgage priority {p:.2f} x weight 1 - cost 0.01 = {_net(p, EMAIL):.2f}"
        head, other = (call_text, mail_text) if want == "call_centre" else (mail_text, call_text)
        assert d["channel_reason"].startswith(f"{want} has the highest net priority: {head}"), d["channel_reason"]
        assert f"others: {other}" in d["channel_reason"] or f"; {other}" in d["channel_reason"]
        chosen[income] = (d["channel"], p)
    assert chosen[150_000][0] == "call_centre"  # the valuable customer at the highest churn risk: a call
    cheap = [inc for inc, (ch, _) in chosen.items() if ch == "email"]
    assert cheap, f"no low-value decision went to e-mail: {chosen}"  # at 7.60 EUR a call can never pay
    assert min(cheap) < min(inc for inc, (ch, _) in chosen.items() if ch == "call_centre")

    # consent first: as valuable, but no consent to be called -> an e-mail, and the trace says so
    refused = _best(customers_server.url, who[len(incomes)], income=150_000, consent_call_centre=0)
    assert refused["channel"] == "email" and refused["actions"][0]["action_id"] == "mortgage"
    # (the trace names the commonest removals over every action; the mortgage's is the consent)
    assert refused["channel_reason"].startswith("email has the highest net priority: email: mortgage priority")
    assert "call_centre: no candidate (" in refused["channel_reason"]
    # the log holds each decision on the channel the engine chose
    log = read_log(customers_bank.decision_log_dir).decisions.set_index("decision_id")
    for d in [*decisions, refused]:
        assert log.loc[d["decision_id"], "channel"] == d["channel"]


# --- a simulated day through POST /events -----------------------------------------------------------

REPLAY_DAY = "2025-11-30"
T0 = pd.Timestamp(REPLAY_DAY, tz="UTC")
PROPS = ("days_late", "amount", "kind", "branch_id", "distance_m", "service", "device", "product")


def _row(cid: int, type_: str, hour: float, **props) -> dict:
    row = {"customer_id": int(cid), "type": type_, "timestamp": T0 + pd.Timedelta(hours=hour)}
    row.update({p: props.get(p) for p in PROPS})
    return row


def _frame(outsiders: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """A day of events in the events.parquet shape, and which customers' events must fire what."""
    o = outsiders
    reachable = ((o["consent_email"] == 1) & (o["has_email"] == 1)) | (o["consent_call_centre"] == 1)
    arrears = o[(o["clv"] <= 1000) & ((o["missed_payments_90d"] >= 1) | (o["collections_open"] == 1)) & reachable]
    assert len(arrears) >= 3, "too few low-value customers in arrears"
    late, near = [int(c) for c in arrears["customer_id"].iloc[:2]], int(arrears["customer_id"].iloc[2])
    rest = [int(c) for c in o.loc[~o["customer_id"].isin(arrears["customer_id"]), "customer_id"].iloc[:12]]
    married, new_job, near_branch, far, outages, quiet = rest[0], rest[1], rest[2], rest[3], rest[4], rest[5:12]
    rows = [
        _row(late[0], "payment_missed", 8, days_late=45, amount=80.0),  # fires payment_default
        _row(late[1], "payment_missed", 8.5, days_late=31, amount=20.0),  # fires
        _row(near, "payment_missed", 9, days_late=30, amount=80.0),  # its near miss
        _row(late[0], "payment_missed", 12, days_late=46, amount=80.0),  # fires again: held back (7 days)
        _row(married, "life_event", 10, kind="marriage"),  # fires life_moment
        _row(new_job, "life_event", 10, kind="new_job"),  # not a moment the trigger serves
        _row(near_branch, "geofence_entered", 11, branch_id="b-3", distance_m=300.0),  # fires geofence_crossed
        _row(far, "geofence_entered", 11, branch_id="b-3", distance_m=800.0),  # outside the zone
        *[_row(outages, "outage", 13 + i, service="atm") for i in range(3)],  # the third fires repeated_outages
        *[_row(c, "app_login", 14 + i / 10, device="ios") for i, c in enumerate(quiet)],
        _row(999_999_999, "app_login", 15, device="web"),  # a customer the store does not know
        _row(quiet[0], "app_login", 14, device="ios"),  # a second copy of quiet[0]'s login: a duplicate
        _row(married, "life_event", -5, kind="birth"),  # the day before: not replayed
    ]
    frame = pd.DataFrame(rows)
    expect = {"payment_default": late, "life_moment": [married], "geofence_crossed": [near_branch],
              "repeated_outages": [outages], "none": [near, new_job, far]}
    return frame, expect


@pytest.mark.slow
@pytest.mark.integration
def test_a_replayed_day_counts_what_the_triggers_fired_decided_and_delivered_as_the_stores_hold_it(
        customers_server, customers_bank, outsiders, tmp_path):
    from nba.simulation.replay import read_events, replay_day, summary_lines

    frame, expect = _frame(outsiders.iloc[:200])  # the channel test takes the others
    path = tmp_path / "events.parquet"
    frame.to_parquet(path, index=False)  # the simulator's contract, read back as the quickstart reads it
    s = replay_day(customers_bank, customers_server.url, read_events(path), batch=4, concurrency=2)
    day = frame[frame["timestamp"].dt.strftime("%Y-%m-%d") == REPLAY_DAY]
    assert s.day == REPLAY_DAY and s.events == len(day) == len(frame) - 1
    assert s.duplicates == 1 and s.stored == s.events - 1 and s.unknown_customers == 1
    assert s.calls >= len(day) // 4

    # the decisions: the log's, per trigger, for the ids the replay started
    log = read_log(customers_bank.decision_log_dir).decisions
    mine = log[log["decision_id"].isin(s.decision_ids)]
    assert len(mine) == len(s.decision_ids) == s.decisions > 0
    by_source = mine.groupby(mine["source"].astype(str)).size().to_dict()
    assert {f"trigger:{t}": v["decisions"] for t, v in s.triggers.items() if v["decisions"]} == by_source
    for t, v in s.triggers.items():
        rows = mine[mine["source"] == f"trigger:{t}"]
        assert v["with_action"] == int((rows["action_id"] != "do_nothing").sum())
    for trigger, cids in expect.items():
        if trigger == "none":
            assert not mine["customer_id"].isin(cids).any()  # the near misses started nothing
        else:
            assert sorted(mine.loc[mine["source"] == f"trigger:{trigger}", "customer_id"]) == sorted(cids)
    pay = s.triggers["payment_default"]
    assert pay["fired"] == 3 and pay["held_back"] == 1 and pay["decisions"] == 2 and pay["with_action"] == 2
    # the third outage fires (the first two may too when one call holds all three: the features are
    # pushed before the triggers read them); either way one decision, the others held back
    outs = s.triggers["repeated_outages"]
    assert outs["decisions"] == 1 and outs["fired"] - outs["held_back"] == 1

    # the messages: each delivered (a receipt) and written to its channel's file, as many as counted
    conn = sqlite3.connect(customers_bank.decision_log_dir / DB_FILE)
    try:
        marks = ",".join("?" * len(s.decision_ids))
        rows = conn.execute(f"SELECT o.decision_id, o.channel, o.state, count(r.idempotency_key) FROM outbox o "
                            f"LEFT JOIN receipts r ON r.idempotency_key = o.idempotency_key AND r.outcome = "
                            f"'delivered' WHERE o.decision_id IN ({marks}) GROUP BY o.idempotency_key",
                            s.decision_ids).fetchall()
    finally:
        conn.close()
    assert rows and all(state == "delivered" and receipts >= 1 for _, _, state, receipts in rows)
    per_channel: dict[str, int] = {}
    for _, ch, _, _ in rows:
        per_channel[ch] = per_channel.get(ch, 0) + 1
    assert s.messages == dict(sorted(per_channel.items())) and s.undelivered == {}
    assert len(rows) == int((mine["action_id"] != "do_nothing").sum())  # every decision that shows one sends it
    landed: dict[str, int] = {}
    for ch in per_channel:
        lines = (customers_bank.activation_dir / f"{ch}.jsonl").read_text().splitlines()
        landed[ch] = len({json.loads(x)["decision_id"] for x in lines} & set(s.decision_ids))
    assert landed == per_channel

    text = "\n".join(summary_lines(s))
    for t, v in s.triggers.items():
        assert any(line.startswith(t) and f"{v['decisions']:,}" in line for line in text.splitlines())
    assert "nba activation status" in text and str(customers_bank.activation_dir) in text


def test_the_quickstart_step_says_so_and_skips_when_the_simulator_wrote_no_events(tmp_path):
    from nba.quickstart import replay_events

    lines: list[str] = []
    settings = Settings(work_dir=tmp_path / "var")
    assert replay_events(settings, echo=lines.append) is None
    assert lines == [f"==> Always-on: the simulator wrote no events ({settings.sim_dir / 'events.parquet'} does not "
                     "exist); the replay of a day through /events is skipped"]
