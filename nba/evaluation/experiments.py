"""Experiment tables (CSV or Parquet, one row per unit or per decision): every arm's lift over
the control arm, overall and per segment column, for one or more outcome columns and a value
column; and the column readers (`read_table`, `column_codes`, `column_numbers`) that the
experiment commands share. The statistics are `nba.evaluation.stats`'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nba.errors import DataFileError, SchemaError
from nba.evaluation.stats import (
    DEFAULT_CONFIDENCE,
    ExperimentDataError,
    Incrementality,
    cluster_codes,
    jsonable,
    segmented,
    slug,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from nba.config import EvaluationLimits


# --- experiment tables (CSV / Parquet) ---------------------------------------------------


@dataclass(frozen=True)
class ExperimentReport:
    """Incrementality of one experiment table: the primary outcome, the value column if any,
    and per-segment figures."""

    source: str
    arm_column: str
    control: str
    results: tuple[Incrementality, ...]  # overall: the outcome, then the value column
    segments: tuple[tuple[str, Incrementality], ...] = ()  # (segment column, result)
    notes: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> Incrementality:
        return self.results[0]

    def to_dict(self) -> dict[str, Any]:
        primary = self.primary.to_dict()
        out: dict[str, Any] = {
            "source": self.source,
            "arm_column": self.arm_column,
            "control": self.control,
            "outcome": primary["outcome"],
            "unit": primary["unit"],
            "confidence": primary["confidence"],
            "control_stats": primary["control_stats"],
            "arms": primary["arms"],
            "outcomes": [r.to_dict() for r in self.results],
            "segments": [{"by": by, **r.to_dict()} for by, r in self.segments],
            "notes": list(self.notes),
        }
        out.update({k: jsonable(v) for k, v in self.extra.items()})
        return out

    def values(self, prefix: str = "incrementality") -> dict[str, float]:
        """Flat figures for dashboards: `incrementality.<table>.<arm>.<outcome>.lift` (and
        `relative_lift`, `p_value`, `<table>.control.<outcome>.mean`), `<table>` the file's stem."""
        table = slug(Path(self.source).stem) or "table"
        out: dict[str, float] = {}
        for r in self.results:
            for a in r.arms:
                base = f"{prefix}.{table}.{slug(a.arm)}.{slug(r.outcome)}"
                out[f"{base}.lift"] = a.lift
                out[f"{base}.relative_lift"] = a.relative_lift
                out[f"{base}.p_value"] = a.p_value
            out[f"{prefix}.{table}.control.{slug(r.outcome)}.mean"] = r.control.mean
        return {k: float(v) for k, v in out.items() if v == v}


def read_table(path: Path, columns: Sequence[str]) -> pa.Table:
    """The named columns of a CSV or Parquet file; errors name the file and what is missing."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file (expected a CSV or Parquet experiment table)")
    cols = list(dict.fromkeys(columns))
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            available = pq.read_schema(path).names
            _require_columns(path, cols, available)
            return pq.read_table(path, columns=cols)
        if suffix in (".csv", ".txt") or path.name.lower().endswith(".csv.gz"):
            header = pacsv.open_csv(path).schema.names
            _require_columns(path, cols, header)
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=cols))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFileError(f"{path}: cannot read it as {suffix.lstrip('.') or 'a table'} ({exc})") from None
    raise DataFileError(f"{path}: unknown table format '{suffix}'; expected .csv or .parquet")


def _require_columns(path: Path, wanted: Sequence[str], available: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise SchemaError(f"{path}: no column(s) {missing}; the file has {list(available)}")


def column_codes(table: pa.Table, column: str, source: str) -> tuple[np.ndarray, list[str]]:
    """Integer codes and labels of a categorical column, without building Python strings per row."""
    import pyarrow as pa

    col = table.column(column)
    if col.null_count:
        raise SchemaError(f"{source}: column '{column}' has {col.null_count} empty value(s); every row needs one")
    if pa.types.is_dictionary(col.type):  # already encoded (Parquet from Arrow): use its indices
        enc = col.unify_dictionaries().combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    else:
        enc = col.combine_chunks().dictionary_encode() if col.num_chunks != 1 else col.chunk(0).dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    labels = [str(v) for v in enc.dictionary.to_pylist()]
    used = np.bincount(codes, minlength=len(labels)) > 0
    if not used.all():  # a dictionary may hold values no row uses: drop them
        remap = np.cumsum(used) - 1
        codes, labels = remap[codes], [lab for lab, u in zip(labels, used, strict=True) if u]
    if len(set(labels)) != len(labels):  # e.g. 1 and "1" in one column: merge equal labels
        import pandas as pd

        merged, uniques = pd.factorize(np.asarray(labels, dtype=object))
        codes, labels = merged[codes].astype(np.int64), [str(u) for u in uniques]
    return codes, labels


def column_numbers(table: pa.Table, column: str, source: str) -> np.ndarray:
    """A numeric (or boolean) column as float64; errors name the file, the column and the value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(column)
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type)):
        sample = next((v for v in col.to_pylist()[:100] if v is not None), None)
        raise SchemaError(f"{source}: column '{column}' holds {col.type} values (e.g. {sample!r}); "
                          "expected 0/1 or numbers")
    if col.null_count:
        first = int(pc.index(pc.is_null(col), True).as_py())
        raise SchemaError(f"{source}: column '{column}' has {col.null_count} empty value(s) (first at row "
                          f"{first}); expected a number in every row")
    arr = col.to_numpy().astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise SchemaError(f"{source}: column '{column}' has {int(bad.sum())} infinite or NaN value(s) (first at "
                          f"row {int(np.flatnonzero(bad)[0])}); expected finite numbers")
    return arr


