"""`nba evaluate incrementality | ope | policy | sample-size | drift | uplift | kpis`.

Thin commands over `nba.evaluation`: the files they read are parsed there
(`experiment_table`, `policy_file`), the tables and pages are rendered there (`render`), and
the limits come from `limits`. Each command prints its figures, writes them as JSON (`--json`)
and a self-contained HTML page (`--html`) where it has them, and publishes them to the
dashboards. The stack is imported inside each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from nba.cli.common import echo, model_progress, parse_time, progress, settings, write_outputs
from nba.errors import ConfigError

if TYPE_CHECKING:
    from nba.settings import Settings

app = typer.Typer(help="Drift, uplift, hold-out incrementality and off-policy value.", no_args_is_help=True)

# Fixed choices (a test checks they equal the library's tuples).
PolicyMethod = Literal["tree", "classifier"]  # nba.training.policy_learning.METHODS
RewardModel = Literal["model", "action_mean"]  # nba.evaluation.policy.REWARD_MODELS


DataOpt = Annotated[str | None, typer.Option(
    "--data", help="Experiment table: a .csv or .parquet file, or 'hillstrom' (the verified public data set). "
                   "Without it: the platform's decision log.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the figures to this JSON file.")]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report to this file.")]
LogOpt = Annotated[Path | None, typer.Option(
    "--log", help="Decision log folder (default: <work>/decision_log, env NBA_WORK_DIR).")]
ConfidenceOpt = Annotated[float, typer.Option(help="Confidence level of the intervals.", min=0.5, max=0.999)]
ThresholdOpt = Annotated[float | None, typer.Option(
    help="Decision log: also require priority > this for the arbitration's pick (default: only the log's own "
         "record of candidates the 'do nothing' threshold removed).")]
PublishOpt = Annotated[bool, typer.Option(help="Also publish the figures to the Evidently dashboards and MLflow.")]
# drift and uplift: one summary per model, and a snapshot per model in the workspace and its MLflow run
SummaryJsonOpt = Annotated[Path | None, typer.Option("--json", help="Also write the summary of every model here.")]
SnapshotOpt = Annotated[bool, typer.Option(help="Store the snapshot, HTML and MLflow artifact.")]


def _read_log(s: Settings, log: Path | None) -> Any:
    """The log folder given, else the profile's log (its Postgres rows in production)."""
    from nba.stores.decisions import log_location, read_log

    if log is not None:
        return read_log(log)
    folder, dsn = log_location(s)
    return read_log(folder, dsn=dsn)


def _publish(s: Settings, *, name: str, values: Any, description: str, tables: dict[str, Any]) -> None:
    from nba.evaluation.render import REPORT_PROJECT, publish_figures

    published = publish_figures(s, name=name, values=values, description=description, tables=tables)
    echo(f"published to the '{REPORT_PROJECT}' dashboard (snapshot {published.snapshot_id}); report {published.html}")


# --- incrementality -----------------------------------------------------------------------


