"""Evaluation from the platform's decision log, against a synthetic log with known truth
(`tests/synthetic_log.py`, built from the simulator's ground truth and written through
`DecisionLog`): hold-out incrementality and the value of candidate policies recovered within
their CIs, thin or unsupported estimates flagged; the Hillstrom targeting policy; and
`nba evaluate incrementality | policy` on a log as real processes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nba.config import gates_path, load_gates
from nba.evaluation.incrementality import log_incrementality
from nba.evaluation.policy import PLATFORM_POLICIES, platform_policy_values
from nba.evaluation.stats import ExperimentDataError
from nba.schemas import ACTIONS
from nba.stores.decisions import read_log
from tests.conftest import PROJECT_ROOT
from tests.constants import HILLSTROM_ARM_MEANS, SEED
from tests.synthetic_log import SyntheticLog, build_log
from tests.test_cli import assert_one_line_error, run
from tests.test_incrementality import cli_env  # noqa: F401  (fixture)

LIMITS = load_gates(gates_path(PROJECT_ROOT)).evaluation


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> SyntheticLog:
    return build_log(tmp_path_factory.mktemp("decision_log") / "log", customers=6_000, seed=SEED)


@pytest.fixture(scope="module")
def frames(synthetic: SyntheticLog):
    return read_log(synthetic.folder)


def _targets(s: SyntheticLog) -> dict[str, np.ndarray]:
    """The candidate policies over (ACTIONS, do_nothing), from the generating process."""
    n, k = s.eligible.shape

    def onehot(score: np.ndarray) -> np.ndarray:
        out = np.zeros((n, k + 1))
        out[np.arange(n), np.argmax(np.where(s.eligible, score, -np.inf), axis=1)] = 1.0
        return out

    uniform = np.zeros((n, k + 1))
    uniform[:, :k] = s.eligible / s.eligible.sum(axis=1, keepdims=True)
    return {"nba": s.nba_target(), "random": uniform, "propensity_only": onehot(s.propensity),
            "no_levers": onehot(s.propensity * s.value), "holdout": s.nothing_target()}


# --- incrementality from the log ----------------------------------------------------------


def test_log_incrementality_recovers_the_true_lift(synthetic: SyntheticLog, frames):
    report = log_incrementality(frames, limits=LIMITS)
    d = report.diagnostics
    assert d["intended_agreement"] == 1.0 and d["holdout_treatment"] == "nothing"
    assert d["holdout_decisions"] == int((synthetic.decisions["group"] == "holdout").sum())
    t = _targets(synthetic)
    for outcome in ("converted", "value"):
        r = next(x for x in report.overall if x.outcome == outcome)
        nothing = synthetic.true_value(t["holdout"], outcome)
        for arm, target in (("nba", t["nba"]), ("explore", t["random"])):
            true_lift = synthetic.true_value(target, outcome) - nothing
            a = r.arm(arm)
            assert a.ci_low <= true_lift <= a.ci_high, (outcome, arm, a, true_lift)
            assert a.units < a.n  # customers, not decisions, are the units
        assert r.arm("nba").p_value < 1e-6
    channels = {r.segment for r in report.by_channel}
    assert channels == {"email", "sms", "push", "call_centre", "web"}
    # per intended action: the segment with the most hold-out conversions covers its truth (each
    # action's hold-out has under min_arm_size customers here, and says so)
    conv = [r for r in report.by_action if r.outcome == "converted"]
    biggest = max(conv, key=lambda r: r.control.responders)
    assert any("min_arm_size" in f for f in biggest.arm("nba").flags)
    greedy = synthetic.decisions["greedy_index"].to_numpy()
    rows = greedy == ACTIONS.index(biggest.segment)
    true_lift = synthetic.true_value(t["nba"], rows=rows) - synthetic.true_value(t["holdout"], rows=rows)
    assert biggest.arm("nba").ci_low <= true_lift <= biggest.arm("nba").ci_high
    assert "do_nothing" in {r.segment for r in conv}  # decisions the threshold left without an action
    # mortgage: a hold-out too small to see one conversion is flagged, not reported as a plain lift
    mortgage = next(r for r in conv if r.segment == "mortgage").arm("nba")
    assert not mortgage.reliable and any("min_responses" in f for f in mortgage.flags)


def test_log_without_a_usable_holdout_is_an_error_or_flagged(frames):
    no_holdout = replace(frames, decisions=frames.decisions[frames.decisions["experiment_group"] != "holdout"])
    with pytest.raises(ExperimentDataError, match="no hold-out decision among"):
        log_incrementality(no_holdout)
    pol = platform_policy_values(no_holdout, limits=LIMITS).policy("holdout")
    assert not pol.reliable and "cannot be estimated" in pol.diagnostics.flags[0]

    holdout_ids = set(frames.decisions.loc[frames.decisions["experiment_group"] == "holdout", "decision_id"])
    unreported = replace(frames, outcomes=frames.outcomes[~frames.outcomes["decision_id"].isin(holdout_ids)])
    lifts = log_incrementality(unreported, limits=LIMITS).overall[0]
    assert all(any("no outcome was reported against any hold-out decision" in f for f in a.flags) for a in lifts.arms)

    silent = replace(frames, outcomes=frames.outcomes.iloc[0:0])  # decisions made, no outcome reported yet
    with pytest.raises(ExperimentDataError, match="no outcome: nothing was reported to /respond"):
        platform_policy_values(silent, limits=LIMITS)

    no_cands = replace(frames, candidates=frames.candidates[~frames.candidates["decision_id"].isin(holdout_ids)])
    report = log_incrementality(no_cands, limits=LIMITS)
    assert report.by_action == () and any("per-action incrementality is not reported" in n for n in report.notes)
    assert report.by_channel  # overall and per channel still are


# --- policy value from the log ---------------------------------------------------------------


def test_platform_policies_recover_their_true_value(synthetic: SyntheticLog, frames):
    offpolicy = (synthetic.decisions["group"] != "holdout").to_numpy()
    holdout = ~offpolicy
    t = _targets(synthetic)
    for outcome in ("converted", "value"):
        report = platform_policy_values(frames, outcome=outcome, limits=LIMITS)
        assert [p.policy for p in report.policies] == list(PLATFORM_POLICIES)
        assert report.diagnostics["nba_agreement"] == 1.0
        for name in PLATFORM_POLICIES:
            pv = report.policy(name)
            truth = synthetic.true_value(t[name], outcome, rows=holdout if name == "holdout" else offpolicy)
            for e in pv.estimates:
                if e.estimator == "logged":
                    continue
                assert e.ci_low <= truth <= e.ci_high, (outcome, name, e, truth)
            assert pv.reliable, (name, pv.diagnostics.flags)
        # the truth ranks propensity-only above NBA on conversion; on value NBA wins: the estimates agree
        dr = {p.policy: p.estimate("dr" if p.policy != "holdout" else "on_policy").value for p in report.policies}
        if outcome == "converted":
            assert dr["propensity_only"] > dr["nba"] > dr["holdout"]
        else:
            assert dr["nba"] > dr["random"] > dr["holdout"]


def test_without_exploration_only_the_nba_policy_has_support(tmp_path: Path):
    s = build_log(tmp_path / "log", customers=1_500, seed=SEED, eps=0.0)
    report = platform_policy_values(read_log(s.folder), limits=LIMITS)
    assert report.policy("nba").reliable and report.policy("nba").diagnostics.unsupported_share == 0.0
    for name in ("random", "propensity_only", "no_levers"):
        pv = report.policy(name)
        assert pv.diagnostics.unsupported_share > LIMITS.max_unsupported_share and not pv.reliable
        assert any("could not take" in f for f in pv.diagnostics.flags)


# --- the command line on a decision log -------------------------------------------------------


def test_cli_on_the_decision_log(cli_env, synthetic: SyntheticLog, tmp_path: Path):  # noqa: F811
    out = tmp_path / "inc.json"
    proc = run(["evaluate", "incrementality", "--log", str(synthetic.folder), "--json", str(out), "--no-publish"],
               cli_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["control"] == "holdout" and {a["arm"] for a in doc["arms"]} == {"nba", "explore"}
    assert {s["by"] for s in doc["segments"]} == {"channel", "intended_action"}

    pol = tmp_path / "pol.json"
    proc = run(["evaluate", "policy", "--log", str(synthetic.folder), "--outcome", "value", "--json", str(pol),
                "--no-publish"], cli_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(pol.read_text())
    assert [p["name"] for p in doc["policies"]] == list(PLATFORM_POLICIES)
    for p in doc["policies"]:
        assert {"name", "value", "ci_low", "ci_high", "estimator", "flags"} <= set(p)
        assert p["ci_low"] <= p["value"] <= p["ci_high"]

    empty = tmp_path / "empty_log"
    proc = run(["evaluate", "incrementality", "--log", str(empty), "--no-publish"], cli_env)
    assert_one_line_error(proc, str(empty), "does not exist")


# --- Hillstrom ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_hillstrom_policy_values_and_the_json_schema(cli_env, tmp_path: Path):  # noqa: F811
    """`--data hillstrom`, the special case of the generic command: the learnt policy against the
    fixed ones on the held-out half, by DR with the known 1/3 per arm, net of 0.10 $ per e-mail."""
    out = tmp_path / "policy.json"
    proc = run(["evaluate", "policy", "--data", "hillstrom", "--seed", "11", "--json", str(out), "--no-publish"],
               cli_env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    names = [p["name"] for p in doc["policies"]]
    assert names == ["learned", "all:Mens E-Mail", "all:Womens E-Mail", "none", "random"]
    pol = {p["name"]: p for p in doc["policies"]}
    for p in pol.values():
        assert {"name", "value", "ci_low", "ci_high", "gross_value", "cost", "vs_best_single", "vs_none"} <= set(p)
        assert p["ci_low"] < p["value"] < p["ci_high"] and p["reliable"]
    # the fixed policies' gross values are their arms' mean spend, within their CIs; net = gross - cost
    for name, arm in (("all:Mens E-Mail", "Mens E-Mail"), ("none", "No E-Mail")):
        _, _, spend = HILLSTROM_ARM_MEANS[arm]
        assert pol[name]["gross_ci_low"] < spend < pol[name]["gross_ci_high"]
    assert pol["all:Mens E-Mail"]["value"] == pytest.approx(pol["all:Mens E-Mail"]["gross_value"] - 0.10)
    assert pol["none"]["shares"]["No E-Mail"] == 1 and pol["none"]["cost"] == 0
    # sending the Mens e-mail to everyone beats sending nothing, significantly
    assert pol["none"]["vs_best_single"]["ci_high"] < 0
    assert doc["learned_vs_best_single"]["best_single"] == "all:Mens E-Mail"
    assert pol["learned"]["vs_none"]["diff"] > 0
    split = doc["split"]
    assert split["train_rows"] + split["test_rows"] == 64_000 and abs(split["test_rows"] - 32_000) <= 2
    assert doc["costs"] == {"Mens E-Mail": 0.10, "Womens E-Mail": 0.10, "No E-Mail": 0.0}
    assert doc["assignment_probability"] == {a: pytest.approx(1 / 3) for a in ("Mens E-Mail", "Womens E-Mail",
                                                                                "No E-Mail")}
