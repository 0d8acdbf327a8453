"""Business KPIs (`nba evaluate kpis`): on a simulated bank's decision log whose truth is known,
treated against hold-out recovers the true effect on churn, value and CLV within its CI; the
figures equal a direct pandas computation; a period without decisions is an empty report; the
behaviour contract's errors name the column; the command as a real process publishes monthly
snapshots that the dashboard panels plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba.config import load_yaml_model
from nba.errors import ConfigError
from nba.evaluation import kpis as kp
from nba.evaluation.kpi_report import html_page, publish_kpis
from nba.stores.decisions import read_log
from tests.conftest import PROJECT_ROOT
from tests.synthetic_behaviour import later_behaviour, true_effects
from tests.synthetic_log import build_log
from tests.test_cli import assert_one_line_error, run

EPS, HORIZONS = 0.2, (3, 6)
COSTS = kp.Costs.from_strategy(PROJECT_ROOT)


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    root = tmp_path_factory.mktemp("kpis")
    log = build_log(root / "log", customers=6_000, eps=EPS, holdout_share=0.2)
    behaviour = later_behaviour(log, months=7)
    path = root / "behaviour.parquet"
    behaviour.to_parquet(path)
    return log, behaviour, path


@pytest.fixture(scope="module")
def report(bank):
    log, behaviour, _ = bank
    return kp.kpi_report(read_log(log.folder), behaviour=kp.behaviour_frame(behaviour), costs=COSTS,
                         horizons=HORIZONS)


def test_treated_against_hold_out_recovers_the_true_effect(bank, report):
    log, _, _ = bank
    truth = true_effects(log, eps=EPS, horizons=HORIZONS, discount_rate=COSTS.discount_rate)
    overall = report.holdout[report.holdout["by"] == "overall"].set_index(["metric", "horizon"])
    assert len(overall) == 6
    for (metric, h), true in truth.items():
        row = overall.loc[(metric, h)]
        assert row["ci_low"] < true < row["ci_high"], (metric, h, true, row.to_dict())
    # the effect is measured, not merely bracketed: value and CLV are detected, with the truth's sign
    for metric in ("value", "clv"):
        for h in HORIZONS:
            assert overall.loc[(metric, h), "ci_low"] > 0 and truth[(metric, h)] > 0
    assert truth[("churn", 6)] < 0  # converted customers stay: the policy lowers churn
    assert overall.loc[("clv", 6), "treated_clv_cac"] == pytest.approx(
        overall.loc[("clv", 6), "treated_mean"] / COSTS.acquisition)


def test_hold_out_figures_match_a_direct_computation(bank, report):
    log, behaviour, _ = bank
    frames = read_log(log.folder)
    d = frames.decisions
    arm = d.groupby("customer_id")["experiment_group"].agg(lambda g: "holdout" if (g == "holdout").all()
                                                           else "treated")
    b = behaviour.assign(month=pd.to_datetime(behaviour["month"], utc=True))
    cohort = pd.Timestamp("2025-06-01", tz="UTC")  # every decision of the synthetic log is in June 2025
    assert (pd.to_datetime(d["decided_at"]).dt.strftime("%Y-%m") == "2025-06").all()
    for h in HORIZONS:
        inside = b[(b["month"] > cohort) & (b["month"] <= cohort + pd.DateOffset(months=h))]
        value = inside.groupby("customer_id")["value"].sum().reindex(arm.index, fill_value=0.0) / h
        gone = b[(b["month"] <= cohort + pd.DateOffset(months=h)) & (b["churned"] == 1)]["customer_id"]
        churn = pd.Series(arm.index.isin(set(gone)).astype(float), index=arm.index)
        k = (inside["month"].dt.year - 2025) * 12 + inside["month"].dt.month - 6
        clv = (inside["value"] * (1 + COSTS.discount_rate) ** (-k / 12)).groupby(inside["customer_id"]).sum()
        clv = clv.reindex(arm.index, fill_value=0.0)
        rows = report.holdout[(report.holdout["by"] == "overall") & (report.holdout["horizon"] == h)]
        rows = rows.set_index("metric")
        for metric, y in (("value", value), ("churn", churn), ("clv", clv)):
            assert rows.loc[metric, "treated_mean"] == pytest.approx(y[arm == "treated"].mean(), rel=1e-9)
            assert rows.loc[metric, "holdout_mean"] == pytest.approx(y[arm == "holdout"].mean(), rel=1e-9)
            assert rows.loc[metric, "treated_n"] == (arm == "treated").sum()
    # per channel of the first decision: the same means within the channel
    first = d.sort_values("decided_at").drop_duplicates("customer_id").set_index("customer_id")["channel"]
    row = report.holdout[(report.holdout["by"] == "channel") & (report.holdout["key"] == "sms")
                         & (report.holdout["metric"] == "value") & (report.holdout["horizon"] == 3)].iloc[0]
    inside = b[(b["month"] > cohort) & (b["month"] <= cohort + pd.DateOffset(months=3))]
    value = inside.groupby("customer_id")["value"].sum().reindex(arm.index, fill_value=0.0) / 3
    sms = first.reindex(arm.index) == "sms"
    assert row["treated_mean"] == pytest.approx(value[sms & (arm == "treated")].mean())
    assert row["holdout_n"] == int((sms & (arm == "holdout")).sum())


def test_activity_figures_match_a_direct_computation(bank, report):
    log, _, _ = bank
    frames = read_log(log.folder)
    d = frames.decisions
    shown = d[d["action_id"] != "do_nothing"]
    o = frames.outcomes
    m = shown.merge(o.rename(columns={"value": "reported"}), on=["decision_id", "action_id"], how="left")
    cost = m["channel"].map(COSTS.channel) + m["action_id"].map(COSTS.action)
    accepted = (m["outcome"] == "accepted").fillna(False).astype(bool)
    overall = report.overall()
    assert overall["contacts"] == len(shown)
    assert overall["reach"] == shown["customer_id"].nunique()
    assert overall["responses"] == int(m["outcome"].notna().sum())
    assert overall["conversions"] == int(accepted.sum())
    assert overall["value"] == pytest.approx(m.loc[accepted, "reported"].sum())
    assert overall["cost"] == pytest.approx(cost.sum())
    assert overall["roi"] == pytest.approx((m.loc[accepted, "reported"].sum() - cost.sum()) / cost.sum())
    k = report.kpis
    by_action = k[k["by"] == "action"].set_index("action")
    direct = m.assign(acc=accepted).groupby("action_id")["acc"].mean()
    assert by_action["conversion_rate"].to_dict() == pytest.approx(direct.to_dict())
    # the finest rows add up to the totals, and every row is one of the dimensions' combinations
    fine = k[k["by"] == "segment x action x channel x month"]
    assert fine["contacts"].sum() == len(shown) and fine["cost"].sum() == pytest.approx(cost.sum())
    assert set(k["by"]) == {"overall", "segment", "action", "channel", "month", "channel x month",
                            "segment x action x channel x month"}


def test_an_empty_period_is_an_empty_report(bank, settings):
    log, behaviour, _ = bank
    empty = kp.kpi_report(read_log(log.folder), behaviour=kp.behaviour_frame(behaviour), costs=COSTS,
                          since=pd.Timestamp("2024-01-01", tz="UTC"), until=pd.Timestamp("2024-02-01", tz="UTC"))
    assert empty.empty and empty.decisions == 0
    assert len(empty.kpis) == 0 and len(empty.holdout) == 0 and empty.attribution is None
    assert "no decision in the period" in empty.notes[0] and "not zeros" in empty.notes[0]
    doc = empty.to_dict()
    assert doc["empty"] is True and doc["overall"] == {} and doc["kpis"] == []
    assert "Empty report" in html_page(empty) and "<img" not in html_page(empty)
    assert publish_kpis(settings, empty) == []
    assert not settings.evidently_workspace.exists()


def test_segments_are_taken_as_of_each_decision(bank):
    log, _, _ = bank
    d = read_log(log.folder).decisions.head(4).copy()
    d["customer_id"] = [1, 1, 2, 3]
    d["decided_at"] = pd.to_datetime(["2025-06-10", "2025-07-10", "2025-06-10", "2025-06-10"], utc=True)
    segs = pd.DataFrame({"customer_id": [1, 1, 2], "segment": ["new", "loyal", "at_risk"],
                         "event_timestamp": pd.to_datetime(["2025-06-01", "2025-07-01", "2025-07-01"], utc=True)})
    assert kp.segment_of(d, segs).tolist() == ["new", "loyal", "unknown", "unknown"]
    assert kp.segment_of(d, segs.drop(columns="event_timestamp")).tolist() == ["loyal", "loyal", "at_risk", "unknown"]
    assert kp.segment_of(d, None).tolist() == ["all"] * 4


def test_the_simulator_tables_are_a_behaviour_frame(tmp_path: Path):
    from nba.data.simulator import SimulationConfig, simulate, write

    sim = simulate(SimulationConfig(customers=800, seed=3, months=6))
    write(sim, tmp_path / "sim")
    read, segments = kp.read_behaviour(tmp_path / "sim")
    assert len(read) == len(sim.monthly_value) and segments is not None
    assert set(segments["segment"]) == set(sim.rfm["rfm_segment"]) and "event_timestamp" in segments
    with pytest.raises(kp.KpiInputError, match="monthly_value.parquet"):
        kp.read_behaviour(tmp_path)
    frame = kp.behaviour_frame(kp.simulator_behaviour(sim.monthly_value, sim.customers))
    assert len(frame) == len(sim.monthly_value)
    assert frame["value"].sum() == pytest.approx(sim.monthly_value["margin"].sum())
    churned = sim.customers["churn_timestamp"].notna()
    assert frame["churned"].sum() == churned.sum() > 0
    # a churned customer has no row after its churn month
    last = frame.groupby("customer_id")["m"].max()
    gone = frame[frame["churned"] == 1].set_index("customer_id")["m"]
    assert (last.reindex(gone.index) == gone).all()


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda f: f.drop(columns="churned"), "missing column(s) ['churned']"),
    (lambda f: f.assign(churned=2), "column 'churned'"),
    (lambda f: f.assign(value="a lot"), "column 'value'"),
    (lambda f: f.assign(month="someday"), "column 'month'"),
    (lambda f: f.assign(customer_id=f["customer_id"].astype(float) + 0.5), "column 'customer_id'"),
    (lambda f: pd.concat([f, f.head(1)]), "two rows for month 2025-06"),
])
def test_behaviour_contract_errors_name_the_column(change, fragment):
    good = pd.DataFrame({"customer_id": [1, 2], "month": ["2025-06-01", "2025-06-15"], "value": [1.0, 2.0],
                         "churned": [0, 1]})
    assert len(kp.behaviour_frame(good)) == 2
    with pytest.raises(kp.KpiInputError) as err:
        kp.behaviour_frame(change(good), "beh.csv")
    assert fragment in str(err.value) and "beh.csv" in str(err.value)


def test_costs_come_from_the_strategy_and_are_validated(tmp_path: Path):
    assert COSTS.channel["call_centre"] == 4.0 and COSTS.action["mortgage"] == 40.0
    assert COSTS.acquisition == 150 and COSTS.discount_rate == 0.10
    from nba.catalog import PoliciesFile

    text = (PROJECT_ROOT / "serving" / "policies.yaml").read_text().replace("acquisition_cost: 150",
                                                                           "acquisition_cost: -5")
    bad = tmp_path / "policies.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="acquisition_cost"):
        load_yaml_model(bad, PoliciesFile, "contact policies")
    with pytest.raises(kp.KpiInputError, match="channel 'sms'"):
        kp.Costs(channel={"sms": -1.0})


@pytest.fixture
def cli_env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    import os

    e = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    e.update(NBA_HOME=str(PROJECT_ROOT), NBA_WORK_DIR=str(tmp_path / "var"), NBA_DATA_DIR=str(data_dir))
    return e


def test_cli_writes_json_html_and_monthly_snapshots_the_panels_plot(bank, cli_env, tmp_path: Path, report):
    from nba.evaluation import dashboards
    from nba.settings import Settings

    log, _, behaviour = bank
    out, page = tmp_path / "k.json", tmp_path / "k.html"
    proc = run(["evaluate", "kpis", "--log", str(log.folder), "--behaviour", str(behaviour), "--months", "3,6",
                "--json", str(out), "--html", str(page)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "clv over 6 months: treated" in proc.stdout and "published 2 snapshot(s)" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["empty"] is False and doc["horizons_months"] == [3, 6]
    assert doc["overall"]["contacts"] == report.overall()["contacts"]
    holdout = {(r["metric"], r["horizon"], r["by"], r["key"]): r for r in doc["holdout"]}
    assert holdout[("clv", 6, "overall", "overall")]["lift"] == pytest.approx(
        float(report.holdout.query("metric == 'clv' and horizon == 6 and by == 'overall'")["lift"].iloc[0]))
    assert {r["by"] for r in doc["attribution"]} == {"action", "channel"}
    html = page.read_text()
    assert html.count("<img") == 3 and "Attribution beside the hold-out incremental value" in html
    s = Settings(home=PROJECT_ROOT, work_dir=tmp_path / "var")
    ws = dashboards.open_workspace(s, create=False)
    values = dashboards.read_values(ws, "platform")
    june = [v for v in values if v["snapshot"] == "kpis-2025-06"]
    assert june and str(june[0]["timestamp"]).startswith("2025-06-01")
    names = {v["labels"].get("name") for v in june}
    assert {"kpi_rates.conversion_rate.overall", "kpi_money.roi.channel.call_centre",
            "kpi_holdout.clv_6m.lift"} <= names
    points = dashboards.panel_points(ws, "platform")
    for group in ("kpi_rates", "kpi_money", "kpi_holdout", "kpi_period", "attribution"):
        assert points[(dashboards.OVERVIEW, dashboards.GROUP_TITLES[group])] > 0, group
    assert (tmp_path / "var" / "reports" / "platform" / "kpis" / "2025-06.html").is_file()


def test_cli_empty_period_and_bad_options(bank, cli_env, tmp_path: Path):
    log, _, behaviour = bank
    out = tmp_path / "e.json"
    proc = run(["evaluate", "kpis", "--log", str(log.folder), "--since", "2024-01-01", "--until", "2024-02-01",
                "--json", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "empty report: no decision in the period" in proc.stdout and "nothing published" in proc.stdout
    assert json.loads(out.read_text())["empty"] is True
    assert_one_line_error(run(["evaluate", "kpis", "--log", str(log.folder), "--months", "three", "--no-publish"],
                              cli_env), "--months 'three'")
    bad = tmp_path / "b.csv"
    pd.DataFrame({"customer_id": [1], "month": ["2025-07-01"], "value": [1.0]}).to_csv(bad, index=False)
    assert_one_line_error(run(["evaluate", "kpis", "--log", str(log.folder), "--behaviour", str(bad),
                               "--no-publish"], cli_env), str(bad), "['churned']")
    assert np.isfinite(pd.read_parquet(behaviour)["value"]).all()


def test_the_compiled_catalog_carries_the_costs_and_economics(tmp_path: Path):
    from nba.catalog import load_catalog
    from tests.test_catalog import FEATURES

    cat = load_catalog(PROJECT_ROOT, FEATURES)
    costs = {a.id: a.cost for a in cat.actions}
    assert costs == dict(COSTS.action) and costs["mortgage"] == 40.0 and costs["add_email"] == 0.0
    assert cat.economics.acquisition_cost == COSTS.acquisition
    actions = (PROJECT_ROOT / "serving" / "actions.yaml").read_text().replace("    cost: 40\n", "    cost: -40\n")
    (tmp_path / "actions.yaml").write_text(actions)
    with pytest.raises(ConfigError, match="cost"):
        load_catalog(PROJECT_ROOT, FEATURES, actions=tmp_path / "actions.yaml")


def test_a_period_of_hold_out_decisions_only_measures_nothing_it_cannot(bank):
    from nba.stores.decisions import LogFrames

    log, behaviour, _ = bank
    frames = read_log(log.folder)
    ids = set(frames.decisions.loc[frames.decisions["experiment_group"] == "holdout", "decision_id"])

    def only(f: pd.DataFrame) -> pd.DataFrame:
        return f[f["decision_id"].isin(ids)].reset_index(drop=True)

    held = LogFrames(only(frames.decisions), only(frames.candidates), only(frames.filtered), only(frames.outcomes),
                     None)
    rep = kp.kpi_report(held, behaviour=kp.behaviour_frame(behaviour), costs=COSTS)
    assert not rep.empty and rep.overall() == {} and len(rep.holdout) == 0
    assert any("no treated customer" in n for n in rep.notes)
    assert rep.monthly_values() == {} and not any(k.startswith("attribution.") for k in rep.period_values())