@app.command("incrementality")
def incrementality_cmd(
    data: DataOpt = None,
    arm_column: Annotated[str | None, typer.Option(
        help="Column naming each row's arm (group) (hillstrom: arm).")] = None,
    control: Annotated[str | None, typer.Option(
        help="The arm value of the control group (hillstrom: 'No E-Mail').")] = None,
    outcome: Annotated[list[str] | None, typer.Option(
        "--outcome", help="Outcome column, 0/1 or numeric (repeat for several; the first is the primary) "
                          "(hillstrom: visit, conversion, spend).")] = None,
    value_column: Annotated[str | None, typer.Option(
        help="A numeric value per row (e.g. revenue) reported beside the outcome.")] = None,
    cluster_column: Annotated[str | None, typer.Option(
        help="The unit of randomisation when a unit has several rows (e.g. customer_id): clustered errors.")] = None,
    by: Annotated[list[str] | None, typer.Option(
        "--by", help="Also report per value of this column (repeat), e.g. channel.")] = None,
    json_out: JsonOpt = None,
    html_out: HtmlOpt = None,
    log: LogOpt = None,
    threshold: ThresholdOpt = None,
    confidence: ConfidenceOpt = 0.95,
    publish: PublishOpt = True,
) -> None:
    """Lift of every treated arm over the control: mean, absolute and relative lift, CIs, p-value.

    With --data FILE: any experiment table (one row per unit, or per event with
    --cluster-column naming the unit). With --data hillstrom: each e-mail over no e-mail.
    Without --data: the platform's decision log, nba and explore decisions against the
    universal hold-out, overall, per channel and per intended action (the arbitration's pick,
    see nba/evaluation/incrementality.py), clustered by customer.

    CIs: Welch for the absolute lift, the delta method for the relative lift. Estimates below
    the `evaluation:` limits of evaluation/gates.yaml are flagged with the reason.
    """
    from nba.evaluation.experiment_table import experiment_table
    from nba.evaluation.experiments import experiment_incrementality
    from nba.evaluation.incrementality import log_incrementality
    from nba.evaluation.limits import evaluation_limits
    from nba.evaluation.render import incrementality_sections, lift_frame, overall_results

    s = settings()
    limits = evaluation_limits(s)
    report: Any
    if data is None:
        for name, value in (("--arm-column", arm_column), ("--control", control), ("--outcome", outcome),
                            ("--value-column", value_column), ("--cluster-column", cluster_column), ("--by", by)):
            if value:
                raise ConfigError(f"{name} applies to --data tables; the decision log has its own columns "
                                  "(experiment_group, converted, value, channel, intended action)")
        report = log_incrementality(_read_log(s, log), threshold=threshold, confidence=confidence, limits=limits)
        title = "Hold-out incrementality (decision log)"
    else:
        t = experiment_table(s, data, arm_column=arm_column, control=control, outcome=outcome,
                             value_column=value_column, cluster_column=cluster_column, by=by)
        report = experiment_incrementality(
            t.table, arm_column=t.arm_column, control=t.control, outcome=t.outcomes, value_column=t.value_column,
            cluster_column=cluster_column, segment_columns=list(by or []), source=t.source, confidence=confidence,
            limits=limits)
        title = f"Incrementality: {t.source}"
    payload = report.to_dict()
    results = overall_results(report)
    for r in results:
        echo(f"{r.outcome} (control '{r.control.arm}': n {r.control.n:,}, mean {r.control.mean:.4g})")
        echo(lift_frame(r).to_string(index=False))
    for note in payload.get("notes", []):
        echo(f"  note: {note}")
    write_outputs(payload, json_out, html_out, title, incrementality_sections(report))
    if publish:
        _publish(s, name="incrementality", values=report.values(), description=title,
                 tables={"arms": lift_frame(results[0])})


# --- off-policy evaluation ------------------------------------------------------------------


@app.command("ope")
def ope_cmd(
    data: Annotated[Path, typer.Option("--data", help="Logged decisions: a .csv or .parquet file, one row per "
                                                      "decision.")],
    action_column: Annotated[str, typer.Option(help="Column of the action the logging policy took.")],
    reward_column: Annotated[str, typer.Option(help="Column of the reward observed (0/1 or numeric).")],
    propensity_column: Annotated[str, typer.Option(
        help="Column of the probability with which the logging policy took that action (> 0).")],
    target: Annotated[str, typer.Option(
        help="The policy to value: 'uniform' (every logged action equally likely), or a .csv/.parquet FILE of "
             "its probabilities, either wide (one row per logged row, same order, one column per action named "
             "by its value) or long (columns row, action, probability; row = 0-based row number in --data; "
             "pairs not listed have probability 0). Actions the data never logged may appear: their mass is "
             "reported as unsupported.")],
    q_hat: Annotated[Path | None, typer.Option(
        "--q-hat", help="Expected reward of every action per row for DR, in the same formats as --target "
                        "(default: each action's mean logged reward).")] = None,
    cluster_column: Annotated[str | None, typer.Option(
        help="Unit of independence (e.g. customer_id) when a unit has several rows: clustered errors.")] = None,
    json_out: JsonOpt = None,
    confidence: ConfidenceOpt = 0.95,
) -> None:
    """Off-policy value of a target policy from logged decisions, with CIs.

    IPS, self-normalised IPS and doubly robust estimates, beside the logged policy's own value.

    Diagnostics: the effective sample size of the importance weights and the share of the
    target's probability on actions the logging policy never took; below the `evaluation:`
    limits of evaluation/gates.yaml every estimate is flagged with the reason. Zero or missing
    propensities are refused.
    """
    from nba.evaluation.limits import evaluation_limits
    from nba.evaluation.policy_file import read_logged, value_target
    from nba.evaluation.render import fmt

    limits = evaluation_limits(settings())
    logged = read_logged(data, action_column=action_column, reward_column=reward_column,
                         propensity_column=propensity_column, cluster_column=cluster_column)
    valued = value_target(logged, target, q_hat, confidence=confidence, limits=limits)
    echo(f"target policy '{valued.policy}' on {valued.rows:,} logged rows ({len(valued.actions)} actions)")
    for e in valued.result.estimates:
        echo(f"  {e.estimator:<7} {fmt(e.value):>10}  [{fmt(e.ci_low)}, {fmt(e.ci_high)}]")
    d = valued.result.diagnostics
    echo(f"  ESS {d.ess:,.1f} of {d.n:,}; unsupported share {d.unsupported_share:.2%}"
         f"{'' if d.support_known else ' (at least)'}; max weight {d.max_weight:.3g}")
    for flag in d.flags:
        echo(f"  UNRELIABLE: {flag}")
    write_outputs(valued.to_dict(), json_out, None, "", [])


