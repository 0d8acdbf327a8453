"""MLflow plumbing: the tracking store, runs that record their provenance, registration.

Embedded default: a SQLite backend at `<mlflow_dir>/mlflow.db` with artifacts under
`<mlflow_dir>/artifacts/`. Production (or `NBA_MLFLOW_TRACKING_URI`): an MLflow tracking
server (`mlflow server` on Postgres, serving the artifacts itself; `nba.training.tracking_server`),
shared by every training machine, the tuning workers and the bundle build. A server that does
not answer is one line naming it and what to do, when the command starts
(`TrackingUnavailable`), not a minute of MLflow's HTTP retries later. Every run is tagged with
the git commit and the feature service it read; a run that raises is ended FAILED with the
reason as a tag, and nothing is registered from it.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba import console
from nba.errors import NbaError
from nba.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import ActiveRun
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

EXPERIMENT_PREFIX = "nba-"


def registered_name(family: str, action: str | None = None) -> str:
    """Registered model names: nba-propensity-<action>, nba-churn, nba-clv, nba-uplift-<action>."""
    return f"nba-{family}-{action}" if action else f"nba-{family}"


DEFAULT_SERVER = "http://127.0.0.1:5000"  # the production profile's tracking server unless NBA_MLFLOW_TRACKING_URI
PROBE_TIMEOUT_S = 5.0


class TrackingUnavailable(NbaError):
    """The MLflow tracking server does not answer (or is not an MLflow server)."""

    exit_code = 3


def tracking_uri(settings: Settings) -> str:
    """The setting, else the production profile's tracking server, else the embedded SQLite store."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    if settings.profile == "production":
        return DEFAULT_SERVER
    return f"sqlite:///{(settings.mlflow_path / 'mlflow.db').resolve()}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


_answered: set[str] = set()  # servers that answered in this process (checked once each)


def check_server(uri: str, command: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One GET of the server's `/health`; `TrackingUnavailable` naming the address and what to
    do (`command`: how to start it) otherwise."""
    import urllib.error
    import urllib.request

    if uri in _answered:
        return
    todo = f"start it with `{command}` or set NBA_MLFLOW_TRACKING_URI to a running one"
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:  # noqa: S310
            body = resp.read(64).decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        raise TrackingUnavailable(f"MLflow tracking server {uri} answers HTTP {exc.code} on /health: it is not an "
                                  f"MLflow tracking server; {todo}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnavailable(f"MLflow tracking server {uri} does not answer ({reason}); {todo}") from None
    if body != "OK":
        raise TrackingUnavailable(f"MLflow tracking server {uri} answers {body[:40]!r} on /health, not OK: it is not "
                                  f"an MLflow tracking server; {todo}")
    _answered.add(uri)


def require_server(settings: Settings) -> None:
    """Where the tracking store is a server, check that it answers (a command calls this first,
    before reading any frame); nothing otherwise (no folder is made)."""
    uri = tracking_uri(settings)
    if is_server(uri):
        from nba.training.tracking_server import command_for

        check_server(uri, command_for(settings, uri))


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow at the profile's store (creating the local folder, or checking that the
    server answers) and return a client."""
    import mlflow
    from mlflow.tracking import MlflowClient

    console.quiet_mlflow()
    uri = tracking_uri(settings)
    if is_server(uri):
        require_server(settings)
    else:
        settings.mlflow_path.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(settings: Settings, family: str) -> str:
    """The experiment of a model family: its artifacts under `<mlflow_dir>/artifacts/<family>`
    (embedded), or where the tracking server keeps them (`mlflow-artifacts:/`, served by it)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = configure(settings)
    name = EXPERIMENT_PREFIX + family
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None if is_server(tracking_uri(settings)) else \
        (settings.mlflow_path / "artifacts" / family).resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process (tuning workers)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit(home: Path) -> str:
    """The commit the code was run from (with '-dirty' when the tree has changes), or 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=home, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=home,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def frame_digest(frame: pd.DataFrame) -> str:
    """A content digest of a training frame (values and column names, order-sensitive)."""
    import pandas as pd

    h = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


@contextmanager
def training_run(
    settings: Settings,
    family: str,
    run_name: str,
    *,
    tags: dict[str, str] | None = None,
    nested: bool = False,
) -> Iterator[ActiveRun]:
    """Start a run in the family's experiment; mark it FAILED with the reason if the block raises."""
    import mlflow

    exp = experiment_id(settings, family)
    commit = git_commit(settings.home)
    base_tags = {"nba.family": family, "mlflow.source.git.commit": commit, "nba.git_commit": commit, **(tags or {})}
    with mlflow.start_run(experiment_id=exp, run_name=run_name, nested=nested, tags=base_tags) as run:
        try:
            yield run
        except BaseException as exc:
            mlflow.set_tag("nba.failure_reason", f"{type(exc).__name__}: {exc}"[:4000])
            mlflow.end_run(status="FAILED")
            raise


def log_frame_info(info: dict[str, Any]) -> None:
    """Log the provenance of a training frame: service, label, windows, counts, digest."""
    import mlflow

    flat = {f"frame.{k}": v for k, v in info.items()}
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
    mlflow.set_tags({"nba.feature_service": str(info.get("feature_service", "")),
                     "nba.feature_service_version": str(info.get("feature_service_version", ""))})


def register(settings: Settings, model_uri: str, name: str, *, tags: dict[str, str] | None = None,
             alias: str | None = "challenger") -> ModelVersion:
    """Register a logged model as a new version of `name`; set `alias` on it.

    If anything after creating the version fails, the version is deleted again, so the
    registry never holds a half-registered model.
    """
    import mlflow

    client = configure(settings)
    version = mlflow.register_model(model_uri, name, tags=tags or {})
    try:
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
    except Exception:
        client.delete_model_version(name, version.version)
        raise
    return version


def log_model(model: Any, example: pd.DataFrame, *, predict_fn: str = "predict_proba", name: str = "model") -> str:
    """Log a fitted estimator of `nba.training.models` with a signature and an input example.

    Returns the model URI (`models:/<id>`) to register. The pyfunc flavour calls `predict_fn`,
    so a loaded propensity model answers probabilities, not class labels.
    """
    import mlflow
    from mlflow.models import infer_signature

    example = example.head(5)
    output = getattr(model, predict_fn)(example)
    info = mlflow.sklearn.log_model(
        model,
        name=name,
        signature=infer_signature(example, output),
        input_example=example,
        serialization_format="cloudpickle",
        pyfunc_predict_fn=predict_fn,
        pip_requirements=model_requirements(),
    )
    return info.model_uri


MODEL_PACKAGES = ("nba", "mlflow", "xgboost", "scikit-learn", "pandas", "numpy", "cloudpickle")


def model_requirements() -> list[str]:
    """The packages a logged model needs, pinned to the versions it was trained with.

    Given explicitly, because MLflow's inference of them starts a subprocess that imports
    the model (about 8 s a model here).
    """
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in MODEL_PACKAGES:
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return out
