"""The production profile's MLflow tracking server, for real: `mlflow server` on a free loopback
port with a Postgres backend store of the test's own and an artifact folder it serves; training,
registration and the bundle go through it under `NBA_PROFILE=production`.

The feature repository is the shared embedded one of `feature_env` (the production profile's
Redis online store and Postgres registry have their own test in `tests/test_serving.py`):
what changes with the profile here is where runs, models and aliases live.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from nba.settings import TELEMETRY_OFF, Settings
from nba.training import tracking, tracking_server
from nba.training.registry import HOLDOUT_ARTIFACT
from nba.training.tracking import DEFAULT_SERVER, TrackingUnavailable
from nba.training.tune import worker_env
from tests.conftest import PROJECT_ROOT
from tests.serving_env import free_port, make_home

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_database():
    """A Postgres database of this test's own (its DSN), dropped afterwards."""
    import psycopg

    name = f"nba_tracking_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def server(pg_database: str, tmp_path: Path):
    """`mlflow server` on that database, its artifacts in a folder of the test's own; stopped
    (its whole process group) after the test."""
    srv = tracking_server.start(tracking_server.backend_uri(pg_database), tmp_path / "server-artifacts",
                                port=free_port(), log_file=tmp_path / "mlflow-server.log")
    try:
        yield srv
    finally:
        srv.stop()
        assert not tracking_server.group_alive(srv.proc.pid), "mlflow server processes left behind"


def _down_uri() -> str:
    return f"http://127.0.0.1:{free_port()}"  # a free port: nothing answers there


def test_production_uses_the_tracking_server_and_the_setting_overrides_it(settings: Settings):
    prod = settings.model_copy(update={"profile": "production"})
    assert tracking.tracking_uri(prod) == DEFAULT_SERVER
    assert tracking.tracking_uri(prod.model_copy(update={"mlflow_tracking_uri": "http://mlflow:5000"})) == \
        "http://mlflow:5000"
    assert tracking.tracking_uri(settings).startswith("sqlite:///")  # the embedded default is unchanged


def test_a_tracking_server_that_does_not_answer_is_one_line_at_start(settings: Settings):
    uri = _down_uri()
    prod = settings.model_copy(update={"profile": "production", "mlflow_tracking_uri": uri,
                                       "postgres_dsn": "postgresql://nba:secret@127.0.0.1:5432/nba"})
    from nba.training.churn import train_churn

    with pytest.raises(TrackingUnavailable) as exc:
        train_churn(prod)  # fails before any frame is read
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"MLflow tracking server {uri} does not answer (")
    port = uri.rsplit(":", 1)[1]
    assert (f"start it with `mlflow server --backend-store-uri postgresql+psycopg://nba:***@127.0.0.1:5432/nba "
            f"--artifacts-destination {(settings.mlflow_path / 'artifacts').resolve()} --serve-artifacts "
            f"--host 127.0.0.1 --port {port} --workers 1`") in msg
    assert "secret" not in msg and "NBA_MLFLOW_TRACKING_URI" in msg
    assert not settings.mlflow_path.exists()  # no local store was made instead


@pytest.mark.parametrize("argv", [["train", "churn"], ["tune", "churn", "--trials", "1"], ["bundle", "build"],
                                  ["promote", "nba-churn"]])
def test_the_commands_name_the_tracking_server_that_does_not_answer(settings: Settings, argv: list[str]):
    uri = _down_uri()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NBA_")}, **TELEMETRY_OFF,
           **worker_env(settings), "NBA_PROFILE": "production", "NBA_MLFLOW_TRACKING_URI": uri,
           "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, "-m", "nba", *argv], env=env, capture_output=True, text=True,
                          timeout=120, cwd=str(PROJECT_ROOT))
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: MLflow tracking server {uri} does not answer ("), \
        done.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_training_the_registry_and_the_bundle_go_through_the_tracking_server(feature_env: Settings, server,
                                                                             pg_database: str, tmp_path: Path):
    import psycopg

    from nba.serving.bundle import build, load_catalog_from_bundle, load_models, load_trained, read_manifest
    from nba.training import propensity
    from nba.training.churn import train_churn
    from nba.training.clv import train_clv

    root = tmp_path / "bank"
    root.mkdir()
    work = root / "var"
    work.mkdir()
    for name in ("sim", "feature_repo"):  # the shared (read-only) bank and its embedded feature repository
        (work / name).symlink_to(feature_env.work / name, target_is_directory=True)
    prod = Settings(home=make_home(root), work_dir=work, mlflow_dir=root / "mlflow", data_dir=feature_env.data_dir,
                    profile="production", mlflow_tracking_uri=server.uri, postgres_dsn=pg_database)
    from nba.stores.postgres import migrate

    migrate(pg_database)  # the production stores' schema: training frames read its erasure list

    trained = [*propensity.train_propensity(prod), train_churn(prod), train_clv(prod, "sim")]
    client = tracking.configure(prod)
    for m in trained:
        assert client.get_model_version_by_alias(m.name, "challenger").version == m.version
        client.set_registered_model_alias(m.name, "champion", m.version)
    result = build(prod)

    # Nothing went to a local store: the runs, versions and aliases are in the server's database,
    # the artifacts in the folder it serves.
    assert not prod.mlflow_path.exists()
    with psycopg.connect(pg_database) as conn:
        aliases = dict(conn.execute("SELECT name, version FROM registered_model_aliases WHERE alias = 'champion'")
                       .fetchall())
        runs = conn.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0]
    assert aliases == {m.name: int(m.version) for m in trained}
    assert runs >= len(trained)
    served = list((server.log.parent / "server-artifacts").rglob("MLmodel"))
    assert len(served) >= len({m.run_id for m in trained})

    # The bundle pins exactly the server's champions, and the model it imported from the server
    # (into the BentoML store the service loads) is the server's: the same predictions on the
    # hold-out frame downloaded through the server.
    manifest = read_manifest(result.bundle_dir)
    assert {n: int(info["version"]) for n, info in manifest["models"].items()} == aliases
    cat = load_catalog_from_bundle(result.bundle_dir, manifest)
    models = load_models(prod, cat, manifest, result.bundle_dir)
    role = manifest["models"]["nba-churn"]["roles"][0]
    assert role.startswith("score:") and role.removeprefix("score:") in models.score_models
    champion = client.get_model_version_by_alias("nba-churn", "champion")
    holdout = pd.read_parquet(client.download_artifacts(champion.run_id, HOLDOUT_ARTIFACT, str(tmp_path)))
    from_server = mlflow.sklearn.load_model("models:/nba-churn@champion")
    from_bundle = load_trained(prod, manifest["models"]["nba-churn"]["bento_model"])
    X = holdout[list(from_server.feature_names_in_)]
    p_server, p_bundle = from_server.predict_proba(X)[:, 1], from_bundle.predict_proba(X)[:, 1]
    assert len(X) > 100 and p_server.std() > 0
    np.testing.assert_array_equal(p_bundle, p_server)
