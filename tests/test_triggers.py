"""Triggers: the ten of the mission fire on a crafted event or state and not on the near miss
just below each threshold, dedup windows hold (SQLite and Redis), the highest-priority trigger
starts the one decision, the engine chooses the channel by value and consent, and a bad
trigger file is refused at load naming the file, the trigger and the reason."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from nba.decisioning.channels import channel_reason, decide_channels
from nba.decisioning.core import ContactHistory, MatrixScorer, decide
from nba.decisioning.triggers import NONE, evaluate, why
from nba.errors import ConfigError
from nba.stores.trigger_state import Fire
from nba.stores.trigger_state.redis import RedisTriggerStore
from nba.stores.trigger_state.sqlite import SqliteTriggerStore
from nba.triggers import DERIVED_FEATURES, load_triggers
from tests.conftest import PROJECT_ROOT
from tests.test_decisioning import DAY, NOW, _bank, _batch, _customer, _history

TRIGGERS = PROJECT_ROOT / "serving" / "triggers.yaml"
REDIS_URL = "redis://127.0.0.1:6379/4"  # this suite's db for trigger state (HELPERS.md)


@pytest.fixture
def bank(tmp_path):
    cat = _bank(tmp_path, experiment__holdout_share=0.0, experiment__exploration_share=0.0)
    return cat, load_triggers(PROJECT_ROOT, cat)


def _p(cat, **by_action) -> np.ndarray:
    P = np.full(len(cat.actions), 0.05)
    for a, p in by_action.items():
        P[cat.action_ids.index(a)] = p
    return P


# (trigger, event type or None for a scan, features, event properties, propensities) that fire,
# and the near miss: one value just across the threshold
H = 3600.0
CASES = {
    "purchase_propensity": [
        (("page_view", {"income": 60_000.0}, {"product": "mortgage"}, {"mortgage": 0.30}), True),
        (("page_view", {"income": 60_000.0}, {"product": "mortgage"}, {"mortgage": 0.2999}), False),
        (("page_view", {"income": 6_249.0}, {"product": "mortgage"}, {"mortgage": 0.9}), False),  # V 249.96
    ],
    "churn_risk": [
        (("app_login", {"churn_risk": 0.30, "clv": 5_000.0}, {}, {}), True),
        (("app_login", {"churn_risk": 0.2999, "clv": 5_000.0}, {}, {}), False),
        (("app_login", {"churn_risk": 0.9, "clv": 4_999.0}, {}, {}), False),
    ],
    "no_interaction": [
        ((None, {"last_interaction_s": NOW - 30 * DAY}, {}, {}), True),
        ((None, {"last_interaction_s": NOW - 29.99 * DAY}, {}, {}), False),
    ],
    "geofence_crossed": [
        (("geofence_entered", {}, {"branch_id": "b-17", "distance_m": 500.0}, {}), True),
        (("geofence_entered", {}, {"branch_id": "b-17", "distance_m": 501.0}, {}), False),
    ],
    "abandoned_basket": [
        ((None, {"application_open": 1.0, "application_open_hours": 1.01}, {}, {}), True),
        ((None, {"application_open": 1.0, "application_open_hours": 1.0}, {}, {}), False),
        ((None, {"application_open": 0.0, "application_open_hours": 5.0}, {}, {}), False),  # completed
    ],
    "product_expiry": [
        ((None, {"has_credit_card": 1.0, "card_expires_at_s": NOW - 60}, {}, {}), True),
        ((None, {"has_credit_card": 1.0, "card_expires_at_s": NOW + 60}, {}, {}), False),
    ],
    "upgrade_available": [
        ((None, {"has_credit_card": 1.0, "clv": 2_500.01}, {}, {}), True),
        ((None, {"has_credit_card": 1.0, "clv": 2_500.0}, {}, {}), False),
    ],
    "life_moment": [
        (("life_event", {}, {"kind": "marriage"}, {}), True),
        (("life_event", {}, {"kind": "home_purchase"}, {}), True),
        (("life_event", {}, {"kind": "new_job"}, {}), False),
    ],
    "payment_default": [
        (("payment_missed", {"clv": 1_000.0}, {"days_late": 31, "amount": 120.0}, {}), True),
        (("payment_missed", {"clv": 1_000.0}, {"days_late": 30, "amount": 120.0}, {}), False),
        (("payment_missed", {"clv": 1_000.01}, {"days_late": 60, "amount": 120.0}, {}), False),
    ],
    "repeated_outages": [
        (("outage", {"outages_30d": 3.0}, {"service": "card_payments"}, {}), True),
        (("outage", {"outages_30d": 2.0}, {"service": "card_payments"}, {}), False),
    ],
}
FLAT = [(tid, *case, fires) for tid, cases in CASES.items() for case, fires in cases]


def _env(triggers, features, props, event_type):
    env = _customer(**features)
    for name in DERIVED_FEATURES:  # derived from the raw streaming features, unless a case states them
        if name not in features:
            env.pop(name, None)
    for t in triggers.triggers:  # the properties of the event's type (what the engine puts in)
        for name in t.event_names:
            if event_type in t.on:
                env[name] = props.get(name.split(".", 1)[1], np.nan)
    return env


def test_the_ten_triggers_of_the_mission_are_shipped(bank):
    _, triggers = bank
    assert set(triggers.ids) == set(CASES)
    assert [t.priority for t in triggers.triggers] == sorted((t.priority for t in triggers.triggers), reverse=True)
    scans = {t.id for t in triggers.scheduled}
    assert scans == {"no_interaction", "product_expiry", "upgrade_available", "abandoned_basket"}


@pytest.mark.parametrize(("trigger_id", "event_type", "features", "props", "P", "fires"), FLAT,
                         ids=[f"{c[0]}-{i}-{'fires' if c[-1] else 'near-miss'}" for i, c in enumerate(FLAT)])
def test_each_trigger_fires_and_its_near_miss_does_not(bank, trigger_id, event_type, features, props, P, fires):
    cat, triggers = bank
    j = triggers.ids.index(trigger_id)
    env = _env(triggers, features, props, event_type)
    hits = evaluate(cat, triggers.triggers, env, 1, scorer=MatrixScorer(_p(cat, **P)[None, :]), now=NOW,
                    event_type=None if event_type is None else [event_type])
    assert bool(hits.fired[0, j]) is fires, why(triggers.triggers, hits, 0)
    if fires:
        assert triggers.triggers[int(hits.chosen[0])].priority >= triggers.triggers[j].priority


def test_one_event_and_a_batch_evaluate_alike(bank):
    """The same code for one customer (scalars) and a scan (arrays): every case in one call."""
    cat, triggers = bank
    rows, types, P = [], [], []
    for _, event_type, features, props, p, _ in FLAT:
        rows.append(_env(triggers, features, props, event_type))
        types.append(event_type or "")
        P.append(_p(cat, **p))
    keys = set().union(*rows)
    for r in rows:  # a property another row's event has is missing here
        for k in keys - r.keys():
            r[k] = np.nan if k != "event.kind" else None
    env = {k: np.array([r[k] for r in rows], dtype=object if any(isinstance(r[k], str) for r in rows)
                       else np.float64) for k in rows[0]}
    scan = np.array([t is None for _, t, *_ in FLAT])
    hits_events = evaluate(cat, triggers.triggers, env, len(rows), scorer=MatrixScorer(np.array(P)), now=NOW,
                           event_type=np.array(types, dtype=object))
    hits_scan = evaluate(cat, triggers.triggers, env, len(rows), scorer=MatrixScorer(np.array(P)), now=NOW)
    for i, (tid, *_, fires) in enumerate(FLAT):
        hits = hits_scan if scan[i] else hits_events
        assert bool(hits.fired[i, triggers.ids.index(tid)]) is fires, (i, tid)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteTriggerStore(tmp_path / "triggers.db")
        yield s
        s.close()
    else:
        s = RedisTriggerStore(REDIS_URL, prefix=f"test:trigger:{uuid.uuid4().hex[:8]}")
        yield s
        s.clear()
        s.close()


def test_a_dedup_window_holds_and_ends(store):
    week = 7 * DAY
    assert store.claim([Fire("payment_default", 42, NOW, "e1", week)]) == [True]
    # a second event two days later, and one of another customer, in one call
    assert store.claim([Fire("payment_default", 42, NOW + 2 * DAY, "e2", week),
                        Fire("payment_default", 43, NOW + 2 * DAY, "e3", week)]) == [False, True]
    last = store.last_fired([42, 43, 44], ["payment_default", "churn_risk"])
    assert last[0, 0] == NOW and last[1, 0] == NOW + 2 * DAY and np.isnan(last[2, 0]) and np.isnan(last[:, 1]).all()
    assert store.claim([Fire("payment_default", 42, NOW + week - 1, "e4", week)]) == [False]
    assert store.claim([Fire("payment_default", 42, NOW + week, "e5", week)]) == [True]  # the window is over
    assert store.last_fired([42], ["payment_default"])[0, 0] == NOW + week
    assert store.erase_customer(42) == 1
    assert np.isnan(store.last_fired([42], ["payment_default"])[0, 0])


def test_the_same_event_may_claim_again_another_event_or_a_scan_may_not(store):
    """An event's triggers run again after a restart: its own firing is granted again (and
    named by `fired_by`); another event's, or a scan's, within the window is not."""
    week = 7 * DAY
    assert store.claim([Fire("payment_default", 42, NOW, "e1", week), Fire("no_interaction", 42, NOW, None, week)]) \
        == [True, True]
    assert store.claim([Fire("payment_default", 42, NOW, "e1", week)]) == [True]  # the same event, again
    assert store.claim([Fire("payment_default", 42, NOW + 1, "e2", week),
                        Fire("no_interaction", 42, NOW + 1, None, week)]) == [False, False]
    by = store.fired_by([42, 43], ["payment_default", "no_interaction"])
    assert by.tolist() == [["e1", None], [None, None]]
    assert store.last_fired([42], ["payment_default"])[0, 0] == NOW
    assert store.erase_customer(42) == 2 and store.fired_by([42], ["payment_default"]).tolist() == [[None]]


def test_the_highest_priority_trigger_starts_the_decision_and_dedup_hands_over(bank, store):
    """An outage for a valuable customer at churn risk who has had three outages: churn risk
    (90) and repeated outages (80) both fire; churn risk starts the decision. Within its dedup
    window it is held back, and repeated outages starts it."""
    cat, triggers = bank
    env = _env(triggers, {"churn_risk": 0.4, "clv": 6_000.0, "outages_30d": 3.0}, {"service": "atm"}, "outage")
    ids = list(triggers.ids)
    P = MatrixScorer(_p(cat)[None, :])

    def run(now):
        last = store.last_fired([7], ids)
        hits = evaluate(cat, triggers.triggers, env, 1, scorer=P, now=now, last_fired=last, event_type=["outage"])
        chosen = int(hits.chosen[0])
        if chosen != NONE:
            t = triggers.triggers[chosen]
            assert store.claim([Fire(t.id, 7, now, None, t.dedup_s)]) == [True]
        return hits, chosen

    hits, first = run(NOW)
    assert {triggers.ids[j] for j in np.flatnonzero(hits.fired[0])} == {"churn_risk", "repeated_outages"}
    assert triggers.ids[first] == "churn_risk"
    hits, second = run(NOW + 3600)
    assert triggers.ids[second] == "repeated_outages"
    states = {w["trigger_id"]: w["state"] for w in why(triggers.triggers, hits, 0)}
    assert states["churn_risk"].startswith("held back")
    hits, third = run(NOW + 7200)  # both within their windows: nothing starts
    assert third == NONE and hits.deduped[0].sum() == 2
    _, later = run(NOW + 31 * DAY)
    assert triggers.ids[later] == "churn_risk"


# --- the engine chooses the channel ----------------------------------------------------------

RETENTION = ("call_centre", "email", "sms", "push")


def _retention_customer(clv, **kw):
    return _customer(has_credit_card=1.0, churn_risk=0.4, clv=clv, **kw)


def _choose(cat, rows, *, channels=RETENTION, history=None, propose_issue="retention"):
    n = len(rows)
    allow = np.array([c in channels for c in cat.channel_names])
    propose = np.array([a.issue == propose_issue for a in cat.actions])
    return decide_channels(cat, _batch(rows), n, channels=allow, now=np.full(n, NOW),
                           history=history or ContactHistory.empty(),
                           scorer=MatrixScorer(np.full((n, len(cat.actions)), 0.05)),
                           customer_ids=np.arange(n), decision_keys=np.arange(n) + 1, k=1, propose=propose)


def test_a_valuable_customer_at_churn_risk_gets_the_call_centre_a_low_value_one_an_email(bank):
    cat, _ = bank
    d, choice = _choose(cat, [_retention_customer(5_000.0), _retention_customer(10.0)])
    assert [cat.channel_names[c] for c in choice.chosen] == ["call_centre", "email"]
    # the retention actions only (the trigger's), and the value of each shown one follows the CLV
    assert {cat.actions[int(a)].issue for a in d.shown} == {"retention"}
    assert cat.actions[int(d.shown[0])].id == "annual_fee_waiver" and d.value[0, d.shown[0]] == pytest.approx(1060.0)
    # P 0.05 x V 1060 = 53: a call (x 1.5 - 4 EUR) = 75.5 beats an e-mail (53 - 0.01)
    assert choice.net[0, choice.candidates.index(cat.channel_names.index("call_centre"))] == pytest.approx(75.5)
    why0 = channel_reason(cat, choice, 0)
    assert why0.startswith("call_centre has the highest net priority") and "cost 4.00" in why0
    # P 0.05 x V 62 = 3.1: a call nets 0.65, an e-mail 3.09
    assert "email has the highest net priority" in channel_reason(cat, choice, 1)


def test_without_email_consent_the_low_value_customer_gets_another_channel_and_the_trace_says_why(bank):
    cat, _ = bank
    d, choice = _choose(cat, [_retention_customer(10.0, consent_email=0.0)])
    assert cat.channel_names[int(choice.chosen[0])] == "sms"  # push needs the app, which this customer lacks
    reason = channel_reason(cat, choice, 0)
    assert "email: no candidate (consent: email: consent_email == 1 and has_email == 1)" in reason
    assert "consent: push: consent_push == 1 and has_mobile_app == 1" in reason.split("push: no candidate")[1]
    # without any consent nothing is shown, on the first allowed channel, and the trace says so
    d, choice = _choose(cat, [_retention_customer(5_000.0, consent_email=0.0, consent_sms=0.0, consent_push=0.0,
                                                  consent_call_centre=0.0)])
    assert d.shown[0] < 0 and channel_reason(cat, choice, 0).startswith("no channel has an action")


def test_a_used_up_call_centre_cap_moves_the_call_to_email_but_an_inbound_agent_call_is_not_capped(bank):
    cat, _ = bank
    called = _history(cat, [(0, "mortgage", "call_centre", 3)])  # the channel's cap: 1 call per 14 days
    d, choice = _choose(cat, [_retention_customer(5_000.0)], history=called)
    assert cat.channel_names[int(choice.chosen[0])] == "email"
    reason = channel_reason(cat, choice, 0)
    assert "cap: channel 'call_centre': at most 1 per 14 days" in reason.split("call_centre: no candidate")[1]
    # the customer calls in: the agent (inbound) may still propose, the outbound cap does not apply
    agent = cat.channel_names.index("agent")
    one = _batch([_retention_customer(5_000.0)])
    d = decide(cat, one, 1, channel=np.array([agent]), now=np.array([NOW]), history=called,
               scorer=MatrixScorer(np.full((1, len(cat.actions)), 0.05)), customer_ids=np.arange(1),
               decision_keys=np.arange(1) + 1, k=1)
    assert d.shown[0] >= 0
    # and agent calls, however many today, leave the outbound call-centre call free
    answered = _history(cat, [(0, "mortgage", "agent", 0.1), (0, "payment_plan", "agent", 0.05)])
    d, choice = _choose(cat, [_retention_customer(5_000.0)], history=answered)
    assert cat.channel_names[int(choice.chosen[0])] == "call_centre"


# --- bad trigger files -----------------------------------------------------------------------


def _mutated(tmp_path: Path, trigger_id: str, **changes) -> Path:
    doc = yaml.safe_load(TRIGGERS.read_text())
    for t in doc["triggers"]:
        if t["id"] == trigger_id:
            for k, v in changes.items():
                if k == "on":
                    t.pop(True)  # YAML 1.1 reads the bare key `on` as true
                if v is None:
                    t.pop(k, None)
                else:
                    t[k] = v
    path = tmp_path / "triggers.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize(("trigger_id", "changes", "fragments"), [
    ("churn_risk", {"when": "churn_risc >= 0.3"}, ["unknown name(s) ['churn_risc']", "did you mean 'churn_risk'"]),
    ("purchase_propensity", {"when": "propensity(morgage) >= 0.3"},
     ["propensity(morgage)", "not an action of the catalog", "did you mean 'mortgage'"]),
    ("payment_default", {"actions": ["account_lock"]}, ["unknown action(s) ['account_lock']"]),
    ("payment_default", {"channels": ["sms", "letter"]}, ["unknown channel(s) ['letter']"]),
    ("payment_default", {"on": ["payment_late"]}, ["unknown event type(s) ['payment_late']", "payment_missed"]),
    ("life_moment", {"when": "event.kinds == 'birth'"}, ["event property 'kinds'", "'kind'"]),
    ("no_interaction", {"when": "event.kind == 'birth'"}, ["a scheduled trigger has no event"]),
    ("churn_risk", {"channels": ["email", "web"]}, ["['web'] are inbound"]),
    ("churn_risk", {"issues": None, "actions": ["add_email", "annual_fee_waiver"], "channels": ["email"]},
     ["['add_email'] are offered on none of its channels"]),
    ("churn_risk", {"priority": 100}, ["priority 100 is already trigger 'payment_default'"]),
    ("churn_risk", {"when": "churn_risk >= 0.3 and age.real > 1"}, ["Attribute"]),
    ("churn_risk", {"dedup": 3}, ["unknown key"]),
    ("churn_risk", {"dedup_days": 0}, ["dedup_days", "greater than 0"]),
])
def test_a_bad_trigger_is_refused_at_load_naming_file_trigger_and_reason(bank, tmp_path, trigger_id, changes,
                                                                          fragments):
    cat, _ = bank
    path = _mutated(tmp_path, trigger_id, **changes)
    with pytest.raises(ConfigError) as exc:
        load_triggers(PROJECT_ROOT, cat, path=path)
    msg = str(exc.value)
    assert str(path) in msg
    if "unknown key" not in fragments and "dedup_days" not in fragments:
        assert f"trigger '{trigger_id}'" in msg
    for f in fragments:
        assert f in msg, msg


def test_a_scan_of_a_bad_population_file_fails_before_loading_anything(settings, tmp_path):
    from nba.errors import DataFileError
    from nba.serving.scan import scan

    bad = tmp_path / "population.csv"
    bad.write_text("id,age\n1,30\n")
    with pytest.raises(DataFileError, match=r"population.csv: no column 'customer_id'"):
        scan(settings, bad)
    assert not settings.work.exists()  # no store was opened
