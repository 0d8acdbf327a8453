"""Writing the offline sources the Feast repository reads (the bank's tables and the public
data sets' views), in the one format its offline store can join on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nba.io import atomic_path


def write_source(table: Any, target: Path) -> int:
    """Write an offline source atomically, timestamps as microseconds (DuckDB, which runs the
    point-in-time joins, cannot cast nanosecond time-zone-aware timestamps)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    fields = []
    for f in table.schema:
        if pa.types.is_timestamp(f.type) and f.type.unit == "ns":
            f = f.with_type(pa.timestamp("us", tz=f.type.tz))
        fields.append(f)
    table = table.cast(pa.schema(fields))
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows
