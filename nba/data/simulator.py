"""A simulated retail bank whose ground truth is known: who would accept which action, with
and without being contacted, at every moment.

The tables follow the contracts in `nba.schemas` (SIM_*). Everything is vectorised over
customers with numpy; the only Python loop is over months. The same `SimulationConfig`
gives byte-identical frames: each model component draws from its own
`Generator(PCG64)` spawned from `SeedSequence(seed)` in the fixed order of `COMPONENTS`
(new components are appended, so they never shift the draws of the old ones).

Time
----
Snapshots are taken at the first day of each month (00:00 UTC), `months` of them from
`start`. A snapshot holds what was known at that moment, i.e. it is computed from the months
before it; activity during month t (purchases, logins, contacts, churn) shows in the
snapshot of month t + 1. `warmup_months` (default 12) are simulated before `start` without
contacts or churn (purchases, missed payments and collections, overdrafts, channel use;
latents and holdings held at their start values), so the first snapshot has a full
trailing year of purchases.
The bank is a closed cohort: every customer signed up before `start` (spread over the
previous ten years, never before the 18th birthday); nobody joins during the simulation.

Latent customer traits
----------------------
Six standard normals per customer, stationary N(0, 1): digital (savviness), wealth,
price_sensitivity, stress (financial stress), travel, loyalty. wealth, price_sensitivity
and travel are fixed; digital, stress and loyalty follow AR(1) walks (monthly
autocorrelation 0.97, 0.90, 0.95), and some actions shift them (below), so the observed
features really change from month to month. Age 18..85 at `start` (it grows by the
calendar), yearly income lognormal rising with wealth, one of five regions.

Observed features (the five snapshot tables)
--------------------------------------------
* profile: holdings are 0/1 flags. Initial e-mail ~88 % (digital), mobile app ~50 %
  (digital, young), credit card (wealth, loyalty), mortgage (wealth, middle age), savings,
  personal loan (stress). Each month cards close 0.4 %, mortgages are repaid 0.3 %, apps are
  uninstalled 1 %, savings and loans open and close; customers also take products
  organically (P(convert | not contacted) of rewards_card, mortgage, add_email and
  mobile_app, for those without the product). travels_abroad is fixed (travel, wealth);
  on_sick_leave is a Markov chain (starts ~1 %/month rising with stress and age, ends
  25 %/month; ~4 % on leave). num_products = 1 (the current account) + card + mortgage +
  savings + personal loan.
* rfm: card purchases per month ~ Poisson(exp(1.5 + .35 digital + .25 wealth + .4 loyalty
  + .4 card - .15 stress)), purchase amounts ~ Gamma(2, 22 exp(.3 wealth + .1 travel)).
  frequency / monetary: count and mean amount over the 12 calendar months before the
  snapshot; recency_days: from the last purchase (or from sign-up if none ever);
  tenure_days: from sign-up. Scored per snapshot by `nba.data.rfm.score_rfm`.
* engagement: logins and app sessions of the previous calendar month (Poisson; app
  sessions 0 without the app), e-mail open rate of that month (0 without e-mail),
  contacts_90d = outbound contacts (treated interactions) in the 90 days before the
  snapshot, last_contact_epoch_s = the last one strictly before it, or sign-up if none.
* risk: a missed payment each month with P = sigmoid(-4.1 + 1.2 stress + .5 loan + .5 sick
  leave - 1.5 on a payment plan); overdraft days ~ Binomial(days, sigmoid(-3.4 + .9 stress
  - .5 wealth)); missed_payments_90d / overdraft_days_90d sum the three calendar months before
  the snapshot; collections open at two missed payments in those months and close with
  P 0.15 a month without a missed payment (or on a payment plan); credit_score and
  debt_to_income are noisy functions of wealth, stress, holdings and missed payments.
* consent: per channel at sign-up (email .85, sms .45, push .60, call_centre .35, web .90),
  then granted 0.3 % / withdrawn 0.2 % a month, withdrawn 2 % after a contact on it. An
  e-mail contact also needs has_email, a push contact has_mobile_app (`usable_channels`).

Value and churn
---------------
monthly_value: one row per customer active at the month's start: purchases, spend and the
bank's margin = 1.1 % of spend + account fee 2.5 + card fee 7.5 (unless waived) + 90
mortgage + 4 savings + 20 personal loan - 35 open collections (fees pro rata in the churn
month). Churn hazard per month = sigmoid(-5 - .5 loyalty - .3 digital + .35 stress + .5
price_sensitivity x card fee charged - .2 (num_products - 1) + .6 collections), about 1 %.
A churned customer has its churn month's value row and no row (snapshot or value) after
it; churn_timestamp is NaT for customers still with the bank at the end.

Actions and the truth
---------------------
For the sixteen `ACTIONS` the truth is P(convert | contacted) = sigmoid(TREATED_COEF[k] . z)
and P(convert | not contacted) = sigmoid(CONTROL_COEF[k] . z), z = (1, the six latents,
(age - 50) / 17, on_sick_leave) at the snapshot (`Z_NAMES`, `ACTION_TRUTH`), so the uplift
is heterogeneous and negative for some customers (e.g. mortgage offers to stressed
customers, a "sleeping dog"). The truth does not depend on the channel. `ELIGIBILITY`
holds the bank's rules per action, on the snapshot columns.

Interactions: each month each active customer gets an outbound decision of the bank's
campaign (its ten `CAMPAIGN_ACTIONS`) with probability `contact_rate`, if any of them is
eligible and any channel usable. With probability
1 - `explore_share` the legacy (targeted, biased) policy draws an eligible action from the
softmax of logit(true_p_treated) / `legacy_temperature` (the same as picking the highest
true score plus Gumbel noise) and contacts (treated = 1); assignment_probability is that
exact softmax probability. Otherwise (policy "explore") the action is uniform among the eligible
ones and treated with probability 1/2: assignment_probability = 0.5 / n_eligible. The
channel is drawn among the usable ones (weights `CHANNEL_WEIGHTS`). A treated customer
converts with true_p_treated (outcome "accepted"; else "rejected" - half of the misses on
the call centre, a fifth elsewhere - or "ignored"), a control with true_p_control
("converted" / "none"). value = `ACTION_VALUE` (mortgage: 4 % of yearly income) when
converted. The event is in the month after its snapshot, the outcome 1 hour to 14 days
later; a conversion takes effect at the first snapshot after its outcome: rewards_card ->
has_credit_card, mortgage -> has_mortgage, add_email -> has_email, mobile_app ->
has_mobile_app, payment_plan -> collections closed and three months on plan, stress
-0.3; annual_fee_waiver -> no card fee for 12 months; loyalty_points_alert -> loyalty
+0.3; sick_leave_support -> stress -0.4; finance_course -> stress -0.2.

Always-on actions
-----------------
The six `ALWAYS_ON_ACTIONS` the triggers propose (card_upgrade, card_renewal,
goodwill_discount, account_lock_reminder, home_insurance, branch_appointment) have a campaign
of their own: each month `always_on_rate` (15 %) of the active customers, drawn from its own
random streams (`always_on_contact`, `_policy`, `_outcome`), get the legacy softmax over their
eligible always-on actions (or, `explore_share` of them, a uniform one: assignment_probability
1 / n_eligible), always contacted (no randomised control), at a time before they leave. Their
rows follow all the campaign's rows in interactions. A card_renewal conversion moves the card's
expiry three years on; otherwise this campaign changes nothing the other reads (contact counts,
consent, holdings, latents), so with `event_months=0` every table of the ten campaign actions
is bit for bit the bank without them (tests/test_simulator.py holds their digests).

Behavioural events
------------------
In the last `event_months` months (default 1; 0 = none) each active customer produces the
event types of serving/events.yaml (all but consent_changed), with its property names and
values, from the `events` stream; a month is drawn at its start, timestamps uniform in it:
page_view per product (Poisson, about 0.8 a month, more for the digital, by relevance: no card
-> credit_card, card holders -> card_upgrade, the wealthy -> mortgage, home_insurance, travellers
-> travel_insurance), card_search (0.12 x e^(.5 digital), more without a card; query or null),
application_started (0.02 x e^(.5 digital); application_id "app-N"), half completed within
five days if in the month (application_completed, same id and product), app_login (app holders,
e^(.3 + .7 digital); device), geofence_entered (app holders, 0.25 e^(.3 loyalty); a branch of
the customer's region, distance_m 10-800 m: beyond 500 m is outside the trade zone),
payment_missed (the previous month's missed payment; days_late 1-30, 31-60, 61-90 by the run of
missed months; amount), payment_made (arrears paid: missed two months ago, not last month),
outage (six incidents a month, each hitting 5-30 % of one region; service, minutes), life_event
(at most one a month: marriage, birth, home_purchase, new_job, by age and wealth), product_expiry
(card holders, a month before the card's expiry date, uniform over three years from the start;
in the first event month also the cards expiring within it; expires_at), service_contact and
complaint (more when stressed; complaints triple after an outage, reason "outage").
Events after a customer churned are not written.

Effects: `EVENT_EFFECTS` (table event_effects: type, kind = the product or life event it needs
or "" for any, action_id, logit_shift, window_days) shift an action's true logits, contacted
and not contacted alike, for the window after the event; e.g. a home purchase +2.0 on the
mortgage and +1.5 on home_insurance for 30 days, a missed payment +1.0 on
account_lock_reminder for 30 and -1.0 on the mortgage for 60, a product_expiry +2.0 on
card_renewal for 60, a completed application -3.0 on its product for 30. Each effect counts
once however many of its events fall in the window; the effects add up. Every contact's
outcome (both campaigns) is drawn from the shifted truth at its time, recorded in
interactions (true_p_treated / true_p_control, and event_logit_shift = the sum of the shifts),
so acceptance inside a window really is higher. The campaigns choose on the unshifted truth
(they do not watch events), so outside the windows and in the choice of who is contacted with
what, the events change nothing: with the default single month of events only that month's
outcomes inside windows differ from a bank without events.

events: one row per event in time order: customer_id, type, timestamp, event_id
("sim<seed>-<n>"), then one column per property (`EVENT_PROPERTIES`), null where the type has
no such property: the flattened shape `POST /events` and `nba events ingest` accept (every row
validates against serving/events.yaml).

truth: one row per action and customer active at the last snapshot (ordered by action,
then customer), the true probabilities at that snapshot whether or not the action is
eligible (`eligible` says which): the same values the last month's interactions record.

Output
------
The tables of `nba.schemas.SIM_ALL_TABLES`: the five snapshot tables, customers, monthly_value,
interactions, truth, events and event_effects.
`simulate` returns every table in memory; `simulate_to_dir` (what `nba data simulate`
runs) appends each month's snapshot rows to the Parquet files as row groups while the next
month is simulated (two worker threads score RFM and encode Parquet), so memory holds a
few months rather than the whole history: 1,000,000 customers x 12 months with a month of events: see benchmarks/bench_simulator.py
and the simulator section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nba import console
from nba.errors import ConfigError
from nba.io import atomic_path, sha256_file, write_parquet, write_text
from nba.schemas import (
    ACTIONS,
    ALWAYS_ON_ACTIONS,
    CAMPAIGN_ACTIONS,
    CHANNELS,
    ENTITY_KEY,
    EVENT_TS,
    SIM_ALL_TABLES,
    SIM_CONSENT,
    SIM_CUSTOMERS,
    SIM_ENGAGEMENT,
    SIM_EVENT_EFFECTS,
    SIM_EVENTS,
    SIM_INTERACTIONS,
    SIM_MONTHLY_VALUE,
    SIM_PROFILE,
    SIM_RFM,
    SIM_RISK,
    SIM_TRUTH,
    TableSchema,
    validate_frame,
)

SIMULATOR_VERSION = "1"

# Model components, each with its own random stream. Append only: a new component at the
# end leaves the streams (and so the output) of the existing ones unchanged.
COMPONENTS = (
    "population", "latent_walk", "purchases", "engagement", "risk", "holdings",
    "consent", "churn", "contact", "policy", "outcome",
    "events", "always_on_contact", "always_on_policy", "always_on_outcome",
)

LATENTS = ("digital", "wealth", "price_sensitivity", "stress", "travel", "loyalty")
Z_NAMES = ("intercept", *LATENTS, "age", "on_sick_leave")  # age enters as (age - 50) / 17
REGIONS = ("capital", "north", "south", "east", "west")
REGION_SHARES = (0.30, 0.20, 0.20, 0.15, 0.15)
OUTCOMES = ("accepted", "rejected", "ignored", "converted", "none")
POLICIES = ("legacy", "explore")
CHANNEL_WEIGHTS = {"email": 0.35, "sms": 0.15, "push": 0.20, "call_centre": 0.10, "web": 0.20}
CONSENT_AT_SIGNUP = {"email": 0.85, "sms": 0.45, "push": 0.60, "call_centre": 0.35, "web": 0.90}
HOLDINGS = ("has_email", "has_mobile_app", "has_credit_card", "has_mortgage", "has_savings",
            "has_personal_loan", "travels_abroad", "on_sick_leave")
# Actions whose conversion is taking a product; customers without it also take it unprompted.
PRODUCT_OF = {"rewards_card": "has_credit_card", "mortgage": "has_mortgage",
              "add_email": "has_email", "mobile_app": "has_mobile_app"}

DAY_S = 86_400
YEAR_S = 31_557_600  # 365.25 days
WINDOW_90D_S = 90 * DAY_S
OUTCOME_WINDOW_S = 14 * DAY_S
CONTACT_SLOTS = 5  # months of contact times kept: enough for any 90-day window
RHO = {"digital": 0.97, "stress": 0.90, "loyalty": 0.95}


# --- Ground truth per action ---------------------------------------------------------


@dataclass(frozen=True)
class ActionTruth:
    """True logit coefficients of one action on `Z_NAMES` (missing names are 0) and its value."""

    treated: Mapping[str, float]
    control: Mapping[str, float]
    value: float  # realised by a conversion (mortgage: per unit of yearly income, see ACTION_VALUE)


ACTION_TRUTH: dict[str, ActionTruth] = {
    "rewards_card": ActionTruth(
        {"intercept": -3.3, "wealth": 0.4, "digital": 0.3, "price_sensitivity": 0.5, "stress": -0.3, "age": -0.2},
        {"intercept": -4.4, "wealth": 0.3, "price_sensitivity": 0.2, "age": -0.1}, 150.0),
    # the sleeping dog: a mortgage offer puts stressed customers off borrowing
    "mortgage": ActionTruth(
        {"intercept": -5.9, "wealth": 0.6, "age": -0.4, "stress": -0.9},
        {"intercept": -6.6, "wealth": 0.5, "age": -0.3, "stress": -0.2}, 0.04),
    "add_email": ActionTruth(
        {"intercept": -2.0, "digital": 0.6, "loyalty": 0.3, "age": -0.3},
        {"intercept": -4.2, "digital": 0.4}, 5.0),
    "travel_notification": ActionTruth(
        {"intercept": -1.6, "travel": 0.6, "digital": 0.4},
        {"intercept": -3.0, "travel": 0.5}, 4.0),
    "sick_leave_support": ActionTruth(
        {"intercept": -1.6, "on_sick_leave": 1.6, "stress": 0.4, "loyalty": 0.3},
        {"intercept": -3.0, "on_sick_leave": 0.8, "stress": 0.2}, 40.0),
    # loyal customers who do not care about points redeem anyway; the alert adds little or less.
    # Driven mostly by traits the bank can see (card use ~ loyalty, app use ~ digital), so a
    # model can learn it; price sensitivity alone leaves no trace in the features.
    "loyalty_points_alert": ActionTruth(
        {"intercept": -2.6, "loyalty": 0.6, "price_sensitivity": 0.3, "digital": 0.6},
        {"intercept": -3.1, "loyalty": 0.5}, 30.0),
    # the waiver appeals to the price-sensitive, and visibly to stretched, less wealthy holders
    "annual_fee_waiver": ActionTruth(
        {"intercept": -1.7, "price_sensitivity": 0.5, "stress": 0.5, "wealth": -0.5, "loyalty": -0.2},
        {"intercept": -3.4, "price_sensitivity": 0.3, "stress": 0.2}, 60.0),
    "finance_course": ActionTruth(
        {"intercept": -3.4, "stress": 0.4, "age": -0.5, "digital": 0.3},
        {"intercept": -4.6, "stress": 0.2}, 15.0),
    "mobile_app": ActionTruth(
        {"intercept": -2.4, "digital": 1.0, "age": -0.6},
        {"intercept": -3.6, "digital": 0.8, "age": -0.3}, 12.0),
    "payment_plan": ActionTruth(
        {"intercept": -1.3, "stress": 0.5, "loyalty": 0.3},
        {"intercept": -2.6, "stress": 0.3}, 200.0),
    # the always-on actions (their own campaign, see "Always-on actions" in the docstring)
    "card_upgrade": ActionTruth(
        {"intercept": -2.4, "wealth": 0.7, "loyalty": 0.5, "digital": 0.3},
        {"intercept": -4.5, "wealth": 0.4}, 80.0),
    "card_renewal": ActionTruth(
        {"intercept": -1.2, "loyalty": 0.8, "digital": 0.3, "age": 0.2},
        {"intercept": -2.2, "loyalty": 0.6}, 90.0),
    "goodwill_discount": ActionTruth(
        {"intercept": -1.5, "price_sensitivity": 0.5, "loyalty": 0.5, "digital": 0.3},
        {"intercept": -3.5, "price_sensitivity": 0.2}, 20.0),
    "account_lock_reminder": ActionTruth(
        {"intercept": -1.4, "digital": 0.9, "loyalty": 0.5, "stress": -0.4},
        {"intercept": -2.4, "digital": 0.4, "stress": -0.6}, 50.0),
    "home_insurance": ActionTruth(
        {"intercept": -3.0, "wealth": 0.7, "age": 0.3, "stress": -0.3},
        {"intercept": -4.4, "wealth": 0.4}, 120.0),
    "branch_appointment": ActionTruth(
        {"intercept": -2.2, "age": 0.6, "digital": -0.4, "loyalty": 0.4},
        {"intercept": -4.0, "age": 0.3}, 25.0),
}


def _coef_matrix(arm: str) -> np.ndarray:
    m = np.zeros((len(ACTIONS), len(Z_NAMES)))
    for i, action in enumerate(ACTIONS):
        for name, c in getattr(ACTION_TRUTH[action], arm).items():
            m[i, Z_NAMES.index(name)] = c
    m.setflags(write=False)
    return m


TREATED_COEF = _coef_matrix("treated")  # (actions, Z_NAMES)
CONTROL_COEF = _coef_matrix("control")
ACTION_VALUE = np.array([ACTION_TRUTH[a].value for a in ACTIONS])
MORTGAGE = ACTIONS.index("mortgage")


def true_logits(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits of P(convert | contacted) and P(convert | not contacted), one column per action.

    `z` has one row per customer-moment and the columns `Z_NAMES` (intercept first).
    """
    z = np.asarray(z, dtype="float64")
    cols = {name: z[:, j] for j, name in enumerate(Z_NAMES) if name != "intercept"}
    return _logit_rows(cols, TREATED_COEF).T, _logit_rows(cols, CONTROL_COEF).T