# --- policy value ----------------------------------------------------------------------------


@app.command("policy")
def policy_cmd(
    data: Annotated[str | None, typer.Option(
        "--data", help="An experiment table (.csv or .parquet, one row per customer) or 'hillstrom': learn a "
                       "targeting policy on the training rows (doubly-robust scores, a policy tree, the "
                       "safe-improvement rule) and value it on the test rows against every blanket arm, none "
                       "and random. Without it: the candidate policies of the platform's decision log.")] = None,
    arm_column: Annotated[str | None, typer.Option(help="--data FILE: the column naming each row's arm.")] = None,
    control: Annotated[str | None, typer.Option(
        help="--data FILE: the arm value of the control (the 'none' policy).")] = None,
    outcome: Annotated[str | None, typer.Option(
        help="--data FILE: the numeric outcome column to maximise (hillstrom: spend | conversion | visit, default "
             "spend). Decision log: converted | value (default converted).")] = None,
    value_per_outcome: Annotated[float | None, typer.Option(
        help="What one unit of the outcome is worth (e.g. the margin of a conversion); values and costs are in "
             "this unit (default 1).")] = None,
    cost: Annotated[list[str] | None, typer.Option(
        "--cost", help="Cost per customer of an arm, ARM=C (repeat per arm; quote names with spaces: "
                       "--cost \"Mens E-Mail=0.1\"); default 0 (hillstrom, spend: 0.10 per e-mail).")] = None,
    features: Annotated[str | None, typer.Option(
        help="Comma-separated feature columns, numeric or categorical (default: every other column).")] = None,
    assignment_probability: Annotated[list[str] | None, typer.Option(
        "--assignment-probability", help="Randomised experiment: the probability of each arm, ARM=P (repeat per "
                                         "arm; they sum to 1). Default: each arm's share of the rows.")] = None,
    propensity_column: Annotated[str | None, typer.Option(
        help="Logged experiment: the column of the probability with which each row got its arm.")] = None,
    test: Annotated[Path | None, typer.Option(
        "--test", help="Value the policies on this table (same columns) instead of a share of --data.")] = None,
    test_share: Annotated[float, typer.Option(
        help="Share of --data held out to value the policies (stratified by arm).", min=0.05, max=0.8)] = 0.5,
    method: Annotated[PolicyMethod, typer.Option(
        help="The policy fitted to the DR scores: a policy tree or a weighted classifier.")] = "tree",
    depth: Annotated[int, typer.Option(help="Depth of the policy tree (1 or 2).", min=1, max=2)] = 2,
    seed: Annotated[int | None, typer.Option(help="--data: seed of the splits (default: NBA_SEED).")] = None,
    reward_model: Annotated[RewardModel, typer.Option(
        help="Decision log: the q-hat of DR, 'model' (the logged P, x V for value) or 'action_mean'.")] = "model",
    json_out: JsonOpt = None,
    html_out: HtmlOpt = None,
    log: LogOpt = None,
    threshold: ThresholdOpt = None,
    confidence: ConfidenceOpt = 0.95,
    publish: PublishOpt = True,
) -> None:
    """Estimated value of decision policies, with CIs.

    --data FILE | hillstrom: cross-fitted outcome models per arm, doubly-robust scores per
    customer and arm net of the costs, a policy tree (or weighted classifier) fitted to them,
    and the safe-improvement rule: the policy leaves the best blanket arm only where, on
    training rows held out from the fit, the advantage's lower confidence bound is above 0.
    The learnt policy, all:<arm> for every treated arm, none (the control) and random are
    valued by DR on the test rows; learned_vs_best_single gives the paired difference.

    Decision log: NBA (highest priority), a random candidate, propensity-only, no levers
    (P x V) and the hold-out (do nothing), by IPS, SNIPS and doubly robust estimation from the
    logged probabilities (only exploration supports actions other than the winner).
    """
    from nba.evaluation.limits import evaluation_limits
    from nba.evaluation.render import policy_frame

    s = settings()
    limits = evaluation_limits(s)
    report: Any
    experiment_options = (("--arm-column", arm_column), ("--control", control), ("--cost", cost),
                          ("--features", features), ("--assignment-probability", assignment_probability),
                          ("--propensity-column", propensity_column), ("--test", test), ("--seed", seed),
                          ("--value-per-outcome", value_per_outcome))
    if data is None:
        for name, value in experiment_options:
            if value is not None:
                raise ConfigError(f"{name} applies to --data only")
        from nba.evaluation.policy import PLATFORM_OUTCOMES, platform_policy_values

        outcome = outcome or "converted"
        if outcome not in PLATFORM_OUTCOMES:
            raise ConfigError(f"--outcome {outcome}: the decision log's outcomes are {', '.join(PLATFORM_OUTCOMES)}")
        report = platform_policy_values(_read_log(s, log), outcome=outcome, threshold=threshold,
                                        reward_model=reward_model, confidence=confidence, limits=limits)
        payload = report.to_dict()
        table = policy_frame(payload["policies"])
        title = f"Policy value from the decision log ({outcome})"
        echo(title)
        echo(table.to_string(index=False))
    else:
        from nba.evaluation import policy_experiment as pe

        if log is not None or threshold is not None:
            raise ConfigError("--log and --threshold apply to the decision log only (without --data)")
        options: dict[str, Any] = {
            "seed": s.seed if seed is None else seed, "test_share": test_share, "method": str(method),
            "depth": depth, "confidence": confidence,
            "features": tuple(f.strip() for f in features.split(",") if f.strip()) if features else None,
            "propensity_column": propensity_column,
        }
        if value_per_outcome is not None:
            options["value_per_outcome"] = value_per_outcome
        if assignment_probability:
            options["assignment"] = pe.parse_assignments(assignment_probability, "--assignment-probability")
        costs = pe.parse_assignments(cost, "--cost") if cost else None
        if data.lower() == pe.HILLSTROM:
            for name, value in (("--arm-column", arm_column), ("--control", control), ("--test", test)):
                if value is not None:
                    raise ConfigError(f"{name} does not apply to --data hillstrom (its columns are known)")
            if options["features"] is None:
                options.pop("features")
            if "assignment" not in options and not propensity_column:
                options.pop("propensity_column")
            spec = pe.hillstrom_spec(outcome=outcome, costs=costs, **options)
            frame, test_frame, source = pe.hillstrom_frame(s), None, pe.HILLSTROM
        else:
            missing = [n for n, v in (("--arm-column", arm_column), ("--control", control), ("--outcome", outcome))
                       if not v]
            if missing:
                raise ConfigError(f"--data {data}: {', '.join(missing)} required (which column holds the arm, "
                                  "which value is the control, which column is the outcome)")
            spec = pe.PolicySpec(arm_column=arm_column, control=control, outcome=outcome,  # type: ignore[arg-type]
                                 costs=costs or {}, **options)
            frame, source = pe.read_frame(Path(data)), data
            test_frame = pe.read_frame(test, "--test") if test is not None else None
        with progress(3, "policy learning", "step") as step:
            report = pe.learn_and_value(frame, spec, test=test_frame, source=source,
                                        test_source=f"--test {test}" if test else None, limits=limits,
                                        progress=step)
        payload = report.to_dict()
        table = report.table()
        d = report.learned_vs_best_single
        title = f"Policy learning on {source} ({spec.outcome}): learnt vs fixed policies on the test rows (DR)"
        echo(title)
        echo(table.round(4).to_string(index=False))
        echo("learnt policy: " + "; ".join(report.policy.describe()))
        echo(f"learned - {report.best_single}: {d.diff:+.4g} [{d.ci_low:+.4g}, {d.ci_high:+.4g}], p {d.p_value:.3g}")
        for p in report.policies:
            for flag in p.flags:
                echo(f"  UNRELIABLE {p.name}: {flag}")
    for note in payload.get("notes", []):
        echo(f"  note: {note}")
    write_outputs(payload, json_out, html_out, title, [("policies", table.round(4))])
    if publish:
        _publish(s, name="policy", values=report.values(), description=title, tables={"policies": table})


