"""The closed loop on a small simulated bank: the platform decides through the engine, the bank
answers from its truth through `/respond`'s path, the models retrain on the log behind the
gates; the off-policy intervals must cover the truth and the learnt policy must beat legacy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nba.settings import Settings
from tests.constants import SEED
from tests.serving_env import build_served_bank

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CUSTOMERS = 4_000  # the shared feature_env bank
MONTHS = 3


@pytest.fixture(scope="module")
def loop_run(feature_env: Settings, tmp_path_factory):
    from nba.simulation.loop import ClosedLoop, LoopConfig

    settings = build_served_bank(feature_env, tmp_path_factory.mktemp("loop"))
    loop = ClosedLoop(settings, LoopConfig(customers=CUSTOMERS, months=MONTHS, seed=SEED, history_months=12))
    report = loop.run()
    print(report.describe())
    return settings, loop, report


def test_every_shown_action_is_answered_through_the_outcome_path(loop_run):
    from nba.stores.decisions import read_log

    settings, _, report = loop_run
    frames = read_log(settings.decision_log_dir)
    assert len(frames.decisions) == sum(m.decisions for m in report.months)
    shown = frames.decisions[frames.decisions["action_id"] != "do_nothing"]
    assert len(shown) == sum(m.shown for m in report.months) > 0
    # one outcome per shown action, nothing for "do nothing"
    assert len(frames.outcomes) == len(shown)
    assert set(frames.outcomes["decision_id"]) == set(shown["decision_id"])
    assert set(frames.outcomes["outcome"]) <= {"accepted", "rejected", "ignored"}
    accepted = frames.outcomes[frames.outcomes["outcome"] == "accepted"]
    assert (accepted["value"] > 0).all() and len(accepted) == sum(m.accepted for m in report.months)
    # the hold-out and exploration ran: every group is in the log with its probabilities
    groups = set(frames.decisions["experiment_group"])
    assert groups == {"nba", "explore", "holdout"}
    explore = frames.decisions[frames.decisions["experiment_group"] == "explore"]
    # an exploring decision shows a random candidate: P = eps / n unless it drew the winner
    assert ((explore["probability"] < 0.2) | (explore["probability"] > 0.95)).all()
    assert (explore["probability"] < 0.2).sum() > 10


def test_the_off_policy_intervals_cover_the_truth(loop_run):
    _, _, report = loop_run
    for m in report.months:
        assert m.truth["none"] == 0.0
        assert m.truth["oracle"] >= max(m.truth[p] for p in ("platform", "legacy", "random")) - 1e-9
    # DR and IPS intervals around each policy's value from the log cover the truth of the same decisions
    assert report.coverage("dr") >= 0.8, json.dumps(report.to_dict()["months"], default=str)[:3000]
    assert report.coverage("ips") >= 0.8


def test_the_learnt_policy_beats_legacy(loop_run):
    _, _, report = loop_run
    diffs = np.array([m.platform_vs_legacy["mean"] for m in report.months])
    assert (diffs > 0).all(), diffs
    last = report.months[-1]
    assert last.platform_vs_legacy["ci_low"] > 0
    assert last.truth["platform"] > last.truth["random"] > last.truth["none"]


def test_the_models_retrain_on_the_log_behind_the_gates(loop_run):
    _, _, report = loop_run
    retrained = [m.retrain for m in report.months if m.retrain]
    assert len(retrained) == MONTHS - 1
    for r in retrained:
        assert r["trained"], r
        # every trained challenger was either promoted or refused with the gate's reason
        assert set(r["promoted"]) | set(r["refused"]) == set(r["trained"])
        assert all("gate" in why or "min_" in why or "log_loss" in why for why in r["refused"].values())


def test_the_report_files(loop_run, tmp_path):
    from nba.simulation.loop import write_html, write_json

    _, _, report = loop_run
    data = json.loads(write_json(report, tmp_path / "loop.json").read_text())
    assert [m["month"] for m in data["months"]] == list(range(1, MONTHS + 1))
    assert set(data["months"][0]["truth"]) == {"platform", "legacy", "none", "random", "oracle"}
    html = write_html(report, tmp_path / "loop.html").read_text()
    assert "data:image/png;base64," in html and "platform - legacy" in html


def test_the_quickstart_short_loop_fills_the_platform_dashboard(feature_env: Settings, tmp_path_factory):
    from nba.evaluation import dashboards
    from nba.evaluation.render import REPORT_PROJECT
    from nba.quickstart import short_loop

    settings = build_served_bank(feature_env, tmp_path_factory.mktemp("quick"))
    lines: list[str] = []
    result = short_loop(settings, customers=CUSTOMERS, seed=SEED, echo=lines.append)
    assert result["decisions"] > 500
    assert result["truth"]["platform"] > result["truth"]["legacy"]
    ws = dashboards.open_workspace(settings)
    names = {row["labels"].get("name", "") for row in dashboards.read_values(ws, REPORT_PROJECT)}
    assert any("incrementality" in n for n in names) and any("policy" in n for n in names), names
    assert any("policy value" in line for line in lines)
