"""Faults survived, nothing lost: the real decision service under load while a component fails.

Each test runs `bentoml serve` (two workers) over a served bank, drives it with concurrent
clients, breaks one component in the middle and mends it:

* the contact-policy Redis is SIGKILLed and restarted (its own `redis-server`, append-only
  file fsynced on every write, as production runs it);
* the decision log's disk fills up (a size-limited tmpfs under the log; root is needed to
  mount it, which CI has);
* the log's Postgres is stopped at once (`pg_ctl stop -m immediate`, a crash) and started again
  (a cluster of the test's own, initdb'd as the postgres user);
* one of two replicas (sharing the log in Postgres and the contact state in Redis) is
  SIGKILLed; a decision made on one is responded to on the other first.

During the fault the service answers 503 with the reason (or the other replica answers), never
200 for a decision it did not log; afterwards it answers 200 again by itself, without a restart.
Then the no-loss check: every decision answered 200 is in the log, and the contact state agrees
with the log (each logged decision that showed an action is one contact, nothing else is).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from nba.records import NO_ACTION
from nba.settings import Settings
from nba.stores.decisions import log_location, read_log
from tests.conftest import ADMIN_TOKEN
from tests.pg_env import pg_database
from tests.serving_env import DECISION_EPOCH, DECISION_TIME, call, free_port, start_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]
CUSTOMERS = list(range(1, 301))


def _private(bank: Settings, work: Path, **update) -> Settings:
    work.mkdir(parents=True, exist_ok=True)
    for name in ("sim", "feature_repo", "bundle", "bentoml"):
        if not (work / name).exists():
            (work / name).symlink_to(bank.work / name, target_is_directory=True)
    return bank.model_copy(update={"work_dir": work, **update})


def _fill(path: Path, size: int) -> None:
    """Write `size` bytes (or until the disk is full: the log grows meanwhile)."""
    chunk = b"\0" * (64 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        written = 0
        while written < size:
            try:
                written += os.write(fd, chunk[:min(len(chunk), size - written)])
            except OSError:
                return
    finally:
        os.close(fd)


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RedisServer:
    """A redis-server of the test's own on a free port: AOF with fsync always, so a SIGKILL
    loses nothing it acknowledged."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"redis-server on {self.port} did not start") from None
                time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class PgServer:
    """A PostgreSQL cluster of the test's own on a free port (the machine's server is shared
    with other work and must not restart). Run as the postgres user, which the folder is
    given to."""

    def __init__(self) -> None:
        import glob
        import tempfile

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if os.geteuid() != 0 or not bins or not shutil.which("runuser"):
            why = "a Postgres of its own needs root (runuser) and the server's binaries"
            if os.environ.get("CI") == "true":
                pytest.fail(why)
            pytest.skip(why)
        self.bin = Path(bins[-1]).parent
        self.folder = Path(tempfile.mkdtemp(prefix="nba-faults-pg-", dir="/tmp"))
        os.chmod(self.folder, 0o755)
        shutil.chown(self.folder, "postgres", "postgres")
        self.port = free_port()
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres",
                           "--no-sync"])

    def _as_postgres(self, cmd: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, timeout=120)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-l", str(self.folder / "log"),
                           "-w", "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start"])

    def crash(self) -> None:
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop"])

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.folder, ignore_errors=True)


class Load:
    """Clients that decide for random customers in a loop; every answer is kept."""

    def __init__(self, urls: list[str], clients: int = 6, channel: str = "web"):
        self.urls, self.clients, self.channel = urls, clients, channel
        self.answers: list[tuple[float, str, int, object]] = []  # (time, url, status, body)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        rng = random.Random(i)
        n = 0
        while not self._stop.is_set():
            url = self.urls[(i + n) % len(self.urls)]
            n += 1
            body = {"customer_id": rng.choice(CUSTOMERS), "channel": self.channel,
                    "timestamp": _iso(DECISION_EPOCH + rng.random() * 3600)}
            try:
                status, out = call(url, "/decide", body)
            except OSError as exc:  # a replica that is gone: no answer at all
                status, out = 0, str(exc)
            with self._lock:
                self.answers.append((time.monotonic(), url, status, out))
            if status != 200:
                time.sleep(0.05)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)

    def since(self, t0: float) -> list[tuple[float, str, int, object]]:
        with self._lock:
            return [a for a in self.answers if a[0] >= t0]

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        while time.monotonic() < deadline:
            if predicate(self.since(t0)):
                return
            time.sleep(0.2)
        seen = Counter(a[2] for a in self.since(t0))
        raise AssertionError(f"{what} within {timeout:.0f} s; statuses since: {dict(seen)}")