# --- sample size ------------------------------------------------------------------------------


@app.command("sample-size")
def sample_size_cmd(
    base: Annotated[float, typer.Option(help="Control response rate (0..1), or control mean with --sd.")],
    lift: Annotated[float | None, typer.Option(help="Absolute lift to detect (e.g. 0.01 = one point).")] = None,
    relative_lift: Annotated[float | None, typer.Option(help="Relative lift to detect (e.g. 0.1 = +10 %).")] = None,
    sd: Annotated[float | None, typer.Option(help="Standard deviation of a numeric outcome (per unit).")] = None,
    alpha: Annotated[float, typer.Option(help="Two-sided significance level.")] = 0.05,
    power: Annotated[float, typer.Option(help="Power: the chance to detect the lift if it is real.")] = 0.8,
    ratio: Annotated[float, typer.Option(help="Treated units per control unit (a 10 % hold-out: 9).")] = 1.0,
) -> None:
    """Units per arm needed to detect a lift (two-sided test, unpooled variances)."""
    from nba.evaluation.stats import sample_size

    n = sample_size(base, lift=lift, relative_lift=relative_lift, sd=sd, alpha=alpha, power=power, ratio=ratio)
    echo(f"control {n.control:,}  treated {n.treated:,}  total {n.total:,}  (detect {n.lift:+.4g} on "
         f"{n.base:.4g}; alpha {alpha}, power {power}, ratio {ratio:g})")


