"""Settings: paths and the active profile, read from `NBA_*` environment variables.

`Settings()` reads the environment and nothing else: no directory is made, no tracking URI
set, no data read. `disable_telemetry()` is the one function with a side effect (it sets the
opt-out variables of every library in this process) and the CLI calls it first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from nba.errors import DataFileError

Profile = Literal["local", "production", "spark"]

# Opt-out switches of the libraries the platform drives. There is no network here, and
# a user's platform should not phone home either.
TELEMETRY_OFF: dict[str, str] = {
    "DO_NOT_TRACK": "true",  # honoured by MLflow (needs "true") and Evidently
    "FEAST_USAGE": "False",  # Feast usage statistics (older releases; harmless on 0.67)
    "BENTOML_DO_NOT_TRACK": "True",  # BentoML usage analytics
    "BENTOML_USAGE_STATS": "False",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow 3 usage telemetry
    "EVIDENTLY_DISABLE_TELEMETRY": "1",  # Evidently UI / workspace telemetry
    "HF_HUB_OFFLINE": "1",  # nothing fetches model weights from a hub
}


class Settings(BaseSettings):
    """Where things live and which profile is active.

    Every path is resolved against `home` (the project folder, default: the working
    directory) unless it is absolute.
    """

    model_config = SettingsConfigDict(env_prefix="NBA_", extra="forbid", frozen=True)

    profile: Profile = Field("local", description="local (embedded stores), production (Redis/Postgres) or spark "
                                                  "(the local stores, Feast's Spark offline store for training frames)")
    home: Path = Field(default_factory=Path.cwd, description="project folder holding features/, serving/ ...")
    data_dir: Path | None = Field(
        None, description="folder holding the public data sets (hillstrom.csv.zip, CDNOW_master.txt.gz)"
    )
    work_dir: Path = Field(Path("var"), description="git-ignored folder for everything generated")
    feature_repo: Path = Field(Path("features"), description="the Feast declarations (definitions.py, yamls)")
    mlflow_dir: Path = Field(Path("mlflow"), description="MLflow SQLite store and artifacts")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="production online store / policy state")
    postgres_dsn: str = Field(
        "postgresql://postgres@127.0.0.1:5432/test", description="production registry / tracking / tuning store"
    )
    optuna_storage: str | None = Field(
        None, description="Optuna storage URL [default: sqlite:///<work>/tuning/optuna.db (local), the Postgres "
                          "DSN (production): a shared study for several workers]"
    )
    optuna_heartbeat_s: int = Field(
        30, ge=1, description="seconds between a running trial's heartbeats in the Optuna storage"
    )
    optuna_grace_s: int = Field(
        120, ge=1, description="a running trial without a heartbeat for this long is failed (its worker died) "
                               "and retried with the same parameters"
    )
    optuna_max_retry: int = Field(3, ge=0, description="retries of a trial whose worker died, at most")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking server URL [default: SQLite under mlflow_dir (local), "
                          "http://127.0.0.1:5000 (production)]"
    )
    spark_master: str = Field(
        "local[2]", description="where Spark runs (`nba decide-batch --engine spark`, the spark profile's offline "
                                "store): local[N] or a cluster's master URL"
    )
    seed: int = Field(7, description="default random seed for the simulator and the models")
    policy_store: Literal["sqlite", "redis"] | None = Field(
        None, description="contact-policy state [default: sqlite (local), redis (production)]"
    )
    log_store: Literal["sqlite", "postgres"] | None = Field(
        None, description="decision log, outbox, event log and preferences [default: sqlite (local), postgres "
                          "(production)]"
    )
    log_dsn: str | None = Field(
        None, description="the Postgres database of the logs (production) [default: NBA_POSTGRES_DSN]; its schema "
                          "is made by `nba stores migrate`"
    )
    feature_retention_days: float = Field(
        90.0, gt=0, description="days the decision log keeps the features a decision was made on; `nba stores "
                                "compact` drops older ones (the decisions and outcomes stay)"
    )
    redis_prefix: str = Field("nba", description="prefix of every Redis key the platform writes")
    serve_workers: int = Field(
        default_factory=lambda: usable_cores(), ge=1,
        description="worker processes of the decision service (default: the cores this process may use; a worker "
                    "more than the cores made smaller batches and fewer decisions/s, RESULTS.md)"
    )
    serve_batch: int = Field(
        64, ge=1, description="concurrent /decide calls of one worker decided together, at most (1: each alone); "
                              "a call that arrives alone waits for nothing (nba.serving.batching)"
    )
    serve_commit_threads: int | None = Field(
        None, ge=0, description="threads of one worker that commit decided batches to the log while its decider "
                                "decides the next (0: the decider waits for each commit; nba.serving.batching); "
                                "default 1 with the logs on Postgres (production), 0 on SQLite"
    )
    serve_gc_freeze: bool = Field(
        True, description="a warm worker exempts what it has loaded from Python's full garbage collections, "
                          "which otherwise walk it for about 0.2 s every few seconds under load (gc.freeze)"
    )
    serve_keepalive_requests: int = Field(
        100, ge=0, description="requests a keep-alive connection carries before its answer says `connection: "
                               "close`, so the client reconnects and the workers share the connections (0: no limit)"
    )
    serve_metrics: bool = Field(
        False, description="BentoML's Prometheus metrics and tracing in the decision service (about a fifth of a "
                           "decision's CPU: off by default)"
    )
    webhook_url: str | None = Field(
        None, description="send every channel's outbox messages to this one webhook, whatever serving/activation.yaml "
                          "says (tests and local runs; NBA_WEBHOOK_URL)"
    )
    admin_token: str | None = Field(
        None, description="a bearer token with the `admin` scope (erasure, preferences), kept beside the API keys for "
                          "the callers that used it before them; unset: only a key with `admin`"
    )
    api_keys: str | None = Field(
        None, description="the service's API keys, inline: a JSON list of entries (id, hash, scopes, optional rate "
                          "and burst; `nba keys new` prints one); unset and no NBA_API_KEYS_FILE: no keys, loopback only"
    )
    api_keys_file: Path | None = Field(
        None, description="a secret file (YAML or JSON) holding `keys:`, the same entries as NBA_API_KEYS"
    )
    rate_limit: float = Field(
        50.0, gt=0, description="requests per second each API key may make (a token bucket; a key's `rate` overrides)"
    )
    rate_burst: int = Field(100, ge=1, description="the token bucket's size: requests a key may make at once")
    rate_limit_store: Literal["memory", "redis"] | None = Field(
        None, description="where the buckets live [default: memory, per worker (local); redis, shared by every "
                          "replica (production)]"
    )
    max_body_bytes: int = Field(
        64 << 10, ge=1024, description="largest body of one /decide, /respond or preferences call (413 above)"
    )
    max_batch_body_bytes: int = Field(
        8 << 20, ge=1024, description="largest body of a /decide_batch or /events call (413 above)"
    )
    serve_bundle: Path | None = Field(
        None, validation_alias=AliasChoices("NBA_BUNDLE_DIR", "serve_bundle"),
        description="the bundle the decision service serves [default: the Bento's own, else <work>/bundle]"
    )

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else (self.home / p)

    @property
    def work(self) -> Path:
        return self.path(self.work_dir)

    @property
    def feature_repo_src(self) -> Path:
        return self.path(self.feature_repo)

    @property
    def feast_repo(self) -> Path:
        """The staged Feast repository (declarations + the profile's yaml + data files)."""
        return self.work / "feature_repo"

    @property
    def sim_dir(self) -> Path:
        return self.work / "sim"

    @property
    def tuning_storage(self) -> str:
        """Where Optuna studies live: the setting, else the Postgres DSN (production) or a SQLite
        file in the work folder (local)."""
        if self.optuna_storage:
            return self.optuna_storage
        if self.profile == "production":
            pg = self.postgres_dsn
            return "postgresql+psycopg://" + pg.removeprefix("postgresql://") if pg.startswith("postgresql://") else pg
        return f"sqlite:///{(self.work / 'tuning' / 'optuna.db').resolve()}"

    @property
    def decision_log_dir(self) -> Path:
        """Every decision and outcome (`nba.stores.decisions`)."""
        return self.work / "decision_log"

    @property
    def log_backend(self) -> Literal["sqlite", "postgres"]:
        """Where the logs live: the setting, else SQLite files (local) or Postgres (production)."""
        return self.log_store or ("postgres" if self.profile == "production" else "sqlite")

    @property
    def commit_threads(self) -> int:
        """A worker's commit threads: the setting, else 1 with the logs on Postgres (a commit
        waits for its WAL flush, 1-3 ms, which the decider need not) and 0 on SQLite (a short
        commit; a second thread would only take the GIL from the decider)."""
        if self.serve_commit_threads is not None:
            return self.serve_commit_threads
        return 1 if self.log_backend == "postgres" else 0

    @property
    def decision_log_dsn(self) -> str:
        """The Postgres database of the logs (production): NBA_LOG_DSN, else NBA_POSTGRES_DSN."""
        return self.log_dsn or self.postgres_dsn

    @property
    def event_log_path(self) -> Path:
        """Every behavioural event accepted (`nba.stores.events`): the streaming features' source."""
        return self.work / "events" / "events.db"

    @property
    def policy_state_path(self) -> Path:
        """The SQLite contact-policy state (local profile)."""
        return self.work / "policy" / "state.db"

    @property
    def trigger_state_path(self) -> Path:
        """The SQLite trigger state: each trigger's last firing per customer (local profile)."""
        return self.work / "triggers" / "state.db"

    @property
    def preferences_path(self) -> Path:
        """The preference centre's SQLite store (`nba.stores.preferences`)."""
        return self.work / "preferences" / "preferences.db"

    @property
    def privacy_dir(self) -> Path:
        """The erasure list (`erasures.db`) and the erasure receipts (`receipts/`)."""
        return self.work / "privacy"

    @property
    def bundle_dir(self) -> Path:
        """The serving bundle `nba bundle build` writes: resolved versions, catalog, policies."""
        return self.work / "bundle"

    @property
    def bentoml_home(self) -> Path:
        """BentoML's model and Bento stores (BENTOML_HOME) for this work folder."""
        return self.work / "bentoml"

    @property
    def activation_dir(self) -> Path:
        """Where the file connector writes each channel's messages (`<channel>.jsonl`)."""
        return self.work / "activation"

    @property
    def evidently_workspace(self) -> Path:
        """The local Evidently workspace the dashboards read (`evidently ui --workspace ...`)."""
        return self.work / "evidently"

    @property
    def reports_dir(self) -> Path:
        """Self-contained HTML and JSON evaluation reports."""
        return self.work / "reports"

    @property
    def mlflow_path(self) -> Path:
        return self.path(self.mlflow_dir)

    def real_data_dir(self) -> Path:
        """The folder with the public data sets; an error naming the setting if unset."""
        if self.data_dir is None:
            raise DataFileError(
                "no data folder: set NBA_DATA_DIR (or pass --data-dir) to the folder holding "
                "hillstrom.csv.zip and CDNOW_master.txt.gz"
            )
        d = self.path(self.data_dir)
        if not d.is_dir():
            raise DataFileError(f"data folder {d} (NBA_DATA_DIR) does not exist or is not a folder")
        return d


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; a container's limit shows there)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def disable_telemetry() -> None:
    """Switch off every library's telemetry for this process (and its children)."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
