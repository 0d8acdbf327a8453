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


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB file system (tmpfs; root is needed, and CI runs as root)."""
    import os

    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"a size-limited file system is needed: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (root is needed): {mounted.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_after_the_disk_was_full_the_write_ahead_log_gives_its_room_back(small_disk: Path):
    """SQLite checkpoints its log only at 4 MiB, and never shrinks it. A filler leaves the log
    1 MiB of this 2 MiB disk; once it is full and a write refused, the filler goes (the operator
    made room): the next write folds the log back into the database and truncates it, so the log
    does not keep the room it had taken."""
    import time

    from nba.stores.sqlite import RECLAIM_EVERY_S, StoreWriteFailed

    db = SqliteFile(small_disk / "f.db", schema=SCHEMA)
    wal, filler = small_disk / "f.db-wal", small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024))

    def insert(key: str) -> None:
        db.submit(lambda conn: conn.execute("INSERT INTO t VALUES (?, ?)", (key, "x" * 3000)))

    written, refused = [], []
    for i in range(2000):
        try:
            insert(f"a{i}")
            written.append(f"a{i}")
        except StoreWriteFailed as exc:
            assert "nothing of it was kept" in str(exc)
            refused.append(f"a{i}")
            break
    assert refused, "the disk never filled: the test proves nothing"
    full_log = wal.stat().st_size
    assert full_log > 512 * 1024  # the log took most of the room left
    filler.unlink()
    time.sleep(RECLAIM_EVERY_S)
    insert("b0")
    written.append("b0")
    assert wal.stat().st_size < 64 * 1024, (full_log, wal.stat().st_size)  # checkpointed and truncated
    for i in range(1, 60):  # and the rows keep coming into the room made
        insert(f"b{i}")
        written.append(f"b{i}")
    kept = set(db.read(lambda c: [r[0] for r in c.execute("SELECT k FROM t")]))
    assert kept == set(written)  # every acknowledged row, and not the refused one
