"""Data contracts shared by the loaders, the simulator, the feature store and the models.

One module holds every table's columns so that a rename is one edit and a mismatch is
caught by `validate_frame` at the boundary, not three stages later. Types are pandas
dtypes as written to Parquet; every time column is timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nba.errors import SchemaError

ENTITY_KEY = "customer_id"
EVENT_TS = "event_timestamp"
CREATED_TS = "created_timestamp"
REQUEST_TS = "request_ts"  # epoch seconds of the decision/request; feeds the on-demand view


@dataclass(frozen=True)
class TableSchema:
    """A named table contract: column name -> pandas dtype string."""

    name: str
    columns: Mapping[str, str]
    doc: str = ""

    @property
    def names(self) -> list[str]:
        return list(self.columns)


# --- Real data sets ---------------------------------------------------------------

HILLSTROM_CUSTOMERS = TableSchema(
    "hillstrom_customers",
    {
        ENTITY_KEY: "int64",
        EVENT_TS: "datetime64[ns, UTC]",
        "recency": "int64",  # months since last purchase
        "history_segment": "string",
        "history": "float64",  # dollars spent in the past year
        "mens": "int64",
        "womens": "int64",
        "zip_code": "string",  # Urban / Suburban / Rural
        "newbie": "int64",
        "channel": "string",  # Phone / Web / Multichannel
    },
    "Features known before the mailing, one row per customer, stamped at the mailing date.",
)

HILLSTROM_EXPERIMENT = TableSchema(
    "hillstrom_experiment",
    {
        ENTITY_KEY: "int64",
        EVENT_TS: "datetime64[ns, UTC]",  # mailing date (treatment time)
        "outcome_timestamp": "datetime64[ns, UTC]",  # end of the two-week outcome window
        "arm": "string",  # Mens E-Mail / Womens E-Mail / No E-Mail
        "treated": "int64",  # 1 for an e-mail arm, 0 for the hold-out
        "assignment_probability": "float64",  # 1/3: randomised in three equal arms
        "visit": "int64",
        "conversion": "int64",
        "spend": "float64",
    },
    "The randomised experiment: arm and outcomes per customer.",
)

CDNOW_TRANSACTIONS = TableSchema(
    "cdnow_transactions",
    {
        ENTITY_KEY: "int64",
        EVENT_TS: "datetime64[ns, UTC]",
        "quantity": "int64",  # number of CDs
        "amount": "float64",  # dollar value
    },
    "One row per purchase of the CDNOW 1997 Q1 cohort.",
)

# Any transaction table RFM can be computed from (CDNOW, the simulator's purchases).
TRANSACTIONS = TableSchema(
    "transactions",
    {ENTITY_KEY: "int64", EVENT_TS: "datetime64[ns, UTC]", "amount": "float64"},
)

# --- RFM features as of a cut-off --------------------------------------------------

RFM_SEGMENTS = ("best_active", "loyal_low_basket", "lapsed_high_value", "new_with_potential", "other")

RFM_FEATURES = TableSchema(
    "rfm_features",
    {
        ENTITY_KEY: "int64",
        EVENT_TS: "datetime64[ns, UTC]",  # the cut-off date the features are computed as of
        "recency_days": "float64",  # days from the last purchase to the cut-off
        "frequency": "int64",  # purchases in the look-back window
        "monetary": "float64",  # mean spend per purchase in the look-back window
        "tenure_days": "float64",  # days from the first purchase to the cut-off
        "r_score": "int64",  # 1..5, 5 = most recent
        "f_score": "int64",  # 1..5, 5 = most frequent
        "m_score": "int64",  # 1..5, 5 = highest spend
        "rfm_segment": "string",  # one of RFM_SEGMENTS
    },
)

# --- The simulated retail bank ------------------------------------------------------
# The simulator writes one Parquet per table below into its output folder. The five
# feature tables are the offline sources of the Feast feature views (one snapshot per
# customer per snapshot date, stamped `event_timestamp`).

CHANNELS = ("email", "sms", "push", "call_centre", "web")

ACTIONS = (
    "rewards_card",  # sales
    "mortgage",  # sales
    "add_email",  # service: add missing e-mail address
    "travel_notification",  # service
    "sick_leave_support",  # wellbeing
    "loyalty_points_alert",  # retention
    "annual_fee_waiver",  # retention
    "finance_course",  # relationship: personal finance course
    "mobile_app",  # information: new mobile app
    "payment_plan",  # collections
    # the always-on actions the triggers propose (serving/triggers.yaml); the simulator gives
    # them their own campaign, so the ten above keep their history (nba/data/simulator.py)
    "card_upgrade",  # sales: 1-click upgrade of the credit card
    "card_renewal",  # retention: 1-click renewal of an expiring card
    "goodwill_discount",  # service: a discount after service outages
    "account_lock_reminder",  # collections: reminder before the account is locked
    "home_insurance",  # sales: a life moment, a home purchase
    "branch_appointment",  # service: near a branch (geofence)
)
CAMPAIGN_ACTIONS = ACTIONS[:10]  # the bank's monthly campaign offers these
ALWAYS_ON_ACTIONS = ACTIONS[10:]  # their own campaign (own contact budget and random streams)

SIM_PROFILE = TableSchema(
    "profile",
    {
        ENTITY_KEY: "int64",
        EVENT_TS: "datetime64[ns, UTC]",
        "age": "int64",
        "income": "float64",  # yearly, in currency units
        "tenure_months": "int64",
        "region": "string",
        "has_email": "int64",  # 0/1 flags, so rules and models read them the same way
        "has_mobile_app": "int64",
        "has_credit_card": "int64",
        "has_mortgage": "int64",
        "has_savings": "int64",
        "has_personal_loan": "int64",
        "num_products": "int64",
        "travels_abroad": "int64",
        "on_sick_leave": "int64",
    },
)

SIM_RFM = TableSchema(
    "rfm",
    {
        ENTITY_KEY: "int64",
        EVENT_TS: "datetime64[ns, UTC]",
        "recency_days": "float64",
        "frequency": "int64",  # card purchases in the trailing 12 months
        "monetary": "float64",  # mean purchase amount in the trailing 12 months
        "tenure_days": "float64",
        "r_score": "int64",
        "f_score": "int64",
        "m_score": "int64",
        "rfm_segment": "string",
    },
)

SIM_ENGAGEMENT = TableSchema(
    "engagement",
    {
        ENTITY_KEY: "int64",
        EVENT_TS: "datetime64[ns, UTC]",
        "logins_30d": "int64",
        "app_sessions_30d": "int64",
        "email_open_rate": "float64",
        "contacts_90d": "int64",
        "last_contact_epoch_s": "int64",  # time of the last outbound contact (or onboarding)
    },
)

SIM_RISK = TableSchema(
    "risk",
    {
        ENTITY_KEY: "int64",
        EVENT_TS: "datetime64[ns, UTC]",
        "credit_score": "int64",  # 300..850
        "debt_to_income": "float64",
        "missed_payments_90d": "int64",
        "overdraft_days_90d": "int64",
        "collections_open": "int64",  # 0/1
    },
)

SIM_CONSENT = TableSchema(
    "consent",
    {
        ENTITY_KEY: "int64",
        EVENT_TS: "datetime64[ns, UTC]",
        **{f"consent_{c}": "int64" for c in CHANNELS},
    },
)

SIM_FEATURE_TABLES = (SIM_PROFILE, SIM_RFM, SIM_ENGAGEMENT, SIM_RISK, SIM_CONSENT)

# Lifecycle facts per customer (not a feature view: labels for churn and CLV are built
# from it and from `monthly_value`).
SIM_CUSTOMERS = TableSchema(
    "customers",
    {
        ENTITY_KEY: "int64",
        "signup_timestamp": "datetime64[ns, UTC]",
        "churn_timestamp": "datetime64[ns, UTC]",  # NaT when the customer did not churn
    },
)

# Value the bank earned from each customer each month (the CLV target).
SIM_MONTHLY_VALUE = TableSchema(
    "monthly_value",
    {
        ENTITY_KEY: "int64",
        EVENT_TS: "datetime64[ns, UTC]",  # first day of the month
        "purchases": "int64",
        "spend": "float64",
        "margin": "float64",  # what the bank earned that month
    },
)

# Every contact (or randomised non-contact) and its outcome, with the truth behind it.
SIM_INTERACTIONS = TableSchema(
    "interactions",
    {
        "interaction_id": "int64",
        ENTITY_KEY: "int64",
        EVENT_TS: "datetime64[ns, UTC]",  # when the action was (or would have been) shown
        "action_id": "string",
        "channel": "string",
        "policy": "string",  # "legacy" (targeted) or "explore" (uniformly random, randomised treatment)
        "treated": "int64",  # 1 contacted; 0 randomised control (explore only)
        "assignment_probability": "float64",  # P(this action and this treatment | customer, policy)
        "outcome": "string",  # accepted / rejected / ignored / (control) converted / none
        "converted": "int64",  # 1 if the customer took the action's product within the window
        "value": "float64",  # value realised by the conversion
        "outcome_timestamp": "datetime64[ns, UTC]",
        "true_p_treated": "float64",  # ground truth: P(convert | contacted) at that moment
        "true_p_control": "float64",  # ground truth: P(convert | not contacted) at that moment
        "event_logit_shift": "float64",  # ground truth: the behavioural events' shift of both logits then
    },
)

# Behavioural events (serving/events.yaml), flattened as POST /events and `nba events ingest`
# accept them: these columns, then one column per property (null where not applicable).
SIM_EVENTS = TableSchema(
    "events",
    {
        ENTITY_KEY: "int64",
        "type": "string",
        "timestamp": "datetime64[ns, UTC]",
        "event_id": "string",
    },
)

# Ground truth of the events: each (type, kind) shifts an action's true logits (both arms) for
# `window_days` from the event (simulator.EVENT_EFFECTS).
SIM_EVENT_EFFECTS = TableSchema(
    "event_effects",
    {
        "type": "string",
        "kind": "string",  # the property value it needs ("" = any): page_view product, life_event kind
        "action_id": "string",
        "logit_shift": "float64",
        "window_days": "float64",
    },
)

# Ground truth per customer and action as of the last snapshot.
SIM_TRUTH = TableSchema(
    "truth",
    {
        ENTITY_KEY: "int64",
        "action_id": "string",
        "true_p_treated": "float64",
        "true_p_control": "float64",
        "true_uplift": "float64",  # true_p_treated - true_p_control
        EVENT_TS: "datetime64[ns, UTC]",  # the snapshot the truth holds at (the last one)
        "eligible": "int64",  # 1 if the bank's rules allow the action then (simulator.ELIGIBILITY)
    },
)

SIM_ALL_TABLES = (*SIM_FEATURE_TABLES, SIM_CUSTOMERS, SIM_MONTHLY_VALUE, SIM_INTERACTIONS, SIM_TRUTH, SIM_EVENTS,
                  SIM_EVENT_EFFECTS)


def validate_frame(frame, schema: TableSchema, *, source: str = "") -> None:
    """Raise a `SchemaError` naming the table, the column and what was expected.

    Checks presence and dtype of every declared column; extra columns are allowed.
    """
    where = f" in {source}" if source else ""
    missing = [c for c in schema.columns if c not in frame.columns]
    if missing:
        raise SchemaError(
            f"table '{schema.name}'{where}: missing column(s) {missing}; "
            f"expected columns {schema.names}"
        )
    for col, dtype in schema.columns.items():
        actual = str(frame[col].dtype)
        if not _dtype_matches(actual, dtype):
            raise SchemaError(
                f"table '{schema.name}'{where}: column '{col}' has dtype {actual}, expected {dtype}"
            )


def _dtype_matches(actual: str, expected: str) -> bool:
    if actual == expected:
        return True
    if expected == "string":
        return actual in {"string", "object", "string[python]", "string[pyarrow]", "str"}
    if expected.startswith("datetime64") and actual.startswith("datetime64"):
        return "UTC" in actual
    return False
