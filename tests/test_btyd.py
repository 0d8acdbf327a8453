"""The classical CLV baseline (nba.training.btyd): BG/NBD and Gamma-Gamma fitted by maximum
likelihood, checked against the published CDNOW estimates and an independent implementation.

The published figures (Fader, Hardie and Lee 2005, "Counting your customers the easy way";
Fader and Hardie's Gamma-Gamma note) are for the 2,357-customer CDNOW sample over the
39-week calibration period 1997-01-01 .. 1997-09-30: r = 0.243, alpha = 4.414, a = 0.793,
b = 2.426; p = 6.25, q = 3.74, gamma = 15.44. The sample's customers are the ones listed in
`CDNOW_sample.txt` (master ids in its first column), which the `Lifetimes` wheel on PyPI
ships (a dev dependency); their purchases are taken from our verified CDNOW master file.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pandas as pd
import pytest

from nba import schemas
from nba.data.cdnow import load_cdnow
from nba.training import btyd
from nba.training.models import ModelDataError

CAL_END = pd.Timestamp("1997-09-30", tz="UTC")
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_GG = {"p": 6.25, "q": 3.74, "v": 15.44}
SAMPLE_CUSTOMERS = 2357


def _sample_ids() -> np.ndarray:
    path = importlib.metadata.distribution("lifetimes").locate_file("lifetimes/datasets/CDNOW_sample.txt")
    return np.unique(np.loadtxt(str(path), usecols=0, dtype=np.int64))


@pytest.fixture(scope="module")
def sample_summary(data_dir) -> pd.DataFrame:
    tx = load_cdnow(data_dir)
    ids = _sample_ids()
    assert len(ids) == SAMPLE_CUSTOMERS and np.isin(ids, tx[schemas.ENTITY_KEY]).all()
    return btyd.rfm_summary(tx[tx[schemas.ENTITY_KEY].isin(ids)], CAL_END)


def test_the_fit_reproduces_the_published_cdnow_parameters(sample_summary):
    s = sample_summary
    assert len(s) == SAMPLE_CUSTOMERS
    # the published summary's first customer (master id 4): x = 2, t_x = 30.43, T = 38.86 weeks, zbar 22.35
    assert s.loc[4, "frequency"] == 2 and s.loc[4, "recency"] == pytest.approx(30.43, abs=0.005)
    assert s.loc[4, "T"] == pytest.approx(38.86, abs=0.005) and s.loc[4, "monetary"] == pytest.approx(22.345)
    model = btyd.ClassicalCLV.fit(s)
    bg, gg = model.purchases, model.spend
    for name, value in PUBLISHED_BGNBD.items():
        assert getattr(bg, name) == pytest.approx(value, abs=0.001), name
    for name, value in PUBLISHED_GG.items():
        assert getattr(gg, name) == pytest.approx(value, abs=0.01), name
    assert bg.log_likelihood == pytest.approx(-9582.4, abs=0.1)  # the paper's LL at the optimum


def test_predictions_agree_with_the_lifetimes_implementation(sample_summary):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import BetaGeoFitter, GammaGammaFitter

    s = sample_summary
    ours = btyd.ClassicalCLV.fit(s)
    ref = BetaGeoFitter().fit(s["frequency"], s["recency"], s["T"])
    expected = ref.conditional_expected_number_of_purchases_up_to_time(39, s["frequency"], s["recency"], s["T"])
    got = ours.purchases.expected_purchases(39.0, s["frequency"], s["recency"], s["T"])
    np.testing.assert_allclose(got, expected.to_numpy(), rtol=2e-3)
    alive = ref.conditional_probability_alive(s["frequency"], s["recency"], s["T"])
    np.testing.assert_allclose(ours.purchases.probability_alive(s["frequency"], s["recency"], s["T"]),
                               np.asarray(alive), rtol=2e-3)
    buyers = s[s["frequency"] > 0]
    gg = GammaGammaFitter().fit(buyers["frequency"], buyers["monetary"])
    np.testing.assert_allclose(ours.spend.expected_value(buyers["frequency"], buyers["monetary"]),
                               gg.conditional_expected_average_profit(buyers["frequency"], buyers["monetary"]),
                               rtol=2e-3)


def test_hand_computed_cases():
    m = btyd.BGNBD(r=1.0, alpha=1.0, a=1.0, b=1.0, log_likelihood=0.0)
    # x = 0: alive with certainty (no evidence of a purchase, so no chance to have died after one)
    assert m.probability_alive(np.array([0.0]), np.array([0.0]), np.array([10.0]))[0] == 1.0
    # x = 1, t_x = T: P(alive) = 1 / (1 + a / (b + x - 1)) = 1 / 2
    assert m.probability_alive(np.array([1.0]), np.array([5.0]), np.array([5.0]))[0] == pytest.approx(0.5)
    # Gamma-Gamma: the weight of the customer's own mean is p x / (p x + q - 1)
    g = btyd.GammaGamma(p=2.0, q=3.0, v=10.0, log_likelihood=0.0)
    population = 2.0 * 10.0 / (3.0 - 1.0)
    assert g.expected_value(np.array([0.0]), np.array([0.0]))[0] == pytest.approx(population)
    w = (3.0 - 1.0) / (2.0 * 4.0 + 3.0 - 1.0)
    assert g.expected_value(np.array([4.0]), np.array([30.0]))[0] == pytest.approx(w * population + (1 - w) * 30.0)


def test_rfm_summary_counts_purchase_days_and_rejects_bad_frames():
    ts = pd.to_datetime(["1997-01-01 09:00", "1997-01-01 17:00", "1997-01-15 00:00", "1997-02-12 00:00", "1997-03-01 00:00"], utc=True)
    tx = pd.DataFrame({schemas.ENTITY_KEY: [1, 1, 1, 1, 2], schemas.EVENT_TS: ts,
                       "amount": [10.0, 5.0, 20.0, 30.0, 7.0]})
    s = btyd.rfm_summary(tx, pd.Timestamp("1997-02-26", tz="UTC"))
    assert list(s.index) == [1]  # customer 2 bought after the end
    assert s.loc[1, "frequency"] == 2  # two repeat days after the first (same-day purchases merged)
    assert s.loc[1, "recency"] == pytest.approx(6.0) and s.loc[1, "T"] == pytest.approx(8.0)
    assert s.loc[1, "monetary"] == pytest.approx(25.0)  # (20 + 30) / 2; the first day's 15 is not repeat
    with pytest.raises(ModelDataError, match="no column 'amount'"):
        btyd.rfm_summary(tx.drop(columns="amount"), CAL_END)
    with pytest.raises(ModelDataError, match="no purchase on or before"):
        btyd.rfm_summary(tx, pd.Timestamp("1996-01-01", tz="UTC"))
    with pytest.raises(ModelDataError, match="at least 2"):
        btyd.GammaGamma.fit(np.array([0.0, 1.0]), np.array([0.0, 5.0]))
