"""MLflow plumbing: the tracking store, runs that record their provenance, registration.

Embedded default: a SQLite backend at `<mlflow_dir>/mlflow.db` with artifacts under
`<mlflow_dir>/artifacts/`. Every run is tagged with the git commit and the feature service
it read; a run that raises is ended FAILED with the reason as a tag, and nothing is
registered from it.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nba import console
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


def tracking_uri(settings: Settings) -> str:
    if settings.profile == "production":
        pg = settings.postgres_dsn
        return pg.replace("postgresql://", "postgresql+psycopg://", 1) if pg.startswith("postgresql://") else pg
    return f"sqlite:///{(settings.mlflow_path / 'mlflow.db').resolve()}"


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow at the profile's store (creating the local folder) and return a client."""
    import mlflow
    from mlflow.tracking import MlflowClient

    console.quiet_mlflow()
    settings.mlflow_path.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(settings: Settings, family: str) -> str:
    """The experiment of a model family, its artifacts under `<mlflow_dir>/artifacts/<family>`."""
    import mlflow

    client = configure(settings)
    name = EXPERIMENT_PREFIX + family
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (settings.mlflow_path / "artifacts" / family).resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


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
