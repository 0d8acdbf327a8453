"""`nba evaluate incrementality | ope | policy | sample-size`: experiments and off-policy value.

Each command is a few lines over the plain functions of `nba.evaluation.incrementality`,
`nba.evaluation.ope` and `nba.evaluation.policy`; everything heavy is imported inside the
command. Each writes its figures as JSON (`--json`) and a self-contained HTML page (`--html`)
and, when the reporting module is there, publishes them to the platform's dashboards.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nba.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from nba.settings import Settings

HILLSTROM = "hillstrom"
HILLSTROM_OUTCOMES = ["visit", "conversion", "spend"]
REPORT_PROJECT = "platform"

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


def register(evaluate_app: typer.Typer, root_app: typer.Typer) -> None:
    """Add this module's commands to `nba evaluate` (and `nba`)."""
    evaluate_app.command("incrementality")(incrementality_cmd)
    evaluate_app.command("ope")(ope_cmd)
    evaluate_app.command("policy")(policy_cmd)
    evaluate_app.command("sample-size")(sample_size_cmd)


# --- incrementality -----------------------------------------------------------------------


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
    from nba.cli import _echo, _settings
    from nba.evaluation import incrementality as inc

    settings = _settings()
    limits = evaluation_limits(settings)
    if data is None:
        for name, value in (("--arm-column", arm_column), ("--control", control), ("--outcome", outcome),
                            ("--value-column", value_column), ("--cluster-column", cluster_column), ("--by", by)):
            if value:
                raise ConfigError(f"{name} applies to --data tables; the decision log has its own columns "
                                  "(experiment_group, converted, value, channel, intended action)")
        frames = _read_log(settings, log)
        report: Any = inc.log_incrementality(frames, threshold=threshold, confidence=confidence, limits=limits)
        title = "Hold-out incrementality (decision log)"
    else:
        table, source, arm_column, control, outcomes, value_column = _experiment_table(
            settings, data, arm_column, control, outcome, value_column, cluster_column, by)
        report = inc.experiment_incrementality(
            table, arm_column=arm_column, control=control, outcome=outcomes, value_column=value_column,
            cluster_column=cluster_column, segment_columns=list(by or []), source=source, confidence=confidence,
            limits=limits)
        title = f"Incrementality: {source}"
    payload = report.to_dict()
    for r in (report.overall if data is None else report.results):
        _echo(f"{r.outcome} (control '{r.control.arm}': n {r.control.n:,}, mean {r.control.mean:.4g})")
        _echo(_lift_frame(r).to_string(index=False))
    for note in payload.get("notes", []):
        _echo(f"  note: {note}")
    _write_outputs(payload, json_out, html_out, title, _incrementality_sections(report, data is None))
    if publish:
        _publish(settings, name="incrementality", values=report.values(), description=title,
                 tables={"arms": _lift_frame(report.overall[0] if data is None else report.results[0])})


def _experiment_table(settings: Settings, data: str, arm_column: str | None, control: str | None,
                      outcome: list[str] | None, value_column: str | None, cluster_column: str | None,
                      by: list[str] | None) -> tuple[Any, str, str, str, list[str], str | None]:
    from nba.evaluation import incrementality as inc

    if data.lower() == HILLSTROM:
        import pyarrow as pa

        from nba.data.hillstrom import CONTROL_ARM, load_hillstrom

        frame = load_hillstrom(settings=settings).experiment
        arm_column, control = arm_column or "arm", control or CONTROL_ARM
        outcomes = list(outcome or HILLSTROM_OUTCOMES)
        keep = [c for c in dict.fromkeys([arm_column, *outcomes, *([value_column] if value_column else []),
                                          *([cluster_column] if cluster_column else []), *(by or [])])
                if c in frame.columns]
        table = pa.Table.from_pandas(frame[keep].astype({arm_column: str}) if arm_column in keep else frame[keep],
                                     preserve_index=False)
        return table, "hillstrom", arm_column, control, outcomes, value_column
    missing = [name for name, value in (("--arm-column", arm_column), ("--control", control),
                                        ("--outcome", outcome)) if not value]
    if missing:
        raise ConfigError(f"--data {data}: {', '.join(missing)} required (which column holds the arm, which value "
                          "is the control, which column is the outcome)")
    assert arm_column and control and outcome
    path = Path(data)
    columns = [arm_column, *outcome, *([value_column] if value_column else []),
               *([cluster_column] if cluster_column else []), *(by or [])]
    return inc.read_table(path, columns), str(path), arm_column, control, list(outcome), value_column


