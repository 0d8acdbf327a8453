"""Shared tuning: worker processes on one Optuna study in a Postgres database of the test's own,
with heartbeats, and a worker SIGKILLed in the middle of a trial.

`nba tune churn --workers 2` runs as a user runs it (a process that starts two worker
processes); the test kills one worker while it runs a trial and checks, in Optuna's own record
of the study, that the trial was failed, re-run with the same parameters by the other worker
(the retry names it through `RetryHeartbeatStaleTrialCallback`'s lineage), and that the study
still reached the trials asked for. Search spaces are the cut-down ones of `tests/test_tune.py`
(a trial takes about a second on the 4,000-customer bank).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from nba.errors import NbaError
from nba.settings import TELEMETRY_OFF, Settings
from nba.training import tracking
from nba.training.config import best_params_path
from nba.training.tune import TuningError, open_storage, tune, worker_env
from tests.conftest import PROJECT_ROOT
from tests.test_tune import SMALL_SPACE, _home

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TRIALS = 8  # enough that the surviving worker starts trials after the killed one's grace period
HEARTBEAT_S, GRACE_S = 1, 2


@pytest.fixture
def pg_storage():
    """An Optuna storage URL on a Postgres database of this test's own, dropped afterwards."""
    import psycopg

    name = f"nba_tune_workers_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def shared(train_env: Settings, tmp_path: Path, pg_storage: str) -> Settings:
    edit = {"churn": {"tuning": {"metric": "log_loss", "direction": "minimize", "search_space": SMALL_SPACE}}}
    return train_env.model_copy(update={"home": _home(tmp_path, edit), "optuna_storage": pg_storage,
                                        "optuna_heartbeat_s": HEARTBEAT_S, "optuna_grace_s": GRACE_S})


def test_a_storage_that_does_not_connect_is_one_line_before_any_frame_is_read(settings: Settings):
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nba"  # port 1: nothing listens
    with pytest.raises(TuningError) as exc:
        tune(settings, "churn", trials=1, storage=url)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"Optuna storage {url} does not open (")
    assert "--storage" in msg and "NBA_OPTUNA_STORAGE" in msg
    assert not (settings.work / "tuning").exists()  # nothing was made


def test_workers_and_until_are_checked(settings: Settings):
    with pytest.raises(NbaError, match=r"--workers must be at least 1 \(got 0\)"):
        tune(settings, "churn", trials=1, workers=0)
    with pytest.raises(NbaError, match=r"--until must be at least 1 finished trial \(got 0\)"):
        tune(settings, "churn", trials=1, until=0)


def test_the_production_profile_tunes_on_the_postgres_dsn(settings: Settings):
    prod = settings.model_copy(update={"profile": "production", "postgres_dsn": "postgresql://u@db.example:5432/nba"})
    assert prod.tuning_storage == "postgresql+psycopg://u@db.example:5432/nba"
    assert prod.model_copy(update={"optuna_storage": "sqlite:///x.db"}).tuning_storage == "sqlite:///x.db"


def _running_trial(storage: optuna.storages.RDBStorage, study: str) -> optuna.trial.FrozenTrial | None:
    try:
        s = optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        return None
    # a trial with the whole space suggested: one killed between two suggestions has only part of
    # its parameters, and its retry samples the rest
    running = [t for t in s.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if "nba.worker" in t.user_attrs and set(t.params) == set(SMALL_SPACE)]
    return running[0] if running else None


@pytest.mark.slow
@pytest.mark.integration
# the retry lineage's readers are "experimental" in Optuna 5 (since 2.8/3.0): the documented API
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_two_workers_share_a_postgres_study_and_a_killed_workers_trial_is_retried(shared: Settings,
                                                                                   tmp_path: Path):
    study_name = "churn-shared"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NBA_")}, **TELEMETRY_OFF,
           **worker_env(shared), "PYTHONPATH": str(PROJECT_ROOT)}
    log = tmp_path / "tune.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nba", "tune", "churn", "--workers", "2", "--trials",
                                 str(TRIALS), "--study", study_name], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=str(shared.home), start_new_session=True)
    storage = open_storage(shared)
    killed: optuna.trial.FrozenTrial | None = None
    try:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            killed = _running_trial(storage, study_name)
            if killed is None:
                time.sleep(0.1)
        assert killed is not None, f"no worker started a trial; the log:\n{log.read_text()[-3000:]}"
        victim = int(killed.user_attrs["nba.worker"].rsplit(":", 1)[1])
        os.kill(victim, signal.SIGKILL)  # mid-trial: the trial stays RUNNING, its heartbeat stops
        assert proc.wait(timeout=150) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    # The killed trial was failed by the heartbeat check ...
    assert trials[killed.number].state == TrialState.FAIL
    # ... and re-run once, with the same parameters, by the other worker, which finished it.
    retries = [t for t in trials.values() if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
    assert len(retries) == 1
    retry = retries[0]
    assert RetryHeartbeatStaleTrialCallback.retry_history(retry) == [killed.number]
    assert retry.params == killed.params == trials[killed.number].params
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.user_attrs["nba.worker"] != killed.user_attrs["nba.worker"]
    # The study holds the trials asked for (each worker may run one past the target).
    finished = [t for t in trials.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert TRIALS <= len(finished) <= TRIALS + 1
    assert not [t for t in trials.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # Both workers ran trials of the one study.
    assert len({t.user_attrs["nba.worker"] for t in trials.values()}) == 2

    # What the command told the user, and the best parameters where `nba train` reads them.
    out = log.read_text()
    assert "2 workers; 1 trial(s) retried after a worker died" in out
    assert f"(pid {victim}) exit code -9" in out
    best = yaml.safe_load(best_params_path(shared.work, "churn").read_text())
    assert best["study_name"] == study_name and best["value"] == pytest.approx(study.best_value)
    assert best["params"] == study.best_params

    # One MLflow parent run for the call; one child run per trial a worker finished.
    tracking.configure(shared)
    parent = mlflow.get_run(best["parent_run_id"])
    assert parent.data.tags["nba.workers"] == "2"
    assert parent.data.metrics["workers_failed"] == 1 and parent.data.metrics["trials_retried"] == 1
    assert parent.data.metrics["trials_failed"] == 1
    children = mlflow.search_runs(experiment_names=["nba-churn"],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == len(finished)
