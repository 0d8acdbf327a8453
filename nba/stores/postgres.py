"""Postgres for the production profile: the Postgres form of the records (`create_table`,
derived from `nba.records` like the SQLite one), the versioned schema (`MIGRATIONS`,
`migrate`, `check_schema`) and a database shared by the threads of a process with group commit
(`PgDatabase`).

Types: a time is epoch seconds (`double precision`), as in the SQLite stores and the column
builder, so every query compares numbers; a JSON column is `jsonb`, read back as its text
(the stores decode it themselves, as from SQLite).

Group commit: the writes that arrive while another thread of the process is committing wait
for it, then go together in one transaction and one commit (WAL flush). Writes that only
append rows (`Write.copy`) are merged: one `COPY` per table for the whole group. If the merged
transaction fails, it is retried write by write, each in its own savepoint, so one failing
write fails alone. `submit` returns only once its write is committed.

The schema is created and migrated only by `nba stores migrate` (`migrate`); every store
checks at start that the database is at the version this release knows (`check_schema`) and
refuses to start otherwise, with one line naming the component, the DSN (without its
password) and what to do. A DSN that does not connect is refused the same way, at start.

psycopg is imported by the functions that need it (`nba --help` reads this module's callers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nba.errors import NbaError, NotWritten
from nba.records import (
    BATCH_INDEX,
    CANDIDATE,
    DECISION,
    ERASURE,
    EVENT,
    FILTERED,
    FLOAT,
    INT,
    JSON,
    OUTBOX,
    OUTCOME,
    PREFERENCE,
    PREFERENCE_AUDIT,
    RECEIPT,
    TEXT,
    TIME,
    TRIGGER_PENDING,
    Record,
)
from nba.schemas import ENTITY_KEY

T = TypeVar("T")

PG_TYPES = {TEXT: "text", INT: "bigint", FLOAT: "double precision", TIME: "double precision", JSON: "jsonb"}
# tables read back in the order their rows were written (SQLite's rowid; a heap table's scan
# order is not that): an identity column. (A session caches 100 values: rows of one
# transaction are in order, those of two writers' sessions in blocks.)
ORDERED = frozenset({DECISION.name, CANDIDATE.name, FILTERED.name, PREFERENCE_AUDIT.name})
ROW_SEQ = "row_seq"
CONNECT_TIMEOUT_S = 5
COMMITTERS = 3  # write connections of a process (transactions in flight at once)
READERS = 4  # read connections of a process, shared by its threads


class StoreUnavailable(NbaError):
    """A store's database does not answer (at start, or when a write cannot be committed)."""

    exit_code = 3


class SchemaVersionError(NbaError):
    """The database's schema is not the version this release knows: `nba stores migrate`."""

    exit_code = 3


# --- the Postgres form of the records ---------------------------------------------------------


def create_table(record: Record) -> str:
    """`CREATE TABLE IF NOT EXISTS` for a record: its columns in order with their Postgres
    types, NOT NULL unless nullable, its key; an ordered table (`ORDERED`) has an identity
    column `row_seq` after them (the order rows were written in)."""
    cols = [f"{c.name} {PG_TYPES[c.kind]}{'' if c.nullable else ' NOT NULL'}" for c in record.columns]
    if record.name in ORDERED:
        cols.append(f"{ROW_SEQ} bigint GENERATED ALWAYS AS IDENTITY (CACHE 100)")
    if record.key:
        cols.append(f"PRIMARY KEY ({', '.join(record.key)})")
    return f"CREATE TABLE IF NOT EXISTS {record.name} (\n    " + ",\n    ".join(cols) + "\n);\n"


def add_column(record: Record, name: str) -> str:
    """The `ALTER TABLE` of a migration that adds a declared column (nullable, or with the
    declaration's NOT NULL once filled: a migration adding a NOT NULL column gives a default)."""
    c = record[name]
    return f"ALTER TABLE {record.name} ADD COLUMN IF NOT EXISTS {c.name} {PG_TYPES[c.kind]};\n"


