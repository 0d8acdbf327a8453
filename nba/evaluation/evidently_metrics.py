"""Evidently metrics of our own (the 0.7 metric/calculation API) for figures computed elsewhere.

`NbaValue` holds one named scalar (`incrementality.overall.lift`, `policy.learned.value`,
`drift.share`) so that it is stored in a snapshot the way Evidently's own metrics are, and the
workspace's dashboard panels can plot it over time: a panel selects it by `name`, `group`
(the name's first segment) or `model`. The value itself is not a label of the series (it is
left out of the metric's stored parameters), so every snapshot adds one point to the same
series.

`NbaTable` shows a small table (per-arm figures, per-feature drift) in the HTML report and in
the snapshot; its value is the number of rows (a table's cells are not series to plot).

Importing this module imports Evidently; only the evaluation code does, lazily.
"""

from __future__ import annotations

import math
from typing import Any

from evidently.core.datasets import Dataset
from evidently.core.metric_types import (
    MetricConfig,
    SingleValue,
    SingleValueCalculation,
    SingleValueMetric,
)

# The one use of Evidently's `legacy` package in nba: 0.7.23's public `evidently.widgets` has
# the counter and plotly widgets but neither the widget size (a counter drawn half width) nor
# a plain table widget; Evidently's own new metrics import both from here too.
from evidently.legacy.renderers.html_widgets import WidgetSize, table_data
from evidently.widgets import CounterData, counter

VALUE_ONLY_PARAMS = ("value",)  # parameters of NbaValue that are not labels of its series


class NbaValue(SingleValueMetric):
    """One named figure computed outside Evidently (incrementality, policy value, drift share)."""

    name: str
    """Dotted name, e.g. `incrementality.overall.lift`; its first segment is the `group`."""
    group: str = ""
    """The dashboard panel that plots it (default: the name's first segment)."""
    model: str = ""
    """The registered model it judges, if any (`nba-propensity-mortgage`)."""
    value: float
    """The figure (finite)."""


class NbaValueCalculation(SingleValueCalculation[NbaValue]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> SingleValue:
        result = self.result(self.metric.value)
        result.widget = [counter(title=self.display_name(), size=WidgetSize.HALF,
                                 counters=[CounterData(label="", value=_fmt(self.metric.value))])]
        return result

    def display_name(self) -> str:
        return f"{self.metric.name} ({self.metric.model})" if self.metric.model else self.metric.name

    def to_metric_config(self) -> MetricConfig:
        # The stored parameters label the series a dashboard plots: the value must not be one.
        config = super().to_metric_config()
        params = {k: v for k, v in config.params.items() if k not in VALUE_ONLY_PARAMS}
        return MetricConfig(metric_id=config.metric_id, params=params)


class NbaTable(SingleValueMetric):
    """A table passed to `Report.run(additional_data={key: Dataset})`, shown as it is."""

    key: str
    """The key of the table in `additional_data`."""
    title: str = ""


class NbaTableCalculation(SingleValueCalculation[NbaTable]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> SingleValue:
        frame = context.additional_data[self.metric.key].as_dataframe()
        result = self.result(len(frame))
        rows = [[_fmt(v) for v in row] for row in frame.itertuples(index=False, name=None)]
        result.widget = [table_data(title=self.display_name(), column_names=[str(c) for c in frame.columns],
                                    data=rows)]
        return result

    def display_name(self) -> str:
        return self.metric.title or self.metric.key


def value_metric(name: str, value: float, model: str | None = None, group: str | None = None) -> NbaValue:
    return NbaValue(name=name, value=float(value), model=model or "", group=group or name.split(".", 1)[0])


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if hasattr(v, "item") and not isinstance(v, str | bytes):  # numpy scalars
        v = v.item()
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)