def _lift_frame(r: Any) -> pd.DataFrame:
    import pandas as pd

    rows = [{
        "arm": a.arm, "n": a.n, "mean": _fmt(a.mean), "lift": _fmt(a.lift),
        "ci": f"[{_fmt(a.ci_low)}, {_fmt(a.ci_high)}]", "rel_lift": _pct(a.relative_lift),
        "rel_ci": f"[{_pct(a.relative_ci_low)}, {_pct(a.relative_ci_high)}]", "p_value": _fmt(a.p_value, 3),
        "flags": "; ".join(a.flags) if a.flags else "",
    } for a in r.arms]
    return pd.DataFrame(rows)


def _incrementality_sections(report: Any, from_log: bool) -> list[tuple[str, Any]]:
    sections = [(f"{r.outcome}: control '{r.control.arm}' (n {r.control.n:,}, mean {_fmt(r.control.mean)})",
                 _lift_frame(r)) for r in (report.overall if from_log else report.results)]
    segs = ([("channel", r) for r in report.by_channel] + [("intended action", r) for r in report.by_action]
            if from_log else list(report.segments))
    for by, r in segs:
        sections.append((f"{r.outcome} by {by} = {r.segment} (control n {r.control.n:,})", _lift_frame(r)))
    return sections


# --- off-policy evaluation ------------------------------------------------------------------


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
    import numpy as np

    from nba.cli import _echo, _settings
    from nba.evaluation import incrementality as inc
    from nba.evaluation import ope

    settings = _settings()
    limits = evaluation_limits(settings)
    columns = [action_column, reward_column, propensity_column, *([cluster_column] if cluster_column else [])]
    table = inc.read_table(data, columns)
    source = str(data)
    if table.num_rows == 0:
        raise ope.OpeInputError(f"{source}: no rows")
    codes, actions = inc.column_codes(table, action_column, source)
    reward = inc.column_numbers(table, reward_column, source)
    mu = _propensities(table, propensity_column, source)
    n = table.num_rows
    if target == "uniform":
        pi = _target_matrix_uniform(n, len(actions))
        target_name = "uniform"
    else:
        pi, actions, codes = _read_policy_file(Path(target), n, actions, codes, "--target")
        target_name = Path(target).name
    q = None
    if q_hat is not None:
        q, actions2, _ = _read_policy_file(q_hat, n, actions, codes, "--q-hat", probabilities=False)
        if actions2 != actions:  # q-hat named an action the target did not: widen the target with zeros
            pi = np.hstack([pi, np.zeros((n, len(actions2) - len(actions)))])
            actions = actions2
    clusters = table.column(cluster_column).to_numpy() if cluster_column else None
    try:
        result = ope.off_policy_value(reward, codes, mu, pi, policy=target_name, q_hat=q, clusters=clusters,
                                      confidence=confidence, limits=limits, action_names=actions)
    except ope.OpeInputError as exc:  # name the files the rows came from
        where = f"{source}" + ("" if target == "uniform" else f" with --target {target}")
        raise ope.OpeInputError(f"{where}{f' and --q-hat {q_hat}' if q_hat else ''}: {exc}") from None
    payload = {"data": source, "policy": target_name, "rows": n, "actions": actions,
               "estimates": [e.to_dict() for e in result.estimates], "diagnostics": result.diagnostics.to_dict(),
               "reliable": result.reliable}
    _echo(f"target policy '{target_name}' on {n:,} logged rows ({len(actions)} actions)")
    for e in result.estimates:
        _echo(f"  {e.estimator:<7} {_fmt(e.value):>10}  [{_fmt(e.ci_low)}, {_fmt(e.ci_high)}]")
    d = result.diagnostics
    _echo(f"  ESS {d.ess:,.1f} of {d.n:,}; unsupported share {d.unsupported_share:.2%}"
          f"{'' if d.support_known else ' (at least)'}; max weight {d.max_weight:.3g}")
    for flag in d.flags:
        _echo(f"  UNRELIABLE: {flag}")
    _write_outputs(payload, json_out, None, "", [])