def insert_sql(record: Record, *, conflict: str = "", columns: Sequence[str] | None = None) -> str:
    """`INSERT INTO <record> (<columns>) VALUES (%s, ...)` [`ON CONFLICT (<key>) DO NOTHING`
    (conflict="nothing") or `DO UPDATE SET` every other column (conflict="update")]."""
    names = tuple(columns) if columns is not None else record.names
    if sorted(names) != sorted(record.names):
        raise ValueError(f"record '{record.name}': insert columns {list(names)} are not its columns {list(record.names)}")
    sql = f"INSERT INTO {record.name} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"
    if conflict == "nothing":
        sql += f" ON CONFLICT ({', '.join(record.key)}) DO NOTHING"
    elif conflict == "update":
        sets = ", ".join(f"{n} = EXCLUDED.{n}" for n in names if n not in record.key)
        sql += f" ON CONFLICT ({', '.join(record.key)}) DO UPDATE SET {sets}"
    elif conflict:
        raise ValueError(f"conflict '{conflict}': expected '', 'nothing' or 'update'")
    return sql


def order_by(record: Record) -> str:
    """The ORDER BY that reads a table as SQLite does: write order (ORDERED), else key order."""
    cols = (ROW_SEQ,) if record.name in ORDERED else record.key
    return f" ORDER BY {', '.join(cols)}" if cols else ""


def copy_sql(record: Record, columns: Sequence[str] | None = None) -> str:
    return f"COPY {record.name} ({', '.join(columns or record.names)}) FROM STDIN"


def _quote(x: str) -> str:
    return '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Arrays(tuple):  # type: ignore[type-arg]
    """n rows of a record as one array literal per column, without the braces (so a group's
    are joined by a comma): the parameters of `unnest_sql`."""


def unnest_sql(record: Record) -> str:
    """`INSERT INTO <record> (<columns>) SELECT * FROM unnest($1::<type>[], ...)`: any number of
    rows in one statement of one parameter per column (`array_text`), so a group's appends are
    one statement per table, and the whole transaction one round trip (pipeline mode)."""
    arrays = ", ".join(f"%s::{PG_TYPES[c.kind]}[]" for c in record.columns)
    return f"INSERT INTO {record.name} ({', '.join(record.names)}) SELECT * FROM unnest({arrays})"


def array_text(record: Record, values: Mapping[str, Any]) -> Arrays:
    """The rows of `values` (column -> numpy array, list or `Coded`) as array literals, one per
    column (`Arrays`); a code's name is quoted once, not once per row."""
    import numpy as np

    from nba.records import Coded

    out: list[str] = []
    for c in record.columns:
        v = values[c.name]
        if isinstance(v, Coded):
            names = ["NULL" if x is None else _quote(str(x)) for x in v.names]
            out.append(",".join([names[i] for i in np.asarray(v.codes).tolist()]))
            continue
        items = v.tolist() if isinstance(v, np.ndarray) else list(v)
        if c.kind is TEXT or c.kind is JSON:
            out.append(",".join(["NULL" if x is None else _quote(x) for x in items]))
        elif c.kind is INT:
            out.append(",".join(["NULL" if x is None else str(int(x)) for x in items]))
        else:
            out.append(",".join(["NULL" if x is None or x != x else repr(float(x)) for x in items]))
    return Arrays(out)


# --- the versioned schema ---------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


# every table a store of the production profile writes (the contact-policy and trigger state
# live in Redis there)
_V1_RECORDS = (DECISION, CANDIDATE, FILTERED, BATCH_INDEX, OUTCOME, OUTBOX, RECEIPT, EVENT, PREFERENCE,
               PREFERENCE_AUDIT)
PG_RECORDS = (*_V1_RECORDS, TRIGGER_PENDING, ERASURE)

