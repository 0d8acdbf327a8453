"""Publish an evaluation: an Evidently snapshot in the local workspace, a self-contained HTML
report, and that report logged to the MLflow run of the model it judges.

`publish` is the one call for figures computed outside Evidently (hold-out incrementality,
off-policy value): each value becomes an `NbaValue` metric of a snapshot in the project
(`propensity`, `churn`, `clv`, `uplift`, `platform`), plotted over time by the project's
dashboard. `publish_snapshot` does the same for a snapshot built from Evidently's own
metrics (drift, uplift).

When `model` (a registered name such as `nba-propensity-mortgage`) is given, the HTML is also
logged as an artifact (`evaluation/reports/<file>.html`) of the MLflow run that trained its
`@champion` version; a model without a champion is refused before anything is written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba.errors import NbaError
from nba.evaluation import dashboards
from nba.settings import Settings
from nba.training import tracking

if TYPE_CHECKING:
    import pandas as pd
    from evidently.core.report import Snapshot

    from nba.evaluation.dashboards import Panel

REPORT_ARTIFACT_DIR = "evaluation/reports"


class ReportError(NbaError):
    """An evaluation cannot be published as asked (unknown project, bad value, no champion)."""


@dataclass(frozen=True)
class Published:
    """Where an evaluation went: the snapshot in the workspace, the HTML, the MLflow run."""

    snapshot_id: str
    project_id: str
    html: Path
    mlflow_run_id: str | None


def publish(settings: Settings, *, project: str, name: str, values: Mapping[str, float],
            tables: Mapping[str, pd.DataFrame] | None = None, description: str = "",
            model: str | None = None, html_path: Path | None = None,
            timestamp: datetime | None = None) -> Published:
    """Store `values` (name -> finite number) and `tables` as one snapshot of `project`, write
    the HTML report (default `<reports>/<project>/<time>-<name>.html`) and, with `model`, log
    it to the run of that model's `@champion`.

    Names are dotted, their first segment the dashboard group (`incrementality.overall.lift`
    is plotted in the `incrementality` panel, one line per name and model).
    """
    import pandas as pd
    from evidently import Dataset, Report

    from nba.evaluation.evidently_metrics import NbaTable, value_metric

    dashboards.check_project(project)
    if not name.strip():
        raise ReportError("publish: the evaluation name is empty; expected e.g. 'incrementality'")
    tables = dict(tables or {})
    if not values and not tables:
        raise ReportError(f"publish '{name}' ({project}): no values and no tables to publish")
    clean: dict[str, float] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key.strip():
            raise ReportError(f"publish '{name}' ({project}): value name {key!r} is not a non-empty string")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ReportError(f"publish '{name}' ({project}): value '{key}' = {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ReportError(f"publish '{name}' ({project}): value '{key}' = {number} is not finite; "
                              "leave out a figure that could not be computed")
        clean[key] = number
    for key, table in tables.items():
        if not isinstance(table, pd.DataFrame):
            raise ReportError(f"publish '{name}' ({project}): table '{key}' is a {type(table).__name__}, "
                              "expected a pandas DataFrame")
    run_id = champion_run(settings, model) if model else None

    metrics: list[Any] = [value_metric(k, v, model) for k, v in clean.items()]
    metrics += [NbaTable(key=k, title=k) for k in tables]
    meta = {"project": project, "evaluation": name, "description": description, "model": model or ""}
    report = Report(metrics, metadata=meta, tags=[t for t in (project, name, model) if t])
    extra = {k: Dataset.from_pandas(_printable(t)) for k, t in tables.items()}
    snapshot = report.run(Dataset.from_pandas(pd.DataFrame({"evaluation": [name]})), None,
                          additional_data=extra or None, timestamp=_naive_utc(timestamp), name=name)
    return publish_snapshot(settings, project=project, snapshot=snapshot, panels=dashboards.value_panels(clean),
                            html_path=html_path, run_id=run_id)


def publish_snapshot(settings: Settings, *, project: str, snapshot: Snapshot, panels: Sequence[Panel] = (),
                     html_path: Path | None = None, run_id: str | None = None) -> Published:
    """Add a snapshot to the project (creating it and the missing `panels`), write its HTML,
    and log the HTML to the MLflow run `run_id` if given."""

    ws = dashboards.open_workspace(settings)
    proj = dashboards.project(ws, project)
    dashboards.ensure_panels(proj, panels)
    ref = ws.add_run(proj.id, snapshot)
    name = snapshot.get_name() or "evaluation"
    html = Path(html_path) if html_path else default_html_path(settings, project, name, getattr(snapshot, "_timestamp", None))
    html.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html))
    if run_id:
        log_html(settings, run_id, html)
    return Published(str(ref.id), str(proj.id), html, run_id)


def default_html_path(settings: Settings, project: str, name: str, when: datetime | None = None) -> Path:
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    return settings.reports_dir / project / f"{stamp}-{slug(name)}.html"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "evaluation"


def champion_run(settings: Settings, model: str) -> str:
    """The run id of the model's `@champion` version; an error naming the model otherwise."""
    from mlflow.exceptions import MlflowException

    client = tracking.configure(settings)
    try:
        version = client.get_model_version_by_alias(model, "champion")
    except MlflowException:
        try:
            names = sorted(m.name for m in client.search_registered_models())
        except MlflowException:
            names = []
        listed = ", ".join(names) if names else "none"
        raise ReportError(f"model '{model}' has no @champion version to log the report to "
                          f"(registered models: {listed}); promote one with `nba promote {model}`") from None
    run_id = version.run_id or (version.tags or {}).get("run_id")
    if not run_id:
        raise ReportError(f"{model} version {version.version} (@champion) records no training run")
    return str(run_id)


def log_html(settings: Settings, run_id: str, html: Path) -> None:
    """Log an HTML report as an artifact of a (finished) run, under evaluation/reports/."""
    tracking.configure(settings).log_artifact(run_id, str(html), artifact_path=REPORT_ARTIFACT_DIR)


def _naive_utc(when: datetime | None) -> datetime:
    """Evidently stores naive timestamps; ours are UTC."""
    when = when or datetime.now(UTC)
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when


def _printable(frame: pd.DataFrame) -> pd.DataFrame:
    """A table as shown: flat string column names, no index, every cell formatted as text (so
    any dtype, missing values and objects included, passes through Evidently's Dataset)."""
    import pandas as pd

    from nba.evaluation.evidently_metrics import _fmt

    out = frame.reset_index(drop=True)
    text = {str(c): [_fmt(v) for v in out.iloc[:, i].tolist()] for i, c in enumerate(out.columns)}
    return pd.DataFrame(text, index=range(len(out)), dtype=object) if text else pd.DataFrame({"": []}, dtype=object)
