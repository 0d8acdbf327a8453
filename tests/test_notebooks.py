"""The notebooks of `notebooks/` run end to end, the way a data scientist opens them, so they
never rot: each is executed by a real Jupyter kernel (nbclient, ipykernel) on the venv's Python
with this checkout on its path, in a temporary folder of its own, and the figures it computes
(its last cell shows them as JSON) are checked. The committed files carry no outputs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_ROOT

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = ("01_data_and_features", "02_train_and_compare", "03_uplift_and_policy", "04_decide_and_explain",
             "05_monitor")
CELL_TIMEOUT_S = 300  # a hung cell fails the test instead of the suite's 10-minute timeout


def _read(name: str):
    import nbformat

    return nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)


def test_the_notebooks_are_the_five_entry_points():
    assert sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_committed_notebook_is_valid_and_stripped(name):
    """No outputs, no execution counts: git holds the source, the suite runs it."""
    import nbformat

    nb = _read(name)
    nbformat.validate(nb)
    dirty = [(i, c.get("execution_count"), len(c.get("outputs", []))) for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert dirty == [], f"{name}.ipynb has outputs or execution counts in cells (index, count, outputs): {dirty}"
    assert nb.metadata.get("kernelspec", {}).get("language") == "python"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def _kernel_manager(tmp_path: Path, data_dir: Path):
    """A kernel on this interpreter (the venv's) with the checkout first on its path; its
    temporary folders (the notebooks' project homes) under the test's own folder."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "nba-venv"
    spec_dir.mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nba (venv)", "language": "python",
        "env": {"PYTHONPATH": path, "TMPDIR": str(tmp_path / "tmp"), "NBA_DATA_DIR": str(data_dir),
                "MPLBACKEND": "module://matplotlib_inline.backend_inline"},
    }))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name="nba-venv", kernel_spec_manager=specs)


