"""The import contract of ARCHITECTURE.md, enforced: `lint-imports` runs the contracts declared in
pyproject.toml (transitive, function-level imports included); the Feast declarations in
features/ are imported by nobody; the decisioning core does no file I/O."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    # The contracts are read from root's pyproject.toml; `nba` is imported from root.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_the_import_contract_holds() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "nba", tmp_path / "nba", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint_with(tree: Path, module: str, import_line: str) -> subprocess.CompletedProcess:
    """lint-imports on the copy after `module` (a path under nba/) gains a function-level import."""
    path = tree / "nba" / module
    path.write_text(path.read_text() + f"\n\ndef _added_by_the_test():\n    {import_line}  # noqa: F401\n")
    return _lint(tree)


def test_a_function_level_import_of_a_store_library_breaks_it(tree_copy: Path) -> None:
    result = _lint_with(tree_copy, "decisioning/core.py", "import redis")
    assert result.returncode != 0
    assert "nba.decisioning is not allowed to import redis" in result.stdout
    assert "nba.decisioning.core -> redis" in result.stdout


def test_an_indirect_import_of_a_store_breaks_it(tree_copy: Path) -> None:
    # decisioning -> a harmless-looking helper -> the decision log's store
    (tree_copy / "nba" / "helper_for_test.py").write_text("from nba.stores import decisions  # noqa: F401\n")
    result = _lint_with(tree_copy, "decisioning/core.py", "from nba import helper_for_test")
    assert result.returncode != 0
    assert "nba.decisioning is not allowed to import nba.stores" in result.stdout
    assert "nba.helper_for_test" in result.stdout


def test_a_cycle_breaks_it(tree_copy: Path) -> None:
    # the catalog imports the YAML loader; the loader importing the catalog closes a loop
    result = _lint_with(tree_copy, "config.py", "from nba import catalog")
    assert result.returncode != 0
    assert "No import cycles among nba modules BROKEN" in result.stdout


def _python_files() -> list[Path]:
    return [p for folder in ("nba", "tests", "benchmarks", "features") for p in (ROOT / folder).rglob("*.py")]


def _imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_nothing_imports_the_feast_declarations() -> None:
    # Feast imports features/definitions.py by path; a second import path would duplicate every
    # object (STYLE.md 3). Read features through a FeatureService name instead.
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imported_names(p)
                                                   if n in {"definitions", "features", "features.definitions"}
                                                   or n.startswith("features.definitions"))
                 for p in _python_files()}
    assert {k: v for k, v in offenders.items() if v} == {}


FILE_IO = {"open", "read_text", "write_text", "read_bytes", "write_bytes", "mkdir", "unlink", "rename",
           "touch", "read_parquet", "to_parquet", "read_csv", "to_csv"}


def test_the_decisioning_core_does_no_file_io() -> None:
    calls = []
    for path in (ROOT / "nba" / "decisioning").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if name in FILE_IO:
                    calls.append(f"{path.name}:{node.lineno} {name}")
    assert calls == []
