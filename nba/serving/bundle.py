"""The serving bundle: champion models pinned to versions, the catalog and the policies.

`nba bundle build`:

1. compiles `serving/actions.yaml` and `serving/policies.yaml` against the features of the
   Feast feature service they name (read from the registry) and the MLflow registry: a bad
   rule, an unknown feature or an unregistered model fails here, before anything is served;
2. resolves every `@champion` the catalog reads to a concrete version;
3. imports each into the BentoML model store (`bentoml.mlflow.import_model`, tag
   `<registered name>:v<version>`; an existing tag is reused);
4. writes the bundle folder (`<work>/bundle`: `bundle.json` with the versions, the catalog
   version and the feature list, copies of both YAML files, and the trees of every
   propensity and score model converted to ONNX, each checked against XGBoost on sample rows
   with 15 % missing values: a graph further than `ONNX_TOLERANCE` from XGBoost refuses the
   build, naming the model and the difference);
5. builds a Bento (`nba_decision`) holding the engine's code, the bundle and references to
   the models, so `nba serve` (or `bentoml serve nba_decision:latest`) serves exactly these
   versions, and every decision names them.

`load_engine` turns a bundle folder into a `DecisionEngine`: what the service does at start and
what `nba decide-batch` does, so both decide with the same models.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nba import catalog as catalog_mod
from nba.errors import ConfigError, NbaError
from nba.features.online import OnlineFeatureReader
from nba.io import write_text
from nba.settings import Settings
from nba.training import tracking
from nba.training.tracking import git_commit

BENTO_NAME = "nba_decision"
SERVICE = "nba.serving.service:DecisionService"
MANIFEST = "bundle.json"
CHECK_ROWS = 512  # sample rows each converted graph is checked on
# What a served Bento needs installed (pinned to this environment's versions).
BENTO_PACKAGES = ("bentoml", "mlflow", "xgboost", "onnxruntime", "onnx", "scikit-learn", "pandas", "numpy",
                  "pyarrow", "feast", "redis", "pydantic", "pydantic-settings", "pyyaml", "cloudpickle", "typer")


class BundleError(NbaError):
    """The bundle cannot be built or loaded."""


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str
    run_id: str
    roles: tuple[str, ...]  # propensity:<action>, uplift:<action>, score:<name>

    @property
    def bento_tag(self) -> str:
        return f"{self.name}:v{self.version}"


@dataclass(frozen=True)
class BuildResult:
    bundle_dir: Path
    bento_tag: str
    catalog_version: str
    models: tuple[ResolvedModel, ...]


def use_bentoml_home(settings: Settings) -> Path:
    """Point BentoML's model and Bento stores at the work folder (before bentoml is imported)."""
    home = settings.bentoml_home
    home.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(home)
    if "bentoml" in sys.modules:  # imported already (another work folder in this process): repoint it
        _repoint_bentoml(home)
    return home


