"""The shared SQLite file behind the decision log and the policy state: concurrent writers of a
process share commits, a failing write fails alone, two processes write without losing rows."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nba.stores.sqlite import SqliteFile

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, who TEXT NOT NULL);"


def test_concurrent_writers_of_a_process_all_commit_and_share_transactions(tmp_path: Path):
    db = SqliteFile(tmp_path / "f.db", schema=SCHEMA)
    commits = []
    original = db._commit

    def counting(batch):
        commits.append(len(batch))
        original(batch)

    db._commit = counting  # observe how many writes each transaction carried

    def writer(i: int) -> None:
        for j in range(40):
            db.submit(lambda conn, i=i, j=j: conn.execute("INSERT INTO t VALUES (?, ?)", (f"{i}-{j}", f"t{i}")))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 320
    assert sum(commits) == 320
    assert len(commits) < 320 and max(commits) > 1  # some transactions carried several writes


def test_a_failing_write_fails_alone(tmp_path: Path):
    db = SqliteFile(tmp_path / "f.db", schema=SCHEMA)
    db.submit(lambda conn: conn.execute("INSERT INTO t VALUES ('a', 'x')"))
    with pytest.raises(sqlite3.IntegrityError):
        db.submit(lambda conn: conn.execute("INSERT INTO t VALUES ('a', 'again')"))
    assert db.submit(lambda conn: conn.execute("INSERT INTO t VALUES ('b', 'y')").rowcount) == 1
    assert db.read(lambda c: c.execute("SELECT k, who FROM t ORDER BY k").fetchall()) == [("a", "x"), ("b", "y")]


WRITER = """
import sys
from nba.stores.sqlite import SqliteFile
db = SqliteFile(sys.argv[1], schema="CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, who TEXT NOT NULL);")
for j in range(300):
    db.submit(lambda conn, j=j: conn.execute("INSERT INTO t VALUES (?, ?)", (f"{sys.argv[2]}-{j}", sys.argv[2])))
"""


def test_two_processes_write_the_same_file_without_losing_a_row(tmp_path: Path):
    path = tmp_path / "f.db"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name]) for name in ("p1", "p2")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    db = SqliteFile(path, schema=SCHEMA)
    assert db.read(lambda c: c.execute("SELECT who, count(*) FROM t GROUP BY who ORDER BY who").fetchall()) == [
        ("p1", 300), ("p2", 300)]