# The indexes are the SQLite log's: none on candidates and filtered (a 200-action catalog
# writes ~200 filtered rows per decision; an index on them would double the write's work for
# the customer 360's reads), none on decided_at (the retention compaction is a periodic scan).
# In order; a release appends, never edits (a database records the versions it went through).
# Version 1 is the declaration as it is; a later change of a record comes with a migration
# (`add_column`), and `check_schema` refuses a database whose columns differ from the declaration.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the decision log, outbox, event log and preference tables of nba.records", (
        *(create_table(r) for r in _V1_RECORDS),
        f"CREATE INDEX IF NOT EXISTS decisions_customer ON {DECISION.name} ({ENTITY_KEY})",
        f"CREATE INDEX IF NOT EXISTS batch_index_customer ON {BATCH_INDEX.name} ({ENTITY_KEY})",
        f"CREATE INDEX IF NOT EXISTS outbox_due ON {OUTBOX.name} (next_attempt_at) WHERE state IN ('pending', 'failed')",
        f"CREATE INDEX IF NOT EXISTS outbox_customer ON {OUTBOX.name} ({ENTITY_KEY})",
        f"CREATE INDEX IF NOT EXISTS receipts_key ON {RECEIPT.name} (idempotency_key)",
        f"CREATE INDEX IF NOT EXISTS events_by_customer ON {EVENT.name} ({ENTITY_KEY}, timestamp)",
        f"CREATE INDEX IF NOT EXISTS preference_audit_customer ON {PREFERENCE_AUDIT.name} ({ENTITY_KEY})",
    )),
    Migration(2, "the events whose triggers have not run (trigger_pending)", (
        create_table(TRIGGER_PENDING),
        f"CREATE INDEX IF NOT EXISTS trigger_pending_ingested ON {TRIGGER_PENDING.name} (ingested_at)",
    )),
    Migration(3, "the erasure list, shared by the replicas (erasures)", (create_table(ERASURE),)),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
_VERSION_TABLE = ("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, description text NOT NULL, "
                  "applied_at double precision NOT NULL)")
_MIGRATE_LOCK = 7_126_301  # pg_advisory_xact_lock key: one migrator at a time


def redact(dsn: str) -> str:
    """The DSN without its password: `postgresql://user@host:port/dbname`."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        d = conninfo_to_dict(dsn)
    except Exception:  # not parseable: show nothing of it that could be secret
        return "<unparseable DSN>"
    user = f"{d['user']}@" if d.get("user") else ""
    port = f":{d['port']}" if d.get("port") else ""
    return f"postgresql://{user}{d.get('host') or 'localhost'}{port}/{d.get('dbname') or ''}"


def connect(dsn: str, component: str, *, autocommit: bool = False) -> Any:
    """A psycopg connection whose jsonb values read as text; one line naming the component,
    the address and what to do if the database does not answer."""
    import psycopg
    from psycopg.types.string import TextLoader

    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise StoreUnavailable(
            f"{component}: cannot connect to Postgres at {redact(dsn)} ({reason}); start Postgres there or point "
            "NBA_LOG_DSN (or NBA_POSTGRES_DSN) at a database that answers") from None
    conn.adapters.register_loader("jsonb", TextLoader)
    return conn


def applied_versions(conn: Any) -> list[int]:
    """The versions the database went through (empty: never migrated)."""
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
    if not exists:
        return []
    return [int(r[0]) for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]


def migrate(dsn: str, *, component: str = "nba stores migrate", migrations: Sequence[Migration] = MIGRATIONS
            ) -> list[Migration]:
    """Apply the migrations the database has not had, in order, each in its own transaction,
    the whole run under one advisory lock of the session (two migrators at once: the second
    waits for the first to finish, then finds nothing to do). Returns the ones applied. A
    database at a version newer than this release is refused."""
    conn = connect(dsn, component)
    done: list[Migration] = []
    try:
        with conn.transaction():
            # a session lock: held across the migrations' transactions (released when the
            # connection closes), so two runs never interleave their versions
            conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
            conn.execute(_VERSION_TABLE)
        known = {m.version for m in migrations}
        for m in migrations:
            with conn.transaction():
                have = applied_versions(conn)
                unknown = [v for v in have if v not in known]
                if unknown:
                    raise SchemaVersionError(
                        f"{component}: the Postgres schema at {redact(dsn)} is at version {max(have)}, newer than "
                        f"this release knows ({max(known)}); run a release that knows it")
                if m.version in have:
                    continue
                for stmt in m.statements:
                    conn.execute(stmt)
                conn.execute("INSERT INTO schema_version VALUES (%s, %s, %s)", (m.version, m.description, time.time()))
                done.append(m)
    finally:
        conn.close()
    return done


def _declared_columns(record: Record) -> list[tuple[str, str, bool]]:
    return [(c.name, PG_TYPES[c.kind], c.nullable) for c in record.columns]


def check_schema(conn: Any, dsn: str, component: str, records: Iterable[Record] = PG_RECORDS) -> None:
    """Refuse (`SchemaVersionError`, one line) a database that was not migrated, is at another
    version than this release's, or whose tables differ from the declaration of `records`."""
    have = applied_versions(conn)
    where = f"the Postgres schema at {redact(dsn)}"
    if not have:
        raise SchemaVersionError(f"{component}: {where} is not migrated (no schema_version table); run "
                                 "`nba stores migrate` first")
    current = max(have)
    if current > SCHEMA_VERSION or any(v not in {m.version for m in MIGRATIONS} for v in have):
        raise SchemaVersionError(f"{component}: {where} is at version {current}, which this release does not know "
                                 f"(it knows up to {SCHEMA_VERSION}); run the release that migrated it, or restore "
                                 "a database at a known version")
    if current < SCHEMA_VERSION:
        raise SchemaVersionError(f"{component}: {where} is at version {current}, this release needs "
                                 f"{SCHEMA_VERSION}; run `nba stores migrate`")
    for record in records:
        rows = conn.execute(
            "SELECT column_name, data_type, is_nullable = 'YES' FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s AND column_name <> %s ORDER BY ordinal_position",
            (record.name, ROW_SEQ)).fetchall()
        got = [(n, t, bool(nullable)) for n, t, nullable in rows]
        if got != _declared_columns(record):
            missing = [c.name for c in record.columns if c.name not in {g[0] for g in got}]
            raise SchemaVersionError(
                f"{component}: table '{record.name}' in {where} differs from the declaration (missing {missing}, "
                f"has {[g[0] for g in got]}); run `nba stores migrate` (a changed record needs a migration)")


