"""The local Evidently workspace: one project per model family, dashboard panels over time.

Projects (`PROJECTS`): `propensity`, `churn`, `clv`, `uplift` (one per model family) and
`platform` (hold-out incrementality, off-policy policy value and the business KPIs of
`nba evaluate kpis`: activity, treated against hold-out, attribution). Every evaluation adds a
snapshot to its project; the panels plot the snapshots' values over time, so
`evidently ui --workspace <settings.evidently_workspace>` shows a reviewer the trend.

Panels are added when a snapshot first needs them (a panel is identified by its tab and
title, so publishing again never duplicates one): an `Overview` tab with one series per model
(drift share, prediction drift, uplift per action, platform values by group) and a tab per
model with its per-feature drift.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nba.errors import ConfigError
from nba.settings import Settings

if TYPE_CHECKING:
    from evidently.sdk.models import DashboardPanelPlot
    from evidently.ui.workspace import Project, Workspace

PROJECTS: dict[str, str] = {
    "propensity": "Propensity models (nba-propensity-<action>): drift of served features and scores "
                  "against each champion's training frame.",
    "churn": "Churn model (nba-churn): drift of served features and scores against the champion's training frame.",
    "clv": "Customer lifetime value models (nba-clv, nba-clv-cdnow): drift against the champion's training frame.",
    "uplift": "Uplift models (nba-uplift-<action>): Qini, AUUC and uplift in the top k % on randomised data; "
              "recovery of the simulator's true uplift.",
    "platform": "The platform as a whole: hold-out incrementality and off-policy value of the decision policy.",
}
OVERVIEW = "Overview"
# Panel titles of the value groups the platform publishes (other groups get a generic title).
GROUP_TITLES = {
    "incrementality": "Incremental value over the universal hold-out",
    "policy": "Policy value (off-policy estimates)",
    "drift": "Drift",
    # nba evaluate kpis: one snapshot per month of decisions, so these lines are monthly
    "kpi_rates": "Business KPIs per month: response and conversion per contact",
    "kpi_money": "Business KPIs per month: value, cost and ROI",
    "kpi_holdout": "Treated against hold-out per cohort month: churn, value and CLV",
    "kpi_period": "Business KPIs of the whole period evaluated",
    "attribution": "Attribution per action beside the hold-out incremental value",
}
VALUE_METRIC = "NbaValue"


@dataclass(frozen=True)
class Panel:
    """A dashboard panel and the tab it belongs in."""

    tab: str
    plot: DashboardPanelPlot


def workspace_path(settings: Settings) -> Path:
    return settings.evidently_workspace


def ui_command(settings: Settings, port: int = 8000) -> str:
    """The exact command that opens the dashboards. Evidently's UI reports usage unless
    DO_NOT_TRACK is set, so the command sets it (nba.settings.TELEMETRY_OFF)."""
    return f"DO_NOT_TRACK=true evidently ui --workspace {workspace_path(settings)} --port {port}"


def open_workspace(settings: Settings, create: bool = True) -> Workspace:
    from evidently.ui.workspace import Workspace

    path = workspace_path(settings)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return Workspace(str(path))


def check_project(name: str) -> str:
    if name not in PROJECTS:
        raise ConfigError(f"Evidently project '{name}' is unknown; expected one of {', '.join(PROJECTS)}")
    return name


def project(ws: Workspace, name: str) -> Project:
    """The workspace's project called `name`, created (with its description) if absent."""
    check_project(name)
    found = ws.search_project(name)
    if found:
        return sorted(found, key=lambda p: str(p.id))[0]
    return ws.create_project(name, description=PROJECTS[name])


def ensure_panels(project: Project, panels: Iterable[Panel]) -> int:
    """Add the panels the project's dashboard lacks (same tab and title); returns how many."""
    model = project.dashboard.model()
    present = {(t.title, p.title) for t in model.tabs for p in model.panels if p.id in t.panels}
    added = 0
    for panel in panels:
        if (panel.tab, panel.plot.title) in present:
            continue
        project.dashboard.add_panel(panel.plot, tab=panel.tab, create_if_not_exists=True)
        present.add((panel.tab, panel.plot.title))
        added += 1
    return added


def _metric(metric: str, labels: dict[str, str], legend: str | None = None, tags: Sequence[str] = ()):
    from evidently.sdk.models import PanelMetric

    return PanelMetric(legend=legend, metric=metric, metric_labels=labels, tags=list(tags))


def value_panels(names: Iterable[str]) -> list[Panel]:
    """One line panel per value group (`incrementality`, `policy`, ...), a series per name and model."""
    from evidently.sdk.panels import line_plot_panel

    groups = sorted({n.split(".", 1)[0] for n in names})
    return [Panel(OVERVIEW, line_plot_panel(
        title=GROUP_TITLES.get(g, f"{g} over time"),
        values=[_metric(VALUE_METRIC, {"group": g}, legend="{{name}} {{model}}")],
        description=f"every value named {g}.* (one line per name and model)", size="full"))
        for g in groups]