def _ok(answers) -> list[dict]:
    return [a[3] for a in answers if a[2] == 200]


def _no_loss(settings: Settings, load: Load, policy, in_flight: int = 0) -> None:
    """Every 200 is in the log; the contact state holds exactly the logged decisions' actions.
    `in_flight`: requests a SIGKILL cut between reserving their contact and logging it may
    leave that many extra contacts (counted against the customer: a cap errs on the safe side)."""
    statuses = Counter(a[2] for a in load.answers)
    assert set(statuses) <= {0, 200, 503}, statuses  # never a 500, never a silent default
    ok = _ok(load.answers)
    folder, dsn = log_location(settings)
    log = read_log(folder, dsn=dsn).decisions
    logged = set(log["decision_id"])
    missing = [b["decision_id"] for b in ok if b["decision_id"] not in logged]
    assert not missing, f"{len(missing)} decisions answered 200 are not in the log"
    shown = log[log["action_id"] != NO_ACTION]
    # the load's customers and any other the test decided for (the one-customer race picks one outside them)
    customers = sorted(set(CUSTOMERS) | set(shown["customer_id"].astype(int).tolist()))
    h = policy.history(customers, since=DECISION_EPOCH - 86400)
    ids = [customers[r] for r in h.contact_row.tolist()]
    state = Counter(zip(ids, h.contact_action, strict=True))
    logged_shown = Counter(zip(shown["customer_id"].astype(int).tolist(), shown["action_id"].astype(str).tolist(),
                               strict=True))
    assert not logged_shown - state, "a logged decision's contact is missing from the contact state"
    assert sum((state - logged_shown).values()) <= in_flight


@pytest.fixture
def own_redis(tmp_path):
    r = RedisServer(tmp_path / "redis")
    r.start()
    yield r
    r.stop()


def test_redis_killed_and_restarted(customers_bank, own_redis, tmp_path):
    from nba.stores.policy_state.redis import RedisPolicyStore

    prefix = f"nba-faults-{uuid.uuid4().hex[:8]}"
    settings = _private(customers_bank, tmp_path / "var", policy_store="redis", redis_url=own_redis.url,
                        redis_prefix=prefix)
    srv = start_server(settings, tmp_path / "server.log", extra_env={
        "NBA_POLICY_STORE": "redis", "NBA_REDIS_URL": own_redis.url, "NBA_REDIS_PREFIX": prefix})
    try:
        with Load([srv.url]) as load:
            load.wait_for(lambda a: len(_ok(a)) >= 20, 60, "20 decisions before the fault")
            own_redis.kill()
            t_down = time.monotonic()
            load.wait_for(lambda a: sum(x[2] == 503 for x in a) >= 5, 30, "503s while Redis is down")
            down = [a for a in load.since(t_down) if a[2] == 503]
            assert all("contact-policy store" in str(a[3]) for a in down), down[:2]
            own_redis.start()
            t_up = time.monotonic()
            load.wait_for(lambda a: len(_ok(a)) >= 20, 60, "decisions again after Redis is back")
        assert len(_ok(load.since(t_up))) >= 20
    finally:
        srv.stop()
    policy = RedisPolicyStore(own_redis.url, prefix=f"{prefix}:policy")
    _no_loss(settings, load, policy, in_flight=6)  # a reply lost as Redis died: counted, not logged
    policy.close()


def test_postgres_crashes_and_comes_back(customers_bank, tmp_path):
    from nba.stores.policy_state.sqlite import SqlitePolicyStore
    from nba.stores.postgres import migrate

    pg = PgServer()
    srv = None
    try:
        pg.start()
        migrate(pg.dsn)
        settings = _private(customers_bank, tmp_path / "var", log_store="postgres", log_dsn=pg.dsn)
        srv = start_server(settings, tmp_path / "server.log",
                           extra_env={"NBA_LOG_STORE": "postgres", "NBA_LOG_DSN": pg.dsn})
        with Load([srv.url]) as load:
            load.wait_for(lambda a: len(_ok(a)) >= 20, 60, "20 decisions before the fault")
            pg.crash()
            t_down = time.monotonic()
            load.wait_for(lambda a: sum(x[2] == 503 for x in a) >= 5, 30, "503s while Postgres is down")
            down = [a for a in load.since(t_down) if a[2] == 503]
            odd = Counter(str(a[3]) for a in down if "Postgres" not in str(a[3]) and "decision log" not in str(a[3]))
            assert not odd, odd  # every reason, with its count
            pg.start()
            t_up = time.monotonic()
            load.wait_for(lambda a: len(_ok(a)) >= 20, 90, "decisions again after Postgres is back")
        assert len(_ok(load.since(t_up))) >= 20
        srv.stop()
        srv = None
        policy = SqlitePolicyStore(settings.policy_state_path)
        _no_loss(settings, load, policy, in_flight=6)  # a commit the crash cut short: counted, maybe not logged
        policy.close()
    finally:
        if srv is not None:
            srv.stop()
        pg.remove()


