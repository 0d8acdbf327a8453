"""Feast declarations of the NBA platform: the customer entity, its feature views and the
versioned feature services that training and serving read.

Declarations only (STYLE.md 2). The offline sources are Parquet files that `nba features
materialize` (or `nba data simulate`) writes under the staged repository's `data/` folder;
paths are relative to the repository, so one declaration serves every work folder. They are
`FileSource`s, or `SparkSource`s when the profile's `feature_store.yaml` beside this file
names the Spark offline store (`NBA_PROFILE=spark`): the same files, joined by Spark.
Read features through a feature service name, never by importing this module (STYLE.md 3).
"""

from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float64, Int64, String
from feast.value_type import ValueType

# Snapshots are monthly; a snapshot older than this is stale and not served.
SNAPSHOT_TTL = timedelta(days=62)

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A bank customer; the unit every decision is made for.",
)


def _offline_store() -> str:
    """The offline store type of the profile staged beside this file (`nba features apply`)."""
    config = Path(__file__).with_name("feature_store.yaml")
    if not config.is_file():
        return "file"
    store = (yaml.safe_load(config.read_text()) or {}).get("offline_store") or {}
    return str(store.get("type", "file")) if isinstance(store, dict) else str(store)


SPARK = _offline_store() == "spark"


def _source(name: str) -> Any:
    if SPARK:
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(
            name=f"{name}_source",
            path=f"data/{name}.parquet",
            file_format="parquet",
            timestamp_field="event_timestamp",
        )
    return FileSource(
        name=f"{name}_source",
        path=f"data/{name}.parquet",
        timestamp_field="event_timestamp",
    )


# An accepted product is held at once (`/respond` pushes the profile's holding flag), before
# the next monthly snapshot says so.
profile_push = PushSource(name="profile_push", batch_source=_source("profile"))

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="age", dtype=Int64),
        Field(name="income", dtype=Float64),
        Field(name="tenure_months", dtype=Int64),
        Field(name="region", dtype=String),
        Field(name="has_email", dtype=Int64),
        Field(name="has_mobile_app", dtype=Int64),
        Field(name="has_credit_card", dtype=Int64),
        Field(name="has_mortgage", dtype=Int64),
        Field(name="has_savings", dtype=Int64),
        Field(name="has_personal_loan", dtype=Int64),
        Field(name="num_products", dtype=Int64),
        Field(name="travels_abroad", dtype=Int64),
        Field(name="on_sick_leave", dtype=Int64),
    ],
    source=profile_push,
    online=True,
    description="Who the customer is and what they hold: drives suitability rules.",
)

customer_rfm = FeatureView(
    name="customer_rfm",
    entities=[customer],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="recency_days", dtype=Float64),
        Field(name="frequency", dtype=Int64),
        Field(name="monetary", dtype=Float64),
        Field(name="tenure_days", dtype=Float64),
        Field(name="r_score", dtype=Int64),
        Field(name="f_score", dtype=Int64),
        Field(name="m_score", dtype=Int64),
        Field(name="rfm_segment", dtype=String),
    ],
    source=_source("rfm"),
    online=True,
    description="Recency, frequency, monetary value, quintile scores and the named segment.",
)

customer_engagement = FeatureView(
    name="customer_engagement",
    entities=[customer],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="logins_30d", dtype=Int64),
        Field(name="app_sessions_30d", dtype=Int64),
        Field(name="email_open_rate", dtype=Float64),
        Field(name="contacts_90d", dtype=Int64),
        Field(name="last_contact_epoch_s", dtype=Int64),
    ],
    source=_source("engagement"),
    online=True,
    description="How the customer uses the bank's channels and how often we contacted them.",
)

customer_risk = FeatureView(
    name="customer_risk",
    entities=[customer],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="credit_score", dtype=Int64),
        Field(name="debt_to_income", dtype=Float64),
        Field(name="missed_payments_90d", dtype=Int64),
        Field(name="overdraft_days_90d", dtype=Int64),
        Field(name="collections_open", dtype=Int64),
    ],
    source=_source("risk"),
    online=True,
    description="Financial risk: gates sales offers and triggers collections actions.",
)

