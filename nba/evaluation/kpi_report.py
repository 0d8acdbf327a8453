"""How the business KPIs are shown: a self-contained HTML page with plots (matplotlib, PNGs
inline) and tables, and the dashboards: one `platform` snapshot per month of decisions (dated
at the month's start, so the panels plot the KPIs over time: `kpi_rates`, `kpi_money`,
`kpi_holdout`) and one for the whole period (`kpi_period`, `attribution`).

An empty report (a period without decisions) renders as a page that says so and publishes
nothing: no zeros that look measured.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nba.evaluation.render import PAGE_STYLE, REPORT_PROJECT

if TYPE_CHECKING:
    from nba.evaluation.kpis import KpiReport
    from nba.evaluation.reporting import Published
    from nba.settings import Settings

TITLE = "Business KPIs: activity, treated against hold-out, attribution"
EVALUATION = "kpis"


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figures(report: KpiReport) -> list[tuple[str, str]]:
    """(caption, base64 PNG) of the report's plots: monthly rates and ROI per channel, the
    treated-vs-hold-out lifts with CIs, attribution against the hold-out per action."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    k = report.kpis
    cm = k[k["by"] == "channel x month"]
    if len(cm):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        for channel, g in cm.groupby("channel", sort=True):
            g = g.sort_values("month")
            axes[0].plot(g["month"], g["conversion_rate"], marker="o", label=channel)
            axes[1].plot(g["month"], g["roi"], marker="o", label=channel)
        axes[0].set_title("conversion per contact")
        axes[1].set_title("ROI = (value - cost) / cost")
        for ax in axes:
            ax.tick_params(axis="x", rotation=45)
        axes[1].legend(fontsize=8)
        out.append(("Per channel and month of decision", _png(fig)))
    h = report.holdout
    ov = h[h["by"] == "overall"]
    if len(ov):
        metrics = list(dict.fromkeys(ov["metric"]))
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.4))
        axes = np.atleast_1d(axes)
        for ax, metric in zip(axes, metrics, strict=True):
            g = ov[ov["metric"] == metric].sort_values("horizon")
            x = np.arange(len(g))
            err = np.vstack([g["lift"] - g["ci_low"], g["ci_high"] - g["lift"]]).astype(float)
            ax.errorbar(x, g["lift"].astype(float), yerr=np.nan_to_num(err), fmt="o", capsize=4)
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_xticks(x, [f"{int(v)} months" for v in g["horizon"]])
            ax.set_title(f"{metric}: treated - hold-out")
        out.append(("Treated against the universal hold-out (lift and CI per horizon)", _png(fig)))
    a = report.attribution
    if a is not None and len(a):
        from nba.evaluation.attribution import MODELS

        t = a[(a["by"] == "action") & (a["metric"] == "value") & (a["key"] != "total")]
        if len(t):
            fig, ax = plt.subplots(figsize=(11, 3.8))
            x = np.arange(len(t))
            width = 0.8 / (len(MODELS) + 1)
            for i, model in enumerate(MODELS):
                ax.bar(x + i * width, t[model].astype(float), width, label=model)
            inc = t["holdout_incremental"].astype(float)
            err = np.vstack([inc - t["holdout_ci_low"].astype(float), t["holdout_ci_high"].astype(float) - inc])
            ax.bar(x + len(MODELS) * width, inc.fillna(0.0), width, yerr=np.nan_to_num(err), capsize=2,
                   color="black", label="hold-out incremental")
            ax.set_xticks(x + 0.4, t["key"], rotation=45, ha="right")
            ax.set_title("value credited per action: attribution models against the hold-out incremental value")
            ax.legend(fontsize=7, ncol=4)
            out.append(("Attribution beside incrementality (value per action)", _png(fig)))
    return out


def _table(frame: pd.DataFrame) -> str:
    shown = frame.copy()
    for c in shown.columns:
        if pd.api.types.is_float_dtype(shown[c]):
            shown[c] = shown[c].map(lambda v: "" if v is None or not math.isfinite(v) else f"{v:.4g}")
    return shown.to_html(index=False, border=0, na_rep="", escape=True)


def html_page(report: KpiReport) -> str:
    """The report as one self-contained page (plots inline); an empty report says it is empty."""
    since, until = report.period
    head = (f"<p>Period: {html.escape(since or 'start of the log')} to {html.escape(until or 'end of the log')}; "
            f"{report.decisions:,} decision(s).</p>")
    parts = [head]
    if report.empty:
        parts.append("<p><strong>Empty report: no decision in this period, nothing was measured.</strong></p>")
    else:
        for caption, png in figures(report):
            parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' "
                         f"src='data:image/png;base64,{png}'>")
        k = report.kpis
        parts.append("<h2>Activity: overall and per dimension</h2>" + _table(k[k["by"] != " x ".join(
            ("segment", "action", "channel", "month"))]))
        parts.append("<h2>Activity per segment, action, channel and month</h2>"
                     + _table(k[k["by"] == "segment x action x channel x month"]))
        if len(report.holdout):
            parts.append("<h2>Treated against the universal hold-out (churn, value, CLV)</h2>"
                         + _table(report.holdout))
        if report.attribution is not None and len(report.attribution):
            parts.append("<h2>Attribution beside the hold-out incremental value</h2>" + _table(report.attribution))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    return ("<!doctype html>\n<html><head><meta charset='utf-8'><title>" + html.escape(TITLE) + "</title>"
            f"<style>{PAGE_STYLE}img{{max-width:100%}}</style></head><body><h1>{html.escape(TITLE)}</h1>"
            + "".join(parts) + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "") + "</body></html>\n")


def publish_kpis(settings: Settings, report: KpiReport) -> list[Published]:
    """One `platform` snapshot per month of decisions (dated at the month's start) and one for
    the period (dated now); nothing for an empty report. Publishing a month again adds a
    second point at the same date (the workspace keeps every snapshot)."""
    from nba.evaluation.reporting import publish

    if report.empty:
        return []
    out = []
    reports = settings.reports_dir / REPORT_PROJECT / "kpis"
    for month, values in sorted(report.monthly_values().items()):
        if not values:
            continue
        when = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
        rows = report.kpis[(report.kpis["month"] == month) & (report.kpis["by"] == "channel x month")]
        out.append(publish(settings, project=REPORT_PROJECT, name=f"{EVALUATION}-{month}", values=values,
                           tables={"channels": rows}, description=f"Business KPIs of the decisions of {month}",
                           html_path=reports / f"{month}.html", timestamp=when))
    period = report.period_values()
    if period:
        tables: dict[str, pd.DataFrame] = {"overall": report.kpis[report.kpis["by"] != "segment x action x channel "
                                                                                        "x month"]}
        if report.attribution is not None and len(report.attribution):
            tables["attribution"] = report.attribution
        out.append(publish(settings, project=REPORT_PROJECT, name=EVALUATION, values=period, tables=tables,
                           description=TITLE))
    return out