def _execute(name: str, tmp_path: Path, data_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Run every cell; return the executed notebook and the JSON of its last cell."""
    from nbclient import NotebookClient

    nb = _read(name)
    client = NotebookClient(nb, km=_kernel_manager(tmp_path, data_dir), timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    client.execute()
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    shown = [o for o in last.outputs if o.output_type == "execute_result" and "application/json" in o.data]
    assert shown, f"{name}: the last cell shows no JSON of results (outputs: {last.outputs})"
    return nb, dict(shown[0].data["application/json"])


def _check_outputs(name: str, nb) -> None:
    """Plots inline, and nothing on stderr: a library warning does not clutter a notebook."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert stderr == [], f"{name} wrote to stderr: {stderr}"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} drew no inline plot"


@pytest.mark.slow
@pytest.mark.integration
def test_01_data_and_features(tmp_path, data_dir):
    nb, r = _execute("01_data_and_features", tmp_path, data_dir)
    _check_outputs("01_data_and_features", nb)
    # the published figures of the public data sets
    assert r["hillstrom_customers"] == 64_000
    assert r["hillstrom_visit_rate"] == pytest.approx({"Mens E-Mail": 0.18276, "No E-Mail": 0.10617,
                                                       "Womens E-Mail": 0.1514}, abs=1e-4)
    assert (r["cdnow_purchases"], r["cdnow_customers"]) == (69_659, 23_570)
    assert r["rfm_customers"] == 23_570 and r["rfm_segments"] >= 3
    # one training row per contact of the simulated bank; two moments, two snapshots
    assert r["sim_customers"] == 3_000
    assert r["training_frame_rows"] == r["contacts"] > 1_000
    early, late = r["pit_tenure_months"]
    assert late > early


@pytest.mark.slow
@pytest.mark.integration
def test_02_train_and_compare(tmp_path, data_dir):
    nb, r = _execute("02_train_and_compare", tmp_path, data_dir)
    _check_outputs("02_train_and_compare", nb)
    assert r["tuning_trials"] == 8 and 0 < r["tuning_best_log_loss"] < 0.2
    from nba.schemas import ACTIONS

    # one propensity model per action (pooled, registered per action) and churn
    assert r["training_runs"] == len(ACTIONS) + 1 and r["mlflow_runs"] > r["training_runs"]  # the trials are runs too
    assert r["propensity_models"] == len(ACTIONS) and r["calibration_bins"] >= 5
    assert 0 < r["propensity_mae_vs_truth"] < 0.1
    assert 0.5 < r["churn_roc_auc"] < 1
    # the gates act both ways on this small bank, and every model gets a verdict
    assert r["promoted"] and r["refused"]
    assert len(r["promoted"]) + len(r["refused"]) == len(ACTIONS) + 1


@pytest.mark.slow
@pytest.mark.integration
def test_03_uplift_and_policy(tmp_path, data_dir):
    nb, r = _execute("03_uplift_and_policy", tmp_path, data_dir)
    _check_outputs("03_uplift_and_policy", nb)
    assert r["visit_lift"] == pytest.approx({"Mens E-Mail": 0.18276 - 0.10617, "Womens E-Mail": 0.1514 - 0.10617},
                                            abs=1e-4)
    assert r["uplift_models"] == ["nba-uplift-hillstrom-mens_email", "nba-uplift-hillstrom-womens_email"]
    # the Womens e-mail has customers to target, the Mens e-mail lifts almost everyone alike
    assert r["qini_test"]["nba-uplift-hillstrom-womens_email"] > max(0.001, r["qini_test"]["nba-uplift-hillstrom-mens_email"])
    # the held-out half's spend (data README: Mens 1.42 $, none 0.65 $ on the whole set), net of 0.10 $ a mail
    assert r["best_single"] == "all:Mens E-Mail" and 1.1 < r["all_mens_gross"] < 1.8
    assert r["all_mens_spend"] == pytest.approx(r["all_mens_gross"] - 0.10, abs=1e-3)
    assert 0.45 < r["none_spend"] < 0.85 and r["learned_spend"] > r["none_spend"]
    low, high = r["learned_vs_best_single_ci"]
    assert low <= r["learned_vs_best_single"] <= high


@pytest.mark.slow
@pytest.mark.integration
def test_04_decide_and_explain(tmp_path, data_dir):
    nb, r = _execute("04_decide_and_explain", tmp_path, data_dir)
    _check_outputs("04_decide_and_explain", nb)
    assert r["marie_winner"] == "sick_leave_support" and r["marie_priority"] == 29.44
    assert r["marie_filtered"] == [{"action_id": "home_equity_loan", "stage": "eligibility",
                                    "rule": "has_mortgage == 1"}]
    from nba.schemas import ACTIONS

    assert r["customer_top_action"] in ACTIONS and r["customer_filtered"] > 0
    funnel = list(r["funnel"].values())
    assert funnel[0] == r["batch_decisions"] * len(ACTIONS)
    assert all(a >= b for a, b in zip(funnel, funnel[1:], strict=False)), r["funnel"]
    assert r["funnel"]["shown"] == r["batch_with_action"] > 0
    assert funnel[-2] < funnel[0]  # the rules and policies removed something


@pytest.mark.slow
@pytest.mark.integration
def test_05_monitor(tmp_path, data_dir):
    nb, r = _execute("05_monitor", tmp_path, data_dir)
    _check_outputs("05_monitor", nb)
    assert sum(r["groups"].values()) == r["decisions"] > 1_000
    assert 0.15 < r["groups"]["holdout"] / r["decisions"] < 0.25  # the notebook's 20 % hold-out
    assert r["outcomes"] > 50
    # one moment against a year of snapshots: only what grows with time drifts in the served batch;
    # the shifted batch adds exactly the two features it moved
    assert set(r["drift_served_features"]) <= {"tenure_days", "tenure_months", "last_contact_epoch_s"}
    assert set(r["drift_shifted_features"]) - set(r["drift_served_features"]) == {"income", "credit_score"}
    assert r["drift_shifted_exceeded"] and r["drift_shifted_share"] > r["drift_served_share"]
    low, high = r["nba_lift_ci"]
    assert low <= r["nba_lift"] <= high and low > 0  # treated customers convert more than the hold-out
    for values in (r["policy_conversion"], r["policy_value"]):
        assert set(values) == {"nba", "random", "propensity_only", "no_levers", "holdout"}
        assert values["holdout"] < values["nba"]