def _repoint_bentoml(home: Path) -> None:
    """BentoML reads BENTOML_HOME once, at import, into its dependency container; a second work
    folder in the same process (the test suite, a notebook) would otherwise build into the
    first one's stores. The container's providers take overrides (`set`, simple_di's API)."""
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer as C
    from bentoml._internal.models import ModelStore

    if C.bentoml_home.get() == str(home):
        return
    dirs = {"bentos": home / "bentos", "models": home / "models", "tmp": home / "tmp", "envs": home / "envs"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    C.bentoml_home.set(str(home))
    C.bento_store_dir.set(str(dirs["bentos"]))
    C.model_store_dir.set(str(dirs["models"]))
    C.tmp_bento_store_dir.set(str(dirs["tmp"]))
    C.env_store_dir.set(str(dirs["envs"]))
    C.bento_store.set(BentoStore(str(dirs["bentos"])))
    C.model_store.set(ModelStore(str(dirs["models"])))


def feature_fields(settings: Settings, service: str) -> list[dict[str, str]]:
    reader = OnlineFeatureReader(settings, service)
    return [{"name": f.name, "kind": f.kind} for f in reader.fields]


def compile_for_build(settings: Settings) -> tuple[catalog_mod.Catalog, list[dict[str, str]], dict[str, str]]:
    """The catalog checked against the feature service and the registry's champions."""
    spec, pol, digest, where = catalog_mod.read_files(settings.home)
    fields = feature_fields(settings, pol.feature_service)
    cat = catalog_mod.compile_catalog(spec, pol, [f["name"] for f in fields], digest=digest, where=where)
    client = tracking.configure(settings)
    registered = {m.name for m in client.search_registered_models()}
    catalog_mod.check_models(cat, registered, where)  # an unknown model names the action and the model
    return cat, fields, needed_models(cat)


def needed_models(cat: catalog_mod.Catalog) -> dict[str, str]:
    """role -> registered model: propensity and scores always, uplift when the formula reads it."""
    return {role: name for role, name in cat.models.items() if not role.startswith("uplift:") or cat.uses_uplift}


def resolve_champions(settings: Settings, needed: dict[str, str], cold: frozenset[str] = frozenset()
                      ) -> list[ResolvedModel]:
    """The @champion version of every needed model. A model whose roles are all in `cold`
    (the propensity of a `cold_start` action) may have none yet: it is left out, and the
    action is served cold."""
    from mlflow.exceptions import MlflowException

    client = tracking.configure(settings)
    by_name: dict[str, list[str]] = {}
    for role, name in needed.items():
        by_name.setdefault(name, []).append(role)
    out = []
    for name, roles in sorted(by_name.items()):
        try:
            mv = client.get_model_version_by_alias(name, "champion")
        except MlflowException:
            if set(roles) <= cold:
                continue
            raise BundleError(f"{name} ({', '.join(roles)}) has no @champion: promote a version first "
                              f"(nba promote {name})") from None
        out.append(ResolvedModel(name, str(mv.version), str(mv.run_id or ""), tuple(sorted(roles))))
    return out


def import_models(settings: Settings, models: list[ResolvedModel], progress: Callable[[str], None] | None = None) -> None:
    """Import each pinned version into the BentoML model store (a tag already there is reused)."""
    use_bentoml_home(settings)
    import bentoml
    from bentoml.exceptions import NotFound

    tracking.configure(settings)
    for m in models:
        try:
            bentoml.models.get(m.bento_tag)
        except NotFound:
            bentoml.mlflow.import_model(m.bento_tag, f"models:/{m.name}/{m.version}",
                                        labels={"registered_model": m.name, "version": m.version},
                                        metadata={"run_id": m.run_id, "roles": ",".join(m.roles)})
        if progress:
            progress(m.bento_tag)


def load_trained(settings: Settings, bento_tag: str) -> Any:
    """The trained model (`nba.training.models`) behind a tag of the BentoML model store,
    through BentoML's MLflow loader and MLflow's `get_raw_model`."""
    use_bentoml_home(settings)
    import bentoml
    from bentoml.exceptions import NotFound

    from nba.serving.models import ModelLoadError

    try:
        return bentoml.mlflow.load_model(bento_tag).get_raw_model()
    except NotFound:
        raise ModelLoadError(f"model {bento_tag} is not in the BentoML model store {settings.bentoml_home}; "
                             "rebuild with `nba bundle build`") from None
    except Exception as exc:
        raise ModelLoadError(f"model {bento_tag} cannot be loaded from the BentoML model store: {exc}") from exc


def check_onnx(name: str, model: Any, onnx_model: bytes, rows: int = CHECK_ROWS) -> float:
    """The largest |ONNX - XGBoost| of a model's final probabilities or values on sample rows
    that take both sides of its splits, 15 % of the cells missing; a BundleError above
    `ONNX_TOLERANCE`."""
    import numpy as np

    from nba.serving.models import ONNX_TOLERANCE, FastModel

    fast = FastModel(name, model, onnx_model)
    X = fast.check_sample(rows)
    diff = float(np.max(np.abs(fast.finish(fast.margin_onnx(X)) - fast.finish(fast.margin_xgboost(X)))))
    if not diff <= ONNX_TOLERANCE:  # NaN refuses too
        raise BundleError(f"model {name}: its ONNX graph's predictions differ from XGBoost's by up to {diff:.3g} "
                          f"on {rows} sample rows (tolerance {ONNX_TOLERANCE:g}); the bundle is not built")
    return diff


def convert_models(settings: Settings, models: list[ResolvedModel], folder: Path,
                   progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Each propensity and score model's trees as a checked ONNX file in `folder`: name ->
    its manifest entry. Models sharing a pooled booster share one file."""
    from nba.serving.models import to_onnx, xgboost_of

    out: dict[str, dict[str, Any]] = {}
    converted: dict[str, bytes] = {}  # by the booster's bytes: a pooled model is converted once
    for m in models:
        if not any(r.startswith(("propensity:", "score:")) for r in m.roles):
            continue  # uplift learners are scored through their own predict
        model = load_trained(settings, m.bento_tag)
        key = hashlib.sha256(bytes(xgboost_of(model).get_booster().save_raw("ubj"))).hexdigest()
        if key not in converted:
            converted[key] = to_onnx(model)
        onnx_model = converted[key]
        digest = hashlib.sha256(onnx_model).hexdigest()
        diff = check_onnx(m.name, model, onnx_model)
        file = f"trees-{digest[:16]}.onnx"
        if not (folder / file).exists():
            (folder / file).write_bytes(onnx_model)
        out[m.name] = {"file": file, "sha256": digest, "rows_checked": CHECK_ROWS, "max_abs_diff": diff}
        if progress:
            progress(f"{m.name}: ONNX, max |ONNX - XGBoost| {diff:.2g} on {CHECK_ROWS} rows")
    return out


def cold_actions(cat: catalog_mod.Catalog, models: list[ResolvedModel]) -> list[str]:
    """The catalog's actions without a served propensity model (cold start)."""
    served = {r for m in models for r in m.roles}
    return [a.id for a in cat.actions if f"propensity:{a.id}" not in served]


def cold_start_state(settings: Settings, cat: catalog_mod.Catalog, cold: list[str]) -> dict[str, Any] | None:
    """What the engine needs to score the cold actions: evaluation/gates.yaml's `cold_start`
    settings and every catalog action's shown decisions with an outcome (trials) and accepted
    ones (successes) in the decision log, from which the engine pools the priors and updates
    the posteriors (`nba.decisioning.coldstart.posteriors`). None without a cold action."""
    if not cold:
        return None
    from nba.config import gates_path, load_gates
    from nba.records import NO_ACTION
    from nba.stores.decisions import read_log

    cfg = load_gates(gates_path(settings.home)).cold_start
    if cfg is None:
        raise BundleError(f"action(s) {cold} have no @champion model, and {gates_path(settings.home)} has no "
                          "cold_start section to serve them cold; train and promote their models, or add it")
    counts = {a: {"successes": 0, "trials": 0} for a in cat.action_ids}
    if settings.decision_log_dir.exists():
        frames = read_log(settings.decision_log_dir, decision_columns=["decision_id", "action_id"])
        o = frames.outcomes
        if len(o):
            o = o[o["action_id"].astype(str) != NO_ACTION]
            by = o.assign(acc=(o["outcome"].astype(str) == "accepted").astype("int64")).groupby(
                o["action_id"].astype(str))["acc"].agg(["sum", "count"])
            for a, row in by.iterrows():
                if a in counts:
                    counts[str(a)] = {"successes": int(row["sum"]), "trials": int(row["count"])}
    return {"mature_positives": cfg.mature_positives, "prior_strength": cfg.prior_strength,
            "thompson_draws": cfg.thompson_draws, "cold": list(cold), "counts": counts,
            "counted_from": "decision log outcomes (trials: reported outcomes of shown actions; successes: accepted)"}


def cold_start_of(cat: catalog_mod.Catalog, state: dict[str, Any] | None) -> Any:
    """The core's `ColdStart` from a bundle's `cold_start` entry (None: no cold action)."""
    if not state or not state.get("cold"):
        return None
    import numpy as np

    from nba.decisioning.coldstart import posteriors

    counts = state["counts"]
    s = np.array([counts.get(a, {}).get("successes", 0) for a in cat.action_ids], dtype=np.float64)
    n = np.array([counts.get(a, {}).get("trials", 0) for a in cat.action_ids], dtype=np.float64)
    cold = np.array([a in state["cold"] for a in cat.action_ids], dtype=bool)
    return posteriors(s, n, cold, [a.issue for a in cat.actions], [a.group for a in cat.actions],
                      float(state["prior_strength"]), int(state["thompson_draws"]))


def write_bundle(settings: Settings, cat: catalog_mod.Catalog, fields: list[dict[str, str]],
                 models: list[ResolvedModel], target: Path | None = None,
                 progress: Callable[[str], None] | None = None) -> Path:
    """The bundle folder: manifest, copies of the catalog files and the checked ONNX graphs
    (replaced atomically)."""

    target = target or settings.bundle_dir
    tmp = Path(tempfile.mkdtemp(prefix=".bundle.", dir=target.parent if target.parent.exists() else None))
    try:
        shutil.copyfile(settings.home / catalog_mod.ACTIONS_FILE, tmp / "actions.yaml")
        shutil.copyfile(settings.home / catalog_mod.POLICIES_FILE, tmp / "policies.yaml")
        from nba.events import events_path, load_event_types

        if events_path(settings.home).is_file():  # checked now: a bad declaration fails the build
            load_event_types(events_path(settings.home))
            shutil.copyfile(events_path(settings.home), tmp / "events.yaml")
        if (settings.home / "serving" / "triggers.yaml").is_file():  # checked when the engine loads (load_triggering)
            shutil.copyfile(settings.home / "serving" / "triggers.yaml", tmp / "triggers.yaml")
        onnx_files = convert_models(settings, models, tmp, progress)
        manifest = {
            "bundle_format": 2,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "git_commit": git_commit(settings.home),
            "catalog_version": cat.version,
            "feature_service": cat.feature_service,
            "features": fields,
            "models": {m.name: {"version": m.version, "run_id": m.run_id, "bento_model": m.bento_tag,
                                "roles": list(m.roles), **({"onnx": onnx_files[m.name]} if m.name in onnx_files
                                                           else {})} for m in models},
        }
        cold = cold_start_state(settings, cat, cold_actions(cat, models))
        if cold is not None:
            manifest["cold_start"] = cold
        joint = write_joint(settings, cat, manifest, tmp)
        if joint is not None:
            manifest["joint"] = joint
        write_text(json.dumps(manifest, indent=2) + "\n", tmp / MANIFEST)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def write_joint(settings: Settings, cat: catalog_mod.Catalog, manifest: dict[str, Any],
                folder: Path) -> dict[str, Any] | None:
    """The joint graph of the bundle's per-action propensity models (`JointTrees`: one call
    scores a customer's row for all of them), written to `folder` and checked against each
    model's own graph: its manifest entry, or None with fewer than two such models."""
    from nba.serving.models import JointTrees

    models = load_models(settings, cat, manifest, folder).joint_models()
    if not models:
        return None
    graph = JointTrees(models).graph
    digest = hashlib.sha256(graph).hexdigest()
    file = f"joint-{digest[:16]}.onnx"
    (folder / file).write_bytes(graph)
    return {"file": file, "sha256": digest, "models": [m.name for m in models]}


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(f"no serving bundle at {bundle_dir}: run `nba bundle build` first")
    return json.loads(path.read_text())


def build_bento(settings: Settings, bundle_dir: Path, models: list[ResolvedModel]) -> str:
    """A Bento with the engine's code and the bundle; returns its tag."""
    from importlib.metadata import PackageNotFoundError, version

    use_bentoml_home(settings)
    import bentoml

    import nba

    packages = []
    for pkg in BENTO_PACKAGES:
        try:
            packages.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    with tempfile.TemporaryDirectory(prefix="nba-bento-") as ctx:
        root = Path(ctx)
        shutil.copytree(Path(nba.__file__).parent, root / "nba",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copytree(bundle_dir, root / "bundle")
        manifest = read_manifest(bundle_dir)
        bento = bentoml.bentos.build(
            SERVICE, name=BENTO_NAME, build_ctx=str(root), include=["nba/**/*.py", "bundle/*"],
            labels={"catalog_version": manifest["catalog_version"].replace("+", "-")},
            description=f"NBA decision service, catalog {manifest['catalog_version']}",
            models=[m.bento_tag for m in models],
            python={"packages": packages, "lock_packages": False},
        )
    return str(bento.tag)


def build(settings: Settings, progress: Callable[[str], None] | None = None) -> BuildResult:
    """`nba bundle build`: compile, resolve, import, write the bundle, build the Bento."""
    tracking.require_server(settings)  # a tracking server that does not answer: one line, first
    cat, fields, needed = compile_for_build(settings)
    if (settings.home / "serving" / "triggers.yaml").is_file():  # a bad trigger fails the build, not the service
        from nba.triggers import load_triggers

        load_triggers(settings.home, cat)
    models = resolve_champions(settings, needed, frozenset(f"propensity:{a.id}" for a in cat.actions if a.cold_start))
    import_models(settings, models, progress)
    bundle_dir = write_bundle(settings, cat, fields, models)
    tag = build_bento(settings, bundle_dir, models)
    manifest = read_manifest(bundle_dir)
    manifest["bento"] = tag

    write_text(json.dumps(manifest, indent=2) + "\n", bundle_dir / MANIFEST)
    return BuildResult(bundle_dir, tag, cat.version, tuple(models))


# --- loading -----------------------------------------------------------------------------------


def load_catalog_from_bundle(bundle_dir: Path, manifest: dict[str, Any]) -> catalog_mod.Catalog:
    spec, pol, digest, where = catalog_mod.read_files(bundle_dir, bundle_dir / "actions.yaml",
                                                      bundle_dir / "policies.yaml")
    cat = catalog_mod.compile_catalog(spec, pol, [f["name"] for f in manifest["features"]], digest=digest, where=where)
    if cat.version != manifest["catalog_version"]:
        raise BundleError(f"bundle {bundle_dir}: the catalog files give version {cat.version}, the manifest says "
                          f"{manifest['catalog_version']}; rebuild it with `nba bundle build`")
    return cat


def load_models(settings: Settings, cat: catalog_mod.Catalog, manifest: dict[str, Any],
                bundle_dir: Path | None = None, *, nthread: int = 1) -> Any:
    """The `ModelSet` of a bundle: the models from the BentoML model store, their ONNX graphs
    from the bundle folder."""
    from nba.serving.models import FastModel, ModelLoadError, ModelSet

    bundle_dir = Path(bundle_dir or settings.bundle_dir)
    loaded = {name: load_trained(settings, info["bento_model"]) for name, info in manifest["models"].items()}
    prop, scores, uplift = {}, {}, {}
    fast: dict[str, FastModel] = {}  # one compiled model per registered model, however many actions share it
    for name, info in manifest["models"].items():
        for role in info["roles"]:
            kind, _, who = role.partition(":")
            if kind in ("propensity", "score") and name not in fast:
                fast[name] = FastModel(name, loaded[name], _onnx_bytes(bundle_dir, name, info), nthread=nthread)
                fast[name].warm()
            if kind == "propensity":
                prop[who] = fast[name]
            elif kind == "score":
                scores[who] = fast[name]
            elif kind == "uplift":
                uplift[who] = loaded[name]
    entry = manifest.get("joint")  # bundles built before it score each model on its own
    joint = None if entry is None else (entry["models"], _onnx_bytes(bundle_dir, "the per-action models together",
                                                                     {"onnx": entry}))
    models = ModelSet(cat.action_ids, prop, scores, uplift, cold_start=cold_start_of(cat, manifest.get("cold_start")),
                      joint=joint)
    unknown = sorted(models.inputs - set(cat.feature_names))
    if unknown:
        raise ModelLoadError(f"the models read feature(s) {unknown} that feature service {cat.feature_service} "
                             "does not provide")
    return models


def _onnx_bytes(bundle_dir: Path, name: str, info: dict[str, Any]) -> bytes:
    from nba.serving.models import ModelLoadError

    entry = info.get("onnx")
    if not entry:
        raise ModelLoadError(f"bundle {bundle_dir} has no ONNX graph for {name} (built before serve-time scoring "
                             "moved to ONNX Runtime); rebuild it with `nba bundle build`")
    path = bundle_dir / entry["file"]
    if not path.is_file():
        raise ModelLoadError(f"bundle {bundle_dir} lacks {entry['file']} (the ONNX graph of {name}); rebuild it")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ModelLoadError(f"{path} (the ONNX graph of {name}) does not match the sha256 in the manifest; rebuild "
                             "the bundle with `nba bundle build`")
    return data


def load_engine(settings: Settings, bundle_dir: Path | None = None, *, nthread: int = 1) -> Any:
    """A `DecisionEngine` over a bundle folder. Components that fail to load (a model, the
    feature store) are retried on use; readiness says why."""
    from nba.serving.engine import DecisionEngine
    from nba.serving.ingest import event_ingestor
    from nba.stores.decisions import open_decision_log
    from nba.stores.policy_state import open_policy_store as policy_store

    bundle_dir = Path(bundle_dir or settings.bundle_dir)
    manifest = read_manifest(bundle_dir)
    cat = load_catalog_from_bundle(bundle_dir, manifest)
    expected = {f["name"] for f in manifest["features"]}

    def features() -> Any:
        reader = OnlineFeatureReader(settings, cat.feature_service)
        missing = sorted(expected - set(reader.names))
        if missing:
            raise ConfigError(f"feature service {cat.feature_service} no longer provides {missing}, which the "
                              "bundle was built with; rebuild it with `nba bundle build`")
        return reader

    versions = {name: info["version"] for name, info in manifest["models"].items()}
    engine: DecisionEngine = DecisionEngine(
        settings, cat, models=lambda: load_models(settings, cat, manifest, bundle_dir, nthread=nthread),
                          features=features, policy=lambda: policy_store(settings, cat),
                          log=open_decision_log(settings), model_versions=versions,
                          bundle=manifest.get("bento") or _bento_of(bundle_dir) or str(bundle_dir),
                          triggering=lambda eng: load_triggering(settings, eng, bundle_dir),
                          events=lambda: event_ingestor(settings, bundle_dir, store=engine.features.store,
                                                        erasures=engine.erasures))
    return engine


def load_triggering(settings: Settings, engine: Any, bundle_dir: Path) -> Any:
    """The engine's triggers: the bundle's `triggers.yaml` (else the project's), checked against
    its catalog and `events.yaml`; none when there is no trigger file."""
    from nba.serving.triggering import Triggering
    from nba.stores.trigger_state import open_trigger_store
    from nba.triggers import EVENTS_FILE, TRIGGERS_FILE, TriggerSet, load_triggers

    for home, t_file, e_file in ((bundle_dir, bundle_dir / "triggers.yaml", bundle_dir / "events.yaml"),
                                 (settings.home, settings.home / TRIGGERS_FILE, settings.home / EVENTS_FILE)):
        if t_file.is_file() and e_file.is_file():
            triggers = load_triggers(home, engine.catalog, path=t_file, events=e_file)
            return Triggering(engine, triggers, open_trigger_store(settings))
    return Triggering(engine, TriggerSet("none", (), frozenset()), None)  # type: ignore[arg-type]


def _bento_of(bundle_dir: Path) -> str | None:
    """The tag of the Bento a bundle folder sits in (<store>/bentos/<name>/<version>/src/bundle)."""
    parts = bundle_dir.resolve().parts
    if len(parts) >= 5 and parts[-2] == "src" and parts[-5] == "bentos":
        return f"{parts[-4]}:{parts[-3]}"
    return None