def _propensities(table: Any, column: str, source: str) -> np.ndarray:
    """The logging probabilities, refusing missing, zero and out-of-range values with the file and row."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from nba.evaluation import incrementality as inc
    from nba.evaluation.ope import OpeInputError

    col = table.column(column)
    if col.null_count:
        first = int(pc.index(pc.is_null(col), True).as_py())
        raise OpeInputError(f"{source}: column '{column}' has {col.null_count} missing propensit(ies) (first at "
                            f"row {first}); every logged decision needs the probability its action was taken with")
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        raise OpeInputError(f"{source}: column '{column}' holds {col.type}; expected probabilities in (0, 1]")
    mu = inc.column_numbers(table, column, source)
    bad = (mu <= 0) | (mu > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise OpeInputError(f"{source}: column '{column}' has {int(bad.sum())} propensit(ies) outside (0, 1] "
                            f"(row {i}: {mu[i]:g}); a logged action was taken, so its probability is > 0")
    return mu


def _target_matrix_uniform(n: int, k: int) -> np.ndarray:
    import numpy as np

    return np.full((n, k), 1.0 / k)


def _read_policy_file(path: Path, n: int, actions: list[str], codes: np.ndarray, option: str, *,
                      probabilities: bool = True) -> tuple[np.ndarray, list[str], np.ndarray]:
    """A target policy (or q-hat) file as an n x K matrix over `actions` (extended by any
    action the file names that the data never logged)."""
    import numpy as np
    import pandas as pd

    from nba.evaluation.ope import OpeInputError

    if not path.is_file():
        raise OpeInputError(f"{option} {path}: no such file (expected 'uniform' or a .csv/.parquet policy file)")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif suffix == ".csv":
        frame = pd.read_csv(path)
    else:
        raise OpeInputError(f"{option} {path}: unknown format '{suffix}'; expected .csv or .parquet")
    what = "probability" if probabilities else "expected reward"
    if {"row", "action", "probability"} <= set(frame.columns):
        value_col = "probability"
        rows = pd.to_numeric(frame["row"], errors="coerce")
        if rows.isna().any() or (rows < 0).any() or (rows >= n).any() or (rows % 1 != 0).any():
            bad = frame.loc[rows.isna() | (rows < 0) | (rows >= n) | (rows % 1 != 0), "row"].iloc[0]
            raise OpeInputError(f"{option} {path}: column 'row' has value {bad!r}; expected a row number 0..{n - 1} "
                                "of --data")
        names = [str(a) for a in frame["action"].astype(str).unique()]
        extended = actions + [a for a in names if a not in actions]
        col = {a: j for j, a in enumerate(extended)}
        vals = pd.to_numeric(frame[value_col], errors="coerce")
        if vals.isna().any():
            i = int(np.flatnonzero(vals.isna().to_numpy())[0])
            raise OpeInputError(f"{option} {path}: column '{value_col}' has a non-numeric value at row {i} "
                                f"({frame[value_col].iloc[i]!r}); expected a {what}")
        if frame.duplicated(["row", "action"]).any():
            dup = frame.loc[frame.duplicated(["row", "action"]), ["row", "action"]].iloc[0].tolist()
            raise OpeInputError(f"{option} {path}: (row, action) {dup} appears twice; expected one {what} per pair")
        out = np.zeros((n, len(extended)))
        out[rows.to_numpy(np.int64), frame["action"].astype(str).map(col).to_numpy(np.int64)] = vals.to_numpy()
        return out, extended, codes
    if len(frame) != n:
        raise OpeInputError(f"{option} {path}: {len(frame):,} rows but --data has {n:,}; a wide file needs one row "
                            "per logged row (same order), or use the long format (columns row, action, probability)")
    names = [str(c) for c in frame.columns]
    unknown_cols = [c for c in names if c not in actions]
    extended = actions + unknown_cols
    nonnum = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if nonnum:
        raise OpeInputError(f"{option} {path}: column(s) {nonnum[:5]} are not numeric; a wide file has one "
                            f"{what} column per action (the data's actions: {actions[:10]})")
    out = np.zeros((n, len(extended)))
    for c, name in zip(frame.columns, names, strict=True):
        out[:, extended.index(name)] = frame[c].to_numpy(np.float64)
    missing = [a for a in actions if a not in names]
    if missing and not probabilities:
        raise OpeInputError(f"{option} {path}: no column for logged action(s) {missing[:5]}; q-hat needs every action")
    return out, extended, codes


# --- policy value ----------------------------------------------------------------------------


def policy_cmd(
    data: Annotated[str | None, typer.Option(
        "--data", help="'hillstrom': learn a targeting policy on a training split and value it on the held-out "
                       "split against all:Mens, all:Womens, none and random. Without it: the candidate policies "
                       "of the platform's decision log.")] = None,
    outcome: Annotated[str, typer.Option(
        help="Decision log: converted (0/1) or value (the reward to value policies by).")] = "converted",
    reward_model: Annotated[str, typer.Option(
        help="Decision log: the q-hat of DR, 'model' (the logged P, x V for value) or 'action_mean'.")] = "model",
    email_cost: Annotated[float | None, typer.Option(
        help="Hillstrom: $ per e-mail the learnt policy must beat to send one (default: 0.10).", min=0)] = None,
    learner: Annotated[list[str] | None, typer.Option(
        "--learner", help="Hillstrom: uplift learner(s) to choose from on validation (repeat) "
                          "(default: t_learner, s_learner, x_learner, class_transformation).")] = None,
    seed: Annotated[int | None, typer.Option(help="Hillstrom: seed of the split (default: NBA_SEED).")] = None,
    json_out: JsonOpt = None,
    html_out: HtmlOpt = None,
    log: LogOpt = None,
    threshold: ThresholdOpt = None,
    confidence: ConfidenceOpt = 0.95,
    publish: PublishOpt = True,
) -> None:
    """Estimated value of decision policies, with CIs.

    Decision log: NBA (highest priority), a random candidate, propensity-only, no levers
    (P x V) and the hold-out (do nothing), by IPS, SNIPS and doubly robust estimation from the
    logged probabilities (only exploration supports actions other than the winner).

    --data hillstrom: a policy learnt from uplift x value per e-mail, valued by inverse
    propensity weighting (assignment probability 1/3) on held-out customers: spend per
    customer (primary), conversion and visit.
    """
    from nba.cli import _echo, _settings

    settings = _settings()
    limits = evaluation_limits(settings)
    if data is not None and data.lower() != HILLSTROM:
        raise ConfigError(f"--data '{data}': expected 'hillstrom' (or no --data for the decision log)")
    if data is None:
        for name, value in (("--email-cost", email_cost), ("--learner", learner), ("--seed", seed)):
            if value is not None:
                raise ConfigError(f"{name} applies to --data hillstrom only")
        from nba.evaluation.policy import platform_policy_values

        frames = _read_log(settings, log)
        report: Any = platform_policy_values(frames, outcome=outcome, threshold=threshold, reward_model=reward_model,
                                             confidence=confidence, limits=limits)
        payload = report.to_dict()
        table = _policy_frame(payload["policies"])
        title = f"Policy value from the decision log ({outcome})"
        _echo(title)
        _echo(table.to_string(index=False))
    else:
        from tqdm import tqdm

        from nba.evaluation.policy import DEFAULT_EMAIL_COST, HillstromPolicyConfig, hillstrom_policy_values

        config = HillstromPolicyConfig(
            email_cost=DEFAULT_EMAIL_COST if email_cost is None else email_cost,
            learners=tuple(learner) if learner else HillstromPolicyConfig.learners,
            seed=settings.seed if seed is None else seed, confidence=confidence)
        bar = tqdm(total=len(config.learners) + 1, desc="hillstrom policy", unit="fit", disable=None)

        def step(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update(1)

        try:
            report = hillstrom_policy_values(settings, config, limits=limits, progress=step)
        finally:
            bar.close()
        payload = report.to_dict()
        table = report.table()
        title = "Hillstrom: learnt targeting vs fixed policies (held-out split, IPS)"
        _echo(f"{title}; learner {report.learner} (validation net $/customer: "
              + ", ".join(f"{k} {v:.3f}" for k, v in report.validation.items()) + ")")
        _echo(_rounded(table).to_string(index=False))
    for note in payload.get("notes", []):
        _echo(f"  note: {note}")
    _write_outputs(payload, json_out, html_out, title, [("policies", _rounded(table))])
    if publish:
        _publish(settings, name="policy", values=report.values(), description=title, tables={"policies": table})


def _policy_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([{
        "policy": r["name"], "estimator": r["estimator"], "value": r["value"], "ci_low": r["ci_low"],
        "ci_high": r["ci_high"], "ess": r["diagnostics"]["ess"], "unsupported": r["diagnostics"]["unsupported_share"],
        "flags": "; ".join(r["flags"]),
    } for r in rows])


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.round(4)


# --- sample size ------------------------------------------------------------------------------


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
    from nba.cli import _echo
    from nba.evaluation.incrementality import sample_size

    s = sample_size(base, lift=lift, relative_lift=relative_lift, sd=sd, alpha=alpha, power=power, ratio=ratio)
    _echo(f"control {s.control:,}  treated {s.treated:,}  total {s.total:,}  (detect {s.lift:+.4g} on "
          f"{s.base:.4g}; alpha {alpha}, power {power}, ratio {ratio:g})")


# --- shared helpers ------------------------------------------------------------------------


def evaluation_limits(settings: Settings) -> Any:
    """The `evaluation:` limits of evaluation/gates.yaml (a clear error if the section is missing)."""
    from nba.training.gates import gates_path, load_gates

    path = gates_path(settings.home)
    limits = load_gates(path).evaluation
    if limits is None:
        raise ConfigError(f"{path}: no 'evaluation:' section (min_arm_size, min_responses, min_rows, min_ess, "
                          "max_unsupported_share)")
    return limits


def _read_log(settings: Settings, log: Path | None) -> Any:
    from nba.stores.decisions import read_log

    return read_log(log or settings.decision_log_dir)


def _write_outputs(payload: Mapping[str, Any], json_out: Path | None, html_out: Path | None, title: str,
                   sections: Sequence[tuple[str, Any]]) -> None:
    from nba.cli import _echo
    from nba.io import write_text

    if json_out:
        write_text(json.dumps(payload, indent=2, default=_json_default, allow_nan=False), json_out)
        _echo(f"wrote {json_out}")
    if html_out:
        write_text(html_page(title, sections, payload.get("notes", [])), html_out)
        _echo(f"wrote {html_out}")


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def html_page(title: str, sections: Sequence[tuple[str, Any]], notes: Sequence[str] = ()) -> str:
    """A self-contained HTML page: a title, one table per section, notes."""
    import html

    parts = [f"<h2>{html.escape(h)}</h2>\n{frame.to_html(index=False, border=0, na_rep='', escape=True)}"
             for h, frame in sections]
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:90em}"
        "table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #ddd;"
        "text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}"
        + (f"<h2>Notes</h2><ul>{note_html}</ul>" if note_html else "") + "</body></html>\n"
    )


def _publish(settings: Settings, *, name: str, values: Mapping[str, float], description: str,
             tables: Mapping[str, Any]) -> None:
    """Publish to the dashboards through `nba.evaluation.reporting.publish`, when it exists."""
    try:
        from nba.evaluation import reporting
    except ImportError:
        return
    publish = getattr(reporting, "publish", None)
    if publish is None:
        return
    from nba.cli import _echo

    clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
    published = publish(settings, project=REPORT_PROJECT, name=name, values=clean, tables=dict(tables),
                        description=description)
    _echo(f"published to the '{REPORT_PROJECT}' dashboard (snapshot {getattr(published, 'snapshot_id', '?')}); "
          f"report {getattr(published, 'html', '')}")


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}"


def _pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.1%}"