def _logit_rows(z: Mapping[str, np.ndarray], coef: np.ndarray) -> np.ndarray:
    """coef . z as an (actions, rows) array, summed term by term over the non-zero
    coefficients: no BLAS call, so a row's value never depends on which other rows are in
    the batch, and no BLAS threads compete with the simulator's worker thread."""
    n = len(next(iter(z.values())))
    dtype = np.result_type(*z.values())
    out = np.empty((coef.shape[0], n), dtype=dtype)
    for i in range(coef.shape[0]):
        row = out[i]
        row.fill(coef[i, 0])
        for j in np.flatnonzero(coef[i, 1:]) + 1:
            row += dtype.type(coef[i, j]) * z[Z_NAMES[j]]
    return out


def true_probabilities(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P(convert | contacted) and P(convert | not contacted), one column per action."""
    lt, lc = true_logits(z)
    return _sigmoid(lt), _sigmoid(lc)


# --- Eligibility: the bank's rules, on the snapshot columns -----------------------------


@dataclass(frozen=True)
class EligibilityRule:
    """Who may be offered an action, as a vectorised rule over snapshot feature columns."""

    description: str
    columns: tuple[str, ...]
    rule: Callable[[Mapping[str, Any]], Any]

    def __call__(self, features: Mapping[str, Any]) -> np.ndarray:
        """Boolean array: one entry per row of `features` (a DataFrame or a dict of arrays)."""
        cols = {c: np.asarray(features[c]) for c in self.columns}
        return np.asarray(self.rule(cols), dtype=bool)


ELIGIBILITY: dict[str, EligibilityRule] = {
    "rewards_card": EligibilityRule(
        "no credit card, credit_score >= 600, no open collections",
        ("has_credit_card", "credit_score", "collections_open"),
        lambda f: (f["has_credit_card"] == 0) & (f["credit_score"] >= 600) & (f["collections_open"] == 0)),
    "mortgage": EligibilityRule(
        "no mortgage, age <= 65, credit_score >= 660, debt_to_income < 0.45, no missed payments in 90 days",
        ("has_mortgage", "age", "credit_score", "debt_to_income", "missed_payments_90d"),
        lambda f: (f["has_mortgage"] == 0) & (f["age"] <= 65) & (f["credit_score"] >= 660)
        & (f["debt_to_income"] < 0.45) & (f["missed_payments_90d"] == 0)),
    "add_email": EligibilityRule(
        "no e-mail address on file", ("has_email",), lambda f: f["has_email"] == 0),
    "travel_notification": EligibilityRule(
        "travels abroad", ("travels_abroad",), lambda f: f["travels_abroad"] == 1),
    "sick_leave_support": EligibilityRule(
        "on sick leave, or two or more missed payments in 90 days",
        ("on_sick_leave", "missed_payments_90d"),
        lambda f: (f["on_sick_leave"] == 1) | (f["missed_payments_90d"] >= 2)),
    "loyalty_points_alert": EligibilityRule(
        "card holder at churn risk: no purchase for 14 days or at most 2 logins last month",
        ("has_credit_card", "recency_days", "logins_30d"),
        lambda f: (f["has_credit_card"] == 1) & ((f["recency_days"] > 14) | (f["logins_30d"] <= 2))),
    "annual_fee_waiver": EligibilityRule(
        "card holder for a year at churn risk: no purchase for 14 days, at most 2 logins, "
        "or e-mail open rate below 0.15",
        ("has_credit_card", "tenure_months", "recency_days", "logins_30d", "email_open_rate"),
        lambda f: (f["has_credit_card"] == 1) & (f["tenure_months"] >= 12)
        & ((f["recency_days"] > 14) | (f["logins_30d"] <= 2) | (f["email_open_rate"] < 0.15))),
    "finance_course": EligibilityRule(
        "under 30, or debt_to_income >= 0.5", ("age", "debt_to_income"),
        lambda f: (f["age"] < 30) | (f["debt_to_income"] >= 0.5)),
    "mobile_app": EligibilityRule(
        "no mobile app, under 80", ("has_mobile_app", "age"),
        lambda f: (f["has_mobile_app"] == 0) & (f["age"] < 80)),
    "payment_plan": EligibilityRule(
        "a missed payment in 90 days or open collections", ("missed_payments_90d", "collections_open"),
        lambda f: (f["missed_payments_90d"] >= 1) | (f["collections_open"] == 1)),
    "card_upgrade": EligibilityRule(
        "card holder, credit_score >= 650, no open collections",
        ("has_credit_card", "credit_score", "collections_open"),
        lambda f: (f["has_credit_card"] == 1) & (f["credit_score"] >= 650) & (f["collections_open"] == 0)),
    "card_renewal": EligibilityRule(
        "card holder, no open collections", ("has_credit_card", "collections_open"),
        lambda f: (f["has_credit_card"] == 1) & (f["collections_open"] == 0)),
    "goodwill_discount": EligibilityRule(
        "a customer for 3 months or more", ("tenure_months",), lambda f: f["tenure_months"] >= 3),
    "account_lock_reminder": EligibilityRule(
        "a missed payment in 90 days, open collections, or 10 days or more overdrawn in 90 days",
        ("missed_payments_90d", "collections_open", "overdraft_days_90d"),
        lambda f: (f["missed_payments_90d"] >= 1) | (f["collections_open"] == 1) | (f["overdraft_days_90d"] >= 10)),
    "home_insurance": EligibilityRule(
        "aged 21 to 80, no open collections", ("age", "collections_open"),
        lambda f: (f["age"] >= 21) & (f["age"] <= 80) & (f["collections_open"] == 0)),
    "branch_appointment": EligibilityRule(
        "has the mobile app (the geofence is the app's)", ("has_mobile_app",), lambda f: f["has_mobile_app"] == 1),
}


def eligibility_matrix(features: Mapping[str, Any], actions: tuple[str, ...] = ACTIONS) -> np.ndarray:
    """Boolean (rows, actions) matrix: may the bank offer each action to each row?"""
    return np.column_stack([ELIGIBILITY[a](features) for a in actions])


def usable_channels(features: Mapping[str, Any]) -> np.ndarray:
    """Boolean (rows, CHANNELS): consented, and e-mail needs an address, push the app."""
    cols = []
    for c in CHANNELS:
        ok = np.asarray(features[f"consent_{c}"]) == 1
        if c == "email":
            ok = ok & (np.asarray(features["has_email"]) == 1)
        elif c == "push":
            ok = ok & (np.asarray(features["has_mobile_app"]) == 1)
        cols.append(ok)
    return np.column_stack(cols)


# --- Behavioural events: what they are and what they do to the truth ---------------------


@dataclass(frozen=True)
class EventEffect:
    """An event of `type` (with the property value `kind`, "" = any) shifts `action`'s true
    logits, contacted and not, by `logit_shift` for `window_days` after its timestamp."""

    type: str
    kind: str
    action: str
    logit_shift: float
    window_days: float


EVENT_EFFECTS: tuple[EventEffect, ...] = (
    EventEffect("page_view", "credit_card", "rewards_card", 0.8, 14),
    EventEffect("page_view", "card_upgrade", "card_upgrade", 1.0, 14),
    EventEffect("page_view", "mortgage", "mortgage", 1.0, 14),
    EventEffect("page_view", "home_insurance", "home_insurance", 1.0, 14),
    EventEffect("card_search", "", "rewards_card", 0.7, 14),
    EventEffect("card_search", "", "card_upgrade", 0.5, 14),
    EventEffect("application_started", "credit_card", "rewards_card", 1.5, 7),
    EventEffect("application_started", "card_upgrade", "card_upgrade", 1.5, 7),
    EventEffect("application_started", "mortgage", "mortgage", 1.5, 7),
    EventEffect("application_started", "home_insurance", "home_insurance", 1.5, 7),
    # a completed application met the need: the product's offer is not wanted for a month
    EventEffect("application_completed", "credit_card", "rewards_card", -3.0, 30),
    EventEffect("application_completed", "card_upgrade", "card_upgrade", -3.0, 30),
    EventEffect("application_completed", "mortgage", "mortgage", -3.0, 30),
    EventEffect("application_completed", "home_insurance", "home_insurance", -3.0, 30),
    EventEffect("app_login", "", "card_upgrade", 0.2, 3),  # the in-app banner is seen
    EventEffect("geofence_entered", "", "branch_appointment", 1.5, 1),
    EventEffect("payment_missed", "", "account_lock_reminder", 1.0, 30),
    EventEffect("payment_missed", "", "payment_plan", 0.8, 30),
    EventEffect("payment_missed", "", "mortgage", -1.0, 60),
    EventEffect("payment_missed", "", "card_upgrade", -1.0, 60),
    EventEffect("payment_made", "", "account_lock_reminder", -1.0, 30),
    EventEffect("outage", "", "goodwill_discount", 0.8, 30),
    EventEffect("life_event", "marriage", "home_insurance", 0.5, 30),
    EventEffect("life_event", "marriage", "mortgage", 0.5, 30),
    EventEffect("life_event", "birth", "finance_course", 0.5, 30),
    EventEffect("life_event", "birth", "home_insurance", 0.4, 30),
    EventEffect("life_event", "home_purchase", "mortgage", 2.0, 30),
    EventEffect("life_event", "home_purchase", "home_insurance", 1.5, 30),
    EventEffect("life_event", "new_job", "rewards_card", 0.5, 30),
    EventEffect("life_event", "new_job", "card_upgrade", 0.5, 30),
    EventEffect("product_expiry", "credit_card", "card_renewal", 2.0, 60),
    EventEffect("service_contact", "", "goodwill_discount", 0.3, 7),
    EventEffect("complaint", "", "goodwill_discount", 1.0, 30),
    EventEffect("complaint", "", "card_upgrade", -0.5, 30),
)

# The event types the simulator writes (serving/events.yaml declares them; consent_changed is
# the consent table's business) and the values of their enum-like properties.
EVENT_TYPES = ("page_view", "card_search", "application_started", "application_completed", "app_login",
               "geofence_entered", "payment_missed", "payment_made", "outage", "life_event", "product_expiry",
               "service_contact", "complaint")
EVENT_VOCAB: dict[str, tuple[str, ...]] = {
    "product": ("credit_card", "card_upgrade", "mortgage", "savings", "personal_loan", "home_insurance",
                "travel_insurance"),
    "query": ("credit card", "rewards card", "card upgrade", "cashback card"),
    "device": ("ios", "android"),
    "branch_id": tuple(f"{r}-{j}" for r in REGIONS for j in range(4)),
    "service": ("card_payments", "online_banking", "mobile_app", "atm", "transfers"),
    "kind": ("marriage", "birth", "home_purchase", "new_job"),
    "reason": ("card", "payment", "account", "app", "fees", "outage", "other"),
}
# property columns after customer_id, type, timestamp, event_id: kind of value
EVENT_PROPERTIES: dict[str, str] = {
    "product": "enum", "query": "enum", "application_id": "id", "device": "enum", "branch_id": "enum",
    "distance_m": "float", "days_late": "int", "amount": "float", "service": "enum", "minutes": "int",
    "kind": "enum", "expires_at": "timestamp", "reason": "enum",
}
CARD_LIFE_S = 3 * YEAR_S  # a card is issued for three years
EXPIRY_NOTICE_S = 30 * DAY_S  # the expiry is announced (product_expiry) a month ahead
_KEY_SHIFT = 31  # an event key: customer index << 31 | epoch seconds (< 2**31 until 2038)


def event_effects_frame() -> pd.DataFrame:
    """`EVENT_EFFECTS` as the `event_effects` truth table."""
    e = EVENT_EFFECTS
    return _frame(SIM_EVENT_EFFECTS, {
        "type": pd.array([x.type for x in e], dtype="string"),
        "kind": pd.array([x.kind for x in e], dtype="string"),
        "action_id": pd.array([x.action for x in e], dtype="string"),
        "logit_shift": np.array([x.logit_shift for x in e], dtype=np.float64),
        "window_days": np.array([x.window_days for x in e], dtype=np.float64),
    })


# --- Configuration and result --------------------------------------------------------


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. Defaults: 12 monthly snapshots from 2025-01-01, 30 % of customers
    get an outbound decision each month, 20 % of decisions explore."""

    customers: int
    seed: int
    start: date = date(2025, 1, 1)
    months: int = 12
    contact_rate: float = 0.3
    explore_share: float = 0.2
    legacy_temperature: float = 1.0  # softmax temperature of the legacy policy on true logits
    warmup_months: int = 12
    always_on_rate: float = 0.15  # share of customers the always-on actions' campaign decides for a month
    event_months: int = 1  # behavioural events in the last `event_months` months (0: none)

    def __post_init__(self) -> None:
        _check_int("customers", self.customers, 1)
        _check_int("seed", self.seed, 0)
        _check_int("months", self.months, 2)
        _check_int("warmup_months", self.warmup_months, 1)
        _check_int("event_months", self.event_months, 0)
        if not isinstance(self.start, date) or isinstance(self.start, datetime) or self.start.day != 1:
            raise ConfigError(
                f"SimulationConfig.start = {self.start!r}: expected a date on the first day of a month"
            )
        for name in ("contact_rate", "explore_share", "always_on_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"SimulationConfig.{name} = {value!r}: expected a share in [0, 1]")
        t = self.legacy_temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not (math.isfinite(t) and t > 0):
            raise ConfigError(f"SimulationConfig.legacy_temperature = {t!r}: expected a number > 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = self.start.isoformat()
        return d


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"SimulationConfig.{name} = {value!r}: expected an integer >= {minimum}")


@dataclass(frozen=True)
class SimulationResult:
    """One DataFrame per SIM_* table (attribute = schema name), each validated."""

    config: SimulationConfig
    profile: pd.DataFrame
    rfm: pd.DataFrame
    engagement: pd.DataFrame
    risk: pd.DataFrame
    consent: pd.DataFrame
    customers: pd.DataFrame
    monthly_value: pd.DataFrame
    interactions: pd.DataFrame
    truth: pd.DataFrame
    events: pd.DataFrame
    event_effects: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {t.name: getattr(self, t.name) for t in SIM_ALL_TABLES}


# --- Public entry points ---------------------------------------------------------------


def simulate(config: SimulationConfig, *, progress: bool = False) -> SimulationResult:
    """Simulate the bank in memory.

    Holds every table at once (about 6 GB per million customers); `simulate_to_dir` writes
    month by month instead.
    """
    sink = _MemorySink()
    _Run(config, sink).run(progress)
    return SimulationResult(config=config, **sink.frames())


def write(result: SimulationResult, out_dir: Path, *, progress: bool = False) -> dict[str, Path]:
    """Write one Parquet per table (`nba.io.write_parquet`, atomic) and `manifest.json`.

    Returns table name -> path, and "manifest" -> the manifest's path.
    """
    out_dir = Path(out_dir)
    tables = result.tables()
    bar = _bar(len(tables), "writing tables", progress, unit="table")

    def one(item: tuple[str, pd.DataFrame]) -> tuple[str, str]:
        name, frame = item
        path = write_parquet(frame, out_dir / f"{name}.parquet")
        bar.update(1)
        return name, sha256_file(path)

    with ThreadPoolExecutor(max_workers=2) as pool:  # Parquet encoding releases the GIL
        digests = dict(pool.map(one, tables.items()))
    bar.close()
    rows = {name: len(frame) for name, frame in tables.items()}
    manifest = _write_manifest(result.config, rows, digests, out_dir)
    return _paths(manifest, out_dir)


def simulate_to_dir(customers: int, seed: int, out_dir: Path, months: int = 12, progress: bool = True) -> dict:
    """Simulate and write one Parquet per table plus `manifest.json` into `out_dir`; return
    the manifest (config, seed, versions, rows and sha256 per table).

    Each month's snapshot rows are appended as one row group per table while the next
    month is simulated, so memory holds a few months, not the whole history. Every file
    is written to a temporary sibling and renamed into place when complete (`nba.io`), so
    a failure leaves no partial table. The tables hold the same rows as `simulate()`.
    """
    from contextlib import ExitStack

    config = SimulationConfig(customers=customers, seed=seed, months=months)
    out_dir = Path(out_dir)
    with ExitStack() as stack:  # renames the finished files on success, removes them on error
        sink = _ParquetSink(out_dir, stack)
        try:
            _Run(config, sink).run(progress)
        finally:
            sink.close()
    names = [t.name for t in SIM_ALL_TABLES]
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = dict(zip(names, pool.map(sha256_file, [out_dir / f"{n}.parquet" for n in names]), strict=True))
    return _write_manifest(config, {n: sink.rows[n] for n in names}, digests, out_dir)


def read_manifest(out_dir: Path) -> dict:
    """The manifest.json that `write` / `simulate_to_dir` left in `out_dir`."""
    return json.loads((Path(out_dir) / "manifest.json").read_text())


# --- Writing -----------------------------------------------------------------------------


class _MemorySink:
    """Collects the pieces of each table (months of a snapshot table) as DataFrames."""

    def __init__(self) -> None:
        self.parts: dict[str, list[pd.DataFrame]] = {t.name: [] for t in SIM_ALL_TABLES}

    def add(self, name: str, frame: Any) -> None:
        if not isinstance(frame, pd.DataFrame):  # an Arrow table (events)
            frame = frame.to_pandas()
        self.parts[name].append(frame)

    def frames(self) -> dict[str, pd.DataFrame]:
        out = {}
        for name, parts in self.parts.items():
            out[name] = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
            parts.clear()
        return out


class _ParquetSink:
    """Appends the pieces of each table to its Parquet file as row groups.

    Each file is a temporary sibling registered on `stack` (`nba.io.atomic_path`): the
    stack renames it into place when it closes normally and removes it on an error. Pieces
    of one table arrive from one thread at a time and in order.
    """

    def __init__(self, out_dir: Path, stack: Any) -> None:
        self.out_dir, self.stack = out_dir, stack
        self.writers: dict[str, Any] = {}
        self.rows: dict[str, int] = {t.name: 0 for t in SIM_ALL_TABLES}

    def add(self, name: str, frame: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        writer = self.writers.get(name)
        if writer is None:
            tmp = self.stack.enter_context(atomic_path(self.out_dir / f"{name}.parquet"))
            writer = self.writers[name] = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
        self.rows[name] += len(frame)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _write_manifest(config: SimulationConfig, rows: dict[str, int], digests: dict[str, str], out_dir: Path) -> dict:
    import nba

    names = [t.name for t in SIM_ALL_TABLES]
    manifest = {
        "simulator_version": SIMULATOR_VERSION,
        "nba_version": nba.__version__,
        "seed": config.seed,
        "config": config.to_dict(),
        "rows": {n: int(rows[n]) for n in names},
        "files": {n: f"{n}.parquet" for n in names},
        "sha256": {n: digests[n] for n in names},
    }
    write_text(json.dumps(manifest, indent=2) + "\n", out_dir / "manifest.json")
    return manifest


def _paths(manifest: dict, out_dir: Path) -> dict[str, Path]:
    paths = {n: out_dir / f for n, f in manifest["files"].items()}
    paths["manifest"] = out_dir / "manifest.json"
    return paths


def _bar(total: int, desc: str, progress: bool, unit: str = "month") -> Any:
    return console.progress(total, desc, unit, enabled=progress)


# --- Helpers -----------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _month_starts(start: date, first: int, count: int) -> np.ndarray:
    """Epoch seconds of the first days of months start+first .. start+first+count (inclusive)."""
    m0 = np.datetime64(f"{start.year:04d}-{start.month:02d}", "M")
    return (m0 + np.arange(first, first + count + 1)).astype("datetime64[s]").astype(np.int64)


def _timestamps(seconds: np.ndarray, nat: np.ndarray | None = None) -> pd.DatetimeIndex:
    """UTC timestamps from epoch seconds (NaT where `nat`)."""
    ns = np.multiply(seconds, 1_000_000_000, dtype=np.int64)
    if nat is not None:
        ns[nat] = np.iinfo(np.int64).min  # the NaT sentinel
    return pd.DatetimeIndex(ns.view("M8[ns]")).tz_localize("UTC")


def _strings(codes: np.ndarray, names: tuple[str, ...]) -> pd.api.extensions.ExtensionArray:
    """A `string` column from small integer codes, without a Python object per row."""
    import pyarrow as pa

    dictionary = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(list(names)))
    return pd.arrays.ArrowStringArray(pa.chunked_array([dictionary.cast(pa.string())]))


def _choose(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """For each column of `weights` (options, rows), an option drawn proportionally to its
    non-negative weight, by inverting the cumulative weights at the uniform `u`."""
    cum = np.cumsum(weights, axis=0)
    return np.minimum((cum <= u * cum[-1]).sum(axis=0), weights.shape[0] - 1)


def _rfm_frame(keys: dict[str, Any], measures: dict[str, np.ndarray]) -> pd.DataFrame:
    """One snapshot of the rfm table: the measures scored by `nba.data.rfm.score_rfm`
    (quintiles are relative to this snapshot's customers)."""
    from nba.data.rfm import score_rfm

    frame = pd.DataFrame({**keys, **measures}, copy=False)
    return score_rfm(frame)[SIM_RFM.names]


def _frame(schema: TableSchema, cols: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({c: cols[c] for c in schema.columns}, copy=False)


def _checked(schema: TableSchema, frame: pd.DataFrame) -> pd.DataFrame:
    validate_frame(frame, schema, source="the simulator")
    return frame


def _events_schema() -> Any:
    """The Arrow schema of events.parquet: SIM_EVENTS' columns, then every property."""
    import pyarrow as pa

    ts = pa.timestamp("ns", tz="UTC")
    kinds = {"enum": pa.string(), "id": pa.string(), "float": pa.float64(), "int": pa.int64(), "timestamp": ts}
    return pa.schema([(ENTITY_KEY, pa.int64()), ("type", pa.string()), ("timestamp", ts), ("event_id", pa.string()),
                      *((name, kinds[k]) for name, k in EVENT_PROPERTIES.items())])


class _Columns:
    """Per-month column pieces of a table, concatenated once at the end."""

    def __init__(self) -> None:
        self.pieces: dict[str, list[np.ndarray]] = {}

    def add(self, **cols: np.ndarray) -> None:
        for k, v in cols.items():
            self.pieces.setdefault(k, []).append(v)

    def pop(self, name: str, dtype: Any) -> np.ndarray:
        """The column in `dtype` (one allocation); its pieces are released."""
        parts = self.pieces.pop(name, [])
        out = np.empty(sum(len(p) for p in parts), dtype=dtype)
        if parts:
            np.concatenate(parts, out=out, casting="same_kind")
        return out


# Snapshot columns the decisions read (eligibility rules and usable channels).
_DECISION_COLUMNS = tuple(sorted(
    {c for r in ELIGIBILITY.values() for c in r.columns}
    | {f"consent_{c}" for c in CHANNELS} | {"has_email", "has_mobile_app"}))


class _Run:
    """One simulation: the customers' latents, holdings and rolling windows, month by month.

    Snapshot rows go to the sink as each month is simulated; interactions are kept as
    compact columns, and the customers, interactions and truth tables are built at the end.
    """

    def __init__(self, config: SimulationConfig, sink: _MemorySink | _ParquetSink) -> None:
        self.cfg = config
        self.sink = sink
        children = np.random.SeedSequence(config.seed).spawn(len(COMPONENTS))
        self.rng = {name: np.random.Generator(np.random.PCG64(ss))
                    for name, ss in zip(COMPONENTS, children, strict=True)}
        w, m = config.warmup_months, config.months
        self.bounds = _month_starts(config.start, -w, w + m)  # month starts, warm-up included
        self.start_s = int(self.bounds[w])
        self.inter = _Columns()  # interaction rows, month by month
        self.inter_ao = _Columns()  # the always-on actions' campaign: appended after the others
        self.event_seq = 0  # events written so far (their ids)
        self.app_seq = 0  # applications started so far (their ids)
        self.month_keys: list[dict[int, np.ndarray]] = []  # per recent event month: effect -> event keys
        self.effect_keys: dict[int, np.ndarray] = {}  # effect -> sorted keys of its events (3 months)
        self.jobs: list[list[Future]] = []  # per month, the workers' jobs storing its rows
        self.truth: dict[str, Any] = {}
        # The closed loop's hook (nba.simulation): when set, the platform chooses each month's
        # actions in place of the legacy policy and exploration (see `_decide`).
        self.decider: Callable[..., tuple[np.ndarray, ...]] | None = None
        self._populate()

    # --- population ---------------------------------------------------------------

    def _populate(self) -> None:
        n, g = self.cfg.customers, self.rng["population"]
        self.n = n
        lat = g.standard_normal((len(LATENTS), n), dtype=np.float32)
        age_years = 18.05 + 66.9 * g.beta(1.7, 2.0, n)
        age_z0 = ((age_years - 50.0) / 17.0).astype(np.float32)
        wl = LATENTS.index("wealth")
        lat[wl] = 0.35 * age_z0 + np.float32(math.sqrt(1 - 0.35**2)) * lat[wl]
        self.lat = lat  # (LATENTS, customers), float32
        self.age_z0 = age_z0  # (age at start - 50) / 17: a fixed trait in the monthly rates
        self.birth_s = (self.start_s - age_years * YEAR_S).astype(np.int64)
        years_ago = g.random(n) * np.minimum(10.0, age_years - 18.0)
        self.signup_s = (self.start_s - np.maximum(years_ago * YEAR_S, 2 * DAY_S)).astype(np.int64)
        self.region = g.choice(len(REGIONS), size=n, p=REGION_SHARES).astype(np.int8)
        dig, wealth, price, stress, travel, loyalty = (lat[i] for i in range(len(LATENTS)))
        log_income = 10.55 + 0.45 * wealth + 0.10 * age_z0 - 0.08 * age_z0**2 + 0.30 * g.standard_normal(n)
        self.income = np.round(np.exp(log_income.astype(np.float64)), -2)
        self.credit_noise = g.standard_normal(n, dtype=np.float32)
        self.dti_noise = g.standard_normal(n, dtype=np.float32)

        def flag(logit: np.ndarray) -> np.ndarray:
            return (g.random(n, dtype=np.float32) < _sigmoid(logit)).astype(np.int8)

        self.h = {
            "has_email": flag(2.3 + 0.9 * dig - 0.3 * age_z0),
            "has_mobile_app": flag(0.0 + 1.4 * dig - 0.6 * age_z0),
            "has_credit_card": flag(0.2 + 0.6 * wealth + 0.3 * loyalty),
            "has_mortgage": flag(-1.1 + 0.7 * wealth - 0.5 * age_z0**2),
            "has_savings": flag(0.1 + 0.9 * wealth - 0.4 * stress),
            "has_personal_loan": flag(-1.6 + 0.6 * stress - 0.2 * wealth),
            "travels_abroad": (travel + 0.3 * wealth > 0.6).astype(np.int8),
            "on_sick_leave": flag(-3.6 + 0.6 * stress),
        }
        u = g.random((len(CHANNELS), n), dtype=np.float32)
        self.consent = (u < np.array([CONSENT_AT_SIGNUP[c] for c in CHANNELS], np.float32)[:, None]).astype(np.int8)
        # rolling windows
        self.cnt_ring = np.zeros((12, n), dtype=np.int16)
        self.spend_ring = np.zeros((12, n), dtype=np.float64)
        self.missed_ring = np.zeros((3, n), dtype=np.int8)
        self.od_ring = np.zeros((3, n), dtype=np.int8)
        self.contact_ring = np.zeros((CONTACT_SLOTS, n), dtype=np.int64)
        self.last_purchase_s = self.signup_s.astype(np.float64)
        self.last_contact_s = self.signup_s.copy()
        self.logins = np.zeros(n, dtype=np.int16)
        self.app_sessions = np.zeros(n, dtype=np.int16)
        self.open_rate = np.zeros(n, dtype=np.float32)
        self.collections = np.zeros(n, dtype=np.int8)
        self.plan_until = np.full(n, -10_000, dtype=np.int32)  # last month index of a payment plan
        self.waiver_until = np.full(n, -10_000, dtype=np.int32)  # last month index of a fee waiver
        self.active = np.ones(n, dtype=bool)
        self.churn_s = np.zeros(n, dtype=np.int64)  # 0 = never churned
        self.pending: tuple[np.ndarray, np.ndarray] = (np.empty(0, np.int64), np.empty(0, np.int8))
        # the card's expiry date (own stream: the other components' draws are unchanged)
        ge = self.rng["events"]
        self.card_expiry_s = (self.start_s - EXPIRY_NOTICE_S + ge.random(n) * CARD_LIFE_S).astype(np.int64)

    # --- main loop ----------------------------------------------------------------------

    def run(self, progress: bool) -> None:
        """Simulate every month and hand all tables to the sink.

        Two worker threads store each month's snapshot rows (one scores and stores rfm, the
        other stores the other tables; a table always goes through the same one, in order)
        while the next month is simulated; they are at most two months behind.
        """
        w, m = self.cfg.warmup_months, self.cfg.months
        bar = _bar(w + m, "simulating months", progress)
        with ThreadPoolExecutor(max_workers=1) as rfm_pool, ThreadPoolExecutor(max_workers=1) as table_pool:
            self.pools = (rfm_pool, table_pool)
            try:
                for k in range(-w, m):
                    self._month(k)
                    bar.update(1)
                self.jobs.append([table_pool.submit(self._store_final)])
                self.sink.add(SIM_TRUTH.name, _checked(SIM_TRUTH, self._truth()))
                if self.event_seq == 0:  # no event months (or no events): the table, empty
                    self.sink.add(SIM_EVENTS.name, _events_schema().empty_table())
                self.sink.add(SIM_EVENT_EFFECTS.name, _checked(SIM_EVENT_EFFECTS, event_effects_frame()))
                for month in self.jobs:
                    for job in month:
                        job.result()
            except BaseException:
                for pool in self.pools:
                    pool.shutdown(wait=True, cancel_futures=True)
                raise
            finally:
                del self.pools
        bar.close()

    def _store(self, frames: dict[str, pd.DataFrame], rfm_keys: dict[str, Any],
               rfm_measures: dict[str, np.ndarray]) -> None:
        """Hand a month's rows to the workers, after those of two months ago are stored."""
        if len(self.jobs) >= 2:
            for job in self.jobs[-2]:
                job.result()  # back-pressure, and the workers' errors
        rfm_pool, table_pool = self.pools
        self.jobs.append([
            rfm_pool.submit(self._store_rfm, rfm_keys, rfm_measures),
            table_pool.submit(self._store_frames, frames),
        ])

    def _store_rfm(self, keys: dict[str, Any], measures: dict[str, np.ndarray]) -> None:
        """Worker: score the snapshot's RFM and store it."""
        self.sink.add(SIM_RFM.name, _checked(SIM_RFM, _rfm_frame(keys, measures)))

    def _store_frames(self, frames: dict[str, pd.DataFrame]) -> None:
        schemas = {t.name: t for t in SIM_ALL_TABLES}
        for name, frame in frames.items():
            self.sink.add(name, _checked(schemas[name], frame))

    def _store_final(self) -> None:
        """Worker: the customers and interactions tables."""
        self.sink.add(SIM_CUSTOMERS.name, _checked(SIM_CUSTOMERS, self._customers()))
        self.sink.add(SIM_INTERACTIONS.name, _checked(SIM_INTERACTIONS, self._interactions()))

    def _month(self, k: int) -> None:
        """Snapshot at the start of month k (k >= 0), then the month's decisions and activity.

        Warm-up months (k < 0) only build the history the first snapshot reads: purchases
        (12 months), missed payments and collections, overdrafts (3 months), channel use (1),
        with latents and holdings held at their values at the start.
        """
        w, n = self.cfg.warmup_months, self.n
        s, e = int(self.bounds[k + w]), int(self.bounds[k + w + 1])
        age = ((s - self.birth_s) // YEAR_S).astype(np.int16)
        self.contact_ring[k % CONTACT_SLOTS] = 0  # this month's slot, last used 5 months ago
        touched = np.zeros((len(CHANNELS), n), dtype=bool)
        churned = np.zeros(n, dtype=bool)
        churn_s = np.full(n, e, dtype=np.int64)
        if k >= 0:
            feats = self._features(s, age)
            idx = np.flatnonzero(self.active)
            frames, rfm_keys, rfm_measures = self._snapshot(s, idx, feats)
            zc = self._zcols(age, None, np.float32)
            events = self._events(k, s, e, idx, feats) if k >= self.cfg.months - self.cfg.event_months else None
            event_s, conv = self._decide(k, s, e, idx, feats, age, touched)
            churned, churn_s = self._churn(k, s, e, feats, event_s)
            if self.decider is None:
                self._decide_always_on(k, s, e, idx, feats, age, np.where(churned, churn_s, e))
            if events is not None:
                self._store_events(events, np.where(churned, churn_s, e))

        live_from = np.maximum(self.signup_s, s)
        live_to = np.where(self.active, np.where(churned, churn_s, e), live_from)
        span = np.maximum(live_to - live_from, 0)
        frac = (span / (e - s)).astype(np.float32)

        self._purchases(k, live_from, span, frac)
        if k >= -1:
            self._engagement(frac)
        if k >= 0:
            frames[SIM_MONTHLY_VALUE.name] = pd.DataFrame({
                **rfm_keys,
                "purchases": self.cnt_ring[k % 12][idx].astype(np.int64),
                "spend": self.spend_ring[k % 12][idx],
                "margin": self._margin(k, frac)[idx],
            }, copy=False)
            self._store(frames, rfm_keys, rfm_measures)
        self._risk_events(k, e - s, frac)
        if k >= 0:
            self._holdings_drift()
            self._organic(zc)
            self._effects_due(k, e, *conv)
            self._consent_drift(touched)
            self.churn_s[churned] = churn_s[churned]
            self.active &= ~churned
            self._walk()

    # --- snapshot --------------------------------------------------------------------

    def _features(self, s: int, age: np.ndarray) -> dict[str, np.ndarray]:
        """The snapshot columns at time s for every customer (recorded only for the active)."""
        lat = {name: self.lat[i] for i, name in enumerate(LATENTS)}
        h = self.h
        tenure_days = (s - self.signup_s) / DAY_S
        freq = self.cnt_ring.sum(axis=0, dtype=np.int32)
        spend12 = self.spend_ring.sum(axis=0)
        missed = self.missed_ring.sum(axis=0, dtype=np.int8)
        credit = (690 + 55 * lat["wealth"] - 45 * lat["stress"] + 35 * self.credit_noise
                  - 30 * missed - 80 * self.collections)
        dti = (0.25 + 0.06 * lat["stress"] - 0.04 * lat["wealth"] + 0.22 * h["has_mortgage"]
               + 0.10 * h["has_personal_loan"] + 0.06 * self.dti_noise)
        ring = self.contact_ring
        f = {
            "age": age,
            "tenure_months": (tenure_days / 30.436875).astype(np.int16),
            "tenure_days": tenure_days,
            **h,
            "num_products": (1 + h["has_credit_card"] + h["has_mortgage"] + h["has_savings"]
                             + h["has_personal_loan"]).astype(np.int8),
            "recency_days": np.round((s - self.last_purchase_s) / DAY_S, 3),
            "frequency": freq,
            "monetary": np.round(np.where(freq > 0, spend12 / np.maximum(freq, 1), 0.0), 2),
            "logins_30d": self.logins,
            "app_sessions_30d": self.app_sessions,
            "email_open_rate": np.round(self.open_rate.astype(np.float64), 3),
            "contacts_90d": ((ring > 0) & (ring >= s - WINDOW_90D_S)).sum(axis=0, dtype=np.int8),
            "last_contact_epoch_s": self.last_contact_s,
            "credit_score": np.clip(np.rint(credit), 300, 850).astype(np.int16),
            "debt_to_income": np.round(np.clip(dti.astype(np.float64), 0.0, 2.0), 3),
            "missed_payments_90d": missed,
            "overdraft_days_90d": self.od_ring.sum(axis=0, dtype=np.int8),
            "collections_open": self.collections,
        }
        for j, c in enumerate(CHANNELS):
            f[f"consent_{c}"] = self.consent[j]
        return f

    def _snapshot(self, s: int, idx: np.ndarray, f: dict[str, np.ndarray]) -> tuple[dict[str, Any], ...]:
        """The active customers' rows of the snapshot tables at time s, in schema dtypes
        (rfm as its measures, scored by the worker)."""
        keys = {ENTITY_KEY: idx.astype(np.int64) + 1, EVENT_TS: _timestamps(np.full(len(idx), s, dtype=np.int64))}

        def cols(schema: TableSchema, extra: dict[str, Any] | None = None) -> pd.DataFrame:
            data = dict(keys)
            for c, dtype in schema.columns.items():
                if c not in data:
                    data[c] = extra[c] if extra and c in extra else f[c][idx].astype(dtype)
            return pd.DataFrame(data, copy=False)

        frames = {
            SIM_PROFILE.name: cols(SIM_PROFILE, {"income": self.income[idx],
                                                 "region": _strings(self.region[idx], REGIONS)}),
            SIM_ENGAGEMENT.name: cols(SIM_ENGAGEMENT),
            SIM_RISK.name: cols(SIM_RISK),
            SIM_CONSENT.name: cols(SIM_CONSENT),
        }
        measures = {c: f[c][idx].astype(SIM_RFM.columns[c]) for c in ("recency_days", "frequency", "monetary",
                                                                       "tenure_days")}
        return frames, keys, measures

    def _zcols(self, age: np.ndarray, idx: np.ndarray | None, dtype: Any) -> dict[str, np.ndarray]:
        """The truth's inputs `Z_NAMES` (without the intercept) at this moment, one array each."""
        def take(a: np.ndarray) -> np.ndarray:
            return (a if idx is None else a[idx]).astype(dtype, copy=False)

        z = {name: take(self.lat[i]) for i, name in enumerate(LATENTS)}
        z["age"] = (take(age) - dtype(50.0)) / dtype(17.0)
        z["on_sick_leave"] = take(self.h["on_sick_leave"])
        return z

    # --- decisions ---------------------------------------------------------------------

    def _decide(self, k: int, s: int, e: int, active_idx: np.ndarray, f: dict[str, np.ndarray],
                age: np.ndarray, touched: np.ndarray) -> tuple[np.ndarray | None, tuple[np.ndarray, ...]]:
        """The month's outbound decisions and their outcomes. Returns each customer's event
        time (0 if none) and the conversions (customer, action, outcome time)."""
        cfg = self.cfg
        g = self.rng["contact"]
        pick = active_idx[g.random(len(active_idx)) < cfg.contact_rate]
        sub = {c: f[c][pick] for c in _DECISION_COLUMNS}
        # the campaign offers its ten actions; a platform deciding in its place (the closed loop) all
        n_act = len(ACTIONS) if self.decider is not None else len(CAMPAIGN_ACTIONS)
        elig = eligibility_matrix(sub, ACTIONS[:n_act]).T  # (actions, rows)
        chan = usable_channels(sub).T  # (channels, rows)
        ok = elig.any(axis=0) & chan.any(axis=0)
        pick, elig, chan = pick[ok], elig[:, ok], chan[:, ok]
        m = len(pick)
        u_channel, u_event, u_delay = g.random(m), g.random(m), g.random(m)
        if k == cfg.months - 1:
            # the truth table; this month's rows take their truth from it, so both agree exactly
            self._record_truth(s, active_idx, f, age)
            at = np.searchsorted(active_idx, pick)
            lt, lc = self.truth["lt"][:n_act, at], self.truth["lc"][:n_act, at]
            known = (self.truth["p_t"][:n_act, at], self.truth["p_c"][:n_act, at])
        else:
            z = self._zcols(age, pick, np.float64)
            lt, lc, known = _logit_rows(z, TREATED_COEF[:n_act]), _logit_rows(z, CONTROL_COEF[:n_act]), None

        gp = self.rng["policy"]
        explore = gp.random(m) < cfg.explore_share
        u_legacy, u_pick, u_treat = gp.random(m), gp.random(m), gp.random(m)
        n_elig = elig.sum(axis=0)
        # legacy: softmax of the eligible true logits / temperature (exact probabilities)
        score = np.where(elig, lt / cfg.legacy_temperature, -np.inf)
        softmax = np.exp(score - score.max(axis=0))
        softmax /= softmax.sum(axis=0)
        legacy_choice = _choose(softmax, u_legacy)
        rows = np.arange(m)
        legacy_prob = softmax[legacy_choice, rows]
        # explore: uniform among the eligible, treated with probability 1/2
        nth = np.minimum((u_pick * n_elig).astype(np.int64), n_elig - 1)
        explore_choice = np.argmax(np.cumsum(elig, axis=0) > nth, axis=0)
        action = np.where(explore, explore_choice, legacy_choice).astype(np.int8)
        treated = ~explore | (u_treat < 0.5)
        prob = np.where(explore, 0.5 / np.maximum(n_elig, 1), legacy_prob)

        weights = chan * np.array([CHANNEL_WEIGHTS[c] for c in CHANNELS])[:, None]
        channel = _choose(weights, u_channel).astype(np.int8)
        event = s + 3600 + (u_event * (e - s - 7200)).astype(np.int64)
        outcome_s = event + 3600 + (u_delay * (OUTCOME_WINDOW_S - 3600)).astype(np.int64)

        if self.decider is not None and m:
            # the platform decides on the drawn channel at the event time: (action, treated,
            # probability, explored) per row; a row it does not treat draws the control outcome
            if known is None:
                known = (_sigmoid(lt), _sigmoid(lc))
            action, treated, prob, explore = self.decider(
                run=self, k=k, pick=pick, channel=channel, event_s=event, features=f, p_t=known[0], p_c=known[1])
            action = np.asarray(action, dtype=np.int8)
        go = self.rng["outcome"]
        u_conv, u_split = go.random(m), go.random(m)
        shift = self._shift(pick, event, action)  # the behavioural events' effects (0 outside their windows)
        if known is None:  # only the chosen action's probabilities are needed
            pt, pc = _sigmoid(lt[action, rows] + shift), _sigmoid(lc[action, rows] + shift)
        else:
            pt, pc = known[0][action, rows], known[1][action, rows]
            on = shift != 0
            pt[on] = _sigmoid(lt[action[on], rows[on]] + shift[on])
            pc[on] = _sigmoid(lc[action[on], rows[on]] + shift[on])
        converted = u_conv < np.where(treated, pt, pc)
        reject_share = np.where(channel == CHANNELS.index("call_centre"), 0.5, 0.2)
        outcome = np.where(
            treated,
            np.where(converted, 0, np.where(u_split < reject_share, 1, 2)),
            np.where(converted, 3, 4),
        ).astype(np.int8)
        value = np.where(converted, ACTION_VALUE[action], 0.0)
        mort = converted & (action == MORTGAGE)
        value[mort] = np.round(ACTION_VALUE[MORTGAGE] * self.income[pick[mort]], 2)

        self.inter.add(idx=pick.astype(np.int32), event_s=event, action=action, channel=channel,
                       policy=explore.astype(np.int8), treated=treated.astype(np.int8), prob=prob,
                       outcome=outcome, converted=converted.astype(np.int8), value=value,
                       outcome_s=outcome_s, p_t=pt, p_c=pc, shift=shift)

        # contacts (treated rows only) feed last_contact and contacts_90d of later snapshots
        c_idx = pick[treated]
        self.contact_ring[k % CONTACT_SLOTS][c_idx] = event[treated]
        self.last_contact_s[c_idx] = event[treated]
        touched[channel[treated], c_idx] = True
        self._month_rows = (pick, action)
        if m == 0:
            return None, (pick, action, outcome_s)
        event_full = np.zeros(self.n, dtype=np.int64)
        event_full[pick] = event
        return event_full, (pick[converted], action[converted], outcome_s[converted])

    def _decide_always_on(self, k: int, s: int, e: int, active_idx: np.ndarray, f: dict[str, np.ndarray],
                          age: np.ndarray, leave_s: np.ndarray) -> None:
        """The always-on actions' own campaign: `always_on_rate` of the customers, the same legacy
        softmax over their eligible always-on actions (or, `explore_share`, a uniform one), always
        contacted; outcomes from the truth shifted by the events. Its own random streams, and it
        changes nothing the other campaign reads (no contact counts, consent or holdings), so the
        ten campaign actions' rows are those of a bank without it."""
        cfg = self.cfg
        base = len(CAMPAIGN_ACTIONS)
        g = self.rng["always_on_contact"]
        pick = active_idx[g.random(len(active_idx)) < cfg.always_on_rate]
        sub = {c: f[c][pick] for c in _DECISION_COLUMNS}
        elig = eligibility_matrix(sub, ALWAYS_ON_ACTIONS).T
        chan = usable_channels(sub).T
        m0 = len(pick)
        u_channel, u_event, u_delay = g.random(m0), g.random(m0), g.random(m0)
        event = s + 3600 + (u_event * (e - s - 7200)).astype(np.int64)
        ok = elig.any(axis=0) & chan.any(axis=0) & (event < leave_s[pick])  # not after the customer left
        pick, elig, chan, event = pick[ok], elig[:, ok], chan[:, ok], event[ok]
        u_channel, u_delay = u_channel[ok], u_delay[ok]
        m = len(pick)
        z = self._zcols(age, pick, np.float64)
        lt, lc = _logit_rows(z, TREATED_COEF[base:]), _logit_rows(z, CONTROL_COEF[base:])
        gp = self.rng["always_on_policy"]
        explore = gp.random(m) < cfg.explore_share
        u_legacy, u_pick = gp.random(m), gp.random(m)
        n_elig = elig.sum(axis=0)
        score = np.where(elig, lt / cfg.legacy_temperature, -np.inf)
        softmax = np.exp(score - score.max(axis=0))
        softmax /= softmax.sum(axis=0)
        rows = np.arange(m)
        legacy_choice = _choose(softmax, u_legacy)
        nth = np.minimum((u_pick * n_elig).astype(np.int64), n_elig - 1)
        explore_choice = np.argmax(np.cumsum(elig, axis=0) > nth, axis=0)
        local = np.where(explore, explore_choice, legacy_choice)
        prob = np.where(explore, 1.0 / np.maximum(n_elig, 1), softmax[legacy_choice, rows])
        action = (local + base).astype(np.int8)
        weights = chan * np.array([CHANNEL_WEIGHTS[c] for c in CHANNELS])[:, None]
        channel = _choose(weights, u_channel).astype(np.int8)
        outcome_s = event + 3600 + (u_delay * (OUTCOME_WINDOW_S - 3600)).astype(np.int64)
        shift = self._shift(pick, event, action)
        pt, pc = _sigmoid(lt[local, rows] + shift), _sigmoid(lc[local, rows] + shift)
        go = self.rng["always_on_outcome"]
        u_conv, u_split = go.random(m), go.random(m)
        converted = u_conv < pt
        reject_share = np.where(channel == CHANNELS.index("call_centre"), 0.5, 0.2)
        outcome = np.where(converted, 0, np.where(u_split < reject_share, 1, 2)).astype(np.int8)
        value = np.where(converted, ACTION_VALUE[action], 0.0)
        self.inter_ao.add(idx=pick.astype(np.int32), event_s=event, action=action, channel=channel,
                          policy=explore.astype(np.int8), treated=np.ones(m, np.int8), prob=prob,
                          outcome=outcome, converted=converted.astype(np.int8), value=value,
                          outcome_s=outcome_s, p_t=pt, p_c=pc, shift=shift)
        renewed = pick[converted & (action == ACTIONS.index("card_renewal"))]
        self.card_expiry_s[renewed] += CARD_LIFE_S  # read by the events only

    # --- behavioural events -------------------------------------------------------------

    def _shift(self, idx: np.ndarray, t: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The sum of the event effects on (customer, time, action) rows: each effect whose
        type/kind the customer had in the `window_days` before t shifts the logits once."""
        out = np.zeros(len(idx))
        if not self.effect_keys or not len(idx):
            return out
        mask = np.int64((1 << _KEY_SHIFT) - 1)
        for r, eff in enumerate(EVENT_EFFECTS):
            keys = self.effect_keys.get(r)
            if keys is None or not len(keys):
                continue
            rows = np.flatnonzero(action == ACTIONS.index(eff.action))
            if not len(rows):
                continue
            who, when = idx[rows].astype(np.int64), t[rows].astype(np.int64)
            j = np.searchsorted(keys, (who << _KEY_SHIFT) | when, side="right") - 1
            last = keys[np.maximum(j, 0)]
            hit = (j >= 0) & ((last >> _KEY_SHIFT) == who) & (when - (last & mask) < eff.window_days * DAY_S)
            out[rows[hit]] += eff.logit_shift
        return out

    def _events(self, k: int, s: int, e: int, idx: np.ndarray, f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The month's behavioural events of the active customers (columns of codes, -1 / NaN =
        null), sorted by time; their effects become visible to `_shift` at once."""
        g, n, span = self.rng["events"], len(idx), e - s
        lat = {name: self.lat[i][idx] for i, name in enumerate(LATENTS)}
        h = {c: self.h[c][idx] for c in ("has_credit_card", "has_mortgage", "has_mobile_app", "travels_abroad")}
        age = f["age"][idx]
        digital = np.exp(0.5 * lat["digital"])
        vocab = {c: {v: i for i, v in enumerate(vals)} for c, vals in EVENT_VOCAB.items()}
        blocks: list[tuple[int, np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []

        def add(type_name: str, rows: np.ndarray, ts: np.ndarray, **props: np.ndarray) -> None:
            blocks.append((EVENT_TYPES.index(type_name), rows, ts.astype(np.int64), props))

        def times(count: int) -> np.ndarray:
            return s + (g.random(count) * span).astype(np.int64)

        def poisson(lam: np.ndarray) -> np.ndarray:
            """Rows (into idx) repeated by a Poisson count of mean `lam` each."""
            return np.repeat(np.arange(n), g.poisson(lam))

        def codes(column: str, value: str, count: int) -> np.ndarray:
            return np.full(count, vocab[column][value], dtype=np.int64)

        no_card = 1 - h["has_credit_card"]
        page_rate = {
            "credit_card": 0.25 * (1 - 0.7 * h["has_credit_card"]),
            "card_upgrade": 0.15 * h["has_credit_card"] * np.exp(0.4 * lat["wealth"]),
            "mortgage": 0.10 * (1 - h["has_mortgage"]) * (age <= 65) * np.exp(0.5 * lat["wealth"]),
            "savings": 0.15 * np.exp(0.3 * lat["wealth"]),
            "personal_loan": 0.08 * np.exp(0.6 * lat["stress"]),
            "home_insurance": 0.08 * np.exp(0.4 * lat["wealth"]),
            "travel_insurance": 0.10 * (0.3 + h["travels_abroad"]),
        }
        for product, lam in page_rate.items():
            rows = poisson(lam * digital)
            add("page_view", rows, times(len(rows)), product=codes("product", product, len(rows)))
        rows = poisson(0.12 * digital * (0.5 + no_card))
        query = np.where(g.random(len(rows)) < 0.5, -1, g.integers(0, len(EVENT_VOCAB["query"]), len(rows)))
        add("card_search", rows, times(len(rows)), query=query)
        # applications: the basket, half of them completed within five days (if in the month)
        rows = poisson(0.02 * digital)
        applied = ("credit_card", "card_upgrade", "mortgage", "savings", "personal_loan", "home_insurance")
        applied_code = np.array([vocab["product"][p] for p in applied])[g.integers(0, len(applied), len(rows))]
        app_id = self.app_seq + np.arange(len(rows), dtype=np.int64)
        self.app_seq += len(rows)
        ts = times(len(rows))
        add("application_started", rows, ts, product=applied_code, application_id=app_id)
        done_ts = ts + 3600 + (g.random(len(rows)) * 5 * DAY_S).astype(np.int64)
        done = (g.random(len(rows)) < 0.5) & (done_ts < e)
        add("application_completed", rows[done], done_ts[done], product=applied_code[done],
            application_id=app_id[done])
        rows = poisson(np.exp(0.3 + 0.7 * lat["digital"]) * h["has_mobile_app"])
        add("app_login", rows, times(len(rows)), device=(g.random(len(rows)) < 0.45).astype(np.int64))
        rows = poisson(0.25 * np.exp(0.3 * lat["loyalty"]) * h["has_mobile_app"])
        branch = self.region[idx[rows]].astype(np.int64) * 4 + g.integers(0, 4, len(rows))
        add("geofence_entered", rows, times(len(rows)), branch_id=branch,
            distance_m=np.round(10.0 + g.random(len(rows)) * 790.0, 1))
        # payments: last month's missed payment is late now (days_late grows with the streak)
        m1, m2, m3 = (self.missed_ring[(k - j) % 3][idx] == 1 for j in (1, 2, 3))
        streak = m1 * (1 + m2 * (1 + m3.astype(np.int64)))
        rows = np.flatnonzero(streak > 0)
        amount = np.round(25.0 + 0.05 * self.income[idx] / 12.0, 2)
        add("payment_missed", rows, times(len(rows)),
            days_late=30 * (streak[rows] - 1) + 1 + (g.random(len(rows)) * 29).astype(np.int64), amount=amount[rows])
        rows = np.flatnonzero(m2 & ~m1)
        add("payment_made", rows, times(len(rows)), amount=amount[rows])
        # outages: six incidents a month, each hitting part of one region
        hit_count = np.zeros(n, dtype=np.int64)
        region = self.region[idx]
        for _ in range(6):
            r, service = int(g.integers(0, len(REGIONS))), int(g.integers(0, len(EVENT_VOCAB["service"])))
            start, minutes, share = int(times(1)[0]), int(15 + g.gamma(2.0, 60.0)), 0.05 + 0.25 * g.random()
            rows = np.flatnonzero((region == r) & (g.random(n, dtype=np.float32) < share))
            hit_count[rows] += 1
            add("outage", rows, np.minimum(start + (g.random(len(rows)) * minutes * 60).astype(np.int64), e - 1),
                service=np.full(len(rows), service, dtype=np.int64), minutes=np.full(len(rows), minutes, np.int64))
        # life events: at most one a month
        adult = (age >= 25) & (age <= 40)
        rates = np.stack([np.where(adult, 0.004, 0.001), np.where((age >= 25) & (age <= 42), 0.003, 0.0003),
                          np.where((age >= 25) & (age <= 60), 0.003 * np.exp(0.5 * lat["wealth"]), 0.0005),
                          np.where(age < 62, 0.006, 0.0005)])
        kind = (g.random(n) > np.cumsum(rates, axis=0)).sum(axis=0)
        rows = np.flatnonzero(kind < len(EVENT_VOCAB["kind"]))
        add("life_event", rows, times(len(rows)), kind=kind[rows].astype(np.int64))
        # card expiry, announced a month ahead (in the first event month also the cards expiring now)
        exp = self.card_expiry_s[idx]
        lo = s if k == self.cfg.months - self.cfg.event_months else s + EXPIRY_NOTICE_S
        rows = np.flatnonzero((h["has_credit_card"] == 1) & (exp >= lo) & (exp < e + EXPIRY_NOTICE_S))
        ts = np.maximum(s, exp[rows] - EXPIRY_NOTICE_S) + (g.random(len(rows)) * 3600).astype(np.int64)
        add("product_expiry", rows, np.minimum(ts, e - 1), product=codes("product", "credit_card", len(rows)),
            expires_at=exp[rows])
        rows = poisson(0.08 * np.exp(0.4 * lat["stress"]))
        reasons = np.array([vocab["reason"][x] for x in ("card", "payment", "account", "app", "other")])
        add("service_contact", rows, times(len(rows)), reason=reasons[g.integers(0, len(reasons), len(rows))])
        rows = poisson(0.01 * np.exp(0.5 * lat["stress"] - 0.3 * lat["loyalty"]) * (1 + 2 * (hit_count > 0)))
        reasons = np.array([vocab["reason"][x] for x in ("fees", "card", "other")])
        reason = np.where((hit_count[rows] > 0) & (g.random(len(rows)) < 0.7), vocab["reason"]["outage"],
                          reasons[g.integers(0, len(reasons), len(rows))])
        add("complaint", rows, times(len(rows)), reason=reason)
        return self._event_columns(blocks, idx)

    def _event_columns(self, blocks: list, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The blocks as columns sorted by (time, customer); registers the effects' event keys."""
        cols: dict[str, np.ndarray] = {
            "idx": idx[np.concatenate([b[1] for b in blocks])].astype(np.int64),
            "ts": np.concatenate([b[2] for b in blocks]),
            "type": np.concatenate([np.full(len(b[1]), b[0], dtype=np.int8) for b in blocks]),
        }
        for name, kind in EVENT_PROPERTIES.items():
            null = np.nan if kind == "float" else -1
            dtype = np.float64 if kind == "float" else np.int64
            cols[name] = np.concatenate([b[3][name].astype(dtype) if name in b[3] else np.full(len(b[1]), null, dtype)
                                         for b in blocks])
        order = np.lexsort((cols["idx"], cols["ts"]))
        cols = {c: v[order] for c, v in cols.items()}
        keys: dict[int, np.ndarray] = {}
        for r, eff in enumerate(EVENT_EFFECTS):
            sel = cols["type"] == EVENT_TYPES.index(eff.type)
            if eff.kind:
                column = "kind" if eff.type == "life_event" else "product"
                sel &= cols[column] == EVENT_VOCAB[column].index(eff.kind)
            keys[r] = (cols["idx"][sel] << _KEY_SHIFT) | cols["ts"][sel]
        self.month_keys = [*self.month_keys[-2:], keys]  # the longest window is 60 days: three months
        self.effect_keys = {r: np.sort(np.concatenate([mk[r] for mk in self.month_keys])) for r in keys}
        return cols

    def _store_events(self, cols: dict[str, np.ndarray], leave_s: np.ndarray) -> None:
        """Write the month's events (those before the customer left) as an Arrow table."""
        import pyarrow as pa
        import pyarrow.compute as pc

        keep = cols["ts"] < leave_s[cols["idx"]]
        cols = {c: v[keep] for c, v in cols.items()}
        n = len(cols["ts"])
        schema = _events_schema()
        seq = pa.array(self.event_seq + np.arange(1, n + 1, dtype=np.int64)).cast(pa.string())
        self.event_seq += n
        data: dict[str, Any] = {
            ENTITY_KEY: pa.array(cols["idx"] + 1),
            "type": pa.DictionaryArray.from_arrays(pa.array(cols["type"]), pa.array(EVENT_TYPES)).cast(pa.string()),
            "timestamp": pa.array(cols["ts"] * 1_000_000_000).cast(schema.field("timestamp").type),
            "event_id": pc.binary_join_element_wise(pa.scalar(f"sim{self.cfg.seed}-"), seq, ""),
        }
        for name, kind in EVENT_PROPERTIES.items():
            v = cols[name]
            if kind == "float":
                data[name] = pa.array(v, mask=np.isnan(v))
            elif kind == "enum":
                data[name] = pa.DictionaryArray.from_arrays(pa.array(v, mask=v < 0),
                                                            pa.array(EVENT_VOCAB[name])).cast(pa.string())
            elif kind == "id":
                data[name] = pc.binary_join_element_wise(pa.scalar("app-"), pa.array(v, mask=v < 0).cast(pa.string()), "")
            elif kind == "timestamp":
                data[name] = pa.array(v * 1_000_000_000, mask=v < 0).cast(schema.field(name).type)
            else:
                data[name] = pa.array(v, mask=v < 0)
        self.sink.add(SIM_EVENTS.name, pa.table(data, schema=schema))

    def _record_truth(self, s: int, idx: np.ndarray, f: dict[str, np.ndarray], age: np.ndarray) -> None:
        z = self._zcols(age, idx, np.float64)
        lt, lc = _logit_rows(z, TREATED_COEF), _logit_rows(z, CONTROL_COEF)
        self.truth = {
            "s": s, "idx": idx, "lt": lt, "lc": lc, "p_t": _sigmoid(lt), "p_c": _sigmoid(lc),
            "eligible": eligibility_matrix({c: f[c][idx] for c in _DECISION_COLUMNS}),
        }

    # --- churn, activity, risk, holdings ----------------------------------------------------

    def _churn(self, k: int, s: int, e: int, f: dict[str, np.ndarray],
               event_s: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Who leaves during month k, and when (after their contact of the month, if any)."""
        g = self.rng["churn"]
        lat = {name: self.lat[i] for i, name in enumerate(LATENTS)}
        fee = self._fee_charged(k)
        logit = (-5.0 - 0.5 * lat["loyalty"] - 0.3 * lat["digital"] + 0.35 * lat["stress"]
                 + 0.5 * lat["price_sensitivity"] * fee - 0.2 * (f["num_products"] - 1)
                 + 0.6 * self.collections)
        churned = self.active & (g.random(self.n, dtype=np.float32) < _sigmoid(logit))
        lower = np.full(self.n, s, dtype=np.int64) if event_s is None else np.maximum(event_s, s)
        churn_s = lower + 1 + (g.random(self.n) * (e - lower - 2)).astype(np.int64)
        return churned, churn_s

    def _fee_charged(self, k: int) -> np.ndarray:
        """Card holders paying the card fee in month k (not under a fee waiver)."""
        return (self.h["has_credit_card"] == 1) & (self.waiver_until < k)

    def _purchases(self, k: int, live_from: np.ndarray, span: np.ndarray, frac: np.ndarray) -> None:
        """Card purchases during the month (pro rata for part months), into the 12-month ring."""
        n, g = self.n, self.rng["purchases"]
        lat = {name: self.lat[i] for i, name in enumerate(LATENTS)}
        lam = np.exp(1.5 + 0.35 * lat["digital"] + 0.25 * lat["wealth"] + 0.4 * lat["loyalty"]
                     + 0.4 * self.h["has_credit_card"] - 0.15 * lat["stress"]) * frac
        count = g.poisson(lam)
        scale = 22.0 * np.exp(0.3 * lat["wealth"] + 0.1 * lat["travel"])
        spend = np.round(g.standard_gamma(2.0 * count) * scale, 2)
        last = live_from + span * g.random(n) ** (1.0 / np.maximum(count, 1))
        self.last_purchase_s = np.where(count > 0, last, self.last_purchase_s)
        self.cnt_ring[k % 12] = count
        self.spend_ring[k % 12] = spend

    def _engagement(self, frac: np.ndarray) -> None:
        """Logins, app sessions and e-mail opens during the month (read by the next snapshot)."""
        n, g = self.n, self.rng["engagement"]
        lat = {name: self.lat[i] for i, name in enumerate(LATENTS)}
        rate = np.exp(1.7 + 0.6 * lat["digital"] + 0.25 * lat["loyalty"] - 0.25 * self.age_z0) * frac
        self.logins = g.poisson(rate).astype(np.int16)
        app = self.h["has_mobile_app"] == 1
        rate = np.exp(2.0 + 0.7 * lat["digital"] + 0.2 * lat["loyalty"]) * frac * app
        self.app_sessions = g.poisson(rate).astype(np.int16)
        noise = g.standard_normal(n, dtype=np.float32)
        opened = _sigmoid(-1.1 + 0.5 * lat["loyalty"] + 0.3 * lat["digital"] + 0.5 * noise)
        self.open_rate = np.round(opened * self.h["has_email"], 3).astype(np.float32)

    def _margin(self, k: int, frac: np.ndarray) -> np.ndarray:
        h = self.h
        fees = (2.5 + 7.5 * self._fee_charged(k) + 90.0 * h["has_mortgage"] + 4.0 * h["has_savings"]
                + 20.0 * h["has_personal_loan"] - 35.0 * self.collections) * frac
        return np.round(0.011 * self.spend_ring[k % 12] + fees, 2)

    def _risk_events(self, k: int, month_s: int, frac: np.ndarray) -> None:
        """Missed payments, overdraft days and collections during the month."""
        n, g = self.n, self.rng["risk"]
        lat = {name: self.lat[i] for i, name in enumerate(LATENTS)}
        on_plan = self.plan_until >= k
        logit = (-4.1 + 1.2 * lat["stress"] + 0.5 * self.h["has_personal_loan"]
                 + 0.5 * self.h["on_sick_leave"] - 1.5 * on_plan)
        missed = (g.random(n, dtype=np.float32) < _sigmoid(logit)) & (frac > 0)
        self.missed_ring[k % 3] = missed
        if k >= -3:  # only the last three months before a snapshot are ever read
            p = _sigmoid(-3.4 + 0.9 * lat["stress"] - 0.5 * lat["wealth"]) * frac
            self.od_ring[k % 3] = g.binomial(round(month_s / DAY_S), p)
        missed_90d = self.missed_ring.sum(axis=0, dtype=np.int8)
        coll = self.collections == 1
        close = coll & ~missed & ((g.random(n, dtype=np.float32) < 0.15) | on_plan)
        self.collections = ((coll | (missed_90d >= 2)) & ~close).astype(np.int8)

    def _holdings_drift(self) -> None:
        """Life events: sick leave starts and ends; products close and open unprompted."""
        n, g, h = self.n, self.rng["holdings"], self.h
        lat = {name: self.lat[i] for i, name in enumerate(LATENTS)}
        u = g.random((6, n), dtype=np.float32)
        sick = h["on_sick_leave"] == 1
        start = u[0] < _sigmoid(-4.8 + 0.6 * lat["stress"] + 0.3 * self.age_z0)
        h["on_sick_leave"] = np.where(sick, u[0] >= 0.25, start).astype(np.int8)
        h["has_credit_card"][u[1] < 0.004] = 0
        h["has_mortgage"][u[2] < 0.003] = 0
        h["has_mobile_app"][u[3] < 0.01] = 0
        sav = h["has_savings"] == 1
        h["has_savings"] = np.where(sav, u[4] >= 0.02, u[4] < _sigmoid(-4.6 + 0.5 * lat["wealth"])).astype(np.int8)
        loan = h["has_personal_loan"] == 1
        h["has_personal_loan"] = np.where(
            loan, u[5] >= 0.04, u[5] < _sigmoid(-5.0 + 0.8 * lat["stress"])).astype(np.int8)

    def _organic(self, zc: dict[str, np.ndarray]) -> None:
        """Customers without a product take it unprompted with P(convert | not contacted)
        (those with an interaction for that product this month already drew its outcome)."""
        g = self.rng["holdings"]
        cols = [ACTIONS.index(a) for a in PRODUCT_OF]
        p_c = _sigmoid(_logit_rows(zc, CONTROL_COEF[cols]))
        take = g.random(p_c.shape, dtype=np.float32) < p_c
        rows, acts = self._month_rows
        for j, (c, a) in enumerate(zip(cols, PRODUCT_OF, strict=True)):
            take[j, rows[acts == c]] = False
            flags = self.h[PRODUCT_OF[a]]
            flags[take[j] & self.active] = 1

    def _effects_due(self, k: int, e: int, idx: np.ndarray, action: np.ndarray, outcome_s: np.ndarray) -> None:
        """Apply conversions whose outcome came before the next snapshot; keep the rest a month."""
        now = outcome_s < e
        p_idx, p_act = self.pending
        self._effects(k, np.concatenate([p_idx, idx[now]]), np.concatenate([p_act, action[now]]))
        self.pending = (idx[~now], action[~now])

    def _effects(self, k: int, idx: np.ndarray, action: np.ndarray) -> None:
        h, lat = self.h, self.lat
        stress, loyalty = LATENTS.index("stress"), LATENTS.index("loyalty")
        for i, a in enumerate(ACTIONS):
            who = idx[action == i]
            if len(who) == 0:
                continue
            if a in PRODUCT_OF:
                h[PRODUCT_OF[a]][who] = 1
            elif a == "payment_plan":
                self.collections[who] = 0
                self.plan_until[who] = k + 3
                lat[stress, who] -= 0.3
            elif a == "annual_fee_waiver":
                self.waiver_until[who] = k + 12
            elif a == "loyalty_points_alert":
                lat[loyalty, who] += 0.3
            elif a == "sick_leave_support":
                lat[stress, who] -= 0.4
            elif a == "finance_course":
                lat[stress, who] -= 0.2

    def _consent_drift(self, touched: np.ndarray) -> None:
        """Consents granted 0.3 %, withdrawn 0.2 % a month (2 % after a contact on the channel)."""
        u = self.rng["consent"].random(self.consent.shape, dtype=np.float32)
        given = self.consent == 1
        p = np.where(given, np.where(touched, np.float32(0.02), np.float32(0.002)), np.float32(0.003))
        self.consent ^= (u < p).view(np.int8)

    def _walk(self) -> None:
        eps = self.rng["latent_walk"].standard_normal((len(RHO), self.n), dtype=np.float32)
        for j, (name, rho) in enumerate(RHO.items()):
            i = LATENTS.index(name)
            self.lat[i] = rho * self.lat[i] + np.float32(math.sqrt(1 - rho * rho)) * eps[j]

    # --- final tables ----------------------------------------------------------------

    def _customers(self) -> pd.DataFrame:
        churned = self.churn_s > 0
        return _frame(SIM_CUSTOMERS, {
            ENTITY_KEY: np.arange(1, self.n + 1, dtype=np.int64),
            "signup_timestamp": _timestamps(self.signup_s),
            "churn_timestamp": _timestamps(self.churn_s, nat=~churned),
        })

    def _interactions(self) -> pd.DataFrame:
        c = self.inter
        for name, parts in self.inter_ao.pieces.items():  # the always-on campaign's rows come last
            c.pieces.setdefault(name, []).extend(parts)
        self.inter_ao = _Columns()
        idx = c.pop("idx", np.int64)
        return _frame(SIM_INTERACTIONS, {
            "interaction_id": np.arange(1, len(idx) + 1, dtype=np.int64),
            ENTITY_KEY: idx + 1,
            EVENT_TS: _timestamps(c.pop("event_s", np.int64)),
            "action_id": _strings(c.pop("action", np.int8), ACTIONS),
            "channel": _strings(c.pop("channel", np.int8), CHANNELS),
            "policy": _strings(c.pop("policy", np.int8), POLICIES),
            "treated": c.pop("treated", np.int64),
            "assignment_probability": c.pop("prob", np.float64),
            "outcome": _strings(c.pop("outcome", np.int8), OUTCOMES),
            "converted": c.pop("converted", np.int64),
            "value": c.pop("value", np.float64),
            "outcome_timestamp": _timestamps(c.pop("outcome_s", np.int64)),
            "true_p_treated": c.pop("p_t", np.float64),
            "true_p_control": c.pop("p_c", np.float64),
            "event_logit_shift": c.pop("shift", np.float64),
        })

    def _truth(self) -> pd.DataFrame:
        """Rows by action, then customer (the arrays are action-major: no transposes)."""
        t, self.truth = self.truth, {}
        n_act, rows = len(ACTIONS), len(t["idx"])
        p_t, p_c = t["p_t"], t["p_c"]  # (actions, customers)
        return _frame(SIM_TRUTH, {
            ENTITY_KEY: np.tile(t["idx"].astype(np.int64) + 1, n_act),
            EVENT_TS: _timestamps(np.full(rows * n_act, t["s"], dtype=np.int64)),
            "action_id": _strings(np.repeat(np.arange(n_act, dtype=np.int8), rows), ACTIONS),
            "true_p_treated": p_t.ravel(),
            "true_p_control": p_c.ravel(),
            "true_uplift": (p_t - p_c).ravel(),
            "eligible": t["eligible"].T.ravel().astype(np.int64),
        })


__all__ = [
    "ACTIONS", "ACTION_TRUTH", "ACTION_VALUE", "ALWAYS_ON_ACTIONS", "CAMPAIGN_ACTIONS", "CHANNEL_WEIGHTS", "COMPONENTS",
    "CONTROL_COEF", "ELIGIBILITY", "EVENT_EFFECTS", "EVENT_PROPERTIES", "EVENT_TYPES", "EVENT_VOCAB", "EventEffect",
    "event_effects_frame",
    "LATENTS", "PRODUCT_OF", "SIMULATOR_VERSION", "TREATED_COEF", "Z_NAMES", "ActionTruth", "EligibilityRule",
    "SimulationConfig", "SimulationResult", "eligibility_matrix", "read_manifest", "simulate", "simulate_to_dir",
    "true_logits", "true_probabilities", "usable_channels", "write",
]
