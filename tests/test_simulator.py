"""The bank simulator: contracts, determinism, and that its ground truth is the truth.

One module-scoped simulation of SIM_CUSTOMERS customers feeds most tests; statistical
checks use a tolerance of Z standard errors of the quantity compared (see each test).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba.data.simulator import (
    ACTION_TRUTH,
    ELIGIBILITY,
    EVENT_EFFECTS,
    EVENT_PROPERTIES,
    EVENT_TYPES,
    EVENT_VOCAB,
    PRODUCT_OF,
    Z_NAMES,
    SimulationConfig,
    SimulationResult,
    _Run,
    eligibility_matrix,
    read_manifest,
    simulate,
    simulate_to_dir,
    true_probabilities,
    usable_channels,
    write,
)
from nba.errors import ConfigError
from nba.io import sha256_file
from nba.schemas import (
    ACTIONS,
    ALWAYS_ON_ACTIONS,
    CAMPAIGN_ACTIONS,
    CHANNELS,
    ENTITY_KEY,
    EVENT_TS,
    RFM_SEGMENTS,
    SIM_ALL_TABLES,
    SIM_FEATURE_TABLES,
    validate_frame,
)
from tests.constants import SEED

SIM_CUSTOMERS = 20_000  # the shared simulation: about a second
SMALL_CUSTOMERS = 3_000  # determinism and writing: two or three runs each
SMALL_MONTHS = 4
Z = 4.0  # tolerance of the statistical checks, in standard errors
MIN_ROWS = 200  # per action and arm, for a per-action statistical check
DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def sim() -> SimulationResult:
    return simulate(SimulationConfig(customers=SIM_CUSTOMERS, seed=SEED))


@pytest.fixture(scope="module")
def features(sim: SimulationResult) -> pd.DataFrame:
    """The five snapshot tables side by side (their keys are identical, row for row)."""
    keys = sim.profile[[ENTITY_KEY, EVENT_TS]]
    parts = [keys]
    for schema in SIM_FEATURE_TABLES:
        frame = getattr(sim, schema.name)
        pd.testing.assert_frame_equal(frame[[ENTITY_KEY, EVENT_TS]], keys)
        parts.append(frame.drop(columns=[ENTITY_KEY, EVENT_TS]))
    return pd.concat(parts, axis=1)


@pytest.fixture(scope="module")
def contacts(sim: SimulationResult, features: pd.DataFrame) -> pd.DataFrame:
    """Every interaction with the snapshot its decision was made on (its month's start)."""
    inter = sim.interactions
    month = inter[EVENT_TS].dt.tz_convert(None).dt.to_period("M").dt.to_timestamp().dt.tz_localize("UTC")
    frame = inter.assign(snapshot=month).merge(
        features.rename(columns={EVENT_TS: "snapshot"}), on=[ENTITY_KEY, "snapshot"], how="left",
        validate="many_to_one", indicator=True)
    assert (frame["_merge"] == "both").all(), "an interaction without the snapshot of its month"
    return frame


def _month_starts(config: SimulationConfig) -> pd.DatetimeIndex:
    return pd.date_range(pd.Timestamp(config.start, tz="UTC"), periods=config.months, freq="MS")


def _action_index(frame: pd.DataFrame) -> np.ndarray:
    return pd.Index(list(ACTIONS)).get_indexer(frame["action_id"].astype(str))


# --- contracts ---------------------------------------------------------------------------


def test_every_table_validates_against_its_schema(sim: SimulationResult) -> None:
    for schema in SIM_ALL_TABLES:
        frame = getattr(sim, schema.name)
        validate_frame(frame, schema, source="test")
        names = list(frame.columns)
        if schema.name == "events":  # then one column per property
            assert names == [*schema.names, *EVENT_PROPERTIES]
        else:
            assert names == schema.names
        assert len(frame) > 0, schema.name


def test_snapshot_tables_hold_one_row_per_active_customer_and_month(sim: SimulationResult) -> None:
    cust = sim.customers.set_index(ENTITY_KEY)
    assert cust["signup_timestamp"].max() < pd.Timestamp(sim.config.start, tz="UTC")
    for schema in (*SIM_FEATURE_TABLES, sim.monthly_value):
        frame = schema if isinstance(schema, pd.DataFrame) else getattr(sim, schema.name)
        assert not frame.duplicated([ENTITY_KEY, EVENT_TS]).any()
        for ts in _month_starts(sim.config):
            churn = cust["churn_timestamp"]
            active = cust.index[(cust["signup_timestamp"] <= ts) & (churn.isna() | (churn > ts))]
            got = frame.loc[frame[EVENT_TS] == ts, ENTITY_KEY]
            assert np.array_equal(np.sort(got.to_numpy()), np.sort(active.to_numpy())), ts


def test_no_rows_after_churn(sim: SimulationResult) -> None:
    churn = sim.customers.set_index(ENTITY_KEY)["churn_timestamp"]
    assert 0.02 < churn.notna().mean() < 0.3  # some customers leave in a year, most stay
    for frame in (sim.profile, sim.monthly_value, sim.interactions):
        when = frame[ENTITY_KEY].map(churn)
        assert not (when.notna() & (frame[EVENT_TS] >= when)).any()
    # a churner's last snapshot is the start of the month it left in
    last = sim.profile.groupby(ENTITY_KEY)[EVENT_TS].max()
    left = churn.dropna()
    month_start = left.dt.tz_convert(None).dt.to_period("M").dt.to_timestamp().dt.tz_localize("UTC")
    assert (last.loc[left.index] == month_start).all()


def test_event_timestamps_are_month_starts_in_utc(sim: SimulationResult) -> None:
    expected = set(_month_starts(sim.config))
    for schema in (*SIM_FEATURE_TABLES, sim.monthly_value):
        frame = schema if isinstance(schema, pd.DataFrame) else getattr(sim, schema.name)
        ts = frame[EVENT_TS]
        assert str(ts.dt.tz) == "UTC"
        assert set(ts.unique()) == expected
    assert set(sim.truth[EVENT_TS].unique()) == {max(expected)}
    # interactions happen within their month, after its snapshot; outcomes within 14 days
    inter = sim.interactions
    start = inter[EVENT_TS].dt.tz_convert(None).dt.to_period("M").dt.to_timestamp().dt.tz_localize("UTC")
    assert (inter[EVENT_TS] > start).all()
    delay = inter["outcome_timestamp"] - inter[EVENT_TS]
    assert (delay > pd.Timedelta(0)).all() and (delay <= 14 * DAY).all()


def test_rfm_is_scored_per_snapshot(sim: SimulationResult) -> None:
    rfm = sim.rfm
    assert set(rfm["rfm_segment"].unique()) <= set(RFM_SEGMENTS)
    for c in ("r_score", "f_score", "m_score"):
        assert rfm[c].between(1, 5).all()
        # quintiles within each snapshot
        shares = rfm.groupby(EVENT_TS)[c].value_counts(normalize=True)
        assert shares.between(0.19, 0.21).all()
    first = rfm[rfm[EVENT_TS] == rfm[EVENT_TS].min()]
    assert (first["frequency"] > 0).mean() > 0.9  # the warm-up gives the first snapshot a history
    assert ((first["monetary"] > 0) == (first["frequency"] > 0)).all()


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_frames_and_another_seed_does_not() -> None:
    config = SimulationConfig(customers=SMALL_CUSTOMERS, seed=SEED, months=SMALL_MONTHS)
    a, b = simulate(config), simulate(config)
    for name, frame in a.tables().items():
        pd.testing.assert_frame_equal(frame, getattr(b, name), check_exact=True, obj=name)
    c = simulate(SimulationConfig(customers=SMALL_CUSTOMERS, seed=SEED + 1, months=SMALL_MONTHS))
    assert not a.profile.equals(c.profile)
    assert not a.interactions.equals(c.interactions)


def test_write_and_simulate_to_dir_give_the_same_tables(tmp_path: Path) -> None:
    config = SimulationConfig(customers=SMALL_CUSTOMERS, seed=SEED, months=SMALL_MONTHS)
    result = simulate(config)
    paths = write(result, tmp_path / "a")
    manifest = simulate_to_dir(SMALL_CUSTOMERS, SEED, tmp_path / "b", months=SMALL_MONTHS, progress=False)
    again = simulate_to_dir(SMALL_CUSTOMERS, SEED, tmp_path / "c", months=SMALL_MONTHS, progress=False)
    assert again["sha256"] == manifest["sha256"]  # byte-identical files for the same seed

    assert read_manifest(tmp_path / "b") == manifest
    assert json.loads(paths["manifest"].read_text())["rows"] == manifest["rows"]
    assert manifest["seed"] == SEED and manifest["config"]["customers"] == SMALL_CUSTOMERS
    assert set(manifest["rows"]) == {t.name for t in SIM_ALL_TABLES}
    assert set(paths) == {t.name for t in SIM_ALL_TABLES} | {"manifest"}
    for schema in SIM_ALL_TABLES:
        name = schema.name
        b_path = tmp_path / "b" / manifest["files"][name]
        assert sha256_file(b_path) == manifest["sha256"][name]
        from_write, from_stream = pd.read_parquet(paths[name]), pd.read_parquet(b_path)
        validate_frame(from_stream, schema, source=str(b_path))
        pd.testing.assert_frame_equal(from_write, from_stream, obj=name)
        pd.testing.assert_frame_equal(from_stream, getattr(result, name), check_dtype=False, obj=name)
        assert manifest["rows"][name] == len(from_stream)
    assert not list((tmp_path / "b").glob(".*.tmp"))  # no temporary file left behind


def test_a_failed_run_leaves_no_table_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "sim"
    month = _Run._month

    def failing(self: _Run, k: int) -> None:
        if k == 2:
            raise RuntimeError("simulated crash")
        month(self, k)

    monkeypatch.setattr(_Run, "_month", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        simulate_to_dir(SMALL_CUSTOMERS, SEED, out, months=SMALL_MONTHS, progress=False)
    assert list(out.iterdir()) == []  # neither tables nor temporary files


# --- ground truth ----------------------------------------------------------------------------


def _bernoulli_mean_check(rows: pd.DataFrame, p: str) -> tuple[float, float, float]:
    """Observed conversion rate, mean true probability, and the standard error of their
    difference: given the true p_i, conversions are independent Bernoulli(p_i)."""
    probs = rows[p].to_numpy()
    se = np.sqrt((probs * (1 - probs)).sum()) / len(rows)
    return rows["converted"].mean(), probs.mean(), se


def test_explore_conversion_rates_match_the_true_probabilities(sim: SimulationResult) -> None:
    explore = sim.interactions[sim.interactions["policy"] == "explore"]
    for treated, p in ((1, "true_p_treated"), (0, "true_p_control")):
        arm = explore[explore["treated"] == treated]
        observed, expected, se = _bernoulli_mean_check(arm, p)
        assert abs(observed - expected) <= Z * se, (treated, observed, expected, se)
        checked = 0
        for action, rows in arm.groupby("action_id", observed=True):
            if len(rows) < MIN_ROWS:
                continue
            observed, expected, se = _bernoulli_mean_check(rows, p)
            assert abs(observed - expected) <= Z * se, (action, treated, observed, expected, se)
            checked += 1
        assert checked >= 6


def test_explore_uplift_matches_the_true_uplift(sim: SimulationResult) -> None:
    """Treatment is randomised 50/50 within an action, so the difference in conversion rates
    estimates the mean true uplift over that action's explore rows; its standard error is
    sqrt(pt (1 - pt) / n_t + pc (1 - pc) / n_c) with pt, pc the mean true probabilities."""
    explore = sim.interactions[sim.interactions["policy"] == "explore"]
    checked = 0
    for action, rows in explore.groupby("action_id", observed=True):
        t, c = rows[rows["treated"] == 1], rows[rows["treated"] == 0]
        if min(len(t), len(c)) < MIN_ROWS:
            continue
        pt, pc = rows["true_p_treated"].mean(), rows["true_p_control"].mean()
        se = np.sqrt(pt * (1 - pt) / len(t) + pc * (1 - pc) / len(c))
        observed = t["converted"].mean() - c["converted"].mean()
        assert abs(observed - (pt - pc)) <= Z * se, (action, observed, pt - pc, se)
        checked += 1
    assert checked >= 6


def test_assignment_probability_of_explore_rows_is_half_over_the_eligible(contacts: pd.DataFrame) -> None:
    contacts = contacts[contacts["action_id"].isin(CAMPAIGN_ACTIONS)]  # the campaign chooses among its ten
    n_eligible = eligibility_matrix(contacts, CAMPAIGN_ACTIONS).sum(axis=1)
    explore = (contacts["policy"] == "explore").to_numpy()
    prob = contacts["assignment_probability"].to_numpy()
    np.testing.assert_allclose(prob[explore], 0.5 / n_eligible[explore], rtol=1e-12)
    legacy = ~explore
    assert (contacts.loc[legacy, "treated"] == 1).all()
    assert ((prob[legacy] > 0) & (prob[legacy] <= 1)).all()
    np.testing.assert_allclose(prob[legacy & (n_eligible == 1)], 1.0)
    # explore treats half of its rows
    treated = contacts.loc[explore, "treated"]
    assert abs(treated.mean() - 0.5) <= Z * np.sqrt(0.25 / len(treated))


def test_the_legacy_policy_is_targeted(sim: SimulationResult) -> None:
    inter = sim.interactions
    legacy = inter.loc[inter["policy"] == "legacy", "true_p_treated"].mean()
    explore = inter.loc[inter["policy"] == "explore", "true_p_treated"].mean()
    assert legacy > 1.2 * explore
    # and, within an action, picks the customers more likely to accept it
    by_policy = inter.groupby(["action_id", "policy"], observed=True)["true_p_treated"].mean().unstack()
    assert (by_policy["legacy"] > by_policy["explore"]).mean() >= 0.7


def test_truth_table_matches_the_last_months_interactions(sim: SimulationResult, features: pd.DataFrame) -> None:
    truth = sim.truth
    last = _month_starts(sim.config)[-1]
    snapshot = features[features[EVENT_TS] == last].reset_index(drop=True)
    assert len(truth) == len(snapshot) * len(ACTIONS)
    assert set(truth[ENTITY_KEY]) == set(snapshot[ENTITY_KEY])
    np.testing.assert_allclose(truth["true_uplift"], truth["true_p_treated"] - truth["true_p_control"])
    assert truth["true_p_treated"].between(0, 1).all() and truth["true_p_control"].between(0, 1).all()

    inter = sim.interactions[sim.interactions[EVENT_TS] >= last]
    joined = inter.merge(truth, on=[ENTITY_KEY, "action_id"], suffixes=("", "_truth"), validate="many_to_one")
    assert len(joined) == len(inter) > 0
    calm = joined["event_logit_shift"] == 0  # inside an event's window the truth is shifted
    assert calm.mean() > 0.8
    assert (joined.loc[calm, "true_p_treated"] == joined.loc[calm, "true_p_treated_truth"]).all()
    assert (joined.loc[calm, "true_p_control"] == joined.loc[calm, "true_p_control_truth"]).all()
    for arm in ("true_p_treated", "true_p_control"):
        shifted = _logit(joined.loc[~calm, f"{arm}_truth"].to_numpy()) + joined.loc[~calm, "event_logit_shift"]
        np.testing.assert_allclose(joined.loc[~calm, arm], 1 / (1 + np.exp(-shifted)), rtol=1e-9)
    assert (joined["eligible"] == 1).all()

    # `eligible` is the rules applied to the last snapshot
    wide = truth.pivot(index=ENTITY_KEY, columns="action_id", values="eligible")[list(ACTIONS)]
    rules = eligibility_matrix(snapshot.set_index(ENTITY_KEY).loc[wide.index])
    assert np.array_equal(wide.to_numpy(), rules.astype(np.int64))


def test_uplift_is_heterogeneous_with_sleeping_dogs(sim: SimulationResult) -> None:
    uplift = sim.truth.groupby("action_id", observed=True)["true_uplift"]
    assert (uplift.mean() > 0).all()  # positive on average for every action
    negative = uplift.apply(lambda u: (u < 0).mean())
    assert negative["mortgage"] > 0.05  # the sleeping dogs: stressed customers put off
    assert negative["loyalty_points_alert"] > 0.05
    # acceptance in a bank's range: mortgages rarely, sick-leave support often
    eligible = sim.truth[sim.truth["eligible"] == 1].groupby("action_id", observed=True)["true_p_treated"].mean()
    assert eligible["mortgage"] < 0.02
    assert 0.3 <= eligible["sick_leave_support"] <= 0.6


def test_true_probabilities_follow_the_published_coefficients() -> None:
    rng = np.random.default_rng(SEED)
    z = np.column_stack([np.ones(50), rng.standard_normal((50, len(Z_NAMES) - 1))])
    p_t, p_c = true_probabilities(z)
    for k, action in enumerate(ACTIONS):
        for arm, p in (("treated", p_t), ("control", p_c)):
            coef = getattr(ACTION_TRUTH[action], arm)
            logit = sum(c * z[:, Z_NAMES.index(name)] for name, c in coef.items())
            np.testing.assert_allclose(p[:, k], 1 / (1 + np.exp(-logit)), rtol=1e-12)


# --- the bank's rules --------------------------------------------------------------------------


def test_every_contact_is_eligible_on_a_usable_channel(contacts: pd.DataFrame) -> None:
    assert set(ELIGIBILITY) == set(ACTIONS)
    elig = eligibility_matrix(contacts)
    assert elig[np.arange(len(contacts)), _action_index(contacts)].all()
    chan = usable_channels(contacts)
    channel = pd.Index(list(CHANNELS)).get_indexer(contacts["channel"].astype(str))
    assert chan[np.arange(len(contacts)), channel].all()
    # the rules in plain words
    by_action = {a: contacts[contacts["action_id"] == a] for a in ACTIONS}
    assert (by_action["add_email"]["has_email"] == 0).all()
    assert (by_action["add_email"]["channel"] != "email").all()
    assert (by_action["mortgage"]["has_mortgage"] == 0).all()
    assert (by_action["mobile_app"]["has_mobile_app"] == 0).all()
    assert (by_action["rewards_card"]["has_credit_card"] == 0).all()
    assert (by_action["travel_notification"]["travels_abroad"] == 1).all()
    pp = by_action["payment_plan"]
    assert ((pp["missed_payments_90d"] >= 1) | (pp["collections_open"] == 1)).all()
    sick = by_action["sick_leave_support"]
    assert (sick["on_sick_leave"] == 1).mean() > 0.5  # mostly for customers on sick leave
    for a in ("annual_fee_waiver", "loyalty_points_alert"):
        assert (by_action[a]["has_credit_card"] == 1).all()


def test_eligibility_rules_read_only_snapshot_columns() -> None:
    columns = {c for t in SIM_FEATURE_TABLES for c in t.columns}
    for action, rule in ELIGIBILITY.items():
        assert set(rule.columns) <= columns, action
        assert rule.description


# --- dynamics -----------------------------------------------------------------------------------


def test_features_change_over_time(features: pd.DataFrame) -> None:
    by_customer = features.groupby(ENTITY_KEY)
    for col, share in (("credit_score", 0.5), ("logins_30d", 0.5), ("recency_days", 0.5),
                       ("debt_to_income", 0.3), ("on_sick_leave", 0.01), ("consent_email", 0.005),
                       ("has_mobile_app", 0.01), ("missed_payments_90d", 0.05)):
        changed = (by_customer[col].nunique() > 1).mean()
        assert changed >= share, (col, changed)


def test_conversions_change_holdings_from_the_next_snapshot(sim: SimulationResult, features: pd.DataFrame) -> None:
    inter = sim.interactions
    taken = inter[(inter["converted"] == 1) & inter["action_id"].isin(list(PRODUCT_OF))]
    assert len(taken) > 50
    snaps = features[[ENTITY_KEY, EVENT_TS, *PRODUCT_OF.values()]].sort_values(EVENT_TS)
    after = pd.merge_asof(
        taken.sort_values("outcome_timestamp"), snaps.rename(columns={EVENT_TS: "next_snapshot"}),
        left_on="outcome_timestamp", right_on="next_snapshot", by=ENTITY_KEY,
        direction="forward", allow_exact_matches=False)
    after = after[after["next_snapshot"].notna()]
    assert len(after) > 30
    for action, flag in PRODUCT_OF.items():
        rows = after[after["action_id"] == action]
        assert (rows[flag] == 1).all(), action
    # a snapshot between the event and a late outcome does not show it yet (customers who
    # converted twice are left out: the bank's data lags, so it may ask again)
    emails = inter[(inter["converted"] == 1) & (inter["action_id"] == "add_email")]
    once = emails[~emails[ENTITY_KEY].duplicated(keep=False)]
    pending = once[once["outcome_timestamp"].dt.month != once[EVENT_TS].dt.month]
    assert len(pending) > 10
    month_after = pending[EVENT_TS].dt.tz_convert(None).dt.to_period("M").dt.to_timestamp().dt.tz_localize("UTC")
    month_after = month_after + pd.offsets.MonthBegin(1)
    seen = pending.assign(snap=month_after).merge(
        features[[ENTITY_KEY, EVENT_TS, "has_email"]].rename(columns={EVENT_TS: "snap"}), on=[ENTITY_KEY, "snap"])
    assert (seen["has_email"] == 0).all()


def test_contacts_feed_last_contact_and_contacts_90d(sim: SimulationResult, features: pd.DataFrame) -> None:
    # the always-on actions' campaign is a cell of its own: its contacts are not counted here
    inter = sim.interactions[sim.interactions["action_id"].isin(CAMPAIGN_ACTIONS)]
    treated = inter[inter["treated"] == 1][[ENTITY_KEY, EVENT_TS]]
    signup = sim.customers.set_index(ENTITY_KEY)["signup_timestamp"]
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    sample = features.sample(n=5_000, random_state=SEED)[[ENTITY_KEY, EVENT_TS, "contacts_90d",
                                                          "last_contact_epoch_s"]]
    pairs = sample.merge(treated.rename(columns={EVENT_TS: "contact"}), on=ENTITY_KEY, how="left")
    before = pairs[pairs["contact"] < pairs[EVENT_TS]]
    last = before.groupby([ENTITY_KEY, EVENT_TS])["contact"].max()
    recent = before[before["contact"] >= before[EVENT_TS] - 90 * DAY].groupby([ENTITY_KEY, EVENT_TS]).size()
    key = pd.MultiIndex.from_frame(sample[[ENTITY_KEY, EVENT_TS]])
    expected_last = last.reindex(key).fillna(pd.Series(signup.loc[sample[ENTITY_KEY]].to_numpy(), index=key))
    expected_epoch = ((expected_last - epoch) // pd.Timedelta(seconds=1)).to_numpy()
    assert np.array_equal(sample["last_contact_epoch_s"].to_numpy(), expected_epoch)
    assert np.array_equal(sample["contacts_90d"].to_numpy(), recent.reindex(key).fillna(0).to_numpy())
    assert (sample["contacts_90d"] > 0).mean() > 0.2


def test_monthly_value_is_sensible(sim: SimulationResult) -> None:
    mv = sim.monthly_value
    assert (mv["purchases"] >= 0).all() and (mv["spend"] >= 0).all()
    assert ((mv["purchases"] == 0) == (mv["spend"] == 0)).all()
    assert mv["margin"].mean() > 0
    # purchases in the trailing year add up to the next snapshots' frequency
    rfm = sim.rfm.set_index([ENTITY_KEY, EVENT_TS])["frequency"]
    last = _month_starts(sim.config)[-1]
    year = mv[mv[EVENT_TS] < last].groupby(ENTITY_KEY)["purchases"].sum()
    full = rfm.xs(last, level=EVENT_TS)
    full_year = sim.customers.set_index(ENTITY_KEY)["churn_timestamp"].isna()
    stayed = full.index[full_year.loc[full.index].to_numpy()]
    assert (year.loc[stayed] <= full.loc[stayed]).all()  # the rest came from before the start


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("customers", 0),
        ("customers", 2.5),
        ("seed", -1),
        ("months", 1),
        ("contact_rate", 1.5),
        ("explore_share", -0.1),
        ("start", date(2025, 1, 15)),
        ("legacy_temperature", 0.0),
        ("warmup_months", 0),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    kwargs: dict[str, object] = {"customers": 10, "seed": 1, field: value}
    with pytest.raises(ConfigError, match=rf"SimulationConfig\.{field} = .*expected"):
        SimulationConfig(**kwargs)  # type: ignore[arg-type]


def test_tiny_bank_runs() -> None:
    result = simulate(SimulationConfig(customers=1, seed=SEED, months=2, contact_rate=1.0))
    assert len(result.customers) == 1
    for schema in SIM_ALL_TABLES:
        validate_frame(getattr(result, schema.name), schema)


# --- behavioural events and the always-on actions ---------------------------------------

EVENTFUL = SimulationConfig(customers=SIM_CUSTOMERS, seed=SEED, event_months=12, always_on_rate=0.3)
# main's tables before the events and the always-on actions (commit 3dac78f; 3,000 customers, seed 7,
# 4 months): sha256 of pandas' row hashes, the campaign actions' rows of interactions and truth,
# their columns then, floats rounded to 8 decimals: the last bits of numpy's exp/log depend on the
# CPU's SIMD paths (exact digests taken on one machine failed on another; old and new code agree
# bit for bit on each machine).
MAIN_DIGESTS = {
    "profile": "032a67fc7c4e63ab", "rfm": "51691f0111b82563", "engagement": "2d0b07e1a966e2ef",
    "risk": "e391b18482d7d0b8", "consent": "2caaed9e90f7f2f4", "customers": "aee669242e8a007c",
    "monthly_value": "e0509a2b37211426", "interactions": "298a538e2f190fe0", "truth": "f6928f434a99f73e",
}
OUTCOME_COLUMNS = ["outcome", "converted", "value", "true_p_treated", "true_p_control"]


def _digest(frame: pd.DataFrame) -> str:
    import hashlib

    frame = frame.reset_index(drop=True)
    frame = frame.assign(**{c: frame[c].round(8) for c in frame.columns if frame[c].dtype.kind == "f"})
    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(rows.tobytes()).hexdigest()[:16]


def _campaign_rows(result: SimulationResult, name: str) -> pd.DataFrame:
    frame = getattr(result, name)
    if name not in ("interactions", "truth"):
        return frame
    columns = [c for c in frame.columns if c != "event_logit_shift"]
    return frame.loc[frame["action_id"].isin(CAMPAIGN_ACTIONS), columns]


@pytest.fixture(scope="module")
def eventful() -> SimulationResult:
    """A year of events, and the always-on campaign for 30 % of the customers a month."""
    return simulate(EVENTFUL)


def _expected_shift(result: SimulationResult) -> np.ndarray:
    """Each interaction's shift recomputed from events.parquet and the event_effects table alone."""
    inter = result.interactions.reset_index(drop=True)
    ev = result.events
    out = np.zeros(len(inter))
    t_inter = inter[EVENT_TS].astype("int64").to_numpy()
    for eff in result.event_effects.itertuples(index=False):
        sel = ev["type"] == eff.type
        if eff.kind:
            sel &= ev["kind" if eff.type == "life_event" else "product"] == eff.kind
        mine = ev.loc[sel, [ENTITY_KEY, "timestamp"]]
        rows = np.flatnonzero(inter["action_id"].to_numpy() == eff.action_id)
        if not len(rows) or not len(mine):
            continue
        last = {}
        for cid, ts in zip(mine[ENTITY_KEY].to_numpy(), mine["timestamp"].astype("int64").to_numpy(), strict=True):
            last.setdefault(int(cid), []).append(int(ts))
        for r in rows:
            times = last.get(int(inter.at[r, ENTITY_KEY]))
            if times and any(0 <= t_inter[r] - ts < eff.window_days * 86_400 * 1e9 for ts in times):
                out[r] += eff.logit_shift
    return out


def test_campaign_history_is_mains_without_events_and_only_outcomes_in_windows_move(eventful) -> None:
    quiet = simulate(SimulationConfig(customers=3_000, seed=SEED, months=4, event_months=0))
    for name, digest in MAIN_DIGESTS.items():
        assert _digest(_campaign_rows(quiet, name)) == digest, name  # main's tables (floats to 8 decimals)
    assert len(quiet.events) == 0 and set(quiet.interactions["event_logit_shift"]) == {0.0}
    # with the default month of events only the outcomes of contacts inside an event window differ
    loud = simulate(SimulationConfig(customers=3_000, seed=SEED, months=4))
    for name in MAIN_DIGESTS:
        if name != "interactions":
            assert _digest(_campaign_rows(loud, name)) == MAIN_DIGESTS[name], name
    a, b = _campaign_rows(quiet, "interactions"), _campaign_rows(loud, "interactions")
    moved = loud.interactions.loc[b.index, "event_logit_shift"].to_numpy() != 0
    assert 0 < moved.sum() < 0.1 * len(b)
    pd.testing.assert_frame_equal(a.drop(columns=OUTCOME_COLUMNS), b.drop(columns=OUTCOME_COLUMNS))
    pd.testing.assert_frame_equal(a[~moved], b[~moved])
    assert (b.loc[moved, "true_p_treated"].to_numpy() != a.loc[moved, "true_p_treated"].to_numpy()).all()


def test_every_event_passes_the_events_validation(tmp_path: Path) -> None:
    from nba.events import load_event_types, validate_events
    from nba.serving.ingest import read_event_file

    types = load_event_types(Path(__file__).parents[1] / "serving" / "events.yaml")
    manifest = simulate_to_dir(SMALL_CUSTOMERS, SEED, tmp_path, months=3, progress=False)
    path = tmp_path / "events.parquet"
    frame = pd.read_parquet(path)
    assert list(frame.columns[:4]) == [ENTITY_KEY, "type", "timestamp", "event_id"]
    assert set(frame["type"]) == set(EVENT_TYPES) == set(types.types) - {"consent_changed"}
    total, chunks = read_event_file(path, types, 2_000)
    now = pd.Timestamp("2030-01-01", tz="UTC").timestamp()
    stored = [e for chunk in chunks for e in validate_events(chunk, types, now)]  # raises on the first bad one
    assert total == len(stored) == manifest["rows"]["events"] == len(frame) > 5_000
    assert [e["event_id"] for e in stored] == frame["event_id"].tolist() and frame["event_id"].is_unique
    # the month's events only, in time order, each before the customer left
    month = pd.Timestamp("2025-03-01", tz="UTC")
    assert frame["timestamp"].is_monotonic_increasing and (frame["timestamp"] >= month).all()
    churn = pd.read_parquet(tmp_path / "customers.parquet").set_index(ENTITY_KEY)["churn_timestamp"]
    left = churn.reindex(frame[ENTITY_KEY]).to_numpy()
    assert not (pd.notna(left) & (frame["timestamp"].to_numpy() >= left)).any()
    # where a property does not apply it is null
    for name, _kind in EVENT_PROPERTIES.items():
        owners = {t for t, spec in types.types.items() if name in spec.properties}
        assert frame.loc[~frame["type"].isin(owners), name].isna().all(), name


def test_the_event_declarations_cover_what_the_simulator_writes() -> None:
    from nba.events import load_event_types

    types = load_event_types(Path(__file__).parents[1] / "serving" / "events.yaml")
    for name in EVENT_PROPERTIES:
        assert any(name in t.properties for t in types.types.values()), name
    for column, values in EVENT_VOCAB.items():
        enums = {v for t in types.types.values() if column in t.properties
                 and isinstance(t.properties[column].type, list) for v in t.properties[column].type}
        assert not enums or set(values) <= enums, column
    for eff in EVENT_EFFECTS:
        assert eff.type in EVENT_TYPES and eff.action in ACTIONS and eff.window_days > 0
        if eff.kind:
            assert eff.kind in EVENT_VOCAB["kind" if eff.type == "life_event" else "product"]
    assert set(EVENT_TYPES) <= {e.type for e in EVENT_EFFECTS}  # every type moves some action


def test_events_are_deterministic_per_seed(tmp_path: Path) -> None:
    a = simulate_to_dir(2_000, SEED, tmp_path / "a", months=2, progress=False)
    b = simulate_to_dir(2_000, SEED, tmp_path / "b", months=2, progress=False)
    c = simulate_to_dir(2_000, SEED + 1, tmp_path / "c", months=2, progress=False)
    assert a["sha256"]["events"] == b["sha256"]["events"] and a["sha256"] == b["sha256"]
    assert a["sha256"]["events"] != c["sha256"]["events"]
    assert a["sha256"]["event_effects"] == c["sha256"]["event_effects"]  # the truth table is fixed


def test_the_interactions_carry_the_shift_of_the_customers_own_events(eventful: SimulationResult) -> None:
    got = eventful.interactions["event_logit_shift"].to_numpy()
    assert (got != 0).mean() > 0.02
    np.testing.assert_allclose(got, _expected_shift(eventful), atol=1e-12)
    # the effects table is EVENT_EFFECTS
    eff = eventful.event_effects
    assert len(eff) == len(EVENT_EFFECTS)
    home = eff[(eff["type"] == "life_event") & (eff["kind"] == "home_purchase")].set_index("action_id")
    assert home.loc["mortgage", "window_days"] == 30 and home.loc["mortgage", "logit_shift"] > 0
    assert home.loc["home_insurance", "logit_shift"] > 0


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def test_acceptance_inside_event_windows_follows_the_shifted_truth(eventful: SimulationResult) -> None:
    inter = eventful.interactions
    shift = inter["event_logit_shift"].to_numpy()
    treated = inter["treated"].to_numpy() == 1
    p = np.where(treated, inter["true_p_treated"], inter["true_p_control"])
    base = 1 / (1 + np.exp(-(_logit(p) - shift)))
    y = inter["converted"].to_numpy()
    for sign in (1, -1):
        rows = np.sign(shift) == sign
        assert rows.sum() >= MIN_ROWS
        se = np.sqrt((p[rows] * (1 - p[rows])).sum()) / rows.sum()
        assert abs(y[rows].mean() - p[rows].mean()) < Z * se  # the bank answers with the shifted truth
        assert sign * (y[rows].mean() - base[rows].mean()) > Z * se  # ... not with the truth without events
    # a home purchase: mortgage and home insurance are accepted more inside the 30 days after it
    ev = eventful.events
    bought = ev.loc[(ev["type"] == "life_event") & (ev["kind"] == "home_purchase"), [ENTITY_KEY, "timestamp"]]
    rows = inter[inter["action_id"].isin(["mortgage", "home_insurance"]) & treated].merge(bought, on=ENTITY_KEY)
    inside = (rows[EVENT_TS] >= rows["timestamp"]) & (rows[EVENT_TS] < rows["timestamp"] + 30 * DAY)
    hit = rows[inside].drop_duplicates("interaction_id")
    assert len(hit) >= 20
    p_in = hit["true_p_treated"].to_numpy()
    p_base = 1 / (1 + np.exp(-(_logit(p_in) - hit["event_logit_shift"].to_numpy())))
    assert (hit["event_logit_shift"] >= 1.5).all()  # the purchase's effect (+2.0 mortgage, +1.5 insurance)
    assert p_in.mean() > 2 * p_base.mean()
    se = np.sqrt((p_in * (1 - p_in)).sum()) / len(hit)
    assert abs(hit["converted"].mean() - p_in.mean()) < Z * se


def test_the_always_on_actions_have_their_own_campaign(eventful: SimulationResult) -> None:
    inter = eventful.interactions
    new = inter["action_id"].isin(ALWAYS_ON_ACTIONS).to_numpy()
    assert set(inter.loc[new, "action_id"]) == set(ALWAYS_ON_ACTIONS)
    # appended after the campaign's rows, always contacted, on the rules of the always-on actions
    assert inter.loc[new, "interaction_id"].min() > inter.loc[~new, "interaction_id"].max()
    assert (inter.loc[new, "treated"] == 1).all()
    month = inter[EVENT_TS].dt.tz_convert(None).dt.to_period("M").dt.to_timestamp().dt.tz_localize("UTC")
    snap = eventful.profile.merge(eventful.risk, on=[ENTITY_KEY, EVENT_TS]).merge(
        eventful.consent, on=[ENTITY_KEY, EVENT_TS])
    rows = inter[new].assign(snapshot=month[new]).merge(snap.rename(columns={EVENT_TS: "snapshot"}),
                                                          on=[ENTITY_KEY, "snapshot"], how="left")
    elig = eligibility_matrix(rows, ALWAYS_ON_ACTIONS)
    local = pd.Index(list(ALWAYS_ON_ACTIONS)).get_indexer(rows["action_id"].astype(str))
    assert elig[np.arange(len(rows)), local].all()
    per_action = inter[new].groupby("action_id")["converted"].agg(["size", "sum"])
    assert (per_action["sum"] >= 30).all(), per_action  # enough to train and gate their models
