"""How the experiment and off-policy evaluations are shown (`nba.evaluation.render`): lift and
policy tables, the self-contained HTML page, strict JSON; called directly, without the CLI."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba.evaluation.experiments import experiment_incrementality
from nba.evaluation.incrementality import LogIncrementality
from nba.evaluation.render import (
    fmt,
    html_page,
    incrementality_sections,
    json_text,
    lift_frame,
    overall_results,
    pct,
    policy_frame,
)

# 400 units per arm; treated converts 30 %, control 20 %, on two channels of equal size
ARM_SIZE = 400


@pytest.fixture(scope="module")
def report():
    arm = ["control"] * ARM_SIZE + ["treated"] * ARM_SIZE
    y = [1] * 80 + [0] * 320 + [1] * 120 + [0] * 280
    channel = ["email", "sms"] * ARM_SIZE
    table = pd.DataFrame({"arm": arm, "y": y, "channel": channel})
    return experiment_incrementality(table, arm_column="arm", control="control", outcome="y",
                                     segment_columns=["channel"], source="exp.csv")


class _Tables(HTMLParser):
    """The headings and the cells of every table of a page, as a browser would read them."""

    def __init__(self) -> None:
        super().__init__()
        self.h: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._tag: str | None = None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])

    def handle_endtag(self, tag):
        self._tag = None

    def handle_data(self, data):
        if self._tag in ("h1", "h2"):
            self.h.append(data)
        elif self._tag in ("td", "th") and data.strip():
            self.tables[-1][-1].append(data.strip())


def test_numbers_are_shown_with_significant_digits_and_a_dash_when_missing():
    assert fmt(0.123456) == "0.1235" and fmt(12345.6) == "1.235e+04" and fmt(0.5, 3) == "0.5"
    assert fmt(None) == fmt(math.nan) == fmt(math.inf) == "-"
    assert pct(0.5) == "+50.0%" and pct(-0.0123) == "-1.2%" and pct(None) == pct(math.nan) == "-"


def test_the_lift_table_has_one_row_per_treated_arm(report):
    (result,) = overall_results(report)
    frame = lift_frame(result)
    assert list(frame.columns) == ["arm", "n", "mean", "lift", "ci", "rel_lift", "rel_ci", "p_value", "flags"]
    (row,) = frame.to_dict("records")
    assert row["arm"] == "treated" and row["n"] == ARM_SIZE
    assert row["mean"] == "0.3" and row["lift"] == "0.1" and row["rel_lift"] == "+50.0%"
    lo, hi = (float(x) for x in row["ci"].strip("[]").split(", "))
    assert lo < 0.1 < hi
    assert float(row["p_value"]) < 0.01


def test_sections_are_the_outcome_then_each_segment(report):
    sections = incrementality_sections(report)
    assert [h for h, _ in sections] == [
        "y: control 'control' (n 400, mean 0.2)",
        "y by channel = email (control n 200)",
        "y by channel = sms (control n 200)",
    ]
    assert all(list(f["arm"]) == ["treated"] for _, f in sections)


def test_the_decision_log_sections_are_per_channel_and_intended_action(report):
    segments = tuple(r for _, r in report.segments)
    log = LogIncrementality(overall=report.results, by_channel=segments[:1], by_action=segments[1:],
                            diagnostics={}, notes=())
    assert overall_results(log) == report.results
    assert [h for h, _ in incrementality_sections(log)][1:] == [
        "y by channel = email (control n 200)", "y by intended action = sms (control n 200)"]


def test_the_html_page_is_self_contained_and_escapes_every_text(report):
    sections = [("<b>lift</b> & more", lift_frame(report.results[0])),
                ("evil", pd.DataFrame({"x<y": ["<script>alert(1)</script>"], "n": [1]}))]
    page = html_page("A & <B>", sections, notes=["note <i>1</i>"])
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "<b>" not in page and "<i>" not in page
    assert "src=" not in page and "href=" not in page  # nothing to fetch
    parsed = _Tables()
    parsed.feed(page)
    assert parsed.h == ["A & <B>", "<b>lift</b> & more", "evil", "Notes"]
    assert len(parsed.tables) == 2
    assert parsed.tables[0][0] == list(lift_frame(report.results[0]).columns)
    assert parsed.tables[1] == [["x<y", "n"], ["<script>alert(1)</script>", "1"]]
    assert "Notes" not in html_page("t", sections)


def test_json_is_strict_numpy_and_paths_included():
    payload = {"a": np.float64(0.25), "n": np.int64(3), "nan": math.nan, "inf": [1.0, -math.inf],
               "np_nan": np.float64("nan"), "path": Path("/tmp/x"), "nested": {"v": (math.nan, 2)}}
    doc = json.loads(json_text(payload))
    assert doc == {"a": 0.25, "n": 3, "nan": None, "inf": [1.0, None], "np_nan": None, "path": "/tmp/x",
                   "nested": {"v": [None, 2]}}


def test_the_policy_table_has_one_row_per_policy():
    rows = [{"name": "nba", "estimator": "dr", "value": 0.12, "ci_low": 0.1, "ci_high": 0.14,
             "diagnostics": {"ess": 812.5, "unsupported_share": 0.0}, "flags": []},
            {"name": "random", "estimator": "dr", "value": 0.05, "ci_low": 0.01, "ci_high": 0.09,
             "diagnostics": {"ess": 40.0, "unsupported_share": 0.25}, "flags": ["ESS 40 below min_ess 100", "x"]}]
    frame = policy_frame(rows)
    assert list(frame.columns) == ["policy", "estimator", "value", "ci_low", "ci_high", "ess", "unsupported",
                                   "flags"]
    assert frame["policy"].tolist() == ["nba", "random"]
    assert frame.loc[1, "flags"] == "ESS 40 below min_ess 100; x" and frame.loc[0, "flags"] == ""
    assert frame.loc[1, "unsupported"] == 0.25