# A consent given or withdrawn (a `consent_changed` event) holds from the next decision on.
consent_push = PushSource(name="consent_push", batch_source=_source("consent"))

customer_consent = FeatureView(
    name="customer_consent",
    entities=[customer],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="consent_email", dtype=Int64),
        Field(name="consent_sms", dtype=Int64),
        Field(name="consent_push", dtype=Int64),
        Field(name="consent_call_centre", dtype=Int64),
        Field(name="consent_web", dtype=Int64),
    ],
    source=consent_push,
    online=True,
    description="Consent per channel (GDPR: no consent, no action).",
)

# Known only when the decision is asked for.
decision_request = RequestSource(
    name="decision_request",
    schema=[Field(name="request_ts", dtype=Int64)],  # epoch seconds of the decision
)


@on_demand_feature_view(
    sources=[customer_engagement, decision_request],
    schema=[
        Field(name="days_since_last_contact", dtype=Float64),
        Field(name="hour_of_day", dtype=Int64),
        Field(name="is_weekend", dtype=Int64),
    ],
    mode="python",  # python mode: ~10x cheaper than pandas mode on the online path (PERFORMANCE.md)
    description="Request-time features: time since the last contact, time of day, weekend.",
)
def request_context(inputs: dict[str, Any]) -> dict[str, Any]:
    days, hours, weekend = [], [], []
    for ts, last in zip(inputs["request_ts"], inputs["last_contact_epoch_s"], strict=True):
        if ts is None or last is None:
            days.append(None)
            hours.append(None)
            weekend.append(None)
            continue
        days.append((ts - last) / 86400.0)
        hours.append(int((ts % 86400) // 3600))
        # 1970-01-01 was a Thursday: day index 0 = Thursday, so 2 and 3 are Saturday and Sunday.
        weekend.append(int((ts // 86400) % 7 in (2, 3)))
    return {"days_since_last_contact": days, "hour_of_day": hours, "is_weekend": weekend}


# --- Streaming (real-time) features, from the event log -----------------------------------
# `nba.serving.ingest` derives each customer's state from the event log on every event and
# pushes it here; the offline source is the same derivation at each event's time
# (`nba.features.streaming.export_source`), so a point-in-time frame sees what a decision saw.
# Windowed counts are kept as the event times of the window, and counted at the decision's
# own time by `realtime_context` below (an outage 31 days ago does not count in outages_30d).
realtime_push = PushSource(name="realtime_push", batch_source=_source("realtime"))

customer_realtime = FeatureView(
    name="customer_realtime",
    entities=[customer],
    ttl=timedelta(0),  # a state (an open application, days late) holds until an event changes it
    schema=[
        Field(name="page_view_ts", dtype=Array(Int64)),  # epoch seconds of the page views of the last 7 days
        Field(name="page_view_product", dtype=Array(String)),  # ... and the product of each
        Field(name="card_search_ts", dtype=Array(Int64)),
        Field(name="login_ts", dtype=Array(Int64)),
        Field(name="outage_ts", dtype=Array(Int64)),  # the last 30 days
        Field(name="service_contact_ts", dtype=Array(Int64)),
        Field(name="complaint_ts", dtype=Array(Int64)),
        Field(name="application_open", dtype=Int64),
        Field(name="application_product", dtype=String),
        Field(name="application_started_s", dtype=Int64),
        Field(name="last_interaction_s", dtype=Int64),
        Field(name="geofence_branch", dtype=String),
        Field(name="geofence_at_s", dtype=Int64),
        Field(name="days_late", dtype=Int64),
        Field(name="last_life_event", dtype=String),
        Field(name="last_life_event_s", dtype=Int64),
        Field(name="card_expires_at_s", dtype=Int64),
    ],
    source=realtime_push,
    online=True,
    tags={"fed_by": "events"},  # a customer with only these values is still unknown to the bank
    description="What the customer's events say: recent views, searches, logins, incidents, states.",
)

# page_view's products in serving/events.yaml (a test keeps the two equal)
PAGE_VIEW_PRODUCTS = ("credit_card", "card_upgrade", "mortgage", "savings", "personal_loan", "home_insurance",
                      "travel_insurance")
_WINDOWS = {"page_views_7d": ("page_view_ts", 7), "card_searches_7d": ("card_search_ts", 7),
            "logins_7d": ("login_ts", 7), "outages_30d": ("outage_ts", 30),
            "service_contacts_30d": ("service_contact_ts", 30), "complaints_30d": ("complaint_ts", 30)}


@on_demand_feature_view(
    sources=[customer_realtime, decision_request],
    schema=[
        *[Field(name=name, dtype=Int64) for name in _WINDOWS],
        *[Field(name=f"views_{p}_7d", dtype=Int64) for p in PAGE_VIEW_PRODUCTS],
        Field(name="days_since_interaction", dtype=Float64),
        Field(name="application_open_hours", dtype=Float64),
        Field(name="days_since_life_event", dtype=Float64),
        Field(name="days_to_card_expiry", dtype=Float64),
        Field(name="hours_since_geofence", dtype=Float64),
    ],
    mode="python",
    description="Windowed counts and times since, at the decision's own time (missing when never).",
)
def realtime_context(inputs: dict[str, Any]) -> dict[str, Any]:
    products = ("credit_card", "card_upgrade", "mortgage", "savings", "personal_loan", "home_insurance",
                "travel_insurance")  # PAGE_VIEW_PRODUCTS (the transformation is serialised alone)
    windows = {"page_views_7d": ("page_view_ts", 7), "card_searches_7d": ("card_search_ts", 7),
               "logins_7d": ("login_ts", 7), "outages_30d": ("outage_ts", 30),
               "service_contacts_30d": ("service_contact_ts", 30), "complaints_30d": ("complaint_ts", 30)}
    now = inputs["request_ts"]
    n = len(now)
    out: dict[str, list[Any]] = {}
    for name, (col, days) in windows.items():
        values = inputs[col]
        out[name] = [sum(1 for t in (values[i] or ()) if now[i] - days * 86400 < t <= now[i]) for i in range(n)]
    for p in products:
        out[f"views_{p}_7d"] = []
    for i in range(n):
        counts = dict.fromkeys(products, 0)
        for t, p in zip(inputs["page_view_ts"][i] or (), inputs["page_view_product"][i] or (), strict=False):
            if now[i] - 7 * 86400 < t <= now[i] and p in counts:
                counts[p] += 1
        for p in products:
            out[f"views_{p}_7d"].append(counts[p])

    def since(col: str, unit: float, when: Any = None) -> list[Any]:
        res = []
        for i in range(n):
            t = inputs[col][i]
            ok = t is not None and t > 0 and (when is None or when[i] == 1)
            res.append((now[i] - t) / unit if ok else None)
        return res

    out["days_since_interaction"] = since("last_interaction_s", 86400.0)
    out["application_open_hours"] = since("application_started_s", 3600.0, inputs["application_open"])
    out["days_since_life_event"] = since("last_life_event_s", 86400.0)
    out["hours_since_geofence"] = since("geofence_at_s", 3600.0)
    out["days_to_card_expiry"] = [(t - now[i]) / 86400.0 if t is not None and t > 0 else None
                                  for i, t in enumerate(inputs["card_expires_at_s"])]
    return out


# Per-action propensity models: who the customer is, how they behave, whether we may contact them.
propensity_v1 = FeatureService(
    name="propensity_v1",
    features=[customer_profile, customer_rfm, customer_engagement, customer_risk, customer_consent,
              request_context],
    description="Inputs of the per-action propensity and uplift models, version 1.",
)

# Churn: behaviour and risk, no consent (consent does not cause attrition).
churn_v1 = FeatureService(
    name="churn_v1",
    features=[customer_profile, customer_rfm, customer_engagement, customer_risk],
    description="Inputs of the churn (attrition) model, version 1.",
)

# CLV: value history and profile.
clv_v1 = FeatureService(
    name="clv_v1",
    features=[customer_profile, customer_rfm, customer_engagement],
    description="Inputs of the customer lifetime value model, version 1.",
)

# Everything the decision service reads for one customer in one online call.
serving_v1 = FeatureService(
    name="serving_v1",
    features=[customer_profile, customer_rfm, customer_engagement, customer_risk, customer_consent,
              request_context],
    description="Features /decide reads: model inputs plus the fields rules and policies use.",
)


# Version 2 of what /decide reads: version 1 plus the streaming features of the event log
# (the triggers' conditions and the rules of the event-driven actions read them).
serving_v2 = FeatureService(
    name="serving_v2",
    features=[customer_profile, customer_rfm, customer_engagement, customer_risk, customer_consent,
              request_context, customer_realtime, realtime_context],
    description="Features /decide reads: serving_v1 plus the real-time features pushed from events.",
)

# --- Public data sets --------------------------------------------------------------
# Models trained on real data read features through Feast too. Their entities have their
# own join keys so the populations never mix with the bank's customers. `nba features
# apply` publishes these sources when NBA_DATA_DIR is set.

hillstrom_customer = Entity(
    name="hillstrom_customer",
    join_keys=["hillstrom_id"],
    value_type=ValueType.INT64,
    description="A customer of Kevin Hillstrom's 2008 e-mail experiment.",
)

hillstrom_profile = FeatureView(
    name="hillstrom_profile",
    entities=[hillstrom_customer],
    ttl=timedelta(days=30),
    schema=[
        Field(name="recency", dtype=Int64),
        Field(name="history_segment", dtype=String),
        Field(name="history", dtype=Float64),
        Field(name="mens", dtype=Int64),
        Field(name="womens", dtype=Int64),
        Field(name="zip_code", dtype=String),
        Field(name="newbie", dtype=Int64),
        Field(name="channel", dtype=String),
    ],
    source=_source("hillstrom_profile"),
    online=False,
    description="What was known of each customer before the mailing (no outcome columns).",
)

cdnow_customer = Entity(
    name="cdnow_customer",
    join_keys=["cdnow_id"],
    value_type=ValueType.INT64,
    description="A customer of the CDNOW 1997 Q1 cohort.",
)

cdnow_rfm = FeatureView(
    name="cdnow_rfm",
    entities=[cdnow_customer],
    ttl=timedelta(days=45),
    schema=[
        Field(name="recency_days", dtype=Float64),
        Field(name="frequency", dtype=Int64),
        Field(name="monetary", dtype=Float64),
        Field(name="tenure_days", dtype=Float64),
        Field(name="total_spend", dtype=Float64),
        Field(name="r_score", dtype=Int64),
        Field(name="f_score", dtype=Int64),
        Field(name="m_score", dtype=Int64),
        Field(name="rfm_segment", dtype=String),
    ],
    source=_source("cdnow_rfm"),
    online=False,
    description="RFM of every CDNOW customer at each month end (all history up to it).",
)

# Uplift of the Hillstrom e-mails: the pre-mailing profile.
hillstrom_uplift_v1 = FeatureService(
    name="hillstrom_uplift_v1",
    features=[hillstrom_profile],
    description="Inputs of the uplift models learnt on the Hillstrom experiment, version 1.",
)

# CLV on CDNOW: RFM as of the end of the calibration period.
cdnow_clv_v1 = FeatureService(
    name="cdnow_clv_v1",
    features=[cdnow_rfm],
    description="Inputs of the CLV model learnt on the CDNOW cohort, version 1.",
)
