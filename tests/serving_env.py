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
    shutil.copyfile(PROJECT_ROOT / "serving" / "events.yaml", home / "serving" / "events.yaml")
    return home


def build_served_bank(feature_env: Settings, root: Path) -> Settings:
    """Champions trained on the shared 4,000-customer bank, its online store materialised in a
    private copy of the feature repository, and the bundle built."""
    from nba.features import store
    from nba.serving.bundle import build
    from nba.training import propensity, tracking
    from nba.training.churn import train_churn
    from nba.training.clv import train_clv

    home = make_home(root)
    work = root / "var"
    work.mkdir()
    (work / "sim").symlink_to(feature_env.work / "sim", target_is_directory=True)
    shutil.copytree(feature_env.work / "feature_repo", work / "feature_repo")
    settings = Settings(home=home, work_dir=work, mlflow_dir=root / "mlflow", data_dir=feature_env.data_dir)
    store.materialize(settings)
    trained = [*propensity.train_propensity(settings), train_churn(settings), train_clv(settings, "sim")]
    client = tracking.configure(settings)
    for m in trained:  # the test bank's champions (promotion gates have their own tests)
        client.set_registered_model_alias(m.name, "champion", m.version)
    build(settings)
    return settings


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
    from nba.serving.run import start, wait_ready

    port = free_port()
    proc = start(settings, port=port, workers=workers, log_file=log, extra_env=extra_env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout=180, accept_unready=not ready)
    except Exception:
        from nba.serving.run import stop

        stop(proc)
        raise AssertionError(f"server did not start; its log:\n{log.read_text()[-5000:]}") from None
    return Server(settings, url, port, proc, log)


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
