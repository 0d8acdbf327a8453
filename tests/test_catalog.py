"""The action catalog and policies: validated and compiled at load, errors naming the action,
the rule and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nba import schemas
from nba.catalog import ISSUES, load_catalog
from nba.errors import ConfigError
from tests.conftest import PROJECT_ROOT

# The feature names of serving_v2 (tests/test_serving.py checks them against the Feast registry).
FEATURES = {c for t in schemas.SIM_FEATURE_TABLES for c in t.columns} - {schemas.ENTITY_KEY, schemas.EVENT_TS}
FEATURES |= {"days_since_last_contact", "hour_of_day", "is_weekend"}
# ... and the streaming features serving_v2 adds (features/definitions.py: customer_realtime, realtime_context)
FEATURES |= {"application_open", "application_product", "application_started_s", "last_interaction_s",
             "geofence_branch", "geofence_at_s", "days_late", "last_life_event", "last_life_event_s",
             "card_expires_at_s", "page_views_7d", "card_searches_7d", "logins_7d", "outages_30d",
             "service_contacts_30d", "complaints_30d", "days_since_interaction", "application_open_hours",
             "days_since_life_event", "days_to_card_expiry", "hours_since_geofence",
             *(f"views_{p}_7d" for p in ("credit_card", "card_upgrade", "mortgage", "savings", "personal_loan",
                                         "home_insurance", "travel_insurance"))}
ACTIONS = PROJECT_ROOT / "serving" / "actions.yaml"
POLICIES = PROJECT_ROOT / "serving" / "policies.yaml"


def _write(tmp_path: Path, actions: dict | None = None, policies: dict | None = None) -> tuple[Path, Path]:
    a = yaml.safe_load(ACTIONS.read_text()) if actions is None else actions
    p = yaml.safe_load(POLICIES.read_text()) if policies is None else policies
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(a, sort_keys=False))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return tmp_path / "a.yaml", tmp_path / "p.yaml"


def _load(tmp_path: Path, mutate_action=None, mutate_policies=None, models=None):
    a = yaml.safe_load(ACTIONS.read_text())
    p = yaml.safe_load(POLICIES.read_text())
    if mutate_action:
        mutate_action(a)
    if mutate_policies:
        mutate_policies(p)
    ap, pp = _write(tmp_path, a, p)
    return load_catalog(PROJECT_ROOT, FEATURES, actions=ap, policies=pp, models=models)


def test_the_bank_catalog_covers_the_simulator_and_every_issue_kind_it_needs():
    cat = load_catalog(PROJECT_ROOT, FEATURES)
    assert cat.action_ids == schemas.ACTIONS
    # the simulator's channels, and the agent answering a customer's own call (inbound, offering
    # what the call centre offers, with caps of its own)
    assert cat.channel_names == (*schemas.CHANNELS, "agent")
    agent = cat.channel("agent")
    assert agent.direction == "inbound" and cat.channel("call_centre").direction == "outbound"
    assert [a.id for a in cat.actions if "agent" in a.channels] == [a.id for a in cat.actions
                                                                    if "call_centre" in a.channels]
    assert set(cat.actions[i].issue for i in range(len(cat.actions))) <= set(ISSUES)
    assert {"sales", "retention", "service", "information", "wellbeing", "collections"} <= {
        a.issue for a in cat.actions}
    assert cat.version.startswith("bank-1+") and len(cat.version) == len("bank-1+") + 8
    assert cat.scores == {"churn_risk": "nba-churn", "clv": "nba-clv"}
    mortgage = cat.actions[schemas.ACTIONS.index("mortgage")]
    assert [r.stage for r in mortgage.rules] == ["eligibility", "eligibility", "suitability", "suitability",
                                                 "suitability"]
    assert mortgage.cooldown_s == 90 * 86400 and [(c.count, c.days) for c in mortgage.caps] == [(1, 30.0)]


def _set(action_id: str, key: str, value):
    def mutate(doc):
        for a in doc["actions"]:
            if a["id"] == action_id:
                a[key] = value
    return mutate


@pytest.mark.parametrize(("mutate", "fragments"), [
    (_set("mortgage", "suitability", ["credit_scor >= 660"]),
     ["action 'mortgage' suitability rule", "'credit_scor >= 660'", "unknown name(s) ['credit_scor']",
      "did you mean 'credit_score'?"]),
    (_set("rewards_card", "eligibility", "has_credit_card == "),
     ["action 'rewards_card' eligibility rule", "'has_credit_card == ' is not a valid expression"]),
    (_set("add_email", "applicability", "__import__('os').getcwd() == 1"),
     ["action 'add_email' applicability rule", "a call to anything but min, max, abs"]),
    (_set("payment_plan", "id", "mortgage"), ["action 'mortgage' (position 10): duplicate id"]),
    (_set("mobile_app", "channels", ["email", "fax"]), ["action 'mobile_app'", "unknown channel(s) ['fax']"]),
    (_set("mobile_app", "value", "0.1 * lifetime_value"), ["action 'mobile_app' value formula",
                                                           "unknown name(s) ['lifetime_value']"]),
    (_set("mortgage", "eligibility", ["credit_score > 9 ** 9 ** 9"]),
     ["action 'mortgage' eligibility rule", "'credit_score > 9 ** 9 ** 9'",
      "the exponent 387420489 of '**' is over the limit of 16 in magnitude"]),
    (_set("add_email", "suitability", ["rfm_segment == 'a' * 10 ** 9"]),
     ["action 'add_email' suitability rule", "string repetition on the string 'a' is not allowed"]),
    (_set("mobile_app", "value", "clv * " + " * ".join(["clv"] * 70)),
     ["action 'mobile_app' value formula", "nests deeper than the limit of 64 levels"]),
    (_set("mobile_app", "issue", "marketing"), ["actions.8.issue", "marketing"]),
    (_set("mobile_app", "colour", "blue"), ["actions.8.colour", "unknown key"]),
])
def test_a_bad_catalog_fails_at_load_naming_action_rule_and_reason(tmp_path, mutate, fragments):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, mutate)
    for f in fragments:
        assert f in str(exc.value), (f, str(exc.value))
    assert "a.yaml" in str(exc.value)


def test_an_unknown_model_fails_at_load_when_the_registry_is_given(tmp_path):
    registered = {a.model for a in load_catalog(PROJECT_ROOT, FEATURES).actions} | {"nba-churn", "nba-clv"}
    registered |= {f"nba-uplift-{a}" for a in ("rewards_card", "travel_notification", "annual_fee_waiver",
                                                "mobile_app", "payment_plan")}
    _load(tmp_path, models=registered)  # the shipped catalog names only registered models
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, _set("mortgage", "model", "nba-propensity-mortage"), models=registered)
    assert "action 'mortgage' propensity model 'nba-propensity-mortage' is not a registered model" in str(exc.value)
    assert "did you mean 'nba-propensity-mortgage'?" in str(exc.value)


@pytest.mark.parametrize(("mutate", "fragment"), [
    (lambda p: p["arbitration"].update(priority="propensity * value * boost"), "unknown name(s) ['boost']"),
    (lambda p: p["arbitration"].update(priority="uplift * value"), "reads uplift but action(s) ['mortgage',"),
    (lambda p: p["channels"]["email"].update(requires="consent_mail == 1"), "channel 'email' requires"),
    (lambda p: p["groups"].update(loans={"caps": [{"count": 1, "days": 30}]}), "group(s) ['loans'] that no action"),
    (lambda p: p["experiment"].update(holdout_share=0.7), "experiment.holdout_share"),
    (lambda p: p["suppression"][0].update(when="collections == 1"), "suppression 'collections_open' when"),
    (lambda p: p["missing_features"]["defaults"].update(has_boat=0), "unknown feature(s) ['has_boat']"),
    (lambda p: p["arbitration"].update(default_k=20), "default_k 20 exceeds max_k 10"),
])
def test_bad_policies_fail_at_load(tmp_path, mutate, fragment):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, mutate_policies=mutate)
    assert fragment in str(exc.value), str(exc.value)


def test_a_fixed_value_must_not_be_negative_and_dates_must_be_ordered(tmp_path):
    with pytest.raises(ConfigError, match="value -5.0 is negative"):
        _load(tmp_path, _set("mobile_app", "value", -5))
    def dates(doc):
        _set("mobile_app", "active_from", "2026-01-01")(doc)
        _set("mobile_app", "active_to", "2025-01-01")(doc)
    with pytest.raises(ConfigError, match="active_to 2025-01-01 is not after active_from 2026-01-01"):
        _load(tmp_path, dates)


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    """Nine lines of `&a [*b, *b, ...]` are a billion values: the loader refuses any alias, naming the line."""
    lines = ['version: "1"', 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "a.yaml").write_text("\n".join([*lines, "actions: [*l8]"]) + "\n")
    with pytest.raises(ConfigError) as exc:
        load_catalog(PROJECT_ROOT, FEATURES, actions=tmp_path / "a.yaml", policies=POLICIES)
    assert str(exc.value) == (f"{tmp_path / 'a.yaml'}: line 3: the alias *l0 is not allowed; write the value out "
                              "(an alias can expand a few lines into billions of values)")


def test_a_bad_value_is_shown_cut_short(tmp_path):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, _set("mobile_app", "channels", [["x" * 500 for _ in range(50)] for _ in range(50)]))
    message = str(exc.value)  # 50 strings of 500 characters: five shown, each cut to 80
    assert "key 'actions.8.channels.0': Input should be a valid string (got ['xxxxx" in message
    assert message.endswith("xxx', ...])") and len(message) < 600 + len(str(tmp_path)), message
