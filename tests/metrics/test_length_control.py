"""Length-controlled win rate on synthetic judgements with a planted length effect."""

from __future__ import annotations

import numpy as np
import pytest

from mapo.metrics.length_control import length_controlled, length_controlled_cells
from mapo.metrics.uncertainty import Bootstrap

FAST = Bootstrap(n_resamples=400, seed=0)


def _judgements(rng, n, theta, phi, mean_diff=250.0, sd=300.0):
    """A judge with preference logit theta + phi * tanh(diff / sd); the configuration writes longer."""
    diffs = rng.normal(mean_diff, sd, n)
    p = 1 / (1 + np.exp(-(theta + phi * np.tanh(diffs / np.std(diffs)))))
    u = rng.random(n)
    outcomes = np.where(u < p * 0.9, 1.0, np.where(u < p * 0.9 + 0.1, 0.5, 0.0))  # 10% ties
    return outcomes, diffs


def test_planted_length_bias_is_removed_and_its_coefficient_recovered():
    """Equal quality (theta = 0) but a judge that prefers the longer answer (phi = 1.5), and the
    configuration writes longer answers: the raw win rate is well above 50%, the length-controlled
    one is 50% within its interval, and phi comes back."""
    rng = np.random.default_rng(11)
    y, d = _judgements(rng, 1500, theta=0.0, phi=1.5)
    r = length_controlled(y, d, settings=FAST)
    assert r["win_rate"] > 0.62
    assert r["lc_win_rate"] == pytest.approx(0.5, abs=0.04)
    lo, hi = r["lc_win_rate_ci"]
    assert lo < 0.5 < hi and hi - lo < 0.12
    assert r["length_coef"] == pytest.approx(1.5, abs=0.3)
    assert r["length_coef_ci"][0] > 0.8


def test_no_length_effect_leaves_the_win_rate_and_a_real_lead_stays():
    rng = np.random.default_rng(3)
    y, d = _judgements(rng, 1500, theta=0.8, phi=0.0)
    r = length_controlled(y, d, settings=FAST)
    assert r["lc_win_rate"] == pytest.approx(1 / (1 + np.exp(-0.8)), abs=0.04)
    assert r["lc_win_rate"] == pytest.approx(r["win_rate"], abs=0.04)
    assert r["length_coef_ci"][0] < 0 < r["length_coef_ci"][1]


def test_cells_from_winrate_records_and_one_side_winning_everything_stays_finite():
    recs = [
        {"configuration": "fb", "baseline": "llama", "outcome": "win", "length_a": 900 + i, "length_b": 300}
        for i in range(12)
    ]
    recs.append({"configuration": "fb", "baseline": "llama", "outcome": "failed", "length_a": 1, "length_b": 2})
    recs.append({"configuration": "fb", "baseline": "llama", "outcome": "win"})  # no lengths: left out
    r = length_controlled_cells(recs, settings=FAST)["fb"]["llama"]
    assert r["n"] == 12 and 0.5 < r["lc_win_rate"] <= 1.0 and np.isfinite(r["length_coef"])