def test_the_logs_disk_fills_up(customers_bank, tmp_path):
    from nba.stores.policy_state.sqlite import SqlitePolicyStore

    settings = _private(customers_bank, tmp_path / "var")
    log_dir = settings.decision_log_dir
    log_dir.mkdir(parents=True)
    # 16 MiB: room for SQLite's write-ahead log, checkpointed only at 4 MiB (on a 3 MiB disk the
    # log alone filled it before the filler could, and removing a filler of 0 bytes made no room)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(log_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"a size-limited file system is needed for the disk-full fault: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (root is needed): {mounted.stderr.strip()}")
    filler = log_dir / "filler"
    srv = None
    try:
        srv = start_server(settings, tmp_path / "server.log")
        with Load([srv.url]) as load:
            load.wait_for(lambda a: len(_ok(a)) >= 10, 60, "10 decisions before the fault")
            free = shutil.disk_usage(log_dir).free
            assert free > 4 * 1024 * 1024, free  # the filler, not the log, fills the disk
            _fill(filler, max(free - 64 * 1024, 0))  # leave about 64 KiB: the next writes fail
            t_full = time.monotonic()
            load.wait_for(lambda a: sum(x[2] == 503 for x in a) >= 5, 60, "503s while the disk is full")
            full = [a for a in load.since(t_full) if a[2] == 503]
            assert any("nothing of it was kept" in str(a[3]) for a in full), full[:2]
            filler.unlink()
            t_free = time.monotonic()
            load.wait_for(lambda a: len(_ok(a)) >= 20, 60, "decisions again once the disk has room")
        assert len(_ok(load.since(t_free))) >= 20
    finally:
        if srv is not None:
            srv.stop()
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
        # the log is copied off the tmpfs before it goes
        keep = tmp_path / "log-copy"
        shutil.copytree(log_dir, keep)
        subprocess.run(["umount", str(log_dir)], check=False)
    shutil.rmtree(log_dir)
    shutil.copytree(keep, log_dir)
    policy = SqlitePolicyStore(settings.policy_state_path)
    _no_loss(settings, load, policy)
    policy.close()


def test_one_of_two_replicas_is_killed(customers_bank, own_redis, tmp_path):
    prefix = f"nba-faults-{uuid.uuid4().hex[:8]}"
    with pg_database("faults") as dsn:  # the replicas share the log in Postgres, the contact state in Redis
        settings = _private(customers_bank, tmp_path / "var", policy_store="redis", redis_url=own_redis.url,
                            redis_prefix=prefix, log_store="postgres", log_dsn=dsn)
        env = {"NBA_POLICY_STORE": "redis", "NBA_REDIS_URL": own_redis.url, "NBA_REDIS_PREFIX": prefix,
               "NBA_LOG_STORE": "postgres", "NBA_LOG_DSN": dsn, "NBA_ADMIN_TOKEN": ADMIN_TOKEN}
        _two_replicas(settings, env, own_redis, tmp_path)


