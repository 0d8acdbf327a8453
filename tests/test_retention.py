"""Retention of the decision log's features (`nba stores compact`, both backends) and the
backup and restore of the embedded profile (`nba stores backup | restore`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba import records
from nba.records import Columns
from nba.settings import Settings
from nba.stores.backup import BackupError, backup, compact, restore
from nba.stores.decisions import open_decision_log, read_log
from nba.stores.decisions.sqlite import write_batch
from tests.conftest import PROJECT_ROOT
from tests.test_records import _tables

DAY = 86_400.0
NOW = 1_764_579_600.0 + 100 * DAY


def _aged(prefix: str, ages_days: list[float]) -> records.DecisionTables:
    """Made-up decisions (`tests.test_records._tables`) made `ages_days` before NOW."""
    from tests.test_pg_stores import _renamed

    n = len(ages_days)
    t = _renamed(_tables(n), prefix)
    d = dict(t.decisions.values, decided_at=NOW - np.asarray(ages_days) * DAY)
    return records.DecisionTables(Columns(records.DECISION, n, d), t.candidates, t.filtered, t.features,
                                  t.model_versions)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def settings_for(request, tmp_path):
    base = Settings(home=PROJECT_ROOT, work_dir=tmp_path / "var", feature_retention_days=30)
    if request.param == "sqlite":
        yield base
        return
    from tests.pg_env import pg_database

    with pg_database("test_retention") as dsn:
        yield base.model_copy(update={"log_store": "postgres", "log_dsn": dsn})


def test_compact_drops_old_features_and_keeps_decisions_and_outcomes(settings_for: Settings):
    from nba.records import segment_tables
    from nba.stores.decisions import log_location

    s = settings_for
    log = open_decision_log(s)
    log.append(_aged("s", [45.0, 31.0, 29.0, 1.0]))  # two older than 30 days
    for i in range(4):
        log.append_outcome(f"s{i}", "a", "accepted", float(i), NOW)
    batch = _aged("b", [60.0, 2.0])
    write_batch(s.decision_log_dir, "b1", segment_tables(batch))
    log.index_batch("b1", ["b0", "b1"], [0, 10], "web")
    log.close()
    folder, dsn = log_location(s)
    before = read_log(folder, dsn=dsn, with_features=True)
    assert sorted(before.features["decision_id"]) == ["b0", "b1", "s0", "s1", "s2", "s3"]

    out = compact(s, now=NOW)
    assert out == {"days": 30.0, "before": NOW - 30 * DAY, "decisions_compacted": 3}
    after = read_log(folder, dsn=dsn, with_features=True)
    feats = after.features.set_index("decision_id").sort_index()
    assert sorted(feats.index) == ["b0", "b1", "s0", "s1", "s2", "s3"]  # a row per decision still
    gone = feats.loc[["b0", "s0", "s1"]]
    assert gone.isna().all().all()  # the old ones' values are gone
    assert feats.loc["s2", "age"] == 22.0 and feats.loc["s3", "region"] == "north" and feats.loc["b1", "age"] == 21.0
    assert feats.loc[["b1", "s2", "s3"]].notna().all().all()  # the young ones keep theirs
    for name in ("decisions", "candidates", "filtered", "outcomes"):  # everything else as it was
        pd.testing.assert_frame_equal(getattr(before, name), getattr(after, name))
    assert len(after.decisions) == 6 and list(after.outcomes["value"]) == [0.0, 1.0, 2.0, 3.0]
    assert compact(s, now=NOW)["decisions_compacted"] == 0  # again: nothing left to drop
    with pytest.raises(BackupError, match=r"--days -1.0: expected a number of days > 0"):
        compact(s, days=-1)


def _fill(s: Settings, prefix: str) -> None:
    from nba.records import segment_tables
    from nba.stores.events.sqlite import EventLog
    from nba.stores.preferences.sqlite import SqlitePreferenceStore

    log = open_decision_log(s)
    log.append(_aged(prefix, [3.0, 2.0, 1.0]))
    log.append_outcome(f"{prefix}1", "a", "rejected", 0.0, NOW)
    log.close()
    write_batch(s.decision_log_dir, f"batch-{prefix}", segment_tables(_aged(f"{prefix}b", [1.0])))
    events = EventLog(s.event_log_path)
    events.append([{"event_id": f"{prefix}-e", "customer_id": 3, "type": "app_login", "timestamp": NOW,
                    "properties": {"n": 1}}], NOW)
    events.close()
    prefs = SqlitePreferenceStore(s.preferences_path)
    prefs.put(3, f'{{"by": "{prefix}"}}', "customer", NOW)
    prefs.close()


def _snapshot(s: Settings) -> dict:
    from nba.stores.events.sqlite import read_events
    from nba.stores.preferences.sqlite import SqlitePreferenceStore

    frames = read_log(s.decision_log_dir, with_features=True)
    prefs = SqlitePreferenceStore(s.preferences_path)
    try:
        audit = prefs.audit(3)
    finally:
        prefs.close()
    return {"decisions": frames.decisions, "candidates": frames.candidates, "filtered": frames.filtered,
            "outcomes": frames.outcomes, "features": frames.features, "events": read_events(s.event_log_path),
            "audit": audit}


def test_a_backup_restored_equals_the_original_and_a_live_log_is_not_overwritten(tmp_path: Path):
    s = Settings(home=PROJECT_ROOT, work_dir=tmp_path / "var")
    _fill(s, "a")
    original = _snapshot(s)
    manifest = backup(s, tmp_path / "backup")
    assert manifest["databases"]["decision_log/log.db"]["decisions"] == 3
    assert manifest["trees"]["decision_log/batch"] == [f"batch-a/{r.name}.parquet" for r in
                                                       sorted(records.SEGMENT_RECORDS, key=lambda r: r.name)]
    with pytest.raises(BackupError, match="exists and is not empty"):
        backup(s, tmp_path / "backup")

    _fill(s, "z")  # the log goes on after the backup
    assert len(read_log(s.decision_log_dir).decisions) == 8
    with pytest.raises(BackupError, match=r"log\.db.* exist \(a live log\); stop the service and pass --force"):
        restore(s, tmp_path / "backup")
    assert len(read_log(s.decision_log_dir).decisions) == 8  # refused: untouched
    restore(s, tmp_path / "backup", force=True)
    restored = _snapshot(s)
    for name in ("decisions", "candidates", "filtered", "outcomes", "features", "events"):
        pd.testing.assert_frame_equal(original[name], restored[name], obj=name)
    assert restored["audit"] == original["audit"]

    fresh = Settings(home=PROJECT_ROOT, work_dir=tmp_path / "elsewhere")  # into an empty work folder: no --force
    restore(fresh, tmp_path / "backup")
    pd.testing.assert_frame_equal(_snapshot(fresh)["decisions"], original["decisions"])


def test_the_cli_backs_up_restores_and_compacts(tmp_path: Path):
    s = Settings(home=PROJECT_ROOT, work_dir=tmp_path / "var")
    _fill(s, "a")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "NBA_HOME": str(PROJECT_ROOT),
           "NBA_WORK_DIR": str(tmp_path / "var")}

    def nba(*args):
        return subprocess.run([sys.executable, "-m", "nba", "stores", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    made = nba("backup", str(tmp_path / "bk"))
    assert made.returncode == 0 and "backed up 3 databases and 1 folders" in made.stdout, made.stderr
    refused = nba("restore", str(tmp_path / "bk"))
    assert refused.returncode == 3 and "--force" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert nba("restore", "--force", str(tmp_path / "bk")).returncode == 0
    done = nba("compact", "--days", "0.5")  # every made-up decision is a day or more before NOW, NOW is past
    assert done.returncode == 0 and "features of 4 decisions older than 0.5 days dropped" in done.stdout
    feats = read_log(s.decision_log_dir, with_features=True).features
    assert len(feats) == 4 and feats.drop(columns="decision_id").isna().all().all()
    env["NBA_PROFILE"] = "production"
    refused = nba("backup", str(tmp_path / "bk3"))
    assert refused.returncode == 3 and "in Postgres at postgresql://" in refused.stderr and "pg_dump" in refused.stderr