# --- a database shared by the threads of a process --------------------------------------------


@dataclass
class Write:
    """A write: `fn(connection)` inside the transaction; or, for one that only appends rows,
    `copy` (copy statement -> rows), merged with the other appends of its group."""

    fn: Callable[[Any], Any] | None = None
    copy: Mapping[str, Any] | None = None  # statement -> rows (tuples: COPY) or `Arrays` (`unnest_sql`)
    result: Any = None
    wake: threading.Event = field(default_factory=threading.Event)  # done, or its turn to lead
    done: bool = False
    error: BaseException | None = None

    def run(self, conn: Any) -> Any:
        if self.copy is not None:
            _copy(conn, self.copy)
        return self.fn(conn) if self.fn is not None else self.result


def _copy(conn: Any, copies: Mapping[str, Any]) -> None:
    with conn.cursor() as cur:
        for sql, rows in copies.items():
            if not rows:
                continue
            if isinstance(rows, Arrays):
                if rows[0]:
                    cur.execute(sql, ["{" + a + "}" for a in rows])
                continue
            with cur.copy(sql) as cp:
                write_row = cp.write_row
                for r in rows:
                    write_row(r)


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    conn: Any = None


class PgDatabase:
    """A Postgres database of the production profile: checked at start (it answers, its schema
    is this release's), a few shared read connections, group-committed writes on up to
    `committers` write connections (each opened when first needed)."""

    def __init__(self, dsn: str, component: str, records: Iterable[Record] = PG_RECORDS, *,
                 committers: int = COMMITTERS, readers: int = READERS):
        self.dsn = dsn
        self.component = component
        self.address = redact(dsn)
        self._idle: list[Any] = []  # read connections not in use
        self._reader_slots = threading.BoundedSemaphore(max(1, readers))
        self._queue: list[Write] = []
        self._queue_lock = threading.Lock()
        # up to `committers` transactions in flight, each on its own connection: while one
        # waits for its WAL flush the next group is already sent (the server flushes the WAL
        # of commits that arrive together once: its own group commit)
        self._slots = [_Slot() for _ in range(max(1, committers))]
        conn = self._connect(autocommit=True)
        try:
            check_schema(conn, dsn, component, records)
        finally:
            conn.close()
        self.commits = 0  # transactions committed by this process (group commit: fewer than the writes)

    def _connect(self, *, autocommit: bool) -> Any:
        return connect(self.dsn, self.component, autocommit=autocommit)

    def read(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(connection)` on an idle read connection (autocommit: each statement sees the
        latest commits). At most `readers` are open, shared by the threads: a service with
        many request threads, workers and replicas stays far below the server's
        max_connections."""
        import psycopg

        with self._reader_slots:
            with self._queue_lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = self._connect(autocommit=True)
            try:
                out = fn(conn)
            except psycopg.OperationalError:  # the server restarted: one new connection, one more try
                conn.close()
                conn = self._connect(autocommit=True)
                out = fn(conn)
            except BaseException:
                conn.close()
                raise
            with self._queue_lock:
                self._idle.append(conn)
            return out

    def close(self) -> None:
        with self._queue_lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()
        for slot in self._slots:
            with slot.lock:
                if slot.conn is not None:
                    slot.conn.close()
                    slot.conn = None

    def submit(self, fn: Callable[[Any], T] | None = None, *, copy: Mapping[str, Any] | None = None,
               result: Any = None) -> T:
        """Run the write in a transaction shared with the writes that arrived meanwhile; return
        its result once committed (or raise its error). A waiting writer sleeps until its write
        is committed or the committing one hands it the next group (no polling: 16 threads
        polling the lock would take the interpreter from the one committing)."""
        item = Write(fn, copy, result)
        with self._queue_lock:
            self._queue.append(item)
        while not item.done:
            slot = next((s for s in self._slots if s.lock.acquire(blocking=False)), None)
            if slot is not None:
                try:
                    with self._queue_lock:
                        batch, self._queue = self._queue, []
                    if batch:
                        self._commit(slot, batch)
                finally:
                    slot.lock.release()
                    with self._queue_lock:  # the next group's first writer leads it
                        if self._queue:
                            self._queue[0].wake.set()
            else:
                item.wake.wait(0.01)
                item.wake.clear()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[no-any-return]

    def _write_conn(self, slot: _Slot) -> Any:
        if slot.conn is None or slot.conn.closed or slot.conn.broken:
            slot.conn = self._connect(autocommit=False)
        return slot.conn

    def _commit(self, slot: _Slot, batch: list[Write]) -> None:
        import psycopg

        try:
            conn = self._write_conn(slot)
        except BaseException as exc:
            # no connection: nothing of the group was sent (the caller may undo what it did for it)
            refused: BaseException = NotWritten(str(exc)) if isinstance(exc, NbaError) else exc
            for w in batch:
                w.error = refused
                w.done = True
                w.wake.set()
            return
        try:
            if all(w.fn is None for w in batch):  # only appends: one statement per table for the group
                parts: dict[str, list[Any]] = {}
                for w in batch:
                    for sql, rows in (w.copy or {}).items():
                        if rows and (not isinstance(rows, Arrays) or rows[0]):
                            parts.setdefault(sql, []).append(rows)
                merged: dict[str, Any] = {}
                for sql, group in parts.items():
                    if all(isinstance(g, Arrays) for g in group):  # each column's literals joined once
                        merged[sql] = Arrays(",".join(col) for col in zip(*group, strict=True))
                    else:
                        merged[sql] = [r for g in group for r in g]
                try:
                    if all(isinstance(r, Arrays) for r in merged.values()):
                        with conn.pipeline(), conn.transaction():  # BEGIN, the inserts, COMMIT: one round trip
                            _copy(conn, merged)
                    else:
                        with conn.transaction():
                            _copy(conn, merged)
                    self.commits += 1
                    return
                except psycopg.OperationalError:
                    raise
                except psycopg.Error:
                    if len(batch) == 1:
                        raise
                    # one of them is bad: each alone, below
            if len(batch) == 1:
                with conn.transaction():
                    batch[0].result = batch[0].run(conn)
                self.commits += 1
                return
            with conn.transaction():
                for w in batch:
                    try:
                        with conn.transaction():  # a savepoint: this write fails alone
                            w.result = w.run(conn)
                    except psycopg.OperationalError:
                        raise
                    except Exception as exc:
                        w.error = exc
            self.commits += 1
        except BaseException as exc:
            if isinstance(exc, psycopg.OperationalError):
                conn.close()
                err: BaseException = StoreUnavailable(
                    f"{self.component}: Postgres at {self.address} failed during a commit ({exc}); the write was "
                    "not acknowledged")
            else:
                err = exc
            for w in batch:
                if w.error is None:
                    w.error = err
                    w.result = None
        finally:
            for w in batch:
                w.done = True
                w.wake.set()


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop a database (tests and benchmarks), ending the sessions still on it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_database(admin_dsn: str, name: str) -> str:
    """Create a database on the server of `admin_dsn`; returns its DSN (tests and benchmarks)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    d = conninfo_to_dict(admin_dsn)
    d["dbname"] = name
    return make_conninfo("", **d)