def experiment_incrementality(table: pa.Table | pd.DataFrame, *, arm_column: str, control: str,
                              outcome: str | Sequence[str], value_column: str | None = None,
                              cluster_column: str | None = None, segment_columns: Sequence[str] = (),
                              source: str = "table", confidence: float = DEFAULT_CONFIDENCE,
                              limits: EvaluationLimits | None = None) -> ExperimentReport:
    """Incrementality of every arm over `control` in an experiment table (one row per unit,
    or per decision with `cluster_column` naming the unit), for one outcome column or several
    (the first is the primary) and the value column if any."""
    import pyarrow as pa

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    outcomes = [outcome] if isinstance(outcome, str) else list(dict.fromkeys(outcome))
    if not outcomes:
        raise ExperimentDataError(f"{source}: no outcome column given")
    needed = [arm_column, *outcomes, *([value_column] if value_column else []),
              *([cluster_column] if cluster_column else []), *segment_columns]
    _require_columns(Path(source), needed, table.schema.names)
    if table.num_rows == 0:
        raise ExperimentDataError(f"{source}: the table has no rows")
    codes, labels = column_codes(table, arm_column, source)
    if str(control) not in labels:
        shown = labels[:20]
        raise ExperimentDataError(f"{source}: control value '{control}' does not occur in column '{arm_column}'; "
                                  f"its values are {shown}{' ...' if len(labels) > 20 else ''}")
    if len(labels) < 2:
        raise ExperimentDataError(f"{source}: column '{arm_column}' holds only '{labels[0]}'; expected the control "
                                  "and at least one treated arm")
    clusters = None
    if cluster_column:
        col = table.column(cluster_column)
        if col.null_count:
            raise SchemaError(f"{source}: column '{cluster_column}' has {col.null_count} empty value(s); every row "
                              "needs its unit")
        clusters = cluster_codes(col.combine_chunks().to_numpy(zero_copy_only=False))
    ys = {name: column_numbers(table, name, source) for name in outcomes}
    if value_column and value_column not in ys:
        ys[value_column] = column_numbers(table, value_column, source)
    unit = cluster_column or "row"
    results = tuple(segmented(ys, codes, labels, control, np.zeros(len(codes), dtype=np.int64), ["overall"],
                              clusters=clusters, unit=unit, confidence=confidence, limits=limits))
    segments: list[tuple[str, Incrementality]] = []
    for seg_col in segment_columns:
        seg_codes, seg_labels = column_codes(table, seg_col, source)
        segments.extend((seg_col, r) for r in segmented(
            ys, codes, labels, control, seg_codes, seg_labels, clusters=clusters, unit=unit,
            confidence=confidence, limits=limits))
    return ExperimentReport(source=source, arm_column=arm_column, control=str(control), results=results,
                            segments=tuple(segments), extra={"rows": table.num_rows})