# --- drift and uplift (Evidently) -------------------------------------------------------------


@app.command("drift")
def drift_cmd(
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Registered model to check, e.g. nba-propensity-mortgage (repeat); default: every "
                        "champion with served data.")] = None,
    current: Annotated[Path | None, typer.Option(
        help="A batch frame (Parquet or CSV) with the model's inputs (and optionally a 'prediction' column) "
             "instead of the decision log.")] = None,
    log: Annotated[Path | None, typer.Option(help="Decision log folder [default: <work>/decision_log].")] = None,
    since: Annotated[str | None, typer.Option(help="Served decisions from this date (e.g. 2025-12-01).")] = None,
    days: Annotated[int, typer.Option(help="Without --since: the last N days of the log.", min=1)] = 30,
    json_out: SummaryJsonOpt = None,
    publish: SnapshotOpt = True,
) -> None:
    """Drift of served features and scores against each champion's training frame.

    Compares, per champion model, the features (and the model's score) the decision log served
    recently, or a batch frame given with --current, with a sample of the frame the champion was
    trained on, using Evidently's data-drift tests with the methods and thresholds of
    evaluation/gates.yaml (monitoring.drift). Prints which features drifted and by how much,
    writes a JSON summary and an HTML report, stores a snapshot in the Evidently workspace
    (dashboards) and logs the HTML to the champion's MLflow run.

    Exit code: 0 = within the limits; 3 = drift beyond the limits (more than max_drift_share of the
    features drifted, or the prediction drifted); 2 = bad input (unknown model, unreadable file,
    missing column, too few rows).
    """
    from nba.evaluation import drift

    s = settings()
    names = list(model or [])
    with model_progress(len(names) or len(drift.champion_names(s)), "drift") as advance:
        run = drift.evaluate_drift(s, names or None, current=current, log_dir=log,
                                   since=parse_time(since, "--since"), days=days, publish=publish, progress=advance)
    for result in run.results:
        for line in result.lines():
            echo(line)
        if result.html:
            echo(f"  report: {result.html}" + (f" (logged to MLflow run {result.mlflow_run_id})"
                                                if result.mlflow_run_id else ""))
    for name, why in run.skipped:
        echo(f"{name}: skipped: {why}")
    if json_out:
        drift.write_summary(list(run.results), json_out)
        echo(f"summary: {json_out}")
    exceeded = [r.model for r in run.results if r.exceeded]
    if exceeded:
        echo(f"drift beyond the limits of evaluation/gates.yaml in {len(exceeded)} model(s): {', '.join(exceeded)} "
             f"(exit code {drift.EXIT_DRIFT})")
        raise typer.Exit(drift.EXIT_DRIFT)
    echo(f"no drift beyond the limits in {len(run.results)} model(s)")


