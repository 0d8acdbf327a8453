"""The `nba` command line as a user runs it: a real process, real exit codes, real files."""

from __future__ import annotations

import ast
import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pandas as pd
import pytest

from tests.conftest import PROJECT_ROOT

NBA = [sys.executable, "-m", "nba"]


def run(args: list[str], env: dict[str, str], cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*NBA, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture
def env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    e.update(NBA_HOME=str(PROJECT_ROOT), NBA_WORK_DIR=str(tmp_path / "var"), NBA_DATA_DIR=str(data_dir))
    return e


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_help_lists_the_commands(env):
    proc = run(["--help"], env)
    assert proc.returncode == 0
    for command in ("quickstart", "data", "features"):
        assert command in proc.stdout


HEAVY = ("pandas", "numpy", "pyarrow", "scipy", "sklearn", "feast", "mlflow", "bentoml", "evidently", "xgboost",
         "optuna", "tqdm", "redis", "psycopg")


def test_importing_the_cli_imports_no_heavy_library():
    """`nba --help` stays fast because the stack is imported lazily, inside the commands: the
    app with every command module, and what `--help` itself runs, load none of it."""
    code = (
        "import sys, nba.cli.app, nba.settings, nba.schemas, nba.errors; "
        f"heavy = {set(HEAVY)!r}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    code = ("import sys, runpy; sys.argv = ['nba', '--help']\n"
            "try:\n    runpy.run_module('nba', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', sorted({set(HEAVY)!r} & {{m.split('.')[0] for m in sys.modules}}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Commands:" in proc.stdout and proc.stdout.strip().endswith("HEAVY []"), proc.stdout


def test_nothing_outside_the_cli_package_imports_it():
    """The CLI sits on top: no library module imports `nba.cli` (the `python -m nba` entry aside)."""
    offenders = []
    for path in sorted((PROJECT_ROOT / "nba").rglob("*.py")):
        rel = path.relative_to(PROJECT_ROOT)
        if rel.parts[1] == "cli" or rel == Path("nba/__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{rel}:{node.lineno} {n}" for n in names if n == "nba.cli" or n.startswith("nba.cli.")]
    assert offenders == []


# --- choices are types: a wrong value fails in argument parsing, before any side effect ----------------


def assert_refused_before_anything(proc: subprocess.CompletedProcess, option: str, allowed: list[str],
                                   *untouched: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"Invalid value for '{option}'" in proc.stderr, proc.stderr
    for value in allowed:
        assert f"'{value}'" in proc.stderr, (value, proc.stderr)
    for path in untouched:
        assert not path.exists(), path


@pytest.fixture
def bare(tmp_path: Path) -> tuple[dict[str, str], Path, Path, Path]:
    """An environment whose work folder and MLflow store do not exist yet, and an empty cwd."""
    cwd, work, mlflow_dir = tmp_path / "cwd", tmp_path / "var", tmp_path / "mlflow"
    cwd.mkdir()
    e = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    e.update(NBA_HOME=str(PROJECT_ROOT), NBA_WORK_DIR=str(work), NBA_MLFLOW_DIR=str(mlflow_dir))
    return e, cwd, work, mlflow_dir


def test_train_clv_with_an_unknown_source_fails_before_creating_a_store(bare):
    e, cwd, work, mlflow_dir = bare
    proc = run(["train", "clv", "--source", "nonsense"], e, cwd=cwd)
    assert_refused_before_anything(proc, "--source", ["cdnow", "sim", "all"], work, mlflow_dir)
    assert not (mlflow_dir / "mlflow.db").exists() and list(cwd.iterdir()) == []


@pytest.mark.parametrize(("args", "option", "allowed"), [
    (["promote", "nba-churn", "--to", "boss"], "--to", ["champion", "challenger"]),
    (["tune", "ltv", "--trials", "1"], "model", ["propensity", "churn", "clv", "uplift"]),
    (["train", "uplift", "--source", "cdnow"], "--source", ["hillstrom", "sim", "all"]),
    (["train", "propensity", "--strategy", "both"], "--strategy", ["per_action", "pooled"]),
    (["evaluate", "policy", "--data", "hillstrom", "--method", "forest"], "--method", ["tree", "classifier"]),
    (["decide-batch", "--customers", "c.parquet", "--channel", "email", "--out", "o", "--engine", "flink"], "--engine",
     ["numpy", "spark"]),
])
def test_every_fixed_choice_fails_in_argument_parsing(bare, args, option, allowed):
    e, cwd, work, mlflow_dir = bare
    proc = run(args, e, cwd=cwd)
    assert_refused_before_anything(proc, option, allowed, work, mlflow_dir)
    assert list(cwd.iterdir()) == []


def test_the_cli_choices_are_the_library_choices():
    """The choices are spelled in the CLI (so `--help` imports no stack); they must equal the
    library's own."""
    from nba.cli import evaluate, serving, train
    from nba.evaluation import policy
    from nba.serving import batch
    from nba.training import clv, policy_learning, propensity, registry, uplift
    from nba.training.config import MODEL_FAMILIES

    assert get_args(train.PropensityStrategy) == propensity.STRATEGIES
    assert get_args(train.ClvSource) == (*clv.SOURCES, "all")
    assert get_args(train.UpliftSource) == (*uplift.SOURCES, "all")
    assert get_args(train.TunedModel) == MODEL_FAMILIES
    assert get_args(train.Alias) == registry.ALIASES
    assert get_args(evaluate.PolicyMethod) == policy_learning.METHODS
    assert get_args(evaluate.RewardModel) == policy.REWARD_MODELS
    assert get_args(serving.BatchEngine) == batch.ENGINES
    assert train.sources("all", train.ClvSource) == ["cdnow", "sim"]
    assert train.sources("sim", train.UpliftSource) == ["sim"]


def test_settings_import_has_no_side_effects(tmp_path: Path):
    code = "from nba.settings import Settings; s = Settings(); print(s.work)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("NBA_")})
    assert proc.stdout.strip() == str(tmp_path / "var")
    assert list(tmp_path.iterdir()) == []


def test_bad_profile_is_one_line_naming_the_setting(env):
    proc = run(["features", "materialize"], {**env, "NBA_PROFILE": "staging"})
    assert_one_line_error(proc, "profile", "NBA_PROFILE", "staging")


def test_reading_before_apply_says_what_to_run(env, tmp_path: Path):
    entities = tmp_path / "e.csv"
    pd.DataFrame({"customer_id": [1], "event_timestamp": ["2025-03-01"]}).to_csv(entities, index=False)
    proc = run(["features", "training-frame", "--service", "propensity_v1", "--entities", str(entities)], env)
    assert_one_line_error(proc, "no feature repository", "nba features apply")


def test_wrong_checksum_names_the_file_and_both_digests(env, tmp_path: Path, data_dir: Path):
    bad = tmp_path / "bad-data"
    bad.mkdir()
    (bad / "hillstrom.csv.zip").write_bytes((data_dir / "hillstrom.csv.zip").read_bytes())
    with gzip.open(data_dir / "CDNOW_master.txt.gz") as f:
        raw = f.read()
    (bad / "CDNOW_master.txt.gz").write_bytes(gzip.compress(raw.replace(b"19970101", b"19970102", 1)))
    out = tmp_path / "real"
    proc = run(["data", "load", "--data-dir", str(bad), "--out", str(out)], env)
    assert_one_line_error(proc, "CDNOW_master.txt.gz", "550275156104d6ba6bdf3b5a2d1a379682168f83734fdc6e3fd0392565f82231")
    assert not out.exists() or not (out / "cdnow_transactions.parquet").exists()


def test_missing_data_file_is_one_line(env, tmp_path: Path):
    proc = run(["data", "load", "--data-dir", str(tmp_path)], env)
    assert_one_line_error(proc, "hillstrom.csv.zip", str(tmp_path))


def test_debug_shows_the_traceback(env, tmp_path: Path):
    proc = run(["--debug", "data", "load", "--data-dir", str(tmp_path)], env)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_end_to_end_simulate_apply_materialize_read(env, tmp_path: Path):
    """The commands a data scientist types, in order, on a small bank."""
    sim = run(["data", "simulate", "--customers", "400", "--seed", "3", "--months", "4"], env)
    assert sim.returncode == 0, sim.stderr
    assert "interactions" in sim.stdout
    applied = run(["features", "apply"], env)
    assert applied.returncode == 0, applied.stderr
    assert "propensity_v1" in applied.stdout and "serving_v1" in applied.stdout
    mat = run(["features", "materialize"], env)
    assert mat.returncode == 0, mat.stderr
    assert "sqlite online store" in mat.stdout

    profile = pd.read_parquet(tmp_path / "var" / "sim" / "profile.parquet")
    entities = profile[["customer_id", "event_timestamp"]].drop_duplicates("customer_id").head(30)
    entities_file = tmp_path / "entities.parquet"
    entities.to_parquet(entities_file, index=False)
    frame_file = tmp_path / "frame.parquet"
    tf = run(["features", "training-frame", "--service", "churn_v1", "--entities", str(entities_file),
              "--out", str(frame_file)], env)
    assert tf.returncode == 0, tf.stderr
    frame = pd.read_parquet(frame_file)
    assert len(frame) == 30 and "credit_score" in frame.columns and frame["credit_score"].notna().all()

    unknown = run(["features", "training-frame", "--service", "nope_v1", "--entities", str(entities_file)], env)
    assert_one_line_error(unknown, "unknown feature service 'nope_v1'", "serving_v1")
    no_ts = tmp_path / "no_ts.csv"
    entities[["customer_id"]].to_csv(no_ts, index=False)
    missing = run(["features", "training-frame", "--service", "churn_v1", "--entities", str(no_ts)], env)
    assert_one_line_error(missing, "no_ts.csv", "event_timestamp")

    customer = int(entities["customer_id"].iloc[0])
    online = run(["features", "online", "--customer", str(customer)], env)
    assert online.returncode == 0, online.stderr
    assert f'"customer_id": [\n    {customer}\n  ]' in online.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_quickstart_runs_the_main_job_on_a_small_bank(env, tmp_path: Path):
    proc = run(["quickstart", "--customers", "300", "--no-train"], env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Hillstrom: 64,000 customers" in out
    assert "CDNOW: 69,659 purchases by 23,570 customers" in out
    assert "feature views" in out and "serving_v1" in out
    assert "sqlite online store" in out
    work = tmp_path / "var"
    for produced in ("sim/manifest.json", "feature_repo/data/online.db", "feature_repo/data/registry.db",
                     "real/hillstrom_experiment.parquet", "feature_repo/data/cdnow_rfm.parquet"):
        assert (work / produced).is_file(), produced


def test_decide_batch_names_a_bad_customers_file(env, tmp_path: Path):
    bad = tmp_path / "c.csv"
    pd.DataFrame({"client": [1, 2]}).to_csv(bad, index=False)
    proc = run(["decide-batch", "--customers", str(bad), "--channel", "email", "--out", str(tmp_path / "o.parquet")],
               env)
    assert_one_line_error(proc, str(bad), "no column 'customer_id'")
    proc = run(["decide-batch", "--customers", str(tmp_path / "missing.parquet"), "--channel", "email",
                "--out", str(tmp_path / "o.parquet")], env)
    assert_one_line_error(proc, "customers file", "missing.parquet", "does not exist")


def test_serving_before_a_bundle_says_what_to_run(env):
    proc = run(["serve", "--port", "3999"], env)
    assert_one_line_error(proc, "no serving bundle", "nba bundle build")
