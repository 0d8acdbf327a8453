"""The main job on embedded defaults, step by step, each step timed and explained."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from nba.errors import DataFileError, NbaError
from nba.evaluation.dashboards import ui_command
from nba.features import store
from nba.io import write_parquet
from nba.serving.run import serve as run_service
from nba.settings import Settings
from nba.training.registry import PromotionRefused, promote
from nba.training.tracking import tracking_uri


@contextmanager
def _step(echo: Callable[[str], None], title: str):
    echo(f"==> {title}")
    t0 = time.perf_counter()
    yield
    echo(f"    done in {time.perf_counter() - t0:.1f} s")


def run(settings: Settings, *, customers: int, seed: int, echo: Callable[[str], None] = print,
        train: bool = True, tune_trials: int = 3, serve: bool = True, port: int = 3000,
        loop: bool = True, events: bool = True) -> dict[str, Any]:
    """Load real data (if available), simulate, apply and materialise Feast, read online, then
    (with `train`) tune, train, register and promote every model, build the serving bundle,
    (with `loop`) let the platform decide for the bank for four simulated weeks with every
    outcome reported and fill the dashboards, (with `events`) replay a simulated day of events
    through a decision service started for it, and (with `serve`) run the decision service on
    localhost until interrupted."""
    from nba.data.simulator import simulate_to_dir

    result: dict[str, Any] = {}
    with _step(echo, "Real data sets (Hillstrom, CDNOW): verify checksums, write tidy tables"):
        try:
            settings.real_data_dir()
        except DataFileError as exc:
            echo(f"    skipped: {exc}")
        else:
            from nba.data.cdnow import load_cdnow
            from nba.data.hillstrom import load_hillstrom

            hill = load_hillstrom(settings=settings)
            cd = load_cdnow(settings=settings)
            real = settings.work / "real"
            write_parquet(hill.customers, real / "hillstrom_customers.parquet")
            write_parquet(hill.experiment, real / "hillstrom_experiment.parquet")
            write_parquet(cd, real / "cdnow_transactions.parquet")
            means = hill.experiment.groupby("arm")["conversion"].mean()
            echo(f"    Hillstrom: {len(hill.experiment):,} customers; conversion by arm: "
                 + ", ".join(f"{a} {m:.4f}" for a, m in means.items()))
            echo(f"    CDNOW: {len(cd):,} purchases by {cd['customer_id'].nunique():,} customers")
            echo(f"    tables in {real}")
            result["real"] = str(real)

    with _step(echo, f"Simulate the bank: {customers:,} customers, seed {seed}"):
        manifest = simulate_to_dir(customers=customers, seed=seed, out_dir=settings.sim_dir, progress=True)
        echo(f"    {manifest['rows']['interactions']:,} contacts; tables and ground truth in {settings.sim_dir}")
        result["sim"] = manifest

    with _step(echo, "Feast: apply the feature repository"):
        applied = store.apply(settings)
        echo(f"    {len(applied.feature_views)} feature views, services: {', '.join(applied.feature_services)}")
        echo(f"    repository: {applied.repo}")

    with _step(echo, "Feast: materialise the latest snapshot into the online store"):
        mat = store.materialize(settings)
        echo(f"    window {mat.start:%Y-%m-%d} .. {mat.end:%Y-%m-%d} -> {mat.online_store} online store")

    with _step(echo, "Feast: online read of serving_v1 for one customer"):
        import pyarrow.parquet as pq

        ids = pq.read_table(settings.feast_repo / "data" / "profile.parquet", columns=["customer_id"]).column(0)
        customer = int(ids[0].as_py())
        row = store.online_features(settings, "serving_v1", [customer])
        shown = {k: row[k][0] for k in ("customer_id", "age", "rfm_segment", "credit_score",
                                        "consent_email", "days_since_last_contact")}
        echo(f"    {shown}")
        result["customer"] = customer

    if train:
        result["models"] = train_all(settings, tune_trials=tune_trials, echo=echo)
        with _step(echo, "Bundle: pin every @champion, import them into BentoML, build the Bento"):
            from nba.serving.bundle import build

            built = build(settings)
            echo(f"    {len(built.models)} models, catalog {built.catalog_version} -> Bento {built.bento_tag}")
            result["bento"] = built.bento_tag
        if loop:
            result["loop"] = short_loop(settings, customers=customers, seed=seed, echo=echo)
        if events:
            result["events"] = replay_events(settings, echo=echo)

    echo("")
    echo("Where to look:")
    echo(f"  simulator output and truth:  {settings.sim_dir}")
    echo(f"  Feast repository:            {settings.feast_repo}  (cd there and run `feast ui` or `feast feature-services list`)")
    echo("  a training frame:            nba features training-frame --service propensity_v1 --entities FILE")
    echo(f"  online features:             nba features online --customer {result['customer']}")
    if train:
        uri = tracking_uri(settings)
        echo(f"  experiments and registry:    {uri}" if uri.startswith(("http://", "https://")) else
             f"  experiments and registry:    .venv/bin/mlflow ui --backend-store-uri {uri}")
        echo(f"  serving bundle:              {settings.bundle_dir}  (nba bundle show; nba serve)")
        echo("  outbound batch:              nba decide-batch --customers FILE --channel email --out FILE")
        echo(f"  outbound messages:           nba activation status  (the delivery worker runs beside the service; "
             f"files in {settings.activation_dir}, connectors in serving/activation.yaml)")

        echo(f"  evaluation reports (HTML):   {settings.reports_dir}  (written by nba report and nba evaluate ..."
             " once decisions are logged)")
        echo(f"  dashboards:                  {ui_command(settings)}")
        echo("  business KPIs and attribution: nba evaluate kpis --behaviour <sim dir or FILE> --html FILE  (platform"
             " dashboard: kpi_rates, kpi_money, kpi_holdout per month; kpi_period, attribution)")
        if loop:
            echo(f"  the short loop's log:        {settings.decision_log_dir}  (hold-out incrementality, policy value"
                 " and the KPIs on the 'platform' dashboard; nba report refreshes them)")
            echo(f"  the short loop's figures:    {settings.reports_dir / 'loop.html'}")
        if result.get("events"):
            echo(f"  the replayed day's messages: {settings.activation_dir}/<channel>.jsonl  (nba activation status;"
                 f" decisions in {settings.decision_log_dir}, source trigger:<id>)")
    if train and serve:
        echo("")
        echo(f"==> The decision service (BentoML, {settings.serve_workers} workers) on http://127.0.0.1:{port}")
        run_service(settings, port=port, echo=echo)
    return result


def replay_events(settings: Settings, *, echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Replay the newest simulated day of the simulator's events through POST /events of a
    decision service started for it on a free loopback port (stopped after), deliver the
    outbox, and print per trigger what fired, the decisions and the messages per channel.
    None when the simulator wrote no events."""
    from nba.simulation import replay

    path = replay.events_path(settings)
    if not path.is_file():
        echo(f"==> Always-on: the simulator wrote no events ({path} does not exist); the replay of a day through "
             "/events is skipped")
        return None
    with _step(echo, "Always-on: a simulated day of events through POST /events; the triggers decide, the outbox "
                     "is delivered"):
        frame = replay.read_events(path)
        log = settings.work / "replay" / "service.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        echo(f"    starting a decision service for the replay (log: {log})")
        with replay.served(settings, log_file=log) as url:
            summary = replay.replay_day(settings, url, frame)
        for line in replay.summary_lines(summary):
            echo(f"    {line}")
    return summary.as_dict()


