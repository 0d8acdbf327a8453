"""The production profile's logs on Postgres: the schema derived from the records and
versioned, refused at start when it is not this release's or the database does not answer,
group commit across threads with each write failing alone, the outbox in the decision's
transaction, the event log, the preferences and erasure. Each test has a database of its own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import psycopg
import pytest

from nba import records
from nba.records import Coded, Columns
from nba.settings import Settings
from nba.stores.decisions import AlreadyLogged, read_log
from nba.stores.decisions.postgres import PostgresDecisionLog
from nba.stores.erasures import erased_ids, open_erasure_list
from nba.stores.postgres import (
    MIGRATIONS,
    PG_RECORDS,
    PG_TYPES,
    SCHEMA_VERSION,
    SchemaVersionError,
    StoreUnavailable,
    applied_versions,
    check_schema,
    connect,
    migrate,
    redact,
)
from tests.conftest import PROJECT_ROOT
from tests.pg_env import pg_database
from tests.test_records import _tables

pytestmark = pytest.mark.integration


@pytest.fixture
def dsn():
    with pg_database("test_pg_stores") as d:
        yield d


def _columns(conn, table: str) -> list[tuple[str, str, bool]]:
    return [(n, t, nullable == "YES") for n, t, nullable in conn.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = %s "
        "AND column_name <> 'row_seq' ORDER BY ordinal_position", (table,))]


def test_the_tables_are_the_declaration_and_the_version_is_recorded(dsn):
    with psycopg.connect(dsn) as conn:
        for record in PG_RECORDS:
            assert _columns(conn, record.name) == [(c.name, PG_TYPES[c.kind], c.nullable) for c in record.columns]
            pk = conn.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                              "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
                              (record.name,)).fetchall()
            assert sorted(r[0] for r in pk) == sorted(record.key), record.name
        assert applied_versions(conn) == [m.version for m in MIGRATIONS] and MIGRATIONS[-1].version == SCHEMA_VERSION
    assert migrate(dsn) == []  # again: nothing to do


def test_a_change_of_the_declaration_is_refused_until_migrated(dsn):
    changed = records.DECISION.with_columns(records.Column("arm", records.TEXT, nullable=True))
    with connect(dsn, "test", autocommit=True) as conn:
        with pytest.raises(SchemaVersionError, match=r"table 'decisions' .* differs from the declaration \(missing "
                                                     r"\['arm'\].*run `nba stores migrate`"):
            check_schema(conn, dsn, "decision log", [changed])
        from nba.stores.postgres import add_column

        conn.execute(add_column(changed, "arm"))
        check_schema(conn, dsn, "decision log", [changed])  # the migration's ALTER makes it the declaration


def test_a_database_of_the_previous_release_is_refused_then_migrated(tmp_path):
    from nba.records import ERASURE, TRIGGER_PENDING
    from nba.stores.events.postgres import PostgresEventLog

    with pg_database("test_pg_stores", migrated=False) as raw:
        assert [m.version for m in migrate(raw, migrations=MIGRATIONS[:1])] == [1]  # two releases ago
        with pytest.raises(SchemaVersionError, match=rf"^event log: .* is at version 1, this release needs "
                                                     rf"{SCHEMA_VERSION}; run `nba stores migrate`$"):
            PostgresEventLog(raw)
        assert [m.version for m in migrate(raw, migrations=MIGRATIONS[:2])] == [2]  # the last release
        with pytest.raises(SchemaVersionError, match=r"is at version 2, this release needs 3"):
            PostgresEventLog(raw)
        assert [m.version for m in migrate(raw)] == [3]
        with psycopg.connect(raw) as conn:
            for record in (TRIGGER_PENDING, ERASURE):
                assert _columns(conn, record.name) == [(c.name, PG_TYPES[c.kind], c.nullable) for c in record.columns]
        PostgresEventLog(raw).close()


def test_an_unmigrated_or_unknown_schema_and_a_dead_dsn_are_one_line_at_start(tmp_path):
    with pg_database("test_pg_stores", migrated=False) as raw:
        secret = raw.replace("user=postgres", "user=postgres password=hunter2")
        with pytest.raises(SchemaVersionError) as e:
            PostgresDecisionLog(secret, tmp_path)
        msg = str(e.value)
        assert msg.startswith("decision log: the Postgres schema at postgresql://postgres@127.0.0.1:5432/nba_")
        assert "is not migrated" in msg and "run `nba stores migrate`" in msg and "hunter2" not in msg
        assert "\n" not in msg
        migrate(raw)
        with psycopg.connect(raw, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_version VALUES (99, 'from the future', 0)")
        with pytest.raises(SchemaVersionError, match=r"^event log: .* is at version 99, which this release does not "
                                                     rf"know \(it knows up to {SCHEMA_VERSION}\)"):
            from nba.stores.events.postgres import PostgresEventLog

            PostgresEventLog(raw)
        with pytest.raises(SchemaVersionError, match="newer than this release knows"):
            migrate(raw)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreUnavailable) as e:
        PostgresDecisionLog(f"postgresql://postgres:pw@127.0.0.1:{port}/nba", tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"decision log: cannot connect to Postgres at postgresql://postgres@127.0.0.1:{port}/nba (")
    assert "start Postgres there" in msg and "pw@" not in msg and "\n" not in msg
    assert redact("postgresql://u:secret@h:1/d") == "postgresql://u@h:1/d"


def test_nba_stores_migrate_and_status(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "NBA_HOME": str(tmp_path), "NBA_PROFILE": "production"}
    with pg_database("test_pg_stores", migrated=False) as raw:
        env["NBA_LOG_DSN"] = raw

        def nba(*args):
            return subprocess.run([sys.executable, "-m", "nba", "stores", *args], env=env, capture_output=True,
                                  text=True, timeout=120)

        before = nba("status")
        assert before.returncode == 3 and "is not migrated" in before.stderr and len(before.stderr.splitlines()) == 1
        first = nba("migrate")
        assert first.returncode == 0, first.stderr
        assert "applied version 1" in first.stdout and "applied version 2: the events whose triggers" in first.stdout
        assert "applied version 3: the erasure list, shared by the replicas" in first.stdout
        again = nba("migrate")
        assert "nothing to do" in again.stdout and "applied" not in again.stdout
        assert "schema at version 3 (current)" in nba("status").stdout
        log = PostgresDecisionLog(raw, tmp_path / "var" / "decision_log")
        log.append(_tables(3))  # made on 2025-12-01: long before today's retention window
        log.close()
        compacted = nba("compact", "--days", "30")
        assert compacted.returncode == 0 and "features of 3 decisions older than 30 days dropped" in compacted.stdout
        frames = read_log(tmp_path / "var" / "decision_log", dsn=raw, with_features=True)
        assert len(frames.decisions) == 3 and frames.features.drop(columns="decision_id").isna().all().all()


def _with_outbox(tables: records.DecisionTables, keys: list[str]) -> records.DecisionTables:
    n = len(keys)
    z = np.zeros(n)
    outbox = Columns(records.OUTBOX, n, {
        "idempotency_key": [f"{k}-a" for k in keys], "decision_id": keys, "customer_id": np.arange(n) * 10,
        "action_id": Coded(np.zeros(n, dtype=np.int64), ["a"]), "channel": Coded(np.zeros(n, dtype=np.int64), ["email"]),
        "created_at": z + 1_000.0, "payload": ['{"x": 1}'] * n, "state": ["pending"] * n,
        "attempts": np.zeros(n, dtype=np.int64), "next_attempt_at": z, "lease_until": z, "lease_owner": [None] * n,
        "error": [None] * n, "delivered_at": [None] * n})
    return records.DecisionTables(tables.decisions, tables.candidates, tables.filtered, tables.features,
                                  tables.model_versions, outbox)


def _renamed(tables: records.DecisionTables, prefix: str) -> records.DecisionTables:
    """The same made-up decisions under other ids."""
    n = tables.n
    ids = [f"{prefix}{i}" for i in range(n)]
    d = dict(tables.decisions.values, decision_id=ids)
    c = dict(tables.candidates.values, decision_id=Coded(np.arange(n), ids))
    f = dict(tables.filtered.values, decision_id=Coded(np.arange(n), ids))
    feats = dict(tables.features.values, decision_id=ids)
    return records.DecisionTables(Columns(records.DECISION, n, d), Columns(records.CANDIDATE, n, c),
                                  Columns(records.FILTERED, n, f), Columns(records.FEATURES, n, feats),
                                  tables.model_versions)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_decision_already_logged_is_refused_whole_by_both_logs(backend, dsn, tmp_path):
    from nba.stores.decisions.sqlite import DecisionLog

    log = DecisionLog(tmp_path / "log") if backend == "sqlite" else PostgresDecisionLog(dsn, tmp_path / "log")
    try:
        assert log.append(_tables(2)) == 2
        with pytest.raises(AlreadyLogged, match=r"one of the decisions of this append \(d0, d1, d2\) is already "
                                                r"logged; nothing of it was written") as e:
            log.append(_tables(3))  # d0 and d1 again, and a new d2
        assert e.value.decision_ids == ["d0", "d1", "d2"]
        assert log.count() == 2 and len(read_log(tmp_path / "log", dsn=dsn if backend == "postgres" else None)
                                        .candidates) == 2
    finally:
        log.close()


def test_concurrent_appends_share_commits_and_a_bad_one_fails_alone(dsn, tmp_path):
    log = PostgresDecisionLog(dsn, tmp_path)
    log.append(_renamed(_tables(1), "dup"))
    writers, per = 16, 25
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)

    def work(w: int) -> None:
        barrier.wait()
        for i in range(per):
            try:
                # writer 0's 10th append repeats a logged decision id: it fails, alone
                log.append(_renamed(_tables(1), "dup" if (w, i) == (0, 9) else f"w{w}-{i}-"))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], AlreadyLogged)  # the duplicate id, named as such
    assert log.count() == 1 + writers * per - 1
    frames = read_log(tmp_path, dsn=dsn)
    assert len(frames.candidates) == len(frames.filtered) == writers * per  # every row of every acknowledged one
    assert log.db.commits < writers * per  # one commit served several requests
    log.close()


def test_the_outbox_message_commits_with_its_decision(dsn, tmp_path):
    from nba.stores.outbox import Settlement
    from nba.stores.outbox_postgres import PostgresOutbox

    log = PostgresDecisionLog(dsn, tmp_path)
    log.append(_with_outbox(_tables(2), ["d0", "d1"]))
    with pytest.raises(AlreadyLogged):  # d1 again: neither its rows nor its message
        log.append(_with_outbox(_tables(2), ["x0", "x1"]))
    box = PostgresOutbox(dsn)
    assert box.count() == 2 and log.count() == 2
    claimed = box.claim("w1", limit=10, lease_s=30, now=2_000.0)
    assert sorted(m.idempotency_key for m in claimed) == ["d0-a", "d1-a"]
    assert box.claim("w2", limit=10, lease_s=30, now=2_001.0) == []  # leased
    assert box.settle("w1", [Settlement("d0-a", "delivered", "200", "webhook", 1),
                             Settlement("d1-a", "failed", "500", "webhook", 1, next_attempt_at=2_100.0)],
                      now=2_002.0) == 2
    st = box.status(now=2_003.0)
    assert st == {"email": {"pending": 0, "delivered": 1, "failed": 1, "dead": 0, "in_flight": 0}}
    assert [r["outcome"] for r in box.receipts("d1-a")] == ["failed"]
    assert [m.idempotency_key for m in box.claim("w2", limit=10, lease_s=30, now=2_200.0)] == ["d1-a"]
    assert box.erase_customer(10) == 2 and box.count() == 1  # d1's message and its receipt
    box.close()
    log.close()


def test_the_event_log_and_the_preferences_on_postgres(dsn):
    from nba.events import validate_events
    from nba.stores.events.postgres import PostgresEventLog, read_events_pg
    from nba.stores.preferences.postgres import PostgresPreferenceStore
    from tests.test_events import NOW, TYPES

    log = PostgresEventLog(dsn)
    evs = validate_events([{"customer_id": 1, "type": "app_login", "timestamp": NOW - 10},
                           {"customer_id": 2, "type": "outage", "timestamp": NOW - 5,
                            "properties": {"service": "atm", "minutes": 30}},
                           {"customer_id": 1, "type": "app_login", "timestamp": NOW - 10}], TYPES, NOW)
    evs[1]["known_customer"] = False
    first = log.append(evs, NOW)
    assert len(first.new) == 2 and first.duplicates == (evs[2]["event_id"],)
    again = log.append(evs[:2], NOW)
    assert again.new == () and set(again.duplicates) == {evs[0]["event_id"], evs[1]["event_id"]}
    assert log.count() == 2 and log.count_unknown() == 1
    hist = log.history([1, 2, 3])
    assert [e.type for e in hist[1]] == ["app_login"] and hist[3] == []
    assert hist[2][0].properties == {"service": "atm", "minutes": 30}
    frame = read_events_pg(dsn)
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert frame.set_index("customer_id").loc[2, "minutes"] == 30 and frame["known_customer"].tolist() == [1, 0]
    assert log.erase_customer(1) == 1 and log.count() == 1 and log.customers() == [2]
    log.close()

    prefs = PostgresPreferenceStore(dsn)
    assert prefs.put(5, '{"consent": {"sms": false}}', "customer", 100.0) is None
    old = prefs.put(5, '{"consent": {"sms": true}}', "agent", 200.0)
    assert old is not None and json.loads(old.preferences) == {"consent": {"sms": False}} and old.updated_by == "customer"
    got = prefs.get([5, 6])
    assert list(got) == [5] and json.loads(got[5].preferences) == {"consent": {"sms": True}}
    assert [(a["changed_by"], a["before"], a["after"]) for a in prefs.audit(5)] == [
        ("customer", None, {"consent": {"sms": False}}), ("agent", {"consent": {"sms": False}}, {"consent": {"sms": True}})]
    assert prefs.erase_customer(5) == 3 and prefs.get([5]) == {} and prefs.audit(5) == []
    prefs.close()


def test_erasure_covers_the_postgres_stores(dsn, tmp_path):
    from nba.erasure import erase_customer
    from nba.stores.events.postgres import PostgresEventLog
    from nba.stores.outbox_postgres import PostgresOutbox
    from nba.stores.preferences.postgres import PostgresPreferenceStore

    settings = Settings(home=PROJECT_ROOT, work_dir=tmp_path / "var", log_store="postgres", log_dsn=dsn)
    log = PostgresDecisionLog(dsn, settings.decision_log_dir)
    log.append(_with_outbox(_tables(3), ["d0", "d1", "d2"]))  # customers 0, 10, 20
    log.append_outcome("d1", "a", "accepted", 4.0, 2_000.0)
    PostgresEventLog(dsn).append([{"event_id": "e1", "customer_id": 10, "type": "app_login", "timestamp": 1.0,
                                   "properties": {}}], 2.0)
    PostgresPreferenceStore(dsn).put(10, "{}", "customer", 3.0)
    receipt = erase_customer(settings, 10, by="test")
    stores = receipt["stores"]
    assert stores["decision_log"]["rows"] == 4  # the decision, its candidate, filtered row and outcome
    assert stores["outbox"]["rows"] == 1 and stores["event_log"]["rows"] == 1 and stores["preferences"]["rows"] == 2
    assert "postgresql://postgres@127.0.0.1:5432/nba_" in stores["event_log"]["where"]
    frames = read_log(settings.decision_log_dir, dsn=dsn, with_features=True)
    assert 10 not in set(frames.decisions["customer_id"]) and "d1" not in set(frames.decisions["decision_id"])
    erased = frames.decisions[frames.decisions["customer_id"] < 0]
    assert len(erased) == 1 and erased["decision_id"].iloc[0] in set(frames.outcomes["decision_id"])
    feats = frames.features.set_index("decision_id")
    assert feats.loc[erased["decision_id"].iloc[0]].isna().all()  # the erased decision's features are gone
    assert feats.loc["d0", "age"] == 20.0 and feats.loc["d2", "region"] == "north"
    assert PostgresOutbox(dsn).count() == 2
    again = erase_customer(settings, 10, by="test")
    assert again["nothing_left"] and again["previously_erased_at"] == receipt["erased_at"]
    log.close()
    # the erasure list is in Postgres, so another machine's replica (its own work folder) sees it
    assert receipt["erasure_list"].startswith("postgresql://") and not (settings.privacy_dir / "erasures.db").exists()
    elsewhere = Settings(home=PROJECT_ROOT, work_dir=tmp_path / "other", log_store="postgres", log_dsn=dsn)
    assert erased_ids(elsewhere) == {10}
    other = open_erasure_list(elsewhere)
    try:
        got = other.erased([10, 20, 10])
        assert list(got) == [10] and abs(got[10] - _epoch(receipt)) < 1e-3
        assert other.get(10)["erased_by"] == "test" and other.get(20) is None
        assert other.add(10, 1.0, "again", "x") is False  # the first erasure's entry stays
    finally:
        other.close()


def _epoch(receipt: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(receipt["erased_at"].replace("Z", "+00:00")).timestamp()


def test_a_write_after_postgres_dropped_the_connection_is_refused_then_recovers(dsn, tmp_path):
    log = PostgresDecisionLog(dsn, tmp_path)
    log.append(_tables(1))
    with psycopg.connect(dsn, autocommit=True) as admin:  # the server ends the writer's session
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND pid <> pg_backend_pid()")
    with pytest.raises(StoreUnavailable, match="decision log: Postgres at .* failed during a commit"):
        log.append(_renamed(_tables(1), "x"))
    assert log.append(_renamed(_tables(1), "y")) == 1  # a new connection
    assert sorted(read_log(tmp_path, dsn=dsn).decisions["decision_id"]) == ["d0", "y0"]
    log.close()


def test_text_with_quotes_backslashes_braces_and_nulls_round_trips(dsn, tmp_path):
    """The appends travel as array literals: every character a rule, an action or a feature
    can hold comes back as it went in, NULL stays NULL, a float keeps every bit."""
    tricky = ['say "hi", {now}', "back\\slash \\\\ twice", "tab\there\nnewline", "NULL", "", "ünïcødé ✓", "a,b"]
    n = len(tricky)
    t = _renamed(_tables(n), "t")
    r = np.arange(n)
    filtered = Columns(records.FILTERED, n, {"decision_id": t.filtered.values["decision_id"],
                                             "action_id": Coded(r, tricky), "stage": Coded(np.zeros(n, dtype=np.int64),
                                                                                           ["eligibility"]),
                                             "rule": tricky})
    values = dict(t.decisions.values, uplift=np.array([np.nan, 1 / 3, -0.0, 1e-300, 2.0**62, np.nan, 7.0]))
    feats = Columns(records.FEATURES, n, {"decision_id": t.features.values["decision_id"], "label": tricky,
                                          "x": np.array([0.1, np.nan, 1e300, -1.5, 0.0, 2.0, 3.0])})
    log = PostgresDecisionLog(dsn, tmp_path)
    log.append(records.DecisionTables(Columns(records.DECISION, n, values), t.candidates, filtered, feats,
                                      {'m"odel': "v\\1"}))
    frames = read_log(tmp_path, dsn=dsn, with_features=True)
    assert list(frames.filtered["rule"]) == tricky and list(frames.filtered["action_id"]) == tricky
    got = frames.decisions["uplift"].to_numpy()
    want = values["uplift"]
    assert np.array_equal(np.isnan(got), np.isnan(want)) and (got[~np.isnan(got)] == want[~np.isnan(want)]).all()
    feats_back = frames.features.set_index("decision_id").loc[[f"t{i}" for i in range(n)]]
    assert list(feats_back["label"]) == tricky
    assert feats_back["x"].iloc[0] == 0.1 and np.isnan(feats_back["x"].iloc[1]) and feats_back["x"].iloc[2] == 1e300
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT DISTINCT model_versions->>'m\"odel' FROM decisions").fetchall() == [("v\\1",)]
    log.close()


def test_two_migrators_at_once_apply_each_version_once():
    with pg_database("test_pg_stores", migrated=False) as raw:
        done: list[list] = []
        barrier = threading.Barrier(2)

        def one() -> None:
            barrier.wait()
            done.append(migrate(raw))

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(len(d) for d in done) == [0, len(MIGRATIONS)]  # the second found nothing to do
        with psycopg.connect(raw) as conn:
            assert conn.execute("SELECT version FROM schema_version ORDER BY 1").fetchall() == [
                (m.version,) for m in MIGRATIONS]
        PostgresDecisionLog(raw, Path("/nonexistent")).close()  # and the stores open on it
