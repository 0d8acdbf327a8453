"""Shared fixtures. Constants live in `tests/constants.py`; data comes from the project's own
generators (the simulator) or from the public data sets under NBA_DATA_DIR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nba.settings import Settings, disable_telemetry

PROJECT_ROOT = Path(__file__).resolve().parents[1]

disable_telemetry()


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