def train_all(settings: Settings, *, tune_trials: int, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Tune with a small budget, train every model family, promote every challenger.

    Returns registered model -> champion version. A refused promotion is an error: the
    quickstart promises a champion for every model.
    """
    from nba.training import propensity
    from nba.training.churn import train_churn
    from nba.training.clv import train_clv
    from nba.training.tune import tune
    from nba.training.uplift import train_uplift

    if tune_trials > 0:
        with _step(echo, f"Optuna: {tune_trials} trials each for churn and the pooled propensity model"):
            for model in ("churn", "propensity"):
                res = tune(settings, model, tune_trials, progress=False)
                echo(f"    {model}: best {res.metric} {res.best_value:.4f} "
                     f"({res.n_complete} complete, {res.n_pruned} pruned) -> {res.best_params_path}")

    trained = []
    with _step(echo, "Train propensity models (one per action)"):
        trained += propensity.train_propensity(settings, progress=lambda a: echo(f"    {a}"))
    with _step(echo, "Train churn"):
        trained.append(train_churn(settings))
    with _step(echo, "Train CLV (CDNOW 39+39 weeks, and the bank)"):
        sources = ["cdnow", "sim"] if settings.data_dir is not None else ["sim"]
        trained += [train_clv(settings, src) for src in sources]
    with _step(echo, "Train uplift models (Hillstrom e-mails, the bank's exploration data)"):
        sources = ["hillstrom", "sim"] if settings.data_dir is not None else ["sim"]
        for src in sources:
            trained += train_uplift(settings, src, progress=lambda a: echo(f"    {a}"))

    champions: dict[str, str] = {}
    refused: list[str] = []
    with _step(echo, f"Promote {len(trained)} challengers behind evaluation/gates.yaml"):
        for m in trained:
            try:
                promoted = promote(settings, m.name, reason="quickstart")
            except PromotionRefused as exc:
                refused.append(f"{m.name}: {exc}")
                continue
            champions[m.name] = promoted.version
            echo(f"    {m.name:<40} v{promoted.version} @champion")
    if refused:
        raise NbaError("quickstart: promotion refused for " + "; ".join(refused))
    return champions


def short_loop(settings: Settings, *, customers: int, seed: int, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Four simulated weeks (one month) of the closed loop on the quickstart's bank, with the
    quickstart's champions (no retraining), then the hold-out incrementality and the policy value
    of its decision log published to the reviewers' `platform` dashboard."""
    from nba.evaluation.incrementality import log_incrementality
    from nba.evaluation.limits import evaluation_limits
    from nba.evaluation.policy import platform_policy_values
    from nba.evaluation.render import (
        REPORT_PROJECT,
        lift_frame,
        overall_results,
        policy_frame,
        publish_figures,
    )
    from nba.simulation.loop import ClosedLoop, LoopConfig, write_html, write_json
    from nba.stores.decisions import read_log

    with _step(echo, "A short closed loop: the platform decides for the bank for 4 simulated weeks, "
                     "every answer reported through /respond's path"):
        loop = ClosedLoop(settings, LoopConfig(customers=customers, months=1, seed=seed, retrain=False), echo=echo)
        report = loop.run()
        month = report.months[0]
        write_json(report, settings.reports_dir / "loop.json")
        html = write_html(report, settings.reports_dir / "loop.html")
        echo(f"    {month.decisions:,} decisions, {month.shown:,} actions shown, {month.accepted:,} accepted; "
             f"true value per customer: platform {month.truth['platform']:.2f}, legacy {month.truth['legacy']:.2f}, "
             f"oracle {month.truth['oracle']:.2f} -> {html}")
    with _step(echo, f"The '{REPORT_PROJECT}' dashboard: hold-out incrementality and policy value of the loop's log"):
        frames = read_log(settings.decision_log_dir)
        limits = evaluation_limits(settings)
        inc = log_incrementality(frames, limits=limits)
        pub_inc = publish_figures(settings, name="incrementality", values=inc.values(),
                                  description="Hold-out incrementality (decision log)",
                                  tables={"arms": lift_frame(overall_results(inc)[0])})
        pol = platform_policy_values(frames, limits=limits)
        pub_pol = publish_figures(settings, name="policy", values=pol.values(),
                                  description="Policy value from the decision log (converted)",
                                  tables={"policies": policy_frame(pol.to_dict()["policies"])})
        echo(f"    incrementality -> {pub_inc.html}")
        echo(f"    policy value   -> {pub_pol.html}")
    return {"decisions": month.decisions, "truth": month.truth, "report": str(html),
            "published": [str(pub_inc.html), str(pub_pol.html)]}
