"""Shared fixtures. Constants live in `tests/constants.py`; data comes from the project's own
generators (the simulator) or from the public data sets under NBA_DATA_DIR."""

from __future__ import annotations

import os
from pathlib import Path

import feast  # noqa: F401  (see pytest_configure)
import pytest

from nba.console import LIBRARY_WARNINGS
from nba.settings import Settings, disable_telemetry
from tests.constants import SEED

PROJECT_ROOT = Path(__file__).resolve().parents[1]

disable_telemetry()


def pytest_configure(config: pytest.Config) -> None:
    # The library warnings we silence are named in one place (nba/console.py); pyproject's
    # filterwarnings makes our own deprecations errors. Added after the ini lines, so they win.
    # Feast runs warnings.simplefilter("once", DeprecationWarning) when first imported, which
    # would put its filter in front of these for the rest of the test that imported it (our
    # own deprecations would pass there): it is imported above, before any test's filters.
    for w in LIBRARY_WARNINGS:
        config.addinivalue_line("filterwarnings", w.filter_spec())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder of public data sets (NBA_DATA_DIR); the tests that need it fail loudly without it."""
    value = os.environ.get("NBA_DATA_DIR")
    if not value:
        default = PROJECT_ROOT.parent / "shared" / "data"
        if default.is_dir():
            return default
        pytest.fail("NBA_DATA_DIR is not set: point it at the folder with hillstrom.csv.zip and CDNOW_master.txt.gz")
    return Path(value).resolve()


@pytest.fixture
def settings(tmp_path: Path, data_dir: Path) -> Settings:
    """Settings for one test: the project's declarations, a private work folder."""
    return Settings(home=PROJECT_ROOT, work_dir=tmp_path / "var", data_dir=data_dir,
                    mlflow_dir=tmp_path / "mlflow")


@pytest.fixture(scope="session")
def feature_env(tmp_path_factory, data_dir: Path) -> Settings:
    """A small simulated bank (4,000 customers, 12 months) and the real data sets, applied to a
    real Feast repository in a temporary work folder. Shared by the training tests: read-only."""
    from nba.data.simulator import simulate_to_dir
    from nba.features import store

    root = tmp_path_factory.mktemp("feature_env")
    settings = Settings(home=PROJECT_ROOT, work_dir=root / "var", data_dir=data_dir, mlflow_dir=root / "mlflow")
    simulate_to_dir(customers=4_000, seed=SEED, out_dir=settings.sim_dir, progress=False)
    store.apply(settings)
    return settings


@pytest.fixture
def train_env(feature_env: Settings, tmp_path: Path) -> Settings:
    """The shared feature store with a private MLflow store and tuning folder for one test."""
    work = tmp_path / "var"
    work.mkdir()
    # Share the (read-only) simulator output and feature repository; keep tuning output private.
    for name in ("sim", "feature_repo", "real"):
        (work / name).symlink_to(feature_env.work / name, target_is_directory=True)
    return feature_env.model_copy(update={"work_dir": work, "mlflow_dir": tmp_path / "mlflow"})


ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def customers_bank(feature_env: Settings, tmp_path_factory) -> Settings:
    """A served bank of its own for the customer 360, preference and erasure tests: erasure
    rewrites sources, so its simulator output is a copy, not the shared one (`feature_env`)."""
    import shutil

    from tests.serving_env import build_served_bank

    settings = build_served_bank(feature_env, tmp_path_factory.mktemp("customers_bank"))
    sim = settings.work / "sim"
    target = sim.resolve()
    sim.unlink()
    shutil.copytree(target, sim)
    return settings


@pytest.fixture(scope="session")
def customers_server(customers_bank: Settings, tmp_path_factory):
    """The decision service over `customers_bank`, with an admin token (DELETE /customers/{id})."""
    from tests.serving_env import start_server

    srv = start_server(customers_bank, tmp_path_factory.mktemp("customers_logs") / "server.log",
                       extra_env={"NBA_ADMIN_TOKEN": ADMIN_TOKEN})
    yield srv
    srv.stop()
