"""Attribution: every model on a hand-built path set with answers computed by hand, the paths a
decision log gives (window, order, hold-out conversions), and on the simulator's truth how far
each model is from the true incremental value, beside the hold-out's estimate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nba.evaluation import attribution as at
from nba.evaluation.incrementality import decision_outcomes
from nba.stores.decisions import LogFrames, read_log
from tests.synthetic_behaviour import true_incremental_value
from tests.synthetic_log import build_log

DAY = at.DAY_S

# (touches (action, channel, time), converted, value, conversion time)
HAND = at.Paths.from_lists([
    ([("A", "email", 0 * DAY), ("B", "sms", 1 * DAY), ("C", "email", 2 * DAY)], True, 10.0, 3 * DAY),
    ([("A", "sms", 0 * DAY), ("C", "web", 1 * DAY)], True, 20.0, 2 * DAY),
    ([("B", "email", 5 * DAY)], False, 0.0, np.nan),
    ([("C", "sms", 0 * DAY)], True, 30.0, 1 * DAY),
])

# Per action, conversions credited. Markov (first order, start -> ... -> conv | null):
# start -> A 2/4, B 1/4, C 1/4; A -> B 1/2, C 1/2; B -> C 1/2, null 1/2; C -> conv 1.
# P(conv) = 3/4; without A 3/8 (effect 1/2), without B 1/2 (effect 1/3), without C 0 (effect 1).
# Path 1 (A, B, C) shares by effects 1/2 : 1/3 : 1 = 3/11, 2/11, 6/11; path 2 (A, C) 1/3, 2/3.
EXPECTED = {
    "first_touch": {"A": 2.0, "B": 0.0, "C": 1.0},
    "last_touch": {"A": 0.0, "B": 0.0, "C": 3.0},
    "linear": {"A": 1 / 3 + 1 / 2, "B": 1 / 3, "C": 1 / 3 + 1 / 2 + 1},
    "u_shaped": {"A": 0.4 + 0.5, "B": 0.2, "C": 0.4 + 0.5 + 1},
    # half-life 1 day: path 1 ages 3, 2, 1 days -> 1/8, 1/4, 1/2 -> 1/7, 2/7, 4/7; path 2 ages 2, 1 -> 1/3, 2/3
    "time_decay": {"A": 1 / 7 + 1 / 3, "B": 2 / 7, "C": 4 / 7 + 2 / 3 + 1},
    "markov": {"A": 3 / 11 + 1 / 3, "B": 2 / 11, "C": 6 / 11 + 2 / 3 + 1},
}
# the same shares times each path's value (10, 20, 30)
EXPECTED_VALUE = {
    "first_touch": {"A": 30.0, "B": 0.0, "C": 30.0},
    "last_touch": {"A": 0.0, "B": 0.0, "C": 60.0},
    "linear": {"A": 10 / 3 + 10, "B": 10 / 3, "C": 10 / 3 + 10 + 30},
    "u_shaped": {"A": 4 + 10, "B": 2.0, "C": 4 + 10 + 30},
    "time_decay": {"A": 10 / 7 + 20 / 3, "B": 20 / 7, "C": 40 / 7 + 40 / 3 + 30},
    "markov": {"A": 30 / 11 + 20 / 3, "B": 20 / 11, "C": 60 / 11 + 40 / 3 + 30},
}


def test_every_model_on_hand_built_paths():
    credit = at.attribute(HAND, "action", half_life_days=1.0)
    assert credit["touches"].to_dict() == {"A": 2, "B": 2, "C": 3}
    for model in at.MODELS:
        assert credit[model].to_dict() == pytest.approx(EXPECTED[model]), model
        assert credit[f"{model}_value"].to_dict() == pytest.approx(EXPECTED_VALUE[model]), model
        assert credit[model].sum() == pytest.approx(3.0)  # every conversion is shared out, once


def test_markov_removal_effects_by_hand():
    assert at.markov_removal(HAND, "action").to_dict() == pytest.approx({"A": 1 / 2, "B": 1 / 3, "C": 1.0})


def test_channel_key_and_two_touch_u_shape():
    credit = at.attribute(HAND, "channel", half_life_days=1.0)
    assert credit["first_touch"].to_dict() == pytest.approx({"email": 1.0, "sms": 2.0, "web": 0.0})
    assert credit["last_touch"].to_dict() == pytest.approx({"email": 1.0, "sms": 1.0, "web": 1.0})
    # path 1: email .4 + email .4, sms .2; path 2: sms .5, web .5; path 4: sms 1
    assert credit["u_shaped"].to_dict() == pytest.approx({"email": 0.8, "sms": 1.7, "web": 0.5})


def test_bad_parameters_name_the_value():
    with pytest.raises(at.AttributionError, match="half-life 0"):
        at.touch_weights(HAND, "time_decay", half_life_days=0)
    with pytest.raises(at.AttributionError, match="'shapley'"):
        at.touch_weights(HAND, "shapley")
    with pytest.raises(at.AttributionError, match="key 'segment'"):
        at.attribute(HAND, "segment")


def _frames(decisions: list[tuple], outcomes: list[tuple]) -> LogFrames:
    """A small log as `read_log` returns it: decisions (id, customer, channel, day, group,
    action), outcomes (id, action, outcome, value, day)."""
    t0 = pd.Timestamp("2025-06-01", tz="UTC")
    d = pd.DataFrame(decisions, columns=["decision_id", "customer_id", "channel", "day", "experiment_group",
                                         "action_id"])
    d["decided_at"] = t0 + pd.to_timedelta(d.pop("day"), unit="D")
    d = d.astype({"decision_id": "string", "channel": "string", "experiment_group": "string", "action_id": "string"})
    o = pd.DataFrame(outcomes, columns=["decision_id", "action_id", "outcome", "value", "day"])
    o["responded_at"] = t0 + pd.to_timedelta(o.pop("day"), unit="D")
    cand = pd.DataFrame({"decision_id": d["decision_id"], "action_id": d["action_id"],
                         "rank": (d["action_id"] != "do_nothing").astype(np.int64), "priority": 1.0})
    cand = cand[cand["action_id"] != "do_nothing"]
    filt = pd.DataFrame({"decision_id": pd.Series(dtype="string"), "action_id": pd.Series(dtype="string"),
                         "stage": pd.Series(dtype="string"), "rule": pd.Series(dtype="string")})
    return LogFrames(d, cand, filt, o, None)


def test_paths_from_a_log_respect_order_window_and_the_next_conversion():
    frames = _frames(
        [("d1", 1, "email", 0, "nba", "A"), ("d2", 1, "sms", 45, "nba", "B"), ("d3", 1, "web", 50, "nba", "C"),
         ("d4", 1, "email", 60, "nba", "A"),  # after the last conversion: a non-converting path
         ("d5", 2, "web", 0, "holdout", "do_nothing")],
        [("d3", "C", "accepted", 7.0, 52), ("d2", "B", "rejected", 0.0, 46),
         ("d5", "do_nothing", "accepted", 3.0, 5)])  # a hold-out conversion: no touch
    paths = at.log_paths(frames, window_days=30)
    assert paths.untouched == 1
    conv = paths.paths[paths.paths["converted"] == 1]
    assert sorted(conv["value"]) == [3.0, 7.0]
    by_path = paths.touches.groupby("path_id")["action"].apply(list).to_dict()
    converted_path = int(conv.loc[conv["value"] == 7.0, "path_id"].iloc[0])
    # d1 is 52 days before the conversion: outside the window, so it and d4 form the null path
    assert by_path[converted_path] == ["B", "C"]
    null = [p for p in by_path if p != converted_path]
    assert [by_path[p] for p in null] == [["A", "A"]]
    wide = at.log_paths(frames, window_days=60)
    conv_w = wide.paths[(wide.paths["converted"] == 1) & (wide.paths["value"] == 7.0)]["path_id"].iloc[0]
    assert wide.touches[wide.touches["path_id"] == conv_w]["action"].tolist() == ["A", "B", "C"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attribution") / "log"
    return build_log(folder, customers=6_000, eps=0.2, holdout_share=0.2)


def test_on_the_simulator_the_hold_out_is_nearer_the_truth_than_any_attribution_model(synthetic):
    frames = read_log(synthetic.folder)
    table = at.attribution_table(frames, window_days=30, half_life_days=7)
    assert set(table["by"]) == {"action", "channel"} and set(table["metric"]) == {"conversions", "value"}
    total = table[(table["by"] == "action") & (table["key"] == "total") & (table["metric"] == "conversions")].iloc[0]
    # every model shares out the same conversions: those with a touch in their window. In this log
    # every outcome comes seconds after all decisions, so a customer with a shown action and any
    # accepted outcome has exactly one touched path (its first conversion takes all its touches)
    d = frames.decisions
    touched_customers = set(d.loc[d["action_id"] != "do_nothing", "customer_id"])
    accepted = frames.outcomes.loc[frames.outcomes["outcome"] == "accepted", "decision_id"]
    converting = set(d.set_index("decision_id").loc[accepted, "customer_id"])
    for model in at.MODELS:
        assert total[model] == pytest.approx(len(touched_customers & converting)), model
    # the hold-out incremental total is (treated mean - hold-out mean) x treated decisions
    f = decision_outcomes(frames)
    treated = f["experiment_group"] != "holdout"
    direct = (f.loc[treated, "value"].mean() - f.loc[~treated, "value"].mean()) * treated.sum()
    value_total = table[(table["by"] == "action") & (table["key"] == "total") & (table["metric"] == "value")].iloc[0]
    assert value_total["holdout_incremental"] == pytest.approx(direct)
    assert value_total["holdout_ci_low"] < direct < value_total["holdout_ci_high"]

    truth = true_incremental_value(synthetic)
    gap = at.distance_to_truth(table, truth).set_index("model")
    assert gap.loc["holdout_incremental", "truth_total"] == pytest.approx(sum(truth.values()))
    holdout_error = abs(gap.loc["holdout_incremental", "total_error"])
    for model in at.MODELS:
        # attribution credits the conversions that would have happened anyway: it overstates the effect
        assert gap.loc[model, "total_error"] > 0
        assert abs(gap.loc[model, "total_error"]) > 2 * holdout_error, (model, gap)
    assert value_total["holdout_ci_low"] < sum(truth.values()) < value_total["holdout_ci_high"]
    assert at.EXPLANATION.startswith("attribution shares the credit")