@app.command("uplift")
def uplift_cmd(
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Uplift model, e.g. nba-uplift-hillstrom-womens_email (repeat); default: every "
                        "nba-uplift-* champion.")] = None,
    current: Annotated[Path | None, typer.Option(
        help="A randomised frame (Parquet or CSV): the model's inputs, 'treated' (0/1), 'label' and optionally "
             "'true_uplift'; default: the champion run's hold-out part.")] = None,
    json_out: SummaryJsonOpt = None,
    publish: SnapshotOpt = True,
) -> None:
    """Uplift per action on randomised data: Qini, AUUC, uplift in the top k %, recovery of the truth.

    Qini curve and coefficient, AUUC, the observed uplift in the top k % by predicted uplift,
    and the correlation and error against the simulator's true uplift where it is known.

    Each nba-uplift-* champion is scored on the randomised rows its training run held out
    (Hillstrom: the e-mail arm against the No E-Mail hold-out; the bank: exploration decisions,
    contacted or not at random, whose true uplift the simulator knows). The figures are
    Evidently metrics: a snapshot in the workspace's `uplift` project, an HTML report, logged
    to the champion's MLflow run.
    """
    from nba.evaluation import uplift
    from nba.evaluation.champions import champion_names
    from nba.evaluation.drift import write_summary

    s = settings()
    names = list(model or [])
    with model_progress(len(names) or len(champion_names(s, ["uplift"])), "uplift") as advance:
        run = uplift.evaluate_uplift(s, names or None, current=current, publish=publish, progress=advance)
    for result in run.results:
        for line in result.lines():
            echo(line)
        if result.html:
            echo(f"  report: {result.html}")
    for name, why in run.skipped:
        echo(f"{name}: skipped: {why}")
    if json_out:
        write_summary(list(run.results), json_out)  # type: ignore[arg-type]
        echo(f"summary: {json_out}")


# --- business KPIs ---------------------------------------------------------------------------


