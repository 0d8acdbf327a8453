"""How the experiment and off-policy evaluations are shown to a reviewer: tables of lifts and
policy values, a self-contained HTML page, JSON without NaN, and publishing the figures to the
`platform` dashboard (`nba.evaluation.reporting`)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from nba.evaluation.experiments import ExperimentReport
from nba.evaluation.incrementality import LogIncrementality
from nba.evaluation.reporting import publish
from nba.evaluation.stats import Incrementality

if TYPE_CHECKING:
    from nba.evaluation.reporting import Published
    from nba.settings import Settings

REPORT_PROJECT = "platform"

PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:90em}"
    "table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #ddd;"
    "text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}"
)


def fmt(x: float | None, digits: int = 4) -> str:
    """A number with `digits` significant digits; '-' for a missing or non-finite one."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}"


def pct(x: float | None) -> str:
    """A signed percentage with one decimal; '-' for a missing or non-finite one."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.1%}"


def lift_frame(result: Incrementality) -> pd.DataFrame:
    """One row per treated arm: size, mean, lift and relative lift with their CIs, p-value, flags."""
    rows = [{
        "arm": a.arm, "n": a.n, "mean": fmt(a.mean), "lift": fmt(a.lift),
        "ci": f"[{fmt(a.ci_low)}, {fmt(a.ci_high)}]", "rel_lift": pct(a.relative_lift),
        "rel_ci": f"[{pct(a.relative_ci_low)}, {pct(a.relative_ci_high)}]", "p_value": fmt(a.p_value, 3),
        "flags": "; ".join(a.flags) if a.flags else "",
    } for a in result.arms]
    return pd.DataFrame(rows)


def overall_results(report: ExperimentReport | LogIncrementality) -> tuple[Incrementality, ...]:
    """The overall results of an experiment table or of the decision log, primary outcome first."""
    return report.overall if isinstance(report, LogIncrementality) else report.results


def incrementality_sections(report: ExperimentReport | LogIncrementality) -> list[tuple[str, pd.DataFrame]]:
    """(heading, lift table) per outcome, then per segment (channel and intended action for the log)."""
    sections = [(f"{r.outcome}: control '{r.control.arm}' (n {r.control.n:,}, mean {fmt(r.control.mean)})",
                 lift_frame(r)) for r in overall_results(report)]
    segs = ([("channel", r) for r in report.by_channel] + [("intended action", r) for r in report.by_action]
            if isinstance(report, LogIncrementality) else list(report.segments))
    for by, r in segs:
        sections.append((f"{r.outcome} by {by} = {r.segment} (control n {r.control.n:,})", lift_frame(r)))
    return sections


def policy_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The `policies` of a platform policy report's dict, one row per policy and estimator."""
    return pd.DataFrame([{
        "policy": r["name"], "estimator": r["estimator"], "value": r["value"], "ci_low": r["ci_low"],
        "ci_high": r["ci_high"], "ess": r["diagnostics"]["ess"], "unsupported": r["diagnostics"]["unsupported_share"],
        "flags": "; ".join(r["flags"]),
    } for r in rows])


def json_text(payload: Mapping[str, Any]) -> str:
    """The payload as indented JSON: numpy scalars as numbers, paths as strings, NaN and
    infinities as null (strict JSON, which every reader accepts)."""
    return json.dumps(_finite(payload), indent=2, default=_json_default, allow_nan=False)


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def html_page(title: str, sections: Sequence[tuple[str, pd.DataFrame]], notes: Sequence[str] = ()) -> str:
    """A self-contained HTML page: a title, one table per section, notes; every text escaped."""
    parts = [f"<h2>{html.escape(h)}</h2>\n{frame.to_html(index=False, border=0, na_rep='', escape=True)}"
             for h, frame in sections]
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        f"<style>{PAGE_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}"
        + (f"<h2>Notes</h2><ul>{note_html}</ul>" if note_html else "") + "</body></html>\n"
    )


def publish_figures(settings: Settings, *, name: str, values: Mapping[str, float | None], description: str,
                    tables: Mapping[str, pd.DataFrame]) -> Published:
    """Publish an evaluation's figures to the `platform` dashboard, leaving out the ones that
    could not be computed (None, NaN)."""

    clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
    return publish(settings, project=REPORT_PROJECT, name=name, values=clean, tables=dict(tables),
                   description=description)
