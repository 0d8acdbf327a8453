"""A served bank for the serving tests: trained champions, a materialised online store, a built
bundle and Bento, and helpers to run the real BentoML server on a free localhost port."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nba.settings import Settings
from tests.conftest import PROJECT_ROOT

# The simulated bank's "now": the day after its last snapshot (features are fresh).
DECISION_TIME = "2025-12-01T09:00:00Z"
DECISION_EPOCH = 1_764_579_600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_home(root: Path, *, policies: dict[str, Any] | None = None, strip_uplift: bool = True) -> Path:
    """A project folder whose features/, training/ and evaluation/ are the project's, and whose
    serving/ catalog is the shipped one (without the uplift models the small bank cannot train)."""
    home = root / "home"
    home.mkdir(parents=True)
    for name in ("features", "training", "evaluation"):
        (home / name).symlink_to(PROJECT_ROOT / name, target_is_directory=True)
    (home / "serving").mkdir()
    actions = yaml.safe_load((PROJECT_ROOT / "serving" / "actions.yaml").read_text())
    if strip_uplift:
        for a in actions["actions"]:
            a.pop("uplift_model", None)
    pol = yaml.safe_load((PROJECT_ROOT / "serving" / "policies.yaml").read_text())
    for key, value in (policies or {}).items():
        section, _, field = key.partition("__")
        pol[section][field] = value
    (home / "serving" / "actions.yaml").write_text(yaml.safe_dump(actions, sort_keys=False))
    (home / "serving" / "policies.yaml").write_text(yaml.safe_dump(pol, sort_keys=False))
    for name in ("events.yaml", "triggers.yaml"):  # the always-on loop's declarations, as shipped
        shutil.copyfile(PROJECT_ROOT / "serving" / name, home / "serving" / name)
    return home


def build_served_bank(feature_env: Settings, root: Path) -> Settings:
    """Champions trained on the shared 4,000-customer bank, its online store materialised in a
    private copy of the feature repository, and the bundle built. The champions are trained once
    per session (`_champions`); each bank gets its own copy of that MLflow store, relocated."""
    from nba.features import store
    from nba.serving.bundle import build

    home = make_home(root)
    work = root / "var"
    work.mkdir()
    (work / "sim").symlink_to(feature_env.work / "sim", target_is_directory=True)
    shutil.copytree(feature_env.work / "feature_repo", work / "feature_repo")
    settings = Settings(home=home, work_dir=work, mlflow_dir=root / "mlflow", data_dir=feature_env.data_dir)
    store.materialize(settings)
    copy_mlflow_store(_champions(feature_env), settings.mlflow_dir)
    build(settings)
    return settings


_CHAMPIONS: dict[Path, Path] = {}  # the session's feature_env work folder -> its trained MLflow store


def _champions(feature_env: Settings) -> Path:
    """An MLflow store (a folder of its own, never served from) with the test bank's champions:
    every propensity model, churn and CLV trained on the shared bank and aliased @champion
    (promotion gates have their own tests). Trained once: the same training every served bank
    repeated took about a minute each, nine times a suite."""
    from nba.training import propensity, tracking
    from nba.training.churn import train_churn
    from nba.training.clv import train_clv

    key = feature_env.work.resolve()
    if key not in _CHAMPIONS:
        root = feature_env.work.parent / "champions"
        work = root / "var"
        work.mkdir(parents=True)
        for name in ("sim", "feature_repo"):
            (work / name).symlink_to(feature_env.work / name, target_is_directory=True)
        settings = Settings(home=make_home(root), work_dir=work, mlflow_dir=root / "mlflow",
                            data_dir=feature_env.data_dir)
        trained = [*propensity.train_propensity(settings), train_churn(settings), train_clv(settings, "sim")]
        client = tracking.configure(settings)
        for m in trained:
            client.set_registered_model_alias(m.name, "champion", m.version)
        _CHAMPIONS[key] = settings.mlflow_dir
    return _CHAMPIONS[key]


def copy_mlflow_store(source: Path, target: Path) -> None:
    """Copy an embedded MLflow store (its SQLite database and artifacts) and point every path
    the database holds (artifact locations, model sources) at the copy: a run, a model or an
    artifact written through the copy stays in it."""
    import sqlite3

    shutil.copytree(source, target)
    old, new = str(source.resolve()), str(target.resolve())
    conn = sqlite3.connect(target / "mlflow.db")
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, col, kind, *_ in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
                if any(t in str(kind).upper() for t in ("CHAR", "TEXT", "CLOB")):
                    conn.execute(f'UPDATE "{table}" SET "{col}" = replace("{col}", ?, ?) WHERE instr("{col}", ?) > 0',
                                 (old, new, old))
        conn.commit()
    finally:
        conn.close()


@dataclass
class Server:
    settings: Settings
    url: str
    port: int
    proc: Any
    log: Path

    def stop(self) -> None:
        from nba.serving.run import stop

        stop(self.proc)


def start_server(settings: Settings, log: Path, *, workers: int = 2, extra_env: dict[str, str] | None = None,
                 ready: bool = True) -> Server:
    """`nba serve` on a free port. A free port is only free until someone binds it: BentoML's
    process manager picks its own control port the same way, so two servers started together
    can collide ("Address already in use"); that start is retried on fresh ports, twice."""
    from nba.serving.run import start, stop, wait_ready

    for attempt in range(3):
        port = free_port()
        offset = log.stat().st_size if log.exists() else 0  # the log is appended to
        proc = start(settings, port=port, workers=workers, log_file=log, extra_env=extra_env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc, timeout=180, accept_unready=not ready)
        except Exception:
            stop(proc)
            text = log.read_bytes()[offset:].decode(errors="replace") if log.exists() else ""
            if "Address already in use" in text and attempt < 2:
                continue
            raise AssertionError(f"server did not start; its log:\n{text[-5000:]}") from None
        return Server(settings, url, port, proc, log)
    raise AssertionError("unreachable")


def call(url: str, path: str, body: Any = None, *, raw: bytes | None = None, method: str | None = None
         ) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            payload = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        status = exc.code
    try:
        return status, json.loads(payload)
    except json.JSONDecodeError:
        return status, payload.decode(errors="replace")


def reply_json(handler: Any, status: int, raw: bytes) -> None:
    """A stdlib `BaseHTTPRequestHandler`'s JSON answer (the tests' small local servers)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)