@app.command("kpis")
def kpis_cmd(
    behaviour: Annotated[Path | None, typer.Option(
        "--behaviour", "--data",
        help="The customers' later behaviour: a .csv/.parquet table with columns customer_id, month, value, "
             "churned (one row per customer and month), or the simulator's output folder (monthly_value, "
             "customers; its rfm gives the segments). Without it: the activity KPIs and attribution only.")] = None,
    months: Annotated[str, typer.Option(
        help="Horizons in months of the churn, value and CLV of treated against hold-out, comma-separated.")] = "3,6",
    segments: Annotated[Path | None, typer.Option(
        help="Segments: a .csv/.parquet table with customer_id, the --segment-column and optionally "
             "event_timestamp (the latest segment at or before each decision). Default: the simulator "
             "folder's rfm_segment, else one segment 'all'.")] = None,
    segment_column: Annotated[str, typer.Option(help="The segment column of --segments.")] = "segment",
    since: Annotated[str | None, typer.Option(help="Decisions from this date (e.g. 2025-06-01).")] = None,
    until: Annotated[str | None, typer.Option(help="Decisions before this date.")] = None,
    window_days: Annotated[float, typer.Option(
        help="Attribution: the touches of a conversion are the shown actions this many days before it.",
        min=0.001)] = 30.0,
    half_life_days: Annotated[float, typer.Option(
        help="Attribution: the half-life of the time-decay model, in days.", min=0.001)] = 7.0,
    json_out: JsonOpt = None,
    html_out: HtmlOpt = None,
    log: LogOpt = None,
    threshold: ThresholdOpt = None,
    confidence: ConfidenceOpt = 0.95,
    publish: PublishOpt = True,
) -> None:
    """Business KPIs of the decision log, for reviewers.

    Per segment, action, channel and month of decision: reach, contacts, response and
    conversion per contact, value, cost (each channel's cost per contact in
    serving/policies.yaml + each action's cost in serving/actions.yaml) and ROI. With
    --behaviour: churn, value and CLV over the --months horizons of the treated customers
    against the universal hold-out, with CIs, and CLV/CAC when economics.acquisition_cost is
    set. Beside them, attribution (first touch, last touch, linear, U-shaped 40/20/40, time
    decay, Markov removal effect) per action and channel next to the hold-out incremental
    value. A period without decisions gives an empty report that says so.
    See nba/evaluation/kpis.py and attribution.py for the definitions.
    """
    import pandas as pd

    from nba.evaluation.kpi_report import TITLE, html_page, publish_kpis
    from nba.evaluation.kpis import Costs, kpi_report, read_behaviour, read_segments
    from nba.evaluation.limits import evaluation_limits
    from nba.evaluation.render import json_text
    from nba.io import write_text

    try:
        horizons = sorted({int(x) for x in months.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--months '{months}': expected whole months separated by commas, e.g. 3,6") from None
    if not horizons or horizons[0] < 1:
        raise ConfigError(f"--months '{months}': expected whole months >= 1, e.g. 3,6")
    t0, t1 = parse_time(since, "--since"), parse_time(until, "--until")
    if t0 and t1 and t1 <= t0:
        raise ConfigError(f"--until {until} is not after --since {since}")
    s = settings()
    costs = Costs.from_strategy(s.home)
    frame, segs = read_behaviour(behaviour) if behaviour else (None, None)
    if segments:
        segs = read_segments(segments, segment_column)
    report = kpi_report(_read_log(s, log), behaviour=frame, segments=segs, costs=costs, horizons=horizons,
                        since=pd.Timestamp(t0) if t0 else None, until=pd.Timestamp(t1) if t1 else None,
                        threshold=threshold, confidence=confidence, limits=evaluation_limits(s),
                        attribution_window_days=window_days, half_life_days=half_life_days)
    if report.empty:
        echo(f"empty report: {report.notes[0]}")
    else:
        o = report.overall()
        if o:
            echo(f"{report.decisions:,} decisions: {o['contacts']:,.0f} contacts to {o['reach']:,.0f} customers, "
                 f"conversion {o['conversion_rate']:.2%} per contact, value {o['value']:,.2f}, cost "
                 f"{o['cost']:,.2f}, ROI {o['roi']:.2f}")
        else:
            echo(f"{report.decisions:,} decisions, none of which showed an action: no contact to measure")
        h = report.holdout
        for r in h[h["by"] == "overall"].itertuples(index=False):
            echo(f"  {r.metric} over {r.horizon} months: treated {r.treated_mean:.4g} (n {r.treated_n:,}) vs "
                 f"hold-out {r.holdout_mean:.4g} (n {r.holdout_n:,}): lift {r.lift:+.4g} "
                 f"[{r.ci_low:+.4g}, {r.ci_high:+.4g}]")
        a = report.attribution
        if a is not None and len(a):
            total = a[(a["by"] == "action") & (a["key"] == "total") & (a["metric"] == "value")].iloc[0]
            echo(f"  attribution (value): last touch {total['last_touch']:,.2f}, markov {total['markov']:,.2f}; "
                 f"hold-out incremental {total['holdout_incremental']:,.2f} "
                 f"[{total['holdout_ci_low']:,.2f}, {total['holdout_ci_high']:,.2f}]")
        for note in report.notes:
            echo(f"  note: {note}")
    if json_out:
        write_text(json_text(report.to_dict()), json_out)
        echo(f"wrote {json_out}")
    if html_out:
        write_text(html_page(report), html_out)
        echo(f"wrote {html_out}")
    if publish:
        published = publish_kpis(s, report)
        if published:
            echo(f"published {len(published)} snapshot(s) to the 'platform' dashboard ({TITLE}); reports under "
                 f"{published[-1].html.parent}")
        else:
            echo("nothing published: the report is empty")
