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
MONTHS = 4
NEW_ACTION, NEW_MONTH = "finance_course", 2  # withheld, then added with no history at month 2


@pytest.fixture(scope="module")
def loop_run(feature_env: Settings, tmp_path_factory):
    from nba.simulation.loop import ClosedLoop, LoopConfig

    settings = build_served_bank(feature_env, tmp_path_factory.mktemp("loop"))
    loop = ClosedLoop(settings, LoopConfig(customers=CUSTOMERS, months=MONTHS, seed=SEED, history_months=12,
                                           new_action=NEW_ACTION, new_action_month=NEW_MONTH))
    report = loop.run()
    print(report.describe())
    return loop.settings, loop, report


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
    # an exploring decision shows a random candidate: P = eps / n unless it drew the winner (a
    # decision with a cold candidate chose by Thompson sampling: its winner's P is a share of draws)
    c = frames.candidates
    cold = set(c.loc[c["action_id"] == NEW_ACTION, "decision_id"])
    explore = explore[~explore["decision_id"].isin(cold)]
    assert ((explore["probability"] < 0.2) | (explore["probability"] > 0.95)).all()
    assert (explore["probability"] < 0.2).sum() > 10


def test_the_off_policy_intervals_cover_the_truth(loop_run):
    _, _, report = loop_run
    for m in report.months:
        assert m.truth["none"] == 0.0
        assert m.truth["oracle"] >= max(m.truth[p] for p in ("platform", "legacy", "random")) - 1e-9
    # The intervals around each policy's value from the log cover the truth of the same decisions:
    # DR (the primary estimator, whose >= 90 % is the 20,000-customer benchmark's target) in 80 %
    # of the cells here. The seeded loop (seed 7) covers DR 85 %, SNIPS 90 %, IPS 65 %: IPS with
    # its weights clipped at 20 is biased low on this small bank, so the other two are held to
    # 60 %, a check that they are not broken rather than a claim of nominal coverage.
    cells = json.dumps(report.to_dict()["months"], default=str)[:3000]
    assert report.coverage("dr") >= 0.8, cells
    assert report.coverage("snips") >= 0.6 and report.coverage("ips") >= 0.6, cells


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


def test_a_new_action_goes_live_cold_and_its_propensity_converges_to_the_truth(loop_run):
    """finance_course joins at month 2 with no history and no model: the bundle serves it from
    the prior pooled over its issue and group, Thompson sampling shows it, the logged
    probabilities stay exact (checked in tests/test_coldstart.py), and each month's posterior
    mean (what it is scored with) approaches the true mean acceptance of the customers it was
    shown to in the months before."""
    import json as _json

    from nba.stores.decisions import read_log

    settings, loop, report = loop_run
    before = [m for m in report.months if m.month < NEW_MONTH]
    after = [m for m in report.months if m.month >= NEW_MONTH]
    assert all(NEW_ACTION not in m.cold_start for m in before)
    frames = read_log(settings.decision_log_dir)
    shown = frames.decisions[frames.decisions["action_id"] == NEW_ACTION]
    assert len(shown) == sum(m.cold_start[NEW_ACTION]["shown"] for m in after) > 0
    # not only exploration: the posterior's upside won draws (in the month it went live at
    # least; among 16 actions a later month may show it to none of its candidates)
    assert after[0].cold_start[NEW_ACTION]["shown_by_thompson"] > 0, after[0].cold_start[NEW_ACTION]
    for m in after:
        c = m.cold_start[NEW_ACTION]
        if c["shown"]:
            assert 0 < c["logged_probability_min"] <= c["logged_probability_mean"] < 1, c
    manifest = _json.loads((settings.bundle_dir / "bundle.json").read_text())
    assert NEW_ACTION in manifest["cold_start"]["cold"]
    assert not any(f"propensity:{NEW_ACTION}" in info["roles"] for info in manifest["models"].values())
    skipped = [m.retrain["skipped"].get(NEW_ACTION, "") for m in after if m.retrain]
    assert skipped and all("cold start" in why for why in skipped), skipped
    # convergence: the posterior mean of month t against the truth of the customers shown before t
    shown_n = np.array([m.cold_start[NEW_ACTION]["shown"] for m in after], dtype=float)
    truth_p = np.nan_to_num([m.cold_start[NEW_ACTION]["true_mean_p_shown"] for m in after])  # nan: none shown
    post = [m.cold_start[NEW_ACTION] for m in after]
    prior_mean = post[0]["posterior_mean"]  # month 2: the pooled prior alone (no outcome yet)
    assert post[0]["alpha"] + post[0]["beta"] == pytest.approx(20)
    errors, tols = [], []
    for t in range(1, len(after)):
        seen = shown_n[:t].sum()
        truth = float((shown_n[:t] * truth_p[:t]).sum() / seen)
        trials = post[t]["alpha"] + post[t]["beta"] - 20
        assert trials == pytest.approx(seen)
        # the prior's pull (20 pseudo-observations) plus 3 binomial standard errors
        tol = 20 / (20 + seen) * abs(prior_mean - truth) + 3 * np.sqrt(truth * (1 - truth) / seen) + 1e-3
        err = abs(post[t]["posterior_mean"] - truth)
        errors.append(err)
        tols.append(tol)
        assert err < tol, (t, post[t], truth, tol)
    print("cold start: shown by month", shown_n.tolist(), "true mean P of the shown", truth_p.tolist(),
          "| posterior mean - truth of the customers shown before:", errors, "tolerance", tols)
