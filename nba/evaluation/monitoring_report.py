"""`nba report`: run every evaluation that has data, publish each, and summarise.

* drift of every champion the decision log has served data for (`nba.evaluation.drift`);
* uplift of every `nba-uplift-*` champion on its randomised hold-out part (`nba.evaluation.uplift`);
* the platform's hold-out incrementality and policy value: a platform evaluation module that
  exposes `publish_for_report(settings, log_dir) -> Published | list[Published]` (see
  `PLATFORM_EVALUATIONS`) is run; otherwise the latest values its own command published to the
  `platform` project are listed, with the command that refreshes them.

An evaluation without data is skipped with the reason; only bad configuration stops the report.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nba.evaluation import dashboards
from nba.evaluation.dashboards import read_values
from nba.settings import Settings

# (what, module, command that publishes it to the `platform` project)
PLATFORM_EVALUATIONS = (
    ("hold-out incrementality", "nba.evaluation.incrementality", "nba evaluate incrementality"),
    ("policy value", "nba.evaluation.policy", "nba evaluate policy"),
    # needs the customers' later behaviour (--behaviour), which the report cannot guess: listed, not run
    ("business KPIs and attribution", "nba.evaluation.kpis", "nba evaluate kpis --behaviour DIR|FILE"),
)
PLATFORM_HOOK = "publish_for_report"


@dataclass
class ReportSummary:
    html: list[str] = field(default_factory=list)
    projects: list[str] = field(default_factory=list)
    drift_exceeded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _has_log(folder: Path) -> bool:
    return (folder / "log.db").is_file() or (folder / "batch").is_dir()


def run_report(settings: Settings, *, log_dir: Path | None = None, days: int = 30,
               echo: Callable[[str], None] = print) -> ReportSummary:
    from nba.evaluation.champions import ChampionError, champion_names
    from nba.evaluation.drift import DriftError, drift_limits, evaluate_drift
    from nba.evaluation.uplift import UpliftEvaluationError, evaluate_uplift, uplift_limits

    out = ReportSummary()
    drift_limits(settings)  # a broken gates file stops the report before anything is published
    uplift_limits(settings)
    log_dir = log_dir or settings.decision_log_dir
    names = champion_names(settings)
    echo(f"champions: {', '.join(names) if names else 'none (train and promote models first)'}")

    echo("\n== drift (served data vs each champion's training frame)")
    if not _has_log(log_dir):
        out.skipped.append(("drift", f"no decision log at {log_dir}"))
        echo(f"skipped: no decision log at {log_dir} (serve decisions first, or run `nba evaluate drift --current FILE`)")
    elif names:
        try:
            run = evaluate_drift(settings, None, log_dir=log_dir, days=days)
        except (DriftError, ChampionError) as exc:
            out.skipped.append(("drift", str(exc)))
            echo(f"skipped: {exc}")
        else:
            for r in run.results:
                echo("\n".join(r.lines()))
                out.html += [r.html] if r.html else []
                out.drift_exceeded += [r.model] if r.exceeded else []
            for name, why in run.skipped:
                echo(f"{name}: skipped: {why}")

    echo("\n== uplift (randomised hold-out parts)")
    if not any(n.startswith("nba-uplift-") for n in names):
        out.skipped.append(("uplift", "no nba-uplift-* champion"))
        echo("skipped: no nba-uplift-* champion")
    else:
        try:
            uplift_run = evaluate_uplift(settings)
        except (UpliftEvaluationError, ChampionError) as exc:
            out.skipped.append(("uplift", str(exc)))
            echo(f"skipped: {exc}")
        else:
            for u in uplift_run.results:
                echo("\n".join(u.lines()))
                out.html += [u.html] if u.html else []
            for name, why in uplift_run.skipped:
                echo(f"{name}: skipped: {why}")

    echo("\n== platform (incrementality, policy value, business KPIs)")
    for what, module_name, command in PLATFORM_EVALUATIONS:
        hook = _platform_hook(module_name)
        if hook is None:
            echo(f"{what}: published by `{command}` (not run here)")
            continue
        try:
            published = hook(settings, log_dir)
        except Exception as exc:  # one evaluation failing must not hide the others
            out.skipped.append((what, f"{type(exc).__name__}: {exc}"))
            echo(f"{what}: skipped: {exc}")
            continue
        for p in published if isinstance(published, list | tuple) else [published]:
            out.html.append(str(p.html))
            echo(f"{what}: {p.html}")
    ws = dashboards.open_workspace(settings)
    latest = _latest_platform_values(ws)
    if latest:
        echo("latest platform values in the workspace:")
        for name, (when, value) in sorted(latest.items()):
            echo(f"  {name:<45} {value:.6g}  ({when:%Y-%m-%d %H:%M})")
    else:
        echo("no platform values in the workspace yet (" + "; ".join(f"`{c}`" for _, _, c in PLATFORM_EVALUATIONS)
             + " publish them)")
    out.projects = sorted(p.name for p in ws.list_projects() if p is not None)
    return out


def _platform_hook(module_name: str):
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    hook = getattr(module, PLATFORM_HOOK, None)
    return hook if callable(hook) else None


def _latest_platform_values(ws) -> dict[str, tuple]:
    latest: dict[str, tuple] = {}
    for row in read_values(ws, "platform"):
        if row["metric"] != "NbaValue":
            continue
        name = row["labels"].get("name", "")
        model = row["labels"].get("model", "")
        key = f"{name} ({model})" if model else name
        latest[key] = (row["timestamp"], float(row["value"]))  # rows are oldest first
    return latest
