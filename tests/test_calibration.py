"""Propensity calibration against the simulator's truth (issue 12, item 8).

The models are judged where the arbitration uses them: on every customer eligible for the
action at the last snapshot (`frames.truth_frame`), against the true P(accept | shown).
The big run (200,000 customers, with the floor of what the features allow) is
benchmarks/bench_calibration.py; here a 30,000-customer bank checks the training's
calibration per action, plus the inverse-probability weights on hand-made rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nba import schemas
from nba.errors import ConfigError
from nba.settings import Settings
from nba.training import propensity
from nba.training.config import load_model_config
from nba.training.frames import propensity_frame, truth_frame
from nba.training.models import ModelDataError
from tests.conftest import PROJECT_ROOT
from tests.constants import SEED

CALIBRATION_CUSTOMERS = 30_000


def _cfg(**options):
    cfg = load_model_config(PROJECT_ROOT, "propensity")
    return cfg.model_copy(update={"options": {**cfg.options, **options}})


def test_row_weights_are_clipped_inverse_probabilities_with_mean_one_per_action():
    train = pd.DataFrame({"action_id": ["a", "a", "a", "b", "b"],
                          "assignment_probability": [0.5, 0.25, 0.01, 0.1, 0.1]})
    w = propensity.row_weights(_cfg(weighting="ipw", ips_clip=20), train)
    # a: 1/p = 2, 4, 100 -> clipped 2, 4, 20 (mean 26/3); b: 10, 10 (mean 10)
    np.testing.assert_allclose(w, [2 * 3 / 26, 4 * 3 / 26, 20 * 3 / 26, 1.0, 1.0])
    assert propensity.row_weights(_cfg(weighting="none"), train) is None


def test_row_weights_reject_bad_probabilities_and_settings():
    train = pd.DataFrame({"action_id": ["a", "a"], "assignment_probability": [0.5, 0.0]})
    with pytest.raises(ModelDataError, match="assignment_probability.*outside"):
        propensity.row_weights(_cfg(), train)
    with pytest.raises(ModelDataError, match="assignment_probability"):
        propensity.row_weights(_cfg(), train.drop(columns=["assignment_probability"]))
    with pytest.raises(ConfigError, match="options.weighting.*'uniform'"):
        propensity.row_weights(_cfg(weighting="uniform"), train)
    with pytest.raises(ConfigError, match="options.ips_clip"):
        propensity.row_weights(_cfg(ips_clip=0.5), train.iloc[:1])


@pytest.fixture(scope="module")
def calibration_bank(tmp_path_factory, data_dir: Path) -> Settings:
    from nba.data.simulator import simulate_to_dir
    from nba.features import store

    root = tmp_path_factory.mktemp("calibration_bank")
    settings = Settings(home=PROJECT_ROOT, work_dir=root / "var", data_dir=data_dir, mlflow_dir=root / "mlflow")
    simulate_to_dir(customers=CALIBRATION_CUSTOMERS, seed=SEED, out_dir=settings.sim_dir, progress=False)
    store.apply(settings)
    return settings


@pytest.mark.slow
@pytest.mark.integration
def test_truth_frame_is_the_eligible_customers_at_the_last_snapshot(calibration_bank: Settings):
    cfg = load_model_config(PROJECT_ROOT, "propensity")
    truth = truth_frame(calibration_bank, cfg)
    raw = pd.read_parquet(calibration_bank.sim_dir / "truth.parquet")
    assert len(truth) == int(raw["eligible"].sum())
    assert truth["event_timestamp"].nunique() == 1
    assert not truth["credit_score"].isna().any()  # features joined for every pair
    frame = propensity_frame(calibration_bank, cfg)
    # the last snapshot is inside the time-based hold-out: no training contact is from then
    assert frame.train["event_timestamp"].max() < truth["event_timestamp"].iloc[0]


# |mean predicted - mean true P(accept | shown)| over the eligible customers, every action.
# At 30,000 customers the training before issue 12 (one pooled model, contacts unweighted)
# is off by +0.053 for sick_leave_support (it learnt the legacy campaign's choice of the
# customers on sick leave) and by +0.022 for loyalty_points_alert; per action with
# inverse-probability weights the largest is 0.027 (benchmarks/bench_calibration.py).
MAX_BIAS_VS_TRUTH = 0.035
# Per-customer error: the truth also depends on traits the bank never observes, so no model
# of the features gets near 0 (the floor at 200,000 customers is 0.0025-0.061 per action).
MAX_MAE_VS_TRUTH = 0.10


@pytest.mark.slow
@pytest.mark.integration
def test_every_action_is_calibrated_against_the_truth_on_the_eligible_customers(calibration_bank: Settings):
    cfg = load_model_config(PROJECT_ROOT, "propensity")
    frame = propensity_frame(calibration_bank, cfg)
    truth = truth_frame(calibration_bank, cfg)
    models, failures = propensity.fit_models(cfg, frame)
    assert not failures
    table = propensity.truth_errors(models, truth, frame.feature_columns).set_index("action")
    assert set(table.index) == set(models) and len(models) == len(schemas.ACTIONS)
    assert (table["customers"] > 1000).all()
    for action, row in table.iterrows():
        assert abs(row["bias"]) <= MAX_BIAS_VS_TRUTH, (action, row.to_dict())
        assert row["mae"] <= MAX_MAE_VS_TRUTH, (action, row.to_dict())
    # the errors are real numbers against the truth, not against the labels
    assert np.isclose(table["mean_predicted"] - table["mean_true_p"], table["bias"]).all()