def _one_customer_on_both(settings: Settings, url_one: str, url_two: str, own_redis: RedisServer,
                          prefix: str) -> None:
    """16 clients, half on each replica, decide for one customer by e-mail at once: the e-mail
    cap (4 per 30 days) holds across the replicas, and the contact state holds exactly what was shown."""
    from concurrent.futures import ThreadPoolExecutor

    import yaml

    from nba.stores.policy_state.redis import RedisPolicyStore

    def emailable(c: int) -> bool:  # the preview of the customer 360: nothing logged or counted
        status, body = call(url_one, f"/customers/{c}?at={DECISION_TIME}")
        return status == 200 and bool(body["next_best_actions"]["email"]["actions"])

    cid = next(c for c in range(301, 400) if emailable(c))  # not one of the load's customers
    t = DECISION_EPOCH + 7200.0

    def client(i: int) -> list[dict]:
        out = []
        for j in range(4):
            status, body = call(url_one if i % 2 else url_two, "/decide",
                                {"customer_id": cid, "channel": "email", "timestamp": _iso(t + i * 0.01 + j)})
            assert status == 200, body
            out.append(body)
        return out

    with ThreadPoolExecutor(16) as pool:
        answers = [a for part in pool.map(client, range(16)) for a in part]
    shown = [a["actions"][0]["action_id"] for a in answers if a["actions"]]
    policies = yaml.safe_load((settings.home / "serving" / "policies.yaml").read_text())
    email_cap = policies["channels"]["email"]["caps"][0]["count"]
    assert 1 <= len(shown) <= email_cap, shown
    policy = RedisPolicyStore(own_redis.url, prefix=f"{prefix}:policy")
    assert sorted(policy.history([cid], since=t - 86400).contact_action) == sorted(shown)
    policy.close()


def _erased_on_one_refused_on_the_other(settings: Settings, url_one: str, url_two: str, dsn: str) -> None:
    """A customer erased through one replica is refused (404) by the other, which stores none
    of their events: the erasure list is the replicas' Postgres table, not a file of either."""
    import psycopg

    from tests.test_customers import _delete

    cid = next(c for c in range(401, 500) if call(url_two, f"/customers/{c}?at={DECISION_TIME}")[0] == 200)
    status, receipt = _delete(url_one, cid, f"Bearer {ADMIN_TOKEN}")
    assert status == 200 and receipt["customer_id"] == cid, receipt
    status, body = call(url_two, "/decide", {"customer_id": cid, "channel": "email", "timestamp": DECISION_TIME})
    assert status == 404 and body["field"] == "customer_id" and f"customer {cid} was erased" in body["error"], body
    status, body = call(url_two, "/events", {"customer_id": cid, "type": "app_login", "timestamp": DECISION_TIME})
    assert status == 200 and body["stored"] == 0 and body["erased_customers"] == [cid], body
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT customer_id FROM erasures").fetchall() == [(cid,)]
        assert conn.execute("SELECT count(*) FROM events WHERE customer_id = %s", (cid,)).fetchone() == (0,)
    assert not (settings.privacy_dir / "erasures.db").exists()


def _two_replicas(settings: Settings, env: dict[str, str], own_redis: RedisServer, tmp_path: Path) -> None:
    from nba.serving.run import kill
    from nba.stores.policy_state.redis import RedisPolicyStore

    prefix = env["NBA_REDIS_PREFIX"]
    one = start_server(settings, tmp_path / "one.log", extra_env=env)
    two = start_server(settings, tmp_path / "two.log", extra_env=env)
    try:
        _one_customer_on_both(settings, one.url, two.url, own_redis, prefix)
        _erased_on_one_refused_on_the_other(settings, one.url, two.url, env["NBA_LOG_DSN"])
        with Load([one.url, two.url], clients=8) as load:
            load.wait_for(lambda a: len({x[1] for x in a if x[2] == 200}) == 2, 60, "both replicas answering")
            # a decision made on one replica is responded to on the other
            made = next(a[3] for a in load.since(0) if a[1] == two.url and a[2] == 200 and a[3]["actions"])
            status, out = call(one.url, "/respond", {"decision_id": made["decision_id"], "outcome": "accepted",
                                                     "action_id": made["actions"][0]["action_id"]})
            assert status == 200 and out["recorded"] is True, out
            kill(two.proc)  # the server and its workers, at once
            t_kill = time.monotonic()
            load.wait_for(lambda a: sum(x[2] == 200 and x[1] == one.url for x in a) >= 30, 60,
                          "the other replica answering")
            time.sleep(max(0.0, t_kill + 4.0 - time.monotonic()))
            after = load.since(t_kill + 1.0)
            assert not [a for a in after if a[1] == two.url and a[2] == 200]  # the dead one answers nothing
            survivor = [a[2] for a in after if a[1] == one.url]
            assert len(survivor) >= 10 and set(survivor) == {200}  # the other is untouched by it
    finally:
        one.stop()
        if two.proc.poll() is None:
            kill(two.proc)
    policy = RedisPolicyStore(own_redis.url, prefix=f"{prefix}:policy")
    _no_loss(settings, load, policy, in_flight=8)  # at most one request per client was cut
    policy.close()