def drift_panels(model: str) -> list[Panel]:
    """Overview: share of drifted features and prediction drift, a line per model; a tab per
    model with the share, the per-feature drift scores and the prediction's drift score."""
    from evidently.sdk.panels import line_plot_panel

    return [
        Panel(OVERVIEW, line_plot_panel(
            title="Share of drifted features",
            values=[_metric("FeatureDriftShare", {}, legend="{{model}}")],
            description="per champion; the limit is monitoring.drift.max_drift_share in evaluation/gates.yaml",
            size="half")),
        Panel(OVERVIEW, line_plot_panel(
            title="Prediction drift score",
            values=[_metric("PredictionDrift", {}, legend="{{model}}")],
            description="drift score of the model's output (served scores vs the training frame)", size="half")),
        Panel(model, line_plot_panel(
            title=f"{model}: drifted features (count and share)",
            values=[_metric("DriftedColumnsCount", {}, legend="{{value_type}}", tags=[model])],
            size="half")),
        Panel(model, line_plot_panel(
            title=f"{model}: drift score per feature",
            values=[_metric("ValueDrift", {}, legend="{{column}} ({{method}})", tags=[model])],
            description="Evidently's per-column drift score with the method of evaluation/gates.yaml", size="full")),
    ]


def uplift_panels() -> list[Panel]:
    """Overview of the uplift project: Qini, AUUC, uplift in the top k % and truth recovery,
    a line per model and data set."""
    from evidently.sdk.panels import line_plot_panel

    legend = "{{model}} {{data}}"
    spec = [
        ("QiniCoefficient", "Qini coefficient", "area between the Qini curve and random targeting, per customer"),
        ("AUUC", "AUUC (area under the uplift curve)", "normalised: 0 random targeting, 1 the best ranking"),
        ("UpliftAtTop", "Observed uplift in the top k %", "treated rate - control rate among the top k % by "
                                                          "predicted uplift"),
        ("UpliftTruthCorrelation", "Correlation with the true uplift (simulator)", "exploration decisions only"),
        ("UpliftTruthMAE", "Mean absolute error vs the true uplift (simulator)", "exploration decisions only"),
    ]
    return [Panel(OVERVIEW, line_plot_panel(title=title, values=[_metric(metric, {}, legend=legend)],
                                            description=desc, size="half"))
            for metric, title, desc in spec]


def read_values(ws: Workspace, project_name: str) -> list[dict]:
    """Every scalar of every snapshot of a project, oldest first: one dict per value with the
    snapshot id, timestamp, name, metric type, its labels and the value (for tests and
    `nba report`; the UI reads the same files)."""
    from evidently.core.metric_types import ByLabelValue, CountValue, SingleValue

    found = ws.search_project(project_name)
    out: list[dict] = []
    for proj in found:
        for snapshot_id in ws.list_runs(proj.id):
            snap = ws.get_run(proj.id, snapshot_id)
            if snap is None:
                continue
            for result in snap.metric_results.values():
                singles: list[SingleValue] = []
                if isinstance(result, SingleValue):
                    singles = [result]
                elif isinstance(result, CountValue):
                    singles = [result.count, result.share]
                elif isinstance(result, ByLabelValue):
                    singles = list(result.values.values())
                for single in singles:
                    loc = single.metric_value_location
                    params = dict(loc.metric.params) if loc is not None else {}
                    out.append({"snapshot_id": str(snapshot_id), "snapshot": snap.name, "timestamp": snap.timestamp,
                                "tags": list(snap.tags), "metric": str(params.pop("type", "")).rsplit(":", 1)[-1],
                                "labels": {**params, **(dict(loc.param) if loc is not None else {})},
                                "value": single.value})
    return sorted(out, key=lambda r: r["timestamp"])


def panel_points(ws: Workspace, project_name: str) -> dict[tuple[str, str], int]:
    """(tab, panel title) -> how many stored values the panel plots, matched the way the
    workspace's UI matches them (metric type, labels a subset of the metric's parameters,
    tags a subset of the snapshot's): a panel at 0 would be an empty plot."""
    rows = read_values(ws, project_name)
    out: dict[tuple[str, str], int] = {}
    for proj in ws.search_project(project_name):
        model = proj.dashboard.model()
        for tab in model.tabs:
            for panel in (p for p in model.panels if p.id in tab.panels):
                n = 0
                for v in panel.values:
                    metric = v.metric.rsplit(":", 1)[-1]
                    n += sum(1 for r in rows if r["metric"] == metric and set(v.tags) <= set(r["tags"])
                             and all(str(r["labels"].get(k)) == str(x) for k, x in v.metric_labels.items()))
                out[(tab.title, panel.title)] = n
    return out
